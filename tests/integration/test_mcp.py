"""The MCP server at /mcp, through the official SDK's own client (streamable HTTP) against
the app served on loopback: tools and their schemas, calls, and structured errors."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from api.jsonio import loads_exact
from api.service.access import Role
from tests.conftest import MakeDatabase, new_applicant
from tests.support.helpers import assert_problem
from tests.support.keyed import keyed_app
from tests.support.live_server import serving

TIMEOUT = 30.0

EXPECTED_TOOLS = {
    "submit_application",
    "get_applicant_history",
    "get_application",
    "evaluate_borrower",
    "record_agent_action",
    "request_manual_review",
}


@asynccontextmanager
async def mcp_session(
    app: FastAPI, headers: dict[str, str] | None = None
) -> AsyncIterator[ClientSession]:
    async with (
        serving(app) as base_url,
        httpx2.AsyncClient(headers=headers or {}, timeout=TIMEOUT) as http,
        streamable_http_client(f"{base_url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write, read_timeout_seconds=TIMEOUT) as session,
    ):
        await session.initialize()
        yield session


def text_json(result: CallToolResult) -> Any:
    """The tool's text content: the HTTP API's exact JSON."""
    assert len(result.content) == 1
    content = result.content[0]
    assert isinstance(content, TextContent)
    return loads_exact(content.text)


def assert_tool_problem(result: CallToolResult, status: int, slug: str) -> dict[str, Any]:
    assert result.is_error, result
    problem = result.structured_content
    assert isinstance(problem, dict)
    assert problem["status"] == status
    assert problem["type"] == f"urn:lending-ledger:problem:{slug}"
    assert problem["detail"]
    assert text_json(result) == problem
    return problem


async def test_the_tools_are_listed_with_their_input_schemas(app: FastAPI) -> None:
    async with mcp_session(app) as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert set(tools) == EXPECTED_TOOLS
    assert not any("decline" in name for name in tools)
    for tool in tools.values():
        assert tool.description
        assert tool.input_schema["type"] == "object"
        assert "context" not in tool.input_schema["properties"]
    submit = tools["submit_application"].input_schema
    assert set(submit["required"]) == {"applicant_id", "amount", "income", "employment_years"}
    assert submit["properties"]["applicant_id"]["pattern"] == "^[A-Za-z0-9_.:\\-]+$"
    assert submit["properties"]["employment_years"]["type"] == "integer"
    assert {branch["type"] for branch in submit["properties"]["amount"]["anyOf"]} == {
        "number",
        "string",
    }
    assert "idempotency_key" in submit["properties"]
    action = tools["record_agent_action"].input_schema
    assert set(action["required"]) == {
        "application_id",
        "agent_id",
        "model_name",
        "output",
        "action",
        "rationale",
    }
    assert set(action["properties"]["action"]["enum"]) == {
        "request_more_data",
        "manual_review",
        "auto_process",
        "other",
    }
    assert set(tools["request_manual_review"].input_schema["required"]) == {
        "application_id",
        "reason",
    }
    assert tools["get_application"].annotations is not None
    assert tools["get_application"].annotations.read_only_hint is True
    assert tools["submit_application"].annotations is not None
    assert tools["submit_application"].annotations.read_only_hint is False


async def test_submit_then_read_back_and_evaluate(app: FastAPI) -> None:
    applicant = new_applicant()
    async with mcp_session(app) as session:
        first_look = await session.call_tool("evaluate_borrower", {"applicant_id": applicant})
        assert not first_look.is_error
        assert text_json(first_look)["action"] == "request_more_data"

        submitted = await session.call_tool(
            "submit_application",
            {
                "applicant_id": applicant,
                "amount": "5000.10",
                "income": 90000,
                "employment_years": 6,
            },
        )
        assert not submitted.is_error, submitted
        application = text_json(submitted)
        assert application["decision"] == "approved"
        assert str(application["amount"]) == "5000.10"
        structured = submitted.structured_content
        assert isinstance(structured, dict)
        assert structured["application_id"] == application["application_id"]
        assert structured["amount"] == "5000.10"  # exact, as a decimal string

        read = await session.call_tool(
            "get_application", {"application_id": application["application_id"]}
        )
        assert text_json(read) == application

        history = await session.call_tool("get_applicant_history", {"applicant_id": applicant})
        assert [item["application_id"] for item in text_json(history)] == [
            application["application_id"]
        ]
        assert history.structured_content == {"items": [structured]}

        evaluation = await session.call_tool("evaluate_borrower", {"applicant_id": applicant})
        assert text_json(evaluation) == {
            "action": "auto_process",
            "applicant_id": applicant,
            "reason": "newest application was approved",
            "application_id": application["application_id"],
            "decision": "approved",
            "risk_score": application["risk_score"],
        }


async def test_an_idempotency_key_makes_a_retried_tool_call_safe(app: FastAPI) -> None:
    applicant = new_applicant()
    arguments = {
        "applicant_id": applicant,
        "amount": "750.25",
        "income": "30000",
        "employment_years": 4,
        "idempotency_key": f"mcp-{uuid.uuid4()}",
    }
    async with mcp_session(app) as session:
        first = await session.call_tool("submit_application", arguments)
        again = await session.call_tool("submit_application", arguments)
        assert text_json(again) == text_json(first)
        other = await session.call_tool("submit_application", {**arguments, "amount": "751"})
        assert_tool_problem(other, 422, "idempotency-key-reused")
        history = await session.call_tool("get_applicant_history", {"applicant_id": applicant})
        assert len(text_json(history)) == 1


@pytest.mark.parametrize(
    ("tool", "arguments", "status", "slug", "field"),
    [
        (
            "submit_application",
            {"applicant_id": "x", "amount": "5000", "income": "1", "employment_years": 1},
            422,
            "validation-error",
            "applicant_id",
        ),
        (
            "submit_application",
            {"applicant_id": "cust_ok", "amount": "0.001", "income": "1", "employment_years": 1},
            422,
            "validation-error",
            "amount",
        ),
        (
            "submit_application",
            {"applicant_id": "cust_ok", "amount": "10", "income": "1", "employment_years": "6"},
            422,
            "validation-error",
            "employment_years",
        ),
        ("get_application", {"application_id": "not-a-uuid"}, 404, "not-found", None),
        ("get_application", {"application_id": "../../events"}, 404, "not-found", None),
        ("get_application", {"application_id": str(uuid.uuid4())}, 404, "not-found", None),
        ("get_applicant_history", {"applicant_id": "no/slashes"}, 404, "not-found", None),
    ],
)
async def test_an_invalid_call_is_a_structured_tool_error(
    app: FastAPI,
    tool: str,
    arguments: dict[str, Any],
    status: int,
    slug: str,
    field: str | None,
) -> None:
    async with mcp_session(app) as session:
        result = await session.call_tool(tool, arguments)
    problem = assert_tool_problem(result, status, slug)
    if field is not None:
        assert field in {error["field"] for error in problem["errors"]}


async def test_agent_actions_and_manual_review_through_tools(app: FastAPI) -> None:
    applicant = new_applicant()
    prompt = "Assess applicant for prequalification."
    async with mcp_session(app) as session:
        submitted = await session.call_tool(
            "submit_application",
            {
                "applicant_id": applicant,
                "amount": "100000",
                "income": "50000",
                "employment_years": 2,
            },
        )
        application = text_json(submitted)
        application_id = application["application_id"]

        recorded = await session.call_tool(
            "record_agent_action",
            {
                "application_id": application_id,
                "agent_id": "agent-7",
                "model_name": "test-model",
                "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
                "prompt_ref": "prompts/prequal-v3",
                "output": "score below threshold",
                "action": "manual_review",
                "rationale": "the score needs a human",
            },
        )
        assert not recorded.is_error, recorded
        action = text_json(recorded)
        assert action["application_id"] == application_id
        assert action["action"] == "manual_review"

        missing_prompt = await session.call_tool(
            "record_agent_action",
            {
                "application_id": application_id,
                "agent_id": "agent-7",
                "model_name": "test-model",
                "output": "x",
                "action": "other",
                "rationale": "y",
            },
        )
        assert missing_prompt.is_error
        assert isinstance(missing_prompt.structured_content, dict)
        assert missing_prompt.structured_content["status"] == 422

        # A second application, approved, goes to a human on request.
        approved = text_json(
            await session.call_tool(
                "submit_application",
                {
                    "applicant_id": applicant,
                    "amount": "5000",
                    "income": "90000",
                    "employment_years": 6,
                },
            )
        )
        reviewed = await session.call_tool(
            "request_manual_review",
            {"application_id": approved["application_id"], "reason": "large relative exposure"},
        )
        assert not reviewed.is_error, reviewed
        assert text_json(reviewed)["status"] == "in_review"


async def test_the_callers_api_key_is_forwarded(make_database: MakeDatabase) -> None:
    async with keyed_app(make_database) as keyed:
        body = {"applicant_id": new_applicant(), "amount": "5000", "income": "90000"}
        arguments = {**body, "employment_years": 6}
        # Without a key, the MCP endpoint itself refuses every method (not just the tools).
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}
        accept = {"accept": "application/json, text/event-stream"}
        refused = await keyed.client.post("/mcp", json=call, headers=accept)
        assert_problem(refused, 401, "unauthorized")
        auditor = {"x-api-key": keyed.keys[Role.AUDITOR]}
        async with mcp_session(keyed.app, auditor) as session:
            forbidden = await session.call_tool("submit_application", arguments)
        assert forbidden.is_error
        assert isinstance(forbidden.structured_content, dict)
        assert forbidden.structured_content["status"] == 403
        before = await keyed.writes()
        async with mcp_session(keyed.app, keyed.headers(Role.AGENT)) as session:
            submitted = await session.call_tool("submit_application", arguments)
        assert not submitted.is_error, submitted
        application = text_json(submitted)
        events = await keyed.client.get(
            f"/lending/applications/{application['application_id']}/events",
            headers=keyed.headers(Role.AUDITOR),
        )
        assert events.status_code == 200, events.text
        assert {event["metadata"]["actor"] for event in events.json()} == {"agent:test-agent"}
        assert (await keyed.writes())[0] > before[0]
