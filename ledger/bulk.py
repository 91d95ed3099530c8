"""Bulk import of historical applications: the pure part (no I/O, no clock reads).

An import file is JSON Lines, one application per line. Each application becomes exactly
the events `POST /lending/apply` records (`decide`), hash-chained the same way
(`ledger.chain.chain_new_events`). What is particular to an import is decided here:

- its application id is derived from the file's SHA-256 and the line number, so importing
  the same file again (after a crash, or by mistake) finds those streams already begun and
  records nothing twice;
- an optional `submitted_at` (RFC 3339 with an offset, at most microseconds, not in the
  future) becomes the events' `recorded_at`: a historical application keeps its own time,
  and the read models order it by that time like any other;
- each event's correlation id names the file and the line it came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID, uuid5

IMPORT_NAMESPACE = UUID("5d0c2a51-52a4-4c0e-9a57-3f1f4e0e7a11")
"""Fixed forever: application ids of imported lines depend on it."""

SUBMITTED_AT_FIELD = "submitted_at"

# RFC 3339 date-time with a mandatory offset; fractions only down to microseconds, which is
# what the ledger records (a finer fraction would be silently cut otherwise).
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)

ACTOR_PATTERN = re.compile(r"[A-Za-z0-9_.:@\-]{1,64}")


@dataclass(frozen=True, slots=True)
class BadLine:
    line_number: int
    message: str


def application_id_for(file_digest: bytes, line_number: int) -> UUID:
    """The application id of line `line_number` (1-based) of the file with this SHA-256."""
    return uuid5(IMPORT_NAMESPACE, f"{file_digest.hex()}:{line_number}")


def correlation_id_for(file_digest: bytes, line_number: int) -> str:
    """What the line's events carry as correlation id: the file (short digest) and line."""
    return f"import-{file_digest.hex()[:16]}-line-{line_number}"


def parse_submitted_at(value: object, not_after: datetime) -> datetime:
    """An RFC 3339 time with an offset, in UTC, not later than `not_after`.

    Raises ValueError with a message fit for the import report."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError(
            "must be an RFC 3339 date-time with an offset and at most 6 fractional digits, "
            "like 2024-03-01T09:30:00Z"
        )
    try:
        moment = datetime.fromisoformat(value.upper())
    except ValueError as error:
        raise ValueError(f"is not a valid date-time: {error}") from None
    moment = moment.astimezone(UTC)
    if moment > not_after:
        raise ValueError("must not be in the future")
    return moment


def check_actor(value: str) -> str:
    if not ACTOR_PATTERN.fullmatch(value):
        raise ValueError("the actor must be 1 to 64 characters of letters, digits and _ . : @ -")
    return value
