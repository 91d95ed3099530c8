"""Errors of the running service that are not domain errors (those are in ledger/errors.py):
the database is unavailable, the caller is not authenticated or not allowed. The web layer
maps every one of them to problem+json in one place (api/web/problems.py)."""

from __future__ import annotations

import asyncpg

# The database is down, restarting, or refusing connections: the request did nothing and
# may be retried.
DATABASE_UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    # A pooled connection whose backend was just terminated can still be handed out; using
    # it before asyncpg has processed the termination fails with "cannot switch to state
    # ..., another operation is in progress". The pool replaces it on release.
    asyncpg.InternalClientError,
    TimeoutError,
)


class ServiceUnavailable(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotAuthenticated(Exception):
    """No API key, or one that is malformed, unknown, wrong or revoked: 401."""

    def __init__(self, detail: str, *, key_sent: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.key_sent = key_sent


class RoleNotAllowed(Exception):
    """A valid key whose role may not call the operation: 403."""

    def __init__(self, role: str, operation_id: str) -> None:
        super().__init__(f"the role {str(role)!r} may not call {operation_id!r}")
        self.role = role
        self.operation_id = operation_id


class OpenModeRefused(Exception):
    """Open mode (no key exists yet) lets anonymous callers do everything except create
    keys over HTTP: 403, and the detail says how to create the first key."""

    def __init__(self, detail: str, *, operation_id: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.operation_id = operation_id
