"""Bad input beyond what the schema describes: each a clear 4xx problem+json, nothing
stored, and the service healthy afterwards.

tests/integration/test_api_validation.py already covers, for `POST /lending/apply`: malformed JSON,
other media types, bodies over the limit, deep nesting, invalid UTF-8, NaN/Infinity
literals, -0, 1e400 and huge exponents on `amount`, a NUL in `applicant_id`, long strings,
bad Idempotency-Keys and the query parameters. Here is what it does not: other encodings
and byte-order marks, NUL and lone surrogates where free text reaches the database, more
numbers JSON parsers disagree on, hostile path parameters (SQL metacharacters, `../`,
percent-encoded or raw) on every route the app publishes, and odd query values.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, unquote

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message, Scope

from api.service.settings import Settings
from api.web.app import create_app
from ledger.db import create_pool
from tests.conftest import FAST_SEQUENCER, MakeDatabase, new_applicant
from tests.support.helpers import JSON_HEADERS, PROBLEM_MEDIA_TYPE, assert_problem, row_counts


@pytest.fixture(scope="module")
async def isolated_url(make_database: MakeDatabase) -> str:
    """A database of this module's own: no API key in it, so the app runs in open mode and
    every request reaches its handler (a key made by another test would turn these into
    401s that prove nothing)."""
    return await make_database()


@pytest.fixture(scope="module")
async def isolated_app(isolated_url: str) -> AsyncIterator[FastAPI]:
    app = create_app(
        Settings(app_env="test"), database_url=isolated_url, sequencer_settings=FAST_SEQUENCER
    )
    async with app.router.lifespan_context(app):
        await app.state.service.wait_ready(30)
        yield app


@pytest.fixture(scope="module")
async def http(isolated_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=isolated_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger.test") as client:
        yield client


@pytest.fixture(scope="module")
async def isolated_pool(isolated_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(isolated_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def assert_healthy(http: httpx.AsyncClient) -> None:
    """Ready, and a valid application is still accepted."""
    assert (await http.get("/readyz")).status_code == 200
    body = {"applicant_id": new_applicant(), "amount": "5000", "income": "90000"}
    response = await http.post("/lending/apply", json={**body, "employment_years": 6})
    assert response.status_code == 200, response.text


# --- Request bodies ---

VALID = {"applicant_id": "cust_bad_inputs", "amount": "5000", "income": "90000"}
VALID_TEXT = json.dumps({**VALID, "employment_years": 6})


def raw_body(**fragments: str) -> bytes:
    """The valid body as JSON text, with some fields given as raw JSON fragments."""
    fields = {name: json.dumps(value) for name, value in VALID.items()}
    fields["employment_years"] = "6"
    fields.update(fragments)
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode()


BAD_BODIES: list[tuple[str, bytes, int]] = [
    # Encodings: JSON between systems is UTF-8 (RFC 8259 section 8.1), without a BOM.
    ("utf8_bom", b"\xef\xbb\xbf" + VALID_TEXT.encode(), 422),
    ("utf16", VALID_TEXT.encode("utf-16"), 422),
    ("utf16_le_without_bom", VALID_TEXT.encode("utf-16-le"), 422),
    ("utf32", VALID_TEXT.encode("utf-32"), 422),
    ("overlong_utf8_slash", b'{"applicant_id": "cust\xc0\xafx"}', 422),
    ("utf8_encoded_surrogate", b'{"applicant_id": "cust\xed\xa0\x80x"}', 422),
    ("latin1_byte_in_string", b'{"applicant_id": "cl\xe9ment"}', 422),
    # NUL: a raw control character is not JSON; an escaped one cannot be stored.
    ("raw_nul_in_string", raw_body(applicant_id='"cust\x00x"'), 422),
    ("nul_as_key", raw_body(**{"\\u0000": "1"}), 422),
    ("nul_in_money_string", raw_body(income='"9000\\u00000"'), 422),
    ("lone_surrogate_in_applicant_id", raw_body(applicant_id='"cust\\ud800x"'), 422),
    # Numbers.
    ("amount_minus_zero_point_zero", raw_body(amount="-0.0"), 422),
    ("amount_1e309", raw_body(amount="1e309"), 422),
    ("amount_minus_1e309", raw_body(amount="-1e309"), 422),
    ("income_1e999999", raw_body(income="1e999999"), 422),
    ("income_minus_0e0", raw_body(income="-0e0"), 422),
    ("income_1e_minus_999999", raw_body(income="1e-999999"), 422),
    ("years_1e309", raw_body(employment_years="1e309"), 422),
    ("years_1e999999", raw_body(employment_years="1e999999"), 422),
    ("years_minus_zero_point_zero", raw_body(employment_years="-0.0"), 422),
    ("years_nan_literal", raw_body(employment_years="NaN"), 422),
    ("years_infinity_literal", raw_body(employment_years="Infinity"), 422),
    ("years_hex", raw_body(employment_years="0x10"), 422),
    ("years_leading_zero", raw_body(employment_years="06"), 422),
    ("amount_leading_plus", raw_body(amount="+5000"), 422),
    # Long strings (under the body limit) and a body just over it.
    ("income_60000_digit_string", raw_body(income=json.dumps("9" * 60_000)), 422),
    ("applicant_id_60000_chars", raw_body(applicant_id=json.dumps("c" * 60_000)), 422),
    ("one_key_over_the_body_limit", raw_body(note=json.dumps("x" * 66_000)), 413),
]


@pytest.mark.parametrize(
    ("content", "status"),
    [pytest.param(content, status, id=case) for case, content, status in BAD_BODIES],
)
async def test_bad_bodies_are_refused_with_nothing_stored(
    http: httpx.AsyncClient, isolated_pool: asyncpg.Pool, content: bytes, status: int
) -> None:
    before = await row_counts(isolated_pool)
    response = await http.post("/lending/apply", content=content, headers=JSON_HEADERS)
    assert_problem(response, status)
    assert await row_counts(isolated_pool) == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("prompt", "before\u0000after", id="nul_in_prompt"),
        pytest.param("output", "\u0000", id="nul_alone_in_output"),
        pytest.param("rationale", "why\u0000not", id="nul_in_rationale"),
        pytest.param("prompt", "half a pair \ud83d", id="lone_surrogate_in_prompt"),
        pytest.param("output", "\udc00 lone low surrogate", id="lone_surrogate_in_output"),
    ],
)
async def test_text_the_database_cannot_store_is_a_422_where_free_text_is_written(
    http: httpx.AsyncClient, isolated_pool: asyncpg.Pool, field: str, value: str
) -> None:
    """Free text goes into jsonb, which cannot hold NUL; a lone surrogate is not Unicode
    text at all. Either is a 422 naming the problem, never a 500, and nothing is written;
    the same request without it succeeds."""
    applied = await http.post(
        "/lending/apply", json={**VALID, "applicant_id": new_applicant(), "employment_years": 6}
    )
    assert applied.status_code == 200, applied.text
    path = f"/lending/applications/{applied.json()['application_id']}/agent-actions"
    action = {
        "agent_id": "underwriter-agent-7",
        "model_name": "gpt-example-2026-10",
        "prompt": "Assess the application.",
        "output": "Looks fine.",
        "action": "manual_review",
        "rationale": "A second look.",
    }
    before = await row_counts(isolated_pool)
    content = json.dumps({**action, field: value})  # ensure_ascii: \u0000, \ud83d escapes
    response = await http.post(path, content=content, headers=JSON_HEADERS)
    assert_problem(response, 422, "validation-error")
    assert await row_counts(isolated_pool) == before

    accepted = await http.post(path, json=action)
    assert accepted.status_code == 201, accepted.text


# --- Paths and queries ---

HOSTILE_PATH_VALUES = [
    "1' OR '1'='1",
    "1; DROP TABLE events; --",
    'x" OR ""="',
    "%",
    "*",
    "..",
    "../..",
    "../../../etc/passwd",
    "..\\..\\windows",
    "\u0000",
    "cust\u0000_1",
    "\ud7ff\ue000",
    "a" * 5000,
]


def operations(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every published operation with path parameters, except
    streaming ones (an open stream is not an answer to check)."""
    found = []
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            contents = [
                media for response in operation["responses"].values()
                for media in (response.get("content") or {})
            ]  # fmt: skip
            if "{" in path and "text/event-stream" not in contents:
                found.append((method.upper(), path))
    return found


async def test_hostile_path_parameters_get_4xx_on_every_route(
    http: httpx.AsyncClient, isolated_app: FastAPI, isolated_pool: asyncpg.Pool
) -> None:
    """Each value percent-encoded into every path parameter of every route (SQL
    metacharacters, `../`, NUL, very long): a 4xx problem+json, never a 5xx."""
    targets = operations(isolated_app)
    assert len(targets) >= 3
    before = await row_counts(isolated_pool)
    for method, template in targets:
        for value in HOSTILE_PATH_VALUES:
            path = template
            while "{" in path:
                start, end = path.index("{"), path.index("}")
                path = path[:start] + quote(value, safe="") + path[end + 1 :]
            content = b"{}" if method in ("POST", "PUT", "PATCH") else None
            response = await http.request(method, path, content=content, headers=JSON_HEADERS)
            assert 400 <= response.status_code < 500, (method, path[:120], response.text)
            assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    assert await row_counts(isolated_pool) == before
    await assert_healthy(http)


async def raw_asgi_get(app: FastAPI, raw_path: bytes) -> tuple[int, dict[str, str]]:
    """GET a path exactly as a server hands it to the app: percent-decoded, with `..`
    segments left in (httpx would normalise them away before sending)."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(raw_path.decode("ascii")),
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"ledger.test")],
        "client": ("127.0.0.1", 50000),
        "server": ("ledger.test", 80),
    }
    started: dict[str, Any] = {}

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            started.update(message)

    await app(scope, receive, send)
    headers = {key.decode(): value.decode() for key, value in started["headers"]}
    return started["status"], headers


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/lending/applications/../events",
        b"/lending/applications/../../events",
        b"/lending/applicants/../history",
        b"/lending/applicants/../../../etc/passwd/history",
        b"/lending/applicants/%2e%2e%2f%2e%2e%2fevents/history",
        b"/lending/applications/..%2f..%2fevents/events",
        b"/lending/applications/%2E%2E/events",
        b"/events/../events",
        b"/./events",
        b"//events",
    ],
)
async def test_dot_segments_reach_no_other_route(
    isolated_app: FastAPI, isolated_pool: asyncpg.Pool, raw_path: bytes
) -> None:
    before = await row_counts(isolated_pool)
    status, headers = await raw_asgi_get(isolated_app, raw_path)
    assert status in (404, 422), (raw_path, status)
    assert headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    assert await row_counts(isolated_pool) == before


@pytest.mark.parametrize(
    "path",
    [
        "/events?after=1e309",
        "/events?after=1e999999",
        "/events?after=NaN",
        "/events?after=Infinity",
        "/events?after=-Infinity",
        "/events?after=0x10",
        "/events?after=%00",
        "/events?after=1%00",
        "/events?after=%EF%BC%91",  # a fullwidth digit one
        "/events?limit=-0",
        "/events?limit=1e2",
        "/events?limit=-0.0",
        "/events?limit=" + "9" * 5000,
        "/lending/applicants/cust_1001/history?limit=NaN",
        "/lending/applicants/cust_1001/history?limit=%00",
        "/lending/applicants/cust_1001/history?limit=1e309",
    ],
)
async def test_odd_query_values_get_422(
    http: httpx.AsyncClient, isolated_pool: asyncpg.Pool, path: str
) -> None:
    before = await row_counts(isolated_pool)
    assert_problem(await http.get(path), 422, "validation-error")
    assert await row_counts(isolated_pool) == before


async def test_the_service_is_healthy_after_all_of_it(http: httpx.AsyncClient) -> None:
    """Runs last in this module (file order): nothing above left the service unwell."""
    await assert_healthy(http)
    assert (await http.get(f"/lending/applications/{uuid.uuid4()}")).status_code == 404
