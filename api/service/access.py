"""Who may do what: roles, the operation table, principals, verifying API keys, and the
start-up checks of keys and the database role. No HTTP here: api/web/auth.py reads the key
from a request and asks this module.

Every operation is authorised against `ALLOWED_ROLES` by its `operation_id`. An operation
missing from the table is open to `admin` only (deny by default), `admin` may call
everything, and tests hold the table to the routes (tests/integration/test_auth_matrix.py).

Open mode: while no API key has ever been created, and only outside production, every
caller is the open-mode principal (every right) and start-up says so with a WARNING. The
first key closes open mode within KEY_CACHE_SECONDS, and nothing reopens it: revoking
every key locks the service instead. Production never runs open and refuses to start
without an active key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import asyncpg

from api.service import metrics
from api.service.dbrole import APP_GROUP_ROLE, current_role, ledger_rewrite_privileges
from api.service.errors import NotAuthenticated, OpenModeRefused
from api.service.keystore import (
    active_key_count,
    any_key_exists,
    find_key,
    hash_matches,
    key_hash,
    key_id_of,
)
from api.service.settings import Settings
from ledger.db import Connection

logger = logging.getLogger(__name__)

KEY_CACHE_SECONDS = 5.0
"""How long a verified key is trusted without asking the database again: the delay before a
revocation (or the first key, closing open mode) takes effect in every worker."""

FAILED_AUTH_LOG_SECONDS = 60.0
"""At most one WARNING about failed authentications per this many seconds."""


class Role(StrEnum):
    AGENT = "agent"
    ANALYST = "analyst"
    AUDITOR = "auditor"
    ADMIN = "admin"


_WORKERS = frozenset({Role.AGENT, Role.ANALYST, Role.ADMIN})
_ANALYSTS = frozenset({Role.ANALYST, Role.ADMIN})
_READERS = frozenset(Role)
_AUDITORS = frozenset({Role.AUDITOR, Role.ADMIN})
_ADMINS = frozenset({Role.ADMIN})
_QUEUE_READERS = frozenset({Role.ANALYST, Role.AUDITOR, Role.ADMIN})
_PEOPLE = _QUEUE_READERS  # the console's users: agents are programs, they use the API

ALLOWED_ROLES: dict[str, frozenset[Role]] = {
    # lending: commands
    "submit_application": _WORKERS,
    "record_agent_action": _WORKERS,
    "request_manual_review": _WORKERS,
    "withdraw_application": _WORKERS,
    "review_application": _ANALYSTS,
    # lending: queries
    "get_applicant_history": _READERS,
    "get_application": _READERS,
    "get_application_events": _READERS,
    "get_review_queue": _QUEUE_READERS,
    "get_reason_codes": _READERS,
    # the global feed and audit
    "get_event_feed": _AUDITORS,
    "stream_events": _AUDITORS,
    "get_score_reconstruction": _AUDITORS,
    "get_decision_record": _AUDITORS,
    "get_public_key": _AUDITORS,
    "get_latest_seal": _AUDITORS,
    "get_inclusion_proof": _AUDITORS,
    "get_consistency_proof": _AUDITORS,
    # admin
    "create_seal": _ADMINS,
    "get_projections": _ADMINS,
    # operations: Prometheus scrapes with an auditor's key (docs/operations.md, "Metrics")
    "get_metrics": _AUDITORS,
    "rebuild_projection": _ADMINS,
    "create_api_key": _ADMINS,
    "list_api_keys": _ADMINS,
    "revoke_api_key": _ADMINS,
    # the API's description (not in the OpenAPI document itself): any role; no key
    # outside production (DOCUMENT_OPERATIONS)
    "get_openapi": _READERS,
    "get_api_docs": _READERS,
    "get_api_docs_redirect": _READERS,
    "get_api_redoc": _READERS,
    # always open: liveness and readiness probes carry no key
    "get_health": frozenset(),
    "get_readiness": frozenset(),
    # the web console (api/web/console): pages for people, signed in by a session cookie
    # (or open mode). The sign-in form is public; everything else follows the API's rules.
    "console_sign_in_form": frozenset(),
    "console_sign_in": frozenset(),
    "console_sign_out": _PEOPLE,
    "console_home": _PEOPLE,
    "console_inbox": _QUEUE_READERS,
    "console_inbox_count": _QUEUE_READERS,
    "console_application": _QUEUE_READERS,
    "console_decide": _ANALYSTS,
    "console_ledger": _AUDITORS,
    "console_ledger_stream": _AUDITORS,
    "console_event": _AUDITORS,
    "console_seals": _AUDITORS,
    "console_public_key_json": _AUDITORS,
    "console_latest_seal_json": _AUDITORS,
    "console_inclusion_proof_json": _AUDITORS,
    "console_consistency_proof_json": _AUDITORS,
    "console_operations": _ADMINS,
    "console_create_key": _ADMINS,
    "console_revoke_key": _ADMINS,
}
"""operation_id -> roles that may call it. An empty set means no key is needed."""


PUBLIC_OPERATIONS = frozenset(op for op, roles in ALLOWED_ROLES.items() if not roles)
ADMIN_ONLY = _ADMINS

DOCUMENT_OPERATIONS = frozenset(
    {"get_openapi", "get_api_docs", "get_api_docs_redirect", "get_api_redoc"}
)
"""`/openapi.json` and `/docs`: public outside production, any valid key in production."""

NEVER_OPEN = frozenset({"create_api_key"})
"""Operations an anonymous caller may not call even in open mode. Creating a key over HTTP
without one would let whoever reaches the port first mint the first admin key and lock the
owner out; the first key comes from the local CLI (FIRST_KEY_HINT)."""

FIRST_KEY_HINT = (
    "create the first admin key on the service's host with "
    "`lending-ledger keys create --role admin --name <you>`, then send it as "
    "`Authorization: Bearer <key>`"
)


def public_operation(operation_id: str | None, settings: Settings) -> bool:
    """Whether the operation needs no key at all (health probes; the API's description
    outside production)."""
    if operation_id in PUBLIC_OPERATIONS:
        return True
    return operation_id in DOCUMENT_OPERATIONS and settings.app_env != "production"


def roles_for(operation_id: str) -> list[Role]:
    """The roles that may call the operation, in Role order (admin always among them)."""
    allowed = ALLOWED_ROLES.get(operation_id, ADMIN_ONLY)
    return [role for role in Role if role is Role.ADMIN or role in allowed]


def may_call(role: Role, operation_id: str | None) -> bool:
    """Whether `role` may call the operation; unknown operations are admin-only."""
    allowed = ALLOWED_ROLES.get(operation_id, ADMIN_ONLY) if operation_id else ADMIN_ONLY
    return role is Role.ADMIN or role in allowed


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller. `role` is None in open mode (development without keys): every right."""

    name: str
    role: Role | None

    @property
    def actor(self) -> str:
        """How the caller appears in event metadata."""
        return self.name if self.role is None else f"{self.role}:{self.name}"


OPEN_MODE_PRINCIPAL = Principal(name="anonymous", role=None)
"""Also the principal of public operations (health probes), which act on nobody's rights."""


def check_open_mode_call(principal: Principal, operation_id: str | None) -> None:
    """Refuse (OpenModeRefused) what the open-mode principal may never do."""
    if principal.role is None and operation_id in NEVER_OPEN:
        raise OpenModeRefused(
            f"{operation_id!r} needs an admin key, even in open mode (no key exists yet): "
            f"{FIRST_KEY_HINT}",
            operation_id=operation_id,
        )


# --- Failed authentications, logged without flooding the log ---


class FailedAuthentications:
    """Counts failed authentications and logs them as WARNINGs: the first one at once,
    then at most one summary per `interval` (count, reasons, remote addresses, key ids),
    so a brute-force attempt shows in the log without filling it. Never logs a secret:
    only the id part of a well-formed key."""

    MAX_LISTED = 20

    def __init__(
        self, interval: float = FAILED_AUTH_LOG_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._quiet_until = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self._count = 0
        self._reasons: Counter[str] = Counter()
        self._remotes: dict[str, None] = {}
        self._key_ids: dict[str, None] = {}

    def record(self, reason: str, remote: str | None, key_id: str | None) -> None:
        metrics.auth_failed(reason)
        self._count += 1
        self._reasons[reason] += 1
        for seen, value in ((self._remotes, remote), (self._key_ids, key_id)):
            if value is not None and len(seen) < self.MAX_LISTED:
                seen[value] = None
        now = self._clock()
        if now >= self._quiet_until:
            self.flush()
        elif self._timer is None:
            # What arrives during the quiet interval is reported when it ends, even if no
            # further failure comes to trigger it.
            with contextlib.suppress(RuntimeError):  # no running loop: the next call reports
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self._quiet_until - now, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._count == 0:
            return
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self._reasons.items()))
        logger.warning(
            "%d failed authentication(s) (%s) from %s; key ids: %s "
            "(logged at most once every %.0f s)",
            self._count,
            reasons,
            ", ".join(self._remotes) or "unknown",
            ", ".join(self._key_ids) or "none",
            self.interval,
        )
        self._reset()
        self._quiet_until = self._clock() + self.interval


# --- Verifying keys ---


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    key_id: str
    expires: float


class Authenticator:
    """Turns a presented key into a principal, with a short in-process cache.

    A verified key is trusted for `ttl` seconds without asking the database (keyed by the
    key's hash, so the key itself is not kept); failures are never cached, so a key
    created a moment ago works at once. `ttl` is therefore how late a revocation reaches
    a worker, and how late the first key closes open mode.
    """

    MAX_CACHED = 1024

    def __init__(
        self,
        *,
        open_mode_allowed: bool,
        ttl: float = KEY_CACHE_SECONDS,
        failures: FailedAuthentications | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.open_mode_allowed = open_mode_allowed
        self.ttl = ttl
        self.failures = failures or FailedAuthentications()
        self._clock = clock
        self._verified: dict[bytes, _Verified] = {}
        self._keys_exist = not open_mode_allowed
        self._open_checked_at = -math.inf

    async def principal(
        self, pool: Callable[[], asyncpg.Pool], key: str | None, remote: str | None
    ) -> Principal:
        """The caller presenting `key` (None: no key). `pool` is only called on a cache miss."""
        if key is None:
            if await self._open(pool):
                return OPEN_MODE_PRINCIPAL
            self.failures.record("no key", remote, None)
            raise NotAuthenticated(
                "this operation needs an API key: send `Authorization: Bearer <key>`",
                key_sent=False,
            )
        key_id = key_id_of(key)
        if key_id is None:
            self.failures.record("malformed key", remote, None)
            raise NotAuthenticated("the API key is malformed", key_sent=True)
        digest = key_hash(key)
        now = self._clock()
        cached = self._verified.get(digest)
        if cached is not None and cached.expires > now:
            return cached.principal
        async with pool().acquire() as connection:
            stored = await find_key(connection, key_id)
        # Unknown and wrong keys get the same answer: the caller does not hold that key.
        if stored is None or not hash_matches(digest, stored.hash):
            self.failures.record("wrong key", remote, key_id)
            raise NotAuthenticated("the API key is not valid", key_sent=True)
        if stored.record.revoked_at is not None:
            self.failures.record("revoked key", remote, key_id)
            raise NotAuthenticated("the API key has been revoked", key_sent=True)
        principal = Principal(name=stored.record.name, role=Role(stored.record.role))
        self._keys_exist = True
        if len(self._verified) >= self.MAX_CACHED:
            self._verified = {d: v for d, v in self._verified.items() if v.expires > now}
        self._verified[digest] = _Verified(principal, key_id, now + self.ttl)
        return principal

    async def open_mode(self, pool: Callable[[], asyncpg.Pool]) -> bool:
        """Whether the service runs in open mode now (no key has ever existed), re-read at
        most every `ttl` seconds; records no failed authentication (the console asks this
        before it decides between its sign-in page and the open-mode principal)."""
        return await self._open(pool)

    def forget(self, key_id: str) -> None:
        """Drop a key from this process's cache (its revocation reaches other processes
        within `ttl`)."""
        self._verified = {d: v for d, v in self._verified.items() if v.key_id != key_id}

    async def is_open(self, pool: Callable[[], asyncpg.Pool]) -> bool:
        """Whether the service runs in open mode now (as of at most `ttl` ago)."""
        return await self._open(pool)

    async def _open(self, pool: Callable[[], asyncpg.Pool]) -> bool:
        if self._keys_exist:
            return False
        now = self._clock()
        if now < self._open_checked_at + self.ttl:
            return True
        # One request asks the database; those arriving meanwhile keep the last answer
        # (open) rather than all asking at once when the cached answer expires.
        checked_before, self._open_checked_at = self._open_checked_at, now
        try:
            async with pool().acquire() as connection:
                exists = await any_key_exists(connection)
        except BaseException:
            self._open_checked_at = checked_before
            raise
        if exists:
            self._keys_exist = True
            logger.warning("an API key exists: open mode is over, every request needs a key")
            return False
        return True

    def close(self) -> None:
        self.failures.flush()


# --- Start-up checks ---


class StartupRefused(Exception):
    """The service must not start with this configuration (production only)."""


OPEN_MODE_WARNING = (
    "OPEN MODE: no API key exists, so every caller may do everything, recorded as actor "
    "'anonymous'. Fine on your own machine, never beyond it. Create a key to turn "
    "authentication on (takes effect within %.0f s, no restart): "
    "lending-ledger keys create --role admin --name <you>"
)


async def startup_checks(connection: Connection, settings: Settings) -> None:
    """Keys and the database role. In production, refuse (StartupRefused) without an active
    API key, or with a database role that can rewrite the ledger unless
    LEDGER_ALLOW_PRIVILEGED_DB_ROLE is set. Elsewhere, warn."""
    production = settings.app_env == "production"
    refusals: list[str] = []
    privileges = await ledger_rewrite_privileges(connection)
    if privileges:
        message = (
            f"the database role {await current_role(connection)!r} can rewrite the ledger "
            f"({', '.join(privileges)}); connect as a member of {APP_GROUP_ROLE} "
            "(docs/operations.md, 'The database role')"
        )
        if production and not settings.allow_privileged_database_role:
            refusals.append(message + ", or set LEDGER_ALLOW_PRIVILEGED_DB_ROLE=true")
        else:
            logger.warning("%s", message)
    active = await active_key_count(connection)
    if production:
        if active == 0:
            refusals.append(
                "APP_ENV=production and there is no active API key; create one with "
                "`lending-ledger keys create --role admin --name <name>`"
            )
    elif not await any_key_exists(connection):
        logger.warning(OPEN_MODE_WARNING, KEY_CACHE_SECONDS)
    elif active == 0:
        logger.warning(
            "every API key is revoked: only the health probes answer; create a key with "
            "`lending-ledger keys create --role admin --name <name>`"
        )
    if refusals:
        raise StartupRefused("; ".join(refusals))
