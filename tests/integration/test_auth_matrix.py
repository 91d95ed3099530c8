"""The role-by-endpoint matrix: every endpoint the app publishes x every role, no key and a
wrong key, read from the app itself, so routes added later are covered without touching
this file. Also: every route is in ALLOWED_ROLES, and docs/api.md shows that table."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import Message

from api.service.access import ALLOWED_ROLES, PUBLIC_OPERATIONS, Role, may_call
from api.service.keystore import key_id_of
from tests.conftest import MakeDatabase, new_applicant
from tests.support.helpers import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_PREFIX
from tests.support.keyed import KeyedApp, keyed_app

ROOT = Path(__file__).resolve().parents[2]
CALL_TIMEOUT = 30.0


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    operation_id: str


def published_endpoints(app: FastAPI) -> list[Endpoint]:
    endpoints = []
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                endpoints.append(Endpoint(method.upper(), path, operation["operationId"]))
    return endpoints


def api_routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    """Every APIRoute, including those of included routers (which FastAPI may keep behind
    a lazy wrapper with the router as `original_router`) and of routes hidden from the
    OpenAPI document."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from api_routes(included.routes)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def call(
    app: FastAPI, method: str, path: str, headers: dict[str, str], body: bytes
) -> Answer:
    """One request straight through ASGI. Once the response has started, the client goes
    away (http.disconnect), so a streaming endpoint (SSE) ends like any other."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("ledger.test", 80),
    }
    started = asyncio.Event()
    status = 0
    response_headers: dict[str, str] = {}
    chunks: list[bytes] = []
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await started.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            for name, value in message.get("headers", []):
                response_headers[name.decode().lower()] = value.decode()
            started.set()
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    async with asyncio.timeout(CALL_TIMEOUT):
        await app(scope, receive, send)
    return Answer(status, response_headers, b"".join(chunks))


@dataclass(frozen=True)
class Fixtures:
    keyed: KeyedApp
    path_values: dict[str, str]


@pytest.fixture(scope="module")
async def fixtures(make_database: MakeDatabase) -> AsyncIterator[Fixtures]:
    async with keyed_app(make_database) as keyed:
        applicant = new_applicant()
        created = await keyed.client.post(
            "/lending/apply", json=valid_apply(applicant), headers=keyed.headers(Role.AGENT)
        )
        assert created.status_code == 200, created.text
        path_values = {
            "application_id": created.json()["application_id"],
            "applicant_id": applicant,
            "key_id": keyed.spare_key_id,  # admin may revoke it; nobody else may
        }
        yield Fixtures(keyed, path_values)


def valid_apply(applicant: str | None = None) -> dict[str, Any]:
    return {
        "applicant_id": applicant or new_applicant(),
        "amount": "2500",
        "income": "80000",
        "employment_years": 3,
    }


def request_body(operation_id: str) -> bytes:
    """A body that would write if the call were let through (where we know one), so a
    refusal that failed to stop it would show in the row counts."""
    known: dict[str, Any] = {
        "submit_application": valid_apply(),
        "create_api_key": {"role": "admin", "name": "smuggled"},
    }
    return json.dumps(known.get(operation_id, {})).encode()


def concrete_path(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\{([^}:]+)(?::[^}]*)?\}", lambda m: values.get(m.group(1), "x"), template)


async def test_every_endpoint_every_role_no_key_and_a_wrong_key(fixtures: Fixtures) -> None:
    keyed = fixtures.keyed
    endpoints = published_endpoints(keyed.app)
    assert {"submit_application", "get_event_feed", "create_api_key", "get_health"} <= {
        endpoint.operation_id for endpoint in endpoints
    }
    wrong_key = f"ll_{key_id_of(keyed.keys[Role.ADMIN])}_{'W' * 43}"
    callers: list[tuple[str, dict[str, str], Role | None]] = [
        ("no key", {}, None),
        ("wrong key", {"authorization": f"Bearer {wrong_key}"}, None),
        *((role.value, keyed.headers(role), role) for role in Role),
    ]
    checked = 0
    for endpoint in endpoints:
        path = concrete_path(endpoint.path, fixtures.path_values)
        public = endpoint.operation_id in PUBLIC_OPERATIONS
        for caller, auth_headers, role in callers:
            headers = {
                "content-type": "application/json",
                "idempotency-key": f"matrix-{endpoint.operation_id}-{caller}",
                **auth_headers,
            }
            label = f"{caller} -> {endpoint.method} {endpoint.path} ({endpoint.operation_id})"
            allowed = public or (role is not None and may_call(role, endpoint.operation_id))
            before = await keyed.writes()
            answer = await call(
                keyed.app, endpoint.method, path, headers, request_body(endpoint.operation_id)
            )
            checked += 1
            if allowed:
                assert answer.status not in (401, 403), f"{label}: {answer.status} {answer.body!r}"
                continue
            expected = 401 if role is None else 403
            assert answer.status == expected, f"{label}: {answer.status} {answer.body!r}"
            assert answer.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE), label
            problem = json.loads(answer.body)
            slug = "unauthorized" if expected == 401 else "forbidden"
            assert problem["type"] == PROBLEM_TYPE_PREFIX + slug, label
            if expected == 401:
                assert answer.headers["www-authenticate"].startswith("Bearer"), label
            else:
                assert (problem["role"], problem["operation_id"]) == (
                    caller,
                    endpoint.operation_id,
                ), label
            assert await keyed.writes() == before, f"{label} wrote something"
    assert checked == len(endpoints) * len(callers)


def test_every_route_is_in_the_roles_table(fixtures: Fixtures) -> None:
    routes = list(api_routes(fixtures.keyed.app.routes))
    published = {e.operation_id for e in published_endpoints(fixtures.keyed.app)}
    assert published <= {route.operation_id for route in routes}
    missing = sorted(
        f"{sorted(route.methods or ())} {route.path}: {route.operation_id}"
        for route in routes
        if route.operation_id not in ALLOWED_ROLES
    )
    assert not missing, f"add these operation_ids to api/auth.ALLOWED_ROLES: {missing}"


def roles_table() -> str:
    lines = [
        "| operationId | " + " | ".join(role.value for role in Role) + " |",
        "| --- |" + " :-: |" * len(Role),
    ]
    for operation_id in sorted(ALLOWED_ROLES):
        if operation_id in PUBLIC_OPERATIONS:
            cells = ["no key"] * len(Role)
        else:
            cells = ["yes" if may_call(role, operation_id) else "" for role in Role]
        lines.append(f"| `{operation_id}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_docs_show_the_roles_table() -> None:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- roles-table -->\n(.*?)\n<!-- /roles-table -->", text, re.DOTALL)
    assert match, "docs/api.md lost its roles table markers"
    assert match.group(1) == roles_table(), (
        "docs/api.md's roles table differs from api/auth.ALLOWED_ROLES; paste this:\n"
        + roles_table()
    )
