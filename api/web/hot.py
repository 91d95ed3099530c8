"""The hot path: the few routes that carry almost all of the traffic (apply, an applicant's
history), served by one plain ASGI function instead of the framework's per-request
machinery (docs/architecture.md, "The hot path"; the profile that motivated it is in
docs/benchmarks.md).

It does what the full stack does for every request, in one pass: the correlation id, the
body limit, the caller's key and role (api/web/auth.py, `principal_for`), the duration
histogram and the access line (api/web/metrics.py), and errors rendered by the app's own
exception handlers (api/web/problems.py), so a problem looks the same from either path.

It serves only what it can answer exactly as the full stack would. A hot route's handler
returns None for anything else (a body that does not validate, a query parameter it does
not know): the request then goes to the full stack, body included, which answers it
(a 422 with every field error, the time-travel query...). Nothing has been written at that
point, so the second look is safe. The full stack also keeps requests the hot path cannot
see into: with tracing on or a read replica configured, the hot path is off.

The FastAPI routes of the same operations stay: they are what the OpenAPI document
describes, and what answers when the hot path hands over.
"""

from __future__ import annotations

import logging
import os
import random
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.contextvars import bind_contextvars, reset_contextvars

from api.service.access import Principal
from api.service.runtime import LedgerService
from api.web.auth import key_in, principal_for
from api.web.metrics import RequestRecorder

logger = logging.getLogger(__name__)

CORRELATION_HEADER = b"x-correlation-id"
_CORRELATION_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


# New correlation ids need to be unique, not secret: a seeded PRNG makes them without a
# system call per request (uuid4 reads the system's random source each time).
_NEW_IDS = random.Random(secrets.randbits(128))  # noqa: S311
# A forked worker must not repeat its parent's ids.
os.register_at_fork(after_in_child=lambda: _NEW_IDS.seed(secrets.randbits(128)))


def correlation_id_for(supplied: bytes) -> bytes:
    """The request's X-Correlation-Id if it is a usable one, else a new one (a UUID)."""
    if _CORRELATION_ID.fullmatch(supplied):
        return supplied
    return str(uuid.UUID(int=_NEW_IDS.getrandbits(128), version=4)).encode()


@dataclass(frozen=True, slots=True)
class HotRequest:
    """What a hot handler gets: the request, read, and its authorised caller."""

    service: LedgerService
    principal: Principal
    correlation_id: str
    path_params: dict[str, str]
    query: bytes
    content_type: str
    idempotency_key: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class HotResponse:
    body: bytes
    status: int = 200
    headers: tuple[tuple[bytes, bytes], ...] = ()
    media_type: bytes = b"application/json"


HotHandler = Callable[[HotRequest], Awaitable[HotResponse | None]]
"""Returns None to hand the request to the full stack (which then answers it)."""


@dataclass(frozen=True, slots=True)
class HotRoute:
    method: str
    path: str
    """The route's template, as the FastAPI route declares it (`{name}` for a segment)."""
    operation_id: str
    handler: HotHandler
    full_stack_headers: frozenset[bytes] = frozenset()
    """Requests with any of these headers go to the full stack (headers the handler does
    not read but the full route does, like X-Min-LSN)."""

    def segments(self) -> list[str]:
        return self.path.split("/")


class RouteTable:
    """Exact paths by dictionary; templates by their segments (few, so a short scan)."""

    def __init__(self, routes: list[HotRoute]) -> None:
        self._exact: dict[tuple[str, str], HotRoute] = {}
        self._templated: list[tuple[HotRoute, list[str]]] = []
        for route in routes:
            self.add(route)

    def add(self, route: HotRoute) -> None:
        if "{" in route.path:
            self._templated.append((route, route.segments()))
        else:
            self._exact[(route.method, route.path)] = route

    def match(self, method: str, path: str) -> tuple[HotRoute, dict[str, str]] | None:
        route = self._exact.get((method, path))
        if route is not None:
            return route, {}
        if not self._templated:
            return None
        parts = path.split("/")
        for route, segments in self._templated:
            if route.method != method or len(segments) != len(parts):
                continue
            params: dict[str, str] = {}
            for segment, part in zip(segments, parts, strict=True):
                if segment.startswith("{"):
                    if not part:
                        break
                    params[segment[1:-1]] = part
                elif segment != part:
                    break
            else:
                return route, params
        return None


class HotPath:
    """Serves the hot routes; hands every other request to `full_stack`."""

    def __init__(
        self,
        routes: list[HotRoute],
        *,
        app_state: Any,
        exception_handlers: dict[Any, Callable[..., Any]],
        recorder: RequestRecorder,
        max_body_bytes: int,
    ) -> None:
        self._routes = RouteTable(routes)
        self._state = app_state
        self._exception_handlers = exception_handlers
        self._recorder = recorder
        self._max_body_bytes = max_body_bytes

    def add(self, route: HotRoute) -> None:
        self._routes.add(route)

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, full_stack: ASGIApp
    ) -> None:
        matched = self._routes.match(scope["method"], scope["path"])
        service: LedgerService | None = getattr(self._state, "service", None)
        if matched is None or service is None:
            await full_stack(scope, receive, send)
            return
        route, path_params = matched
        start = time.perf_counter()
        supplied = b""
        declared = b""
        content_type = b""
        authorization = b""
        api_key: bytes | None = None
        idempotency_key: bytes | None = None
        # The first of a repeated header counts, as with Starlette's `headers.get`.
        seen: set[bytes] = set()
        for name, value in scope["headers"]:
            if name in seen:
                continue
            seen.add(name)
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                declared = value
            elif name == CORRELATION_HEADER:
                supplied = value
            elif name == b"authorization":
                authorization = value
            elif name == b"x-api-key":
                api_key = value
            elif name == b"idempotency-key":
                idempotency_key = value
        if not route.full_stack_headers.isdisjoint(seen):
            await full_stack(scope, receive, send)
            return
        body = b""
        if scope["method"] in ("POST", "PUT", "PATCH"):
            # Only a declared length within the limit: the full stack answers the rest (413,
            # a chunked body) exactly as it always does.
            if not declared.isdigit() or int(declared) > self._max_body_bytes:
                await full_stack(scope, receive, send)
                return
            read = await _read_body(receive)
            if read is None:  # the client went away: nobody to answer
                return
            body = read
            if len(body) > self._max_body_bytes:
                await full_stack(scope, _replaying(body, receive), send)
                return
        correlation = correlation_id_for(supplied)
        correlation_id = correlation.decode()
        state = scope.setdefault("state", {})
        state["correlation_id"] = correlation_id
        tokens = bind_contextvars(correlation_id=correlation_id)
        status = 500
        handed_over = False
        try:
            try:
                client = scope.get("client")
                principal = await principal_for(
                    service,
                    self._state.authenticator,
                    route.operation_id,
                    # Header values are Latin-1, as Starlette decodes them.
                    key=key_in(
                        authorization.decode("latin-1"),
                        api_key.decode("latin-1") if api_key is not None else None,
                    ),
                    remote=client[0] if client else None,
                    what=lambda: route.operation_id,
                )
                state["principal"] = principal
                response = await route.handler(
                    HotRequest(
                        service=service,
                        principal=principal,
                        correlation_id=correlation_id,
                        path_params=path_params,
                        query=scope["query_string"],
                        content_type=content_type.decode("latin-1"),
                        idempotency_key=(
                            idempotency_key.decode("latin-1")
                            if idempotency_key is not None
                            else None
                        ),
                        body=body,
                    )
                )
            except Exception as error:  # rendered by the app's handlers, as the full stack does
                status = await self._render_error(error, scope, body, receive, send, correlation)
                return
            if response is None:
                handed_over = True  # the full stack answers, and records, this request
                await full_stack(scope, _replaying(body, receive), send)
                return
            status = response.status
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", response.media_type),
                        (b"content-length", str(len(response.body)).encode()),
                        *response.headers,
                        (CORRELATION_HEADER, correlation),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": response.body})
        finally:
            if not handed_over:
                self._recorder.record(
                    route.path, scope["method"], status, time.perf_counter() - start
                )
            reset_contextvars(**tokens)

    async def _render_error(
        self,
        error: Exception,
        scope: Scope,
        body: bytes,
        receive: Receive,
        send: Send,
        correlation: bytes,
    ) -> int:
        """The app's exception handler for `error` (by its class's MRO, as Starlette looks
        it up) renders the problem; returns its status."""
        handler = next(
            (
                self._exception_handlers[kind]
                for kind in type(error).__mro__
                if kind in self._exception_handlers
            ),
            None,
        )
        if handler is None:  # the app registers one for Exception: this is a safety net
            raise error
        response = await handler(Request(scope, _replaying(body, receive)), error)

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (CORRELATION_HEADER, correlation),
                ]
            await send(message)

        await response(scope, receive, send_with_header)
        status: int = response.status_code
        return status


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body; None if the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that gives `body` once, then whatever the connection says next (its
    disconnect), for the full stack to read a body the hot path has already read."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
