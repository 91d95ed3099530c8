"""The MCP server: a curated set of lending tools for AI agents, at `/mcp` (streamable HTTP).

Every tool calls the service's own HTTP API in-process (httpx over ASGI, no socket), with
the MCP caller's `Authorization` / `X-API-Key` and correlation id forwarded. So validation,
authorisation, idempotency and error mapping stay in one place, the HTTP API, and an agent
gets exactly the answers (and rights) it would get over HTTP. A problem+json answer comes
back as a tool error (`isError`) whose structured content is the problem itself.

Declining an application is deliberately not a tool: only an analyst may decline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import quote

import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from api.client import LedgerAPIError, LedgerClient
from api.jsonio import dumps
from api.web.auth import authenticate

MCP_PATH = "/mcp"
INTERNAL_BASE_URL = "http://lending-ledger.internal"
FORWARDED_HEADERS = ("authorization", "x-api-key", "x-correlation-id")

INSTRUCTIONS = """\
Tools for loan prequalification and underwriting on an event-sourced lending ledger.
Typical flow: evaluate_borrower (what to do next for an applicant), submit_application
(scored and decided at once: approved, or review), get_application / get_applicant_history
to read state, record_agent_action to log what you did and why (audited next to the
scores and decisions), request_manual_review to hand an application to a human analyst.
Only analysts decline applications. Writes accept an idempotency_key: retry with the same
key and the first result comes back instead of a second write. Errors come back as
RFC 9457 problems (type, title, status, detail, errors) in the structured content."""

# Published in the input schemas; enforced by the HTTP API (one validator, one error shape).
APPLICANT_ID_SCHEMA = {
    "minLength": 3,
    "maxLength": 64,
    "pattern": "^[A-Za-z0-9_.:\\-]+$",
}
MONEY_DESCRIPTION = (
    "greater than 0, below 10,000,000,000, at most 2 decimal places; a decimal string "
    '("5000.10") is exact, a JSON number is read through its shortest decimal form'
)
IDEMPOTENCY_KEY = Annotated[
    str | None,
    Field(
        description="retry with the same key to get the first result instead of a second "
        "write (1 to 200 printable ASCII characters); a new key is made when omitted",
        json_schema_extra={"minLength": 1, "maxLength": 200, "pattern": "^[\\x21-\\x7e]+$"},
    ),
]
APPLICATION_ID = Annotated[str, Field(description="the application's uuid")]

READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

# Arguments are passed on as given (typed Any here), so a value the API refuses ("6" years,
# a boolean amount) gets the API's own 422 problem, not a second, different validator's.
MONEY_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 10_000_000_000},
        {"type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,2})?$"},
    ]
}


def _plain(value: Any) -> Any:
    """JSON for structured content: decimals as exact strings, never floats."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _success(result: Any) -> CallToolResult:
    text = dumps(result).decode()  # exact numbers, as the HTTP API wrote them
    structured = _plain(result)
    if not isinstance(structured, dict):
        structured = {"items": structured}
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=structured
    )


def _problem(error: LedgerAPIError) -> CallToolResult:
    problem = _plain(error.problem) or {"status": error.status, "detail": str(error)}
    problem.setdefault("status", error.status)
    return CallToolResult(
        content=[TextContent(type="text", text=dumps(problem).decode())],
        structured_content=problem,
        is_error=True,
    )


class _ForwardingTransport(httpx.AsyncBaseTransport):
    """Adds the MCP caller's credentials and correlation id to every in-process request."""

    def __init__(self, inner: httpx.AsyncBaseTransport, headers: Mapping[str, str]) -> None:
        self._inner = inner
        self._headers = dict(headers)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.headers.update(self._headers)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _forwarded(context: Context) -> dict[str, str]:
    incoming = context.headers or {}
    headers = {name: incoming[name] for name in FORWARDED_HEADERS if incoming.get(name)}
    if "x-correlation-id" not in headers:
        # The correlation id the middleware gave this MCP request (and echoed back).
        state = getattr(context.request_context.request, "state", None)
        correlation_id = getattr(state, "correlation_id", None)
        if isinstance(correlation_id, str):
            headers["x-correlation-id"] = correlation_id
    return headers


def create_mcp_server(app: ASGIApp) -> MCPServer[Any]:
    """The MCP server whose tools call `app` (the FastAPI app) in-process."""
    # MCPServer() calls logging.basicConfig (with a Rich handler if rich is installed),
    # which would take over the root logger of a worker whose logging is not set up yet.
    # Logging belongs to the CLI and uvicorn: put the root logger back as it was.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    server: MCPServer[Any] = MCPServer(
        name="lending-ledger", version="0.1.0", instructions=INSTRUCTIONS
    )
    root.handlers[:] = handlers
    root.setLevel(level)

    @asynccontextmanager
    async def ledger(context: Context) -> AsyncIterator[LedgerClient]:
        transport = _ForwardingTransport(httpx.ASGITransport(app=app), _forwarded(context))
        async with LedgerClient(INTERNAL_BASE_URL, transport=transport, retries=2) as client:
            yield client

    async def call(
        context: Context, operation: Callable[[LedgerClient], Awaitable[Any]]
    ) -> CallToolResult:
        async with ledger(context) as client:
            try:
                return _success(await operation(client))
            except LedgerAPIError as error:
                return _problem(error)

    @server.tool(
        name="submit_application",
        title="Submit a loan application",
        description="Submit a loan application. It is scored and decided at once: the answer "
        "is the application with its risk score and decision (approved, or review = waiting "
        "for an analyst). Pass an idempotency_key to make retries safe.",
        annotations=WRITE,
    )
    async def submit_application(
        applicant_id: Annotated[
            str, Field(description="the applicant", json_schema_extra=APPLICANT_ID_SCHEMA)
        ],
        amount: Annotated[
            Any,
            Field(
                description="amount asked for; " + MONEY_DESCRIPTION, json_schema_extra=MONEY_SCHEMA
            ),
        ],
        income: Annotated[
            Any,
            Field(
                description="yearly income; " + MONEY_DESCRIPTION, json_schema_extra=MONEY_SCHEMA
            ),
        ],
        employment_years: Annotated[
            Any,
            Field(
                description="whole years employed",
                json_schema_extra={"type": "integer", "minimum": 0, "maximum": 80},
            ),
        ],
        context: Context,
        idempotency_key: IDEMPOTENCY_KEY = None,
    ) -> CallToolResult:
        return await call(
            context,
            lambda client: client.apply(
                applicant_id,
                amount,  # the client sends str(amount): a float's shortest decimal form
                income,
                employment_years,
                idempotency_key=idempotency_key,
            ),
        )

    @server.tool(
        name="get_applicant_history",
        title="An applicant's applications",
        description="An applicant's applications, newest first (status, decision, score, "
        "amounts). An unknown applicant has an empty history.",
        annotations=READ_ONLY,
    )
    async def get_applicant_history(
        applicant_id: Annotated[
            str, Field(description="the applicant", json_schema_extra=APPLICANT_ID_SCHEMA)
        ],
        context: Context,
        limit: Annotated[
            int,
            Field(
                description="how many, newest first",
                json_schema_extra={"minimum": 1, "maximum": 100},
            ),
        ] = 10,
    ) -> CallToolResult:
        return await call(
            context, lambda client: client.history(quote(applicant_id, safe=""), limit)
        )

    @server.tool(
        name="get_application",
        title="An application's current state",
        description="One application's current state: amounts, risk score, decision, status "
        "and stream version.",
        annotations=READ_ONLY,
    )
    async def get_application(application_id: APPLICATION_ID, context: Context) -> CallToolResult:
        return await call(
            context, lambda client: client.application(quote(application_id, safe=""))
        )

    @server.tool(
        name="evaluate_borrower",
        title="What to do next for an applicant",
        description="Recommends the next step for an applicant from their newest application: "
        "request_more_data (no application yet), manual_review (waiting for an analyst) or "
        "auto_process (decided), with the application id, decision, score and a reason.",
        annotations=READ_ONLY,
    )
    async def evaluate_borrower(
        applicant_id: Annotated[
            str, Field(description="the applicant", json_schema_extra=APPLICANT_ID_SCHEMA)
        ],
        context: Context,
    ) -> CallToolResult:
        return await call(
            context, lambda client: client.evaluate_borrower(quote(applicant_id, safe=""))
        )

    @server.tool(
        name="record_agent_action",
        title="Record what an agent did and why",
        description="Record an agent's action on an application in its audit trail: who "
        "(agent id, model), the prompt (text, or its SHA-256 and a reference), the output, "
        "the action taken and the rationale. Give prompt or prompt_sha256.",
        annotations=WRITE,
    )
    async def record_agent_action(
        application_id: APPLICATION_ID,
        agent_id: Annotated[str, Field(description="the agent's id")],
        model_name: Annotated[str, Field(description="the model the agent runs on")],
        output: Annotated[str, Field(description="what the agent produced")],
        action: Annotated[
            Literal["request_more_data", "manual_review", "auto_process", "other"],
            Field(description="the action the agent took"),
        ],
        rationale: Annotated[str, Field(description="why")],
        context: Context,
        prompt: Annotated[str | None, Field(description="the prompt, in full")] = None,
        prompt_sha256: Annotated[
            str | None,
            Field(
                description="SHA-256 of the prompt, lowercase hex (instead of the prompt)",
                json_schema_extra={"pattern": "^[0-9a-f]{64}$"},
            ),
        ] = None,
        prompt_ref: Annotated[
            str | None, Field(description="where the prompt is kept (with prompt_sha256)")
        ] = None,
        idempotency_key: IDEMPOTENCY_KEY = None,
    ) -> CallToolResult:
        return await call(
            context,
            lambda client: client.record_agent_action(
                quote(application_id, safe=""),
                agent_id=agent_id,
                model_name=model_name,
                output=output,
                action=action,
                rationale=rationale,
                prompt=prompt,
                prompt_sha256=prompt_sha256,
                prompt_ref=prompt_ref,
                idempotency_key=idempotency_key,
            ),
        )

    @server.tool(
        name="request_manual_review",
        title="Hand an application to a human analyst",
        description="Put an application in the analysts' review queue, with the reason. The "
        "answer is the application (status in_review).",
        annotations=WRITE,
    )
    async def request_manual_review(
        application_id: APPLICATION_ID,
        reason: Annotated[str, Field(description="why a human should look at it")],
        context: Context,
        idempotency_key: IDEMPOTENCY_KEY = None,
    ) -> CallToolResult:
        return await call(
            context,
            lambda client: client.request_manual_review(
                quote(application_id, safe=""), reason, idempotency_key=idempotency_key
            ),
        )

    # Stateless JSON: no session lives in a worker's memory, so any worker answers any
    # request. No DNS-rebinding host check: like every endpoint, the tools are authorised by
    # the caller's API key, and a browser cannot send MCP's JSON POST cross-origin without
    # a CORS preflight, which this service never grants.
    server.streamable_http_app(
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    return server


@asynccontextmanager
async def running(server: MCPServer[Any]) -> AsyncIterator[None]:
    """Runs the SDK's session manager for the app's lifetime (use it in the lifespan).

    In a task of its own: the manager's anyio task group must be entered and left by one
    task, and a lifespan may be started and ended by different tasks (pytest fixtures do).
    """
    started, stop = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        async with server.session_manager.run():
            started.set()
            await stop.wait()

    task = asyncio.create_task(run(), name="mcp-session-manager")
    ready = asyncio.create_task(started.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if task.done():
        task.result()  # raises what stopped it
    try:
        yield
    finally:
        stop.set()
        await task


class AuthenticatedMCP:
    """Every MCP request (initialize, tools/list, tools/call, ...) presents a valid key, of
    any role, like every other endpoint (401 problem+json otherwise); in open mode none is
    needed. What each tool may do is then decided by the HTTP operation it calls. The
    endpoint is stateless, so no MCP session outlives the request that checked its key."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await authenticate(Request(scope))  # NotAuthenticated: the app's 401 handler
        await self.inner(scope, receive, send)


def mcp_route(server: MCPServer[Any]) -> Route:
    """`/mcp`, exactly (no redirect from `/mcp/`): the streamable HTTP endpoint."""
    return Route(MCP_PATH, endpoint=AuthenticatedMCP(StreamableHTTPASGIApp(server.session_manager)))
