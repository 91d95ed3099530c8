"""The FastAPI application factory."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.service.live import LiveSettings, closing_on_shutdown_signals
from api.service.runtime import LedgerService
from api.service.settings import Settings
from api.web.auth import authorize, security
from api.web.mcp import create_mcp_server, mcp_route, running
from api.web.openapi import install as install_openapi
from api.web.problems import problem, register_error_handlers
from api.web.routes import admin, applications, audit, docs, events, health, keys, seals, workflow
from ledger.sequencer import SequencerSettings

logger = logging.getLogger(__name__)

CORRELATION_HEADER = b"x-correlation-id"
_CORRELATION_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


class CorrelationIdMiddleware:
    """Takes X-Correlation-Id from the request (or makes one) and echoes it back.

    Plain ASGI rather than BaseHTTPMiddleware: it must not buffer or re-wrap responses.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = dict(scope["headers"]).get(CORRELATION_HEADER, b"")
        value = supplied if _CORRELATION_ID.fullmatch(supplied) else str(uuid.uuid4()).encode()
        scope.setdefault("state", {})["correlation_id"] = value.decode()

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (CORRELATION_HEADER, value)]
            await send(message)

        await self.app(scope, receive, send_with_header)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is larger than {max_bytes} bytes")


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with 413 problem+json.

    A declared Content-Length over the limit is answered before the app runs; a body that
    streams past the limit raises BodyTooLarge while it is read, which the error handlers
    render like every other error.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = problem(413, BodyTooLarge(self.max_bytes).detail)
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    database_url: str | None = None,
    sequencer_settings: SequencerSettings | None = None,
    live_settings: LiveSettings | None = None,
) -> FastAPI:
    """Build the app. `database_url` defaults to the settings' DATABASE_URL; the CLI sets
    that after starting the embedded server, so every worker finds the same database."""
    settings = settings or Settings.from_env()
    url = database_url or settings.database_url
    if url is None:
        raise ValueError(
            "no database: set DATABASE_URL, or start with `lending-ledger serve`, "
            "which runs an embedded PostgreSQL"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = LedgerService(settings, url, sequencer_settings, live_settings)
        app.state.service = service
        service.start()
        try:
            async with (
                security(app, service),  # keys, open mode, production checks
                running(mcp),  # the MCP endpoint's session manager
                closing_on_shutdown_signals(service.tail),  # SSE streams end at SIGTERM
            ):
                yield
        finally:
            await service.stop()

    app = FastAPI(
        title="lending-ledger",
        version="0.1.0",
        summary="An event-sourced lending ledger: loan applications, scores and decisions "
        "as immutable, hash-chained events.",
        lifespan=lifespan,
        # /lending/apply/ is a 404 problem, not a redirect a client may turn into a GET.
        redirect_slashes=False,
        # Every route is authorised from one table, by operation_id (api/service/access.py).
        dependencies=[Depends(authorize)],
        # Served by api/web/routes/docs.py: authorised like every route, open-mode aware.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    register_error_handlers(app)
    for routes in (applications, events, health, audit, workflow, keys, seals, admin, docs):
        app.include_router(routes.router)
    install_openapi(app)
    mcp = create_mcp_server(app)  # tools call this app in-process (api/web/mcp.py)
    app.router.routes.append(mcp_route(mcp))
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(CorrelationIdMiddleware)
    return app
