"""The FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from opentelemetry.sdk.trace import TracerProvider
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.service.live import LiveSettings, closing_on_shutdown_signals
from api.service.runtime import LedgerService
from api.service.settings import Settings
from api.web import console
from api.web.auth import authorize, security
from api.web.hot import CORRELATION_HEADER, HotPath, correlation_id_for
from api.web.mcp import create_mcp_server, mcp_route, running
from api.web.metrics import RequestMetricsMiddleware, RequestRecorder
from api.web.openapi import install as install_openapi
from api.web.problems import problem, register_error_handlers
from api.web.replicas import ReadYourWritesMiddleware
from api.web.routes import (
    admin,
    applications,
    audit,
    docs,
    events,
    health,
    keys,
    metrics,
    seals,
    workflow,
)
from api.web.tracing import CorrelationSpanMiddleware, instrument, provider_from_env
from ledger.sequencer import SequencerSettings

logger = logging.getLogger(__name__)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is larger than {max_bytes} bytes")


class LedgerHTTPMiddleware:
    """The correlation id and the body limit, in one plain ASGI layer (one pass over the
    request headers, one wrapper around `send`, no buffering).

    Correlation: takes X-Correlation-Id from the request (or makes one) and echoes it back
    on every response, the 413 below included.

    Body limit: refuses request bodies over `max_bytes` with 413 problem+json. A declared
    Content-Length over the limit is answered before the app runs; a body that streams past
    the limit raises BodyTooLarge while it is read, which the error handlers render like
    every other error.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = b""
        declared = b""
        for name, header in scope["headers"]:
            if name == CORRELATION_HEADER:
                supplied = header
            elif name == b"content-length":
                declared = header
        value = correlation_id_for(supplied)
        scope.setdefault("state", {})["correlation_id"] = value.decode()

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (CORRELATION_HEADER, value)]
            await send(message)

        max_bytes = self.max_bytes
        if declared.isdigit() and int(declared) > max_bytes:
            response = problem(413, BodyTooLarge(max_bytes).detail)
            await response(scope, receive, send_with_header)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise BodyTooLarge(max_bytes)
            return message

        await self.app(scope, limited_receive, send_with_header)


class LedgerApp(FastAPI):
    """The app, with the hot path (api/web/hot.py) in front of everything when it is on."""

    hot_path: HotPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hot_path is not None and scope["type"] == "http":
            await self.hot_path(scope, receive, send, super().__call__)
        else:
            await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    database_url: str | None = None,
    sequencer_settings: SequencerSettings | None = None,
    live_settings: LiveSettings | None = None,
    tracer_provider: TracerProvider | None = None,
) -> LedgerApp:
    """Build the app. `database_url` defaults to the settings' DATABASE_URL; the CLI sets
    that after starting the embedded server, so every worker finds the same database.
    Tracing is on with `tracer_provider`, else when the OTEL_* variables ask for it
    (api/web/tracing.py)."""
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
            if owns_provider and provider is not None:
                provider.shutdown()  # flushes the spans still batched

    app = LedgerApp(
        title="lending-ledger",
        version="0.1.0",
        summary="An event-sourced lending ledger: loan applications, scores and decisions "
        "as immutable, hash-chained events.",
        lifespan=lifespan,
        # /lending/apply/ is a 404 problem, not a redirect a client may turn into a GET.
        redirect_slashes=False,
        # Every route is authorised from one table, by operation_id (api/service/access.py).
        dependencies=[Depends(authorize)],
        # Served by api/web/routes/docs.py: authorised like every route, open-mode aware,
        # with the package's own assets (offline).
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    register_error_handlers(app)
    for routes in (
        applications,
        events,
        health,
        audit,
        workflow,
        keys,
        seals,
        admin,
        metrics,
        docs,
    ):
        app.include_router(routes.router)
    install_openapi(app)
    app.include_router(console.router)  # the web console for people (docs/console.md)
    app.mount(console.STATIC_URL, console.static_files(), name="console-static")
    mcp = create_mcp_server(app)  # tools call this app in-process (api/web/mcp.py)
    app.router.routes.append(mcp_route(mcp))
    if settings.read_database_url is not None:  # writes say their LSN (api/web/replicas.py)
        app.add_middleware(ReadYourWritesMiddleware)
    recorder = RequestRecorder()
    app.add_middleware(RequestMetricsMiddleware, recorder=recorder)  # duration, access line
    owns_provider = tracer_provider is None
    provider = tracer_provider or provider_from_env()
    # Off when a layer it does not reproduce is on: spans, or a replica's read-your-writes.
    if settings.hot_path and provider is None and settings.read_database_url is None:
        app.hot_path = HotPath(
            applications.HOT_ROUTES,
            app_state=app.state,
            exception_handlers=app.exception_handlers,
            recorder=recorder,
            max_body_bytes=settings.max_body_bytes,
        )
    if provider is not None:
        app.add_middleware(CorrelationSpanMiddleware)
    # Outermost: the correlation id (every inner layer logs and measures with it) and
    # the body limit, in one pass over the headers.
    app.add_middleware(LedgerHTTPMiddleware, max_bytes=settings.max_body_bytes)
    if provider is not None:
        instrument(app, provider)
    return app
