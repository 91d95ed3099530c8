"""Who is calling, and what they may do.

Every route is authorised in one place: an app-level dependency looks up the matched
route's `operation_id` in `ALLOWED_ROLES`. An operation missing from the table is open to
`admin` only (deny by default), and a test holds the table to the routes.

SCAFFOLD: key storage, hashing and the 401/403 checks are filled in by the auth work of
issue #4; until then every caller is the open-mode principal.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Request


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
    "get_review_queue": frozenset({Role.ANALYST, Role.AUDITOR, Role.ADMIN}),
    "get_reason_codes": _READERS,
    # the global feed and audit
    "get_event_feed": _AUDITORS,
    "stream_events": _AUDITORS,
    # admin
    "create_seal": _ADMINS,
    # always open: liveness and readiness probes carry no key
    "get_health": frozenset(),
    "get_readiness": frozenset(),
}
"""operation_id -> roles that may call it. An empty set means no key is needed."""

PUBLIC_OPERATIONS = frozenset(op for op, roles in ALLOWED_ROLES.items() if not roles)


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


async def authorize(request: Request) -> Principal:
    """The caller of this request, checked against the route's allowed roles."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        principal = OPEN_MODE_PRINCIPAL
        request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(authorize)]
