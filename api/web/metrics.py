"""Per request: the duration histogram, the correlation id bound for the request's log
lines, and one access log line. A plain ASGI middleware, kept small on purpose: it runs on
every request that the hot path (api/web/hot.py) does not serve, and the hot path records
its own requests with the same `RequestRecorder` (costs: docs/operations.md, "Metrics").

It sits inside LedgerHTTPMiddleware (which puts the id in `scope["state"]`) and outside
everything else, so 413s and unhandled errors (500) are timed and logged too. The route
label is the matched route's template (`/lending/applications/{application_id}`), never
the raw path, so the number of series stays bounded; unmatched paths are `<unmatched>`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.contextvars import bind_contextvars, reset_contextvars

from api.service.metrics import REQUEST_DURATION

ACCESS_LOGGER = logging.getLogger("api.web.access")

UNMATCHED = "<unmatched>"


class RequestRecorder:
    """The duration histogram and the access line of finished requests."""

    def __init__(self) -> None:
        # labels() takes a lock and builds a key on every call; the children are cached here.
        self._children: dict[tuple[str, str, int], Any] = {}

    def record(self, route: str, method: str, status: int, elapsed: float) -> None:
        key = (route, method, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = REQUEST_DURATION.labels(*key)
        child.observe(elapsed)
        if ACCESS_LOGGER.isEnabledFor(logging.INFO):
            ACCESS_LOGGER.info(
                "%s %s %d %.1f ms",
                method,
                route,
                status,
                elapsed * 1000,
                extra={
                    "route": route,
                    "method": method,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, recorder: RequestRecorder) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception escaping the app becomes a 500 further out

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        correlation_id = scope.get("state", {}).get("correlation_id")
        tokens = bind_contextvars(correlation_id=correlation_id)
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            self.recorder.record(route, scope["method"], status, time.perf_counter() - start)
            reset_contextvars(**tokens)
