"""Query parameters and handlers for time travel: `?as_of=<RFC 3339 time>` and
`?at_position=<n>` on the application and applicant-history queries (api/routes.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import Query
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, AwareDatetime, BeforeValidator

from api.jsonio import JSONResponse
from api.models import Application
from ledger.errors import NotFound
from projections.time_travel import applicant_history_at, application_at

# RFC 3339 date-time: a full date, a time with seconds, and an offset (Z or +hh:mm).
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339(value: Any) -> Any:
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError(
            "must be an RFC 3339 time with a time zone, like 2026-11-25T09:06:17Z or "
            "2026-11-25T10:06:17.5+01:00"
        )
    return value


def _in_utc(value: datetime | None) -> datetime | None:
    """The same instant in UTC; an instant outside years 1 to 9999 in UTC is refused."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range (years 1 to 9999 in UTC)") from None


AsOf = Annotated[
    AwareDatetime | None,
    BeforeValidator(_rfc3339),
    AfterValidator(_in_utc),
    Query(
        description="Answer as the ledger stood at this time (RFC 3339 with a time zone): "
        "folded from the events recorded up to then.",
    ),
]

AtPosition = Annotated[
    int | None,
    Query(
        ge=1,
        le=2**63 - 1,
        description="Answer as the ledger stood right after this global event position: "
        "folded from the events up to it.",
    ),
]


def _one_point_in_time(as_of: datetime | None, at_position: int | None) -> None:
    if as_of is not None and at_position is not None:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "at_position"),
                    "msg": "give as_of or at_position, not both",
                    "input": at_position,
                }
            ]
        )


async def application_then(
    pool: asyncpg.Pool,
    application_id: UUID,
    as_of: datetime | None,
    at_position: int | None,
) -> JSONResponse:
    _one_point_in_time(as_of, at_position)
    async with pool.acquire() as connection:
        row = await application_at(connection, application_id, at_position=at_position, as_of=as_of)
    if row is None:
        when = f"at position {at_position}" if at_position is not None else f"at {as_of}"
        raise NotFound(f"application {str(application_id)!r} did not exist {when}")
    return JSONResponse(Application.from_row(row))


async def history_then(
    pool: asyncpg.Pool, applicant_id: str, as_of: datetime, limit: int
) -> JSONResponse:
    async with pool.acquire() as connection:
        rows = await applicant_history_at(connection, applicant_id, as_of, limit)
    return JSONResponse([Application.from_row(row) for row in rows])
