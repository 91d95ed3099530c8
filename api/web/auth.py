"""The caller of each HTTP request: the key it presents, checked in one place.

An app-level dependency (`authorize`) looks up the matched route's `operation_id` with
api/service/access.py. Callers send an API key (api/service/keystore.py) as
`Authorization: Bearer <key>` or `X-API-Key: <key>`. No key, or a malformed, unknown,
wrong or revoked one: 401. A valid key whose role may not call the operation: 403. Both
are raised before the handler runs, so neither writes anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import asyncpg
from fastapi import Depends, FastAPI, Request

from api.service.access import (
    OPEN_MODE_PRINCIPAL,
    Authenticator,
    Principal,
    StartupRefused,
    check_open_mode_call,
    may_call,
    public_operation,
    startup_checks,
)
from api.service.errors import DATABASE_UNAVAILABLE, RoleNotAllowed, ServiceUnavailable
from api.service.runtime import LedgerService

logger = logging.getLogger(__name__)

PRODUCTION_READY_TIMEOUT = 60.0
"""In production, start-up waits this long for the database before it gives up."""


# --- The dependency ---


def presented_key(request: Request) -> str | None:
    """`Authorization: Bearer <key>`, else `X-API-Key: <key>`; None when neither is sent.

    Both are declared as OpenAPI security schemes (api/web/openapi.py); in open mode the
    served document marks them optional."""
    return key_in(request.headers.get("authorization", ""), request.headers.get("x-api-key"))


def key_in(authorization: str, x_api_key: str | None) -> str | None:
    """The key of an `Authorization` header's Bearer credentials, else of `X-API-Key`."""
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return x_api_key or None


async def authorize(request: Request) -> Principal:
    """The caller of this request, checked against the route's allowed roles.

    An app-level dependency, so it runs for every route, before the route's own
    dependencies and before query, path and body values are validated (a JSON body that
    does not even parse is the exception: api/web/problems.py authorises before reporting it).
    FastAPI caches it per request, so handlers that take `PrincipalDep` get the same
    principal without a second check."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is not None:
        return principal
    route = request.scope.get("route")
    operation_id: str | None = getattr(route, "operation_id", None)
    service: LedgerService = request.app.state.service
    principal = await principal_for(
        service,
        request.app.state.authenticator,
        operation_id,
        key=presented_key(request),
        remote=request.client.host if request.client else None,
        what=lambda: f"{request.method} {getattr(route, 'path', request.url.path)}",
    )
    request.state.principal = principal
    return principal


async def principal_for(
    service: LedgerService,
    authenticator: Authenticator,
    operation_id: str | None,
    *,
    key: str | None,
    remote: str | None,
    what: Callable[[], str],
) -> Principal:
    """The caller presenting `key` (None: none), if it may call `operation_id`: raises
    NotAuthenticated, RoleNotAllowed or OpenModeRefused otherwise. `what` names the call in
    a refusal when the operation has no id. Used by `authorize` and the hot path alike."""
    if public_operation(operation_id, service.settings):
        return OPEN_MODE_PRINCIPAL
    principal = await authenticator.principal(lambda: service.pool, key, remote)
    if principal.role is not None and not may_call(principal.role, operation_id):
        raise RoleNotAllowed(principal.role, operation_id or what())
    check_open_mode_call(principal, operation_id)
    return principal


async def authenticate(request: Request) -> Principal:
    """The caller of this request, whatever it calls: the open-mode principal, or the
    holder of the key it presents (NotAuthenticated otherwise)."""
    return await key_check(request)()


PrincipalDep = Annotated[Principal, Depends(authorize)]


def principal_of(request: Request) -> Principal:
    """The principal `authorize` found for this request, for handlers on hot routes that
    read it instead of declaring PrincipalDep. `authorize` is an app-level dependency, so
    it has always run (and set it) before a handler does."""
    principal: Principal = request.state.principal
    return principal


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """Checks, again, the key a request presented (or open mode, for a request without
    one). Streams that outlive their request call it before every read: a revoked key (or
    the end of open mode) raises NotAuthenticated within the authenticator's cache time
    (KEY_CACHE_SECONDS), at once in the process that revoked it."""

    authenticator: Authenticator
    pool: Callable[[], asyncpg.Pool]
    key: str | None
    remote: str | None

    async def __call__(self) -> Principal:
        return await self.authenticator.principal(self.pool, self.key, self.remote)


def key_check(request: Request) -> KeyCheck:
    service: LedgerService = request.app.state.service
    return KeyCheck(
        authenticator=request.app.state.authenticator,
        pool=lambda: service.pool,
        key=presented_key(request),
        remote=request.client.host if request.client else None,
    )


async def get_key_check(request: Request) -> KeyCheck:
    return key_check(request)


KeyCheckDep = Annotated[KeyCheck, Depends(get_key_check)]


# --- Start-up ---


async def _check_production(service: LedgerService) -> None:
    try:
        await service.wait_ready(PRODUCTION_READY_TIMEOUT)
    except TimeoutError:
        raise StartupRefused(
            f"the database was not ready within {PRODUCTION_READY_TIMEOUT:.0f} s "
            f"({service.status_detail})"
        ) from None
    async with service.pool.acquire() as connection:
        await startup_checks(connection, service.settings)


async def _warn_when_ready(service: LedgerService) -> None:
    while not service.ready:
        with contextlib.suppress(TimeoutError):
            await service.wait_ready(60)
    try:
        async with service.pool.acquire() as connection:
            await startup_checks(connection, service.settings)
    except (ServiceUnavailable, asyncpg.PostgresError, *DATABASE_UNAVAILABLE) as error:
        logger.warning("could not check API keys and the database role at start-up: %r", error)


@asynccontextmanager
async def security(app: FastAPI, service: LedgerService) -> AsyncIterator[None]:
    """Part of the app's lifespan: the authenticator, and the start-up checks.

    In production start-up waits for the database and fails (StartupRefused) unless the
    checks pass; elsewhere it does not wait, and the checks log their warnings once the
    database is ready."""
    authenticator = Authenticator(open_mode_allowed=service.settings.app_env != "production")
    app.state.authenticator = authenticator
    checks: asyncio.Task[None] | None = None
    if service.settings.app_env == "production":
        try:
            await _check_production(service)
        except StartupRefused as refused:
            logger.critical("refusing to start: %s", refused)
            raise
    else:
        checks = asyncio.create_task(_warn_when_ready(service), name="ledger-security-checks")
    try:
        yield
    finally:
        if checks is not None:
            checks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checks
        authenticator.close()
