"""The hot path (api/web/hot.py) answers exactly as the full stack does.

The same requests go to the session's app (hot path on, as served) and to a second app on
the same database with the hot path off; status, media type and body must agree, apart
from what differs between any two applies (ids, times) and the correlation id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider

from api.service import metrics
from api.service.settings import Settings
from api.web.app import LedgerApp, create_app
from api.web.tracing import uninstrument
from tests.conftest import new_applicant
from tests.support.helpers import JSON_HEADERS, row_counts

# Fields of an application that differ between two applies of the same body.
PER_APPLY = {"application_id", "created_at", "updated_at"}


@pytest.fixture(scope="session")
async def full_stack(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(
        Settings(app_env="test", seal_interval_seconds=0, batch_seal_interval_ms=0, hot_path=False),
        database_url=database_url,
    )
    assert application.hot_path is None
    async with application.router.lifespan_context(application):
        await application.state.service.wait_ready(30)
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://ledger.test") as client:
            yield client


def comparable(response: httpx.Response) -> tuple[int, str, Any]:
    media_type = response.headers.get("content-type", "")
    if not response.content:
        return response.status_code, media_type, None
    body = response.json()
    if isinstance(body, dict):
        body = {key: value for key, value in body.items() if key not in PER_APPLY}
    return response.status_code, media_type, body


async def both(
    app: FastAPI,
    client: httpx.AsyncClient,
    full_stack: httpx.AsyncClient,
    method: str,
    url: str,
    **kwargs: Any,
) -> tuple[httpx.Response, httpx.Response]:
    assert isinstance(app, LedgerApp)
    assert app.hot_path is not None, "the session's app serves the hot path"
    hot = await client.request(method, url, **kwargs)
    full = await full_stack.request(method, url, **kwargs)
    return hot, full


def apply_body(applicant: str, **changes: Any) -> dict[str, Any]:
    return {
        "applicant_id": applicant,
        "amount": "25000.00",
        "income": "85000.00",
        "employment_years": 4,
    } | changes


async def test_apply_answers_alike_for_good_and_bad_requests(
    app: FastAPI, client: httpx.AsyncClient, full_stack: httpx.AsyncClient
) -> None:
    applicant = new_applicant()
    good = json.dumps(apply_body(applicant))
    cases: list[dict[str, Any]] = [
        {"content": good, "headers": JSON_HEADERS},
        {"content": good, "headers": {"content-type": "application/merge-patch+json"}},
        {"content": good, "headers": {"content-type": "text/plain"}},
        {"content": good, "headers": {}},
        {"content": "{", "headers": JSON_HEADERS},
        {"content": "", "headers": JSON_HEADERS},
        {"content": json.dumps(apply_body(applicant, amount="-1")), "headers": JSON_HEADERS},
        {"content": json.dumps(apply_body(applicant, amount=1.5)), "headers": JSON_HEADERS},
        {"content": json.dumps(apply_body(applicant, extra=1)), "headers": JSON_HEADERS},
        {"content": json.dumps(apply_body("x")), "headers": JSON_HEADERS},
        {"content": '{"applicant_id": "a", "applicant_id": "b"}', "headers": JSON_HEADERS},
        {"content": json.dumps([1, 2]), "headers": JSON_HEADERS},
        {"content": good, "headers": JSON_HEADERS | {"Idempotency-Key": "x" * 201}},
        {"content": good, "headers": JSON_HEADERS | {"Idempotency-Key": "with space"}},
        {"content": b"\xff\xfe", "headers": JSON_HEADERS},
    ]
    for case in cases:
        hot, full = await both(app, client, full_stack, "POST", "/lending/apply", **case)
        assert comparable(hot) == comparable(full), case


async def test_keyed_applies_replay_across_both_paths(
    app: FastAPI, client: httpx.AsyncClient, full_stack: httpx.AsyncClient, pool: Any
) -> None:
    """A retry may reach a worker either way: a key claimed by one path replays on the other."""
    body = apply_body(new_applicant())
    headers = JSON_HEADERS | {"Idempotency-Key": f"hot-{new_applicant()}"}
    first = await client.post("/lending/apply", json=body, headers=headers)
    assert first.status_code == 200
    before = await row_counts(pool)
    hot, full = await both(
        app, client, full_stack, "POST", "/lending/apply", json=body, headers=headers
    )
    for retry in (hot, full):
        assert retry.status_code == 200
        assert retry.content == first.content
        assert retry.headers["idempotent-replayed"] == "true"
    other = await client.post(
        "/lending/apply", json=body | {"employment_years": 9}, headers=headers
    )
    assert other.status_code == 422
    assert await row_counts(pool) == before


async def test_history_answers_alike(
    app: FastAPI, client: httpx.AsyncClient, full_stack: httpx.AsyncClient
) -> None:
    applicant = new_applicant()
    for years in range(3):
        response = await client.post(
            "/lending/apply", json=apply_body(applicant, employment_years=years)
        )
        assert response.status_code == 200
    queries = [
        "",
        "?limit=2",
        "?limit=100",
        "?limit=0",
        "?limit=101",
        "?limit=05",
        "?limit=%2B5",
        "?limit=2&limit=3",
        "?unknown=1",
        "?as_of=2026-01-01T00:00:00Z",
        "?as_of=yesterday",
    ]
    for query in queries:
        hot, full = await both(
            app, client, full_stack, "GET", f"/lending/applicants/{applicant}/history{query}"
        )
        assert (hot.status_code, hot.content) == (full.status_code, full.content), query
    for path in ("/lending/applicants/ab/history", "/lending/applicants/a%2Fb/history"):
        hot, full = await both(app, client, full_stack, "GET", path)
        assert comparable(hot) == comparable(full), path
    hot, full = await both(
        app,
        client,
        full_stack,
        "GET",
        f"/lending/applicants/{applicant}/history",
        headers={"X-Min-LSN": "not a position"},
    )
    assert comparable(hot) == comparable(full)
    assert hot.status_code == 422


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "applicant_id": st.one_of(st.text(max_size=70), st.integers(), st.none()),
            "amount": st.one_of(
                st.decimals(allow_nan=False, places=3).map(str),
                st.integers(-5, 10**12),
                st.text(max_size=5),
            ),
            "income": st.one_of(
                st.decimals(allow_nan=False, places=2).map(str), st.integers(0, 10**11)
            ),
            "employment_years": st.one_of(st.integers(-2, 90), st.text(max_size=3), st.booleans()),
        },
    )
)
async def test_any_apply_body_answers_alike(
    app: FastAPI, client: httpx.AsyncClient, full_stack: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    hot, full = await both(app, client, full_stack, "POST", "/lending/apply", json=body)
    assert comparable(hot) == comparable(full)


async def test_hot_requests_are_measured_logged_and_correlated(
    app: FastAPI, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    route = "/lending/applicants/{applicant_id}/history"
    labels = {"route": route, "method": "GET", "status": "200"}
    before = (
        metrics.REGISTRY.get_sample_value("ledger_http_request_duration_seconds_count", labels) or 0
    )
    with caplog.at_level(logging.INFO, logger="api.web.access"):
        response = await client.get(
            f"/lending/applicants/{new_applicant()}/history",
            headers={"X-Correlation-Id": "trace-42"},
        )
    assert response.status_code == 200
    assert response.headers["x-correlation-id"] == "trace-42"
    after = metrics.REGISTRY.get_sample_value("ledger_http_request_duration_seconds_count", labels)
    assert after == before + 1
    lines = [record for record in caplog.records if record.name == "api.web.access"]
    assert [(line.route, line.status) for line in lines] == [(route, 200)]  # type: ignore[attr-defined]
    invalid = await client.get(
        f"/lending/applicants/{new_applicant()}/history", headers={"X-Correlation-Id": "no spaces"}
    )
    assert invalid.headers["x-correlation-id"] not in ("", "no spaces")


async def test_bodies_over_the_limit_get_the_full_stacks_413(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    limit = app.state.service.settings.max_body_bytes
    padded = json.dumps(apply_body(new_applicant())) + " " * limit
    response = await client.post("/lending/apply", content=padded, headers=JSON_HEADERS)
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_the_hot_path_is_off_where_it_would_skip_a_layer(database_url: str) -> None:
    settings_ = Settings(app_env="test")
    assert create_app(settings_, database_url=database_url).hot_path is not None
    traced = create_app(settings_, database_url=database_url, tracer_provider=TracerProvider())
    try:
        assert traced.hot_path is None
    finally:
        uninstrument(traced)  # asyncpg's instrumentation is process-wide
    replica = Settings(app_env="test", read_database_url=database_url)
    assert create_app(replica, database_url=database_url).hot_path is None
    assert (
        create_app(Settings(app_env="test", hot_path=False), database_url=database_url).hot_path
        is None
    )
