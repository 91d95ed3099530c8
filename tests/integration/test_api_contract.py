"""What the API promises beyond single routes (issues 10 and 16): integers in query and path
parameters are ASCII digits only, everywhere; open mode never hands out keys; a refused
role is named as text, over HTTP and MCP; a revoked key's open stream ends; production
describes itself only to key holders; the served OpenAPI document says how to
authenticate, and says it differently in open mode."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import httpx2
from fastapi import FastAPI
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from api.service.access import ALLOWED_ROLES, Role
from api.service.keystore import key_id_of
from tests.conftest import MakeDatabase, new_applicant
from tests.support.helpers import assert_problem
from tests.support.keyed import keyed_app
from tests.support.live_server import SSEReader, serving

TIMEOUT = 30.0
APPLY = {
    "applicant_id": "cust_contract",
    "amount": "5000",
    "income": "90000",
    "employment_years": 6,
}

# Python's int() reads all of these as integers; the API reads none of them.
NOT_DIGITS = ["+5", " 5", "5 ", "5_0", "-0", "\u0665", "\uff15", "0x5", "5.0", "1e1", ""]


def integer_parameters(app: FastAPI) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(method, path, parameter, its schema) for every integer query or path parameter."""
    found = []
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] in ("query", "path") and parameter["schema"].get("type") == (
                    "integer"
                ):
                    found.append((method, path, parameter["name"], parameter["schema"]))
    return found


def url_for(app: FastAPI, path: str, method: str, name: str, value: str) -> tuple[str, str]:
    """The path with every path parameter filled in, and a query string where `name` is
    `value` and every other required query parameter is valid."""
    operation = app.openapi()["paths"][path][method]
    query = []
    for parameter in operation.get("parameters", []):
        other = "1" if parameter["schema"].get("type") == "integer" else "cust_1"
        given = value if parameter["name"] == name else other
        if parameter["in"] == "path":
            path = path.replace("{" + parameter["name"] + "}", httpx.URL(given).raw_path.decode())
        elif parameter["in"] == "query" and (parameter["name"] == name or parameter["required"]):
            query.append(f"{parameter['name']}={httpx.QueryParams({'v': given})['v']}")
    return path, "&".join(query)


async def test_every_integer_parameter_takes_ascii_digits_only(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    parameters = integer_parameters(app)
    names = {(path, name) for _, path, name, _ in parameters}
    # The issue's examples, and every one there is today.
    assert {("/events", "after"), ("/events/stream", "after"), ("/events", "limit")} <= names
    assert len(parameters) >= 9
    for method, path, name, _ in parameters:
        for value in NOT_DIGITS:
            where, query = url_for(app, path, method, name, value)
            url = httpx.URL(where, params=httpx.QueryParams(query))
            response = await client.request(method.upper(), url)
            label = f"{method.upper()} {path} {name}={value!r}"
            if path.count("{") and value in ("", " 5", "5 ") and f"{{{name}}}" in path:
                assert response.status_code in (404, 422), label  # an empty path segment
                continue
            problem = assert_problem(response, 422, "validation-error")
            assert [error["field"] for error in problem["errors"]] == [name], label


async def test_the_issue_examples_of_signed_integers_are_422_naming_after(
    client: httpx.AsyncClient,
) -> None:
    for url in ("/events?after=+5", "/events?after=%205", "/events/stream?after=%2B5"):
        problem = assert_problem(await client.get(url), 422, "validation-error")
        assert problem["errors"][0]["field"] == "after", url


async def test_open_mode_never_creates_a_key_for_an_anonymous_caller(
    client: httpx.AsyncClient,
) -> None:
    """The session app runs open (no key exists): everything is open, but key creation."""
    for body in ({"role": "admin", "name": "squatter"}, b"not json", {"role": "nobody"}):
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = await client.post(
            "/admin/keys", content=content, headers={"content-type": "application/json"}
        )
        problem = assert_problem(response, 403, "forbidden")
        assert "lending-ledger keys create --role admin" in problem["detail"]
        assert problem["operation_id"] == "create_api_key"
    assert (await client.get("/admin/keys")).json() == []  # still no key: still open
    assert (await client.get("/events")).status_code == 200


async def test_the_served_document_says_how_to_authenticate_in_each_mode(
    make_database: MakeDatabase, client: httpx.AsyncClient
) -> None:
    opened = (await client.get("/openapi.json")).json()
    async with keyed_app(make_database) as keyed:
        keyed_document = (await keyed.client.get("/openapi.json")).json()
    for document, open_mode in ((opened, True), (keyed_document, False)):
        schemes = document["components"]["securitySchemes"]
        assert schemes["bearerAuth"]["scheme"] == "bearer"
        assert schemes["apiKeyHeader"] == {**schemes["apiKeyHeader"], "in": "header"}
        assert "open mode" in schemes["bearerAuth"]["description"].lower()
        for item in document["paths"].values():
            for operation in item.values():
                operation_id = operation["operationId"]
                roles = operation["x-roles"]
                if not ALLOWED_ROLES[operation_id]:
                    assert operation["security"] == [], operation_id
                    assert roles == [], operation_id
                    continue
                assert {"bearerAuth": []} in operation["security"], operation_id
                assert {"apiKeyHeader": []} in operation["security"], operation_id
                assert "401" in operation["responses"], operation_id
                assert roles == [r.value for r in Role if r in ALLOWED_ROLES[operation_id]] or (
                    "admin" in roles
                ), operation_id
                assert all(f"`{role}`" in operation["description"] for role in roles)
                optional = {} in operation["security"]
                assert optional == (open_mode and operation_id != "create_api_key"), operation_id


async def test_a_refused_role_is_named_as_text_over_http_and_mcp(
    make_database: MakeDatabase,
) -> None:
    async with keyed_app(make_database) as keyed:
        response = await keyed.client.get("/events", headers=keyed.headers(Role.AGENT))
        problem = assert_problem(response, 403, "forbidden")
        assert problem["detail"] == "the role 'agent' may not call 'get_event_feed'"
        assert problem["role"] == "agent"
        async with (
            serving(keyed.app) as base_url,
            httpx2.AsyncClient(headers=keyed.headers(Role.AUDITOR), timeout=TIMEOUT) as http,
            streamable_http_client(f"{base_url}/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            result = await session.call_tool(
                "submit_application", {**APPLY, "applicant_id": new_applicant()}
            )
        assert result.is_error
        tool_problem = result.structured_content
        assert isinstance(tool_problem, dict)
        assert tool_problem["detail"] == "the role 'auditor' may not call 'submit_application'"
        assert "Role." not in json.dumps(tool_problem)


async def test_mcp_needs_a_key_for_every_method_once_keys_exist(
    make_database: MakeDatabase,
) -> None:
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"accept": "application/json, text/event-stream"}
    async with keyed_app(make_database) as keyed:
        for message in (listing, {**listing, "method": "initialize"}):
            response = await keyed.client.post("/mcp", json=message, headers=headers)
            assert_problem(response, 401, "unauthorized")
        wrong = {**headers, "x-api-key": keyed.revoked_key}
        assert_problem(await keyed.client.post("/mcp", json=listing, headers=wrong), 401)


async def test_production_describes_itself_only_to_key_holders(
    make_database: MakeDatabase,
) -> None:
    async with keyed_app(
        make_database, app_env="production", allow_privileged_database_role=True
    ) as keyed:
        for path in ("/openapi.json", "/docs"):
            assert_problem(await keyed.client.get(path), 401, "unauthorized")
            for role in Role:
                response = await keyed.client.get(path, headers=keyed.headers(role))
                assert response.status_code == 200, (path, role)
        assert_problem(await keyed.client.post("/mcp", json={}), 401, "unauthorized")
        assert (await keyed.client.get("/healthz")).status_code == 200
    # Outside production (keys or not) the description needs no key.
    async with keyed_app(make_database) as keyed:
        assert (await keyed.client.get("/openapi.json")).status_code == 200
        assert (await keyed.client.get("/docs")).status_code == 200


async def test_a_revoked_keys_stream_ends_with_a_revoked_event(
    make_database: MakeDatabase,
) -> None:
    async with keyed_app(make_database) as keyed, serving(keyed.app) as base_url:
        auditor = keyed.keys[Role.AUDITOR]
        agent = keyed.headers(Role.AGENT)
        first = await keyed.client.post(
            "/lending/apply", json={**APPLY, "applicant_id": new_applicant()}, headers=agent
        )
        assert first.status_code == 200, first.text
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as http,
            http.stream(
                "GET", "/events/stream", headers={"authorization": f"Bearer {auditor}"}
            ) as response,
        ):
            assert response.status_code == 200
            events = SSEReader(response).events()
            seen = [await asyncio.wait_for(anext(events), TIMEOUT) for _ in range(3)]
            assert seen[0].event == "ApplicationSubmitted"
            revoked = await keyed.client.delete(
                f"/admin/keys/{key_id_of(auditor)}", headers=keyed.headers(Role.ADMIN)
            )
            assert revoked.status_code == 200, revoked.text
            second = await keyed.client.post(
                "/lending/apply", json={**APPLY, "applicant_id": new_applicant()}, headers=agent
            )
            assert second.status_code == 200, second.text
            rest = []

            async def drain() -> None:
                async for event in events:
                    rest.append(event)

            await asyncio.wait_for(drain(), TIMEOUT)  # the stream ends
        assert [event.event for event in rest] == ["revoked"]
        problem = json.loads("\n".join(rest[0].data))
        assert problem["type"] == "urn:lending-ledger:problem:unauthorized"
        assert problem["status"] == 401
        assert "revoked" in problem["detail"]
        assert rest[0].id is None
