"""One command's whole write in one statement: the inline read models written with the
events they are folded from.

The caller has already done everything that needs no database: decided, chained the events
(ledger/chain.py), folded them into the application's row and history entries with the pure
fold (projections/applications.py) and, with an idempotency key, rendered the response.
`write_command` sends all of it as one prepared statement (projections/sql.py: RUN_COMMAND,
or RUN_KEYED_COMMAND, which claims the key first and stores the response), which inserts the
events and writes the row and the entries with the positions the insert assigned: one round
trip, one transaction. The fold stays the reference: the property
tests (tests/integration/test_properties_db.py) hold the rows this path writes equal to
the fold of the stored events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import orjson

from ledger.chain import ChainedEvent
from ledger.db import Connection
from ledger.errors import ConcurrencyConflict
from ledger.idempotency import lock_key
from projections import sql
from projections.applications import ApplicationRow, HistoryRow


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """The key a request came with, in its caller's scope."""

    scope: str
    key: str
    fingerprint: bytes
    retention: timedelta


@dataclass(frozen=True, slots=True)
class ResponseTemplate:
    """A rendered response whose body may name positions the database has yet to assign:
    `slots[i]` (1-based, an index into the command's events) goes between `parts[i]` and
    `parts[i + 1]`. A body that names no position is one part and no slot."""

    status_code: int
    parts: tuple[bytes, ...]
    slots: tuple[int, ...] = ()

    def body(self, positions: Sequence[int]) -> bytes:
        if not self.slots:
            return self.parts[0]
        pieces = [self.parts[0]]
        for slot, part in zip(self.slots, self.parts[1:], strict=True):
            pieces.append(str(positions[slot - 1]).encode())
            pieces.append(part)
        return b"".join(pieces)


@dataclass(frozen=True, slots=True)
class CommandWrite:
    """What the statement answered: `outcome` is `applied`, `replayed`, `reused` or
    `in_flight` (projections/sql.py, RUN_KEYED_COMMAND, says what each means)."""

    outcome: str
    status_code: int | None
    body: bytes | None
    positions: list[int]


def _events_json(events: Sequence[ChainedEvent]) -> list[dict[str, object]]:
    """The statement's events parameter (the connection's json codec encodes it): the data and
    metadata as the canonical JSON already encoded for the hash (embedded verbatim by
    orjson), binary values in hex."""
    return [
        {
            "stream_version": c.event.stream_version,
            "event_id": c.event.event_id,
            "event_type": c.event.event_type,
            "schema_version": c.event.schema_version,
            "data": orjson.Fragment(c.data_json),
            "metadata": orjson.Fragment(c.metadata_json),
            "prev_hash": c.event.prev_hash.hex(),
            "hash": c.event.hash.hex(),
            "hashed": c.hashed.hex(),
        }
        for c in events
    ]


def _history_json(history: Sequence[HistoryRow]) -> list[dict[str, object]]:
    return [
        {
            "stream_version": h.stream_version,
            "event_type": h.event_type,
            "status": h.status,
            "details": h.details,
        }
        for h in history
    ]


# The names of RUN_COMMAND's parameters, $1 on, and of those RUN_KEYED_COMMAND adds after
# them (bench/dbcost.py reads the arguments by these names).
WRITE_PARAMETERS = (
    "stream_id",
    "recorded_at",
    "events",
    "application_id",
    "applicant_id",
    "amount",
    "income",
    "employment_years",
    "risk_score",
    "decision",
    "status",
    "scoring_model",
    "scoring_model_version",
    "created_at",
    "submitted_by",
    "decided_by",
    "recommended_outcome",
    "reason_codes",
    "in_review_since",
    "reviewed_at",
    "history",
)
CLAIM_PARAMETERS = (
    "scope",
    "key",
    "fingerprint",
    "retention",
    "lock",
    "status_code",
    "body_parts",
    "body_slots",
)


async def write_command(
    connection: Connection,
    claim: IdempotencyClaim | None,
    events: Sequence[ChainedEvent],
    expected_version: int,
    row: ApplicationRow,
    history: Sequence[HistoryRow],
    response: ResponseTemplate | None,
) -> CommandWrite:
    """Write one command on one stream, outside any transaction of the caller's (the
    statement is its own). Raises ConcurrencyConflict when another writer appended to the
    stream after it was read at `expected_version`. `response` is the one to store with
    the claim: None without one (the caller renders after the write)."""
    first = events[0].event
    state = row.state
    arguments: list[object] = [
        first.stream_id,
        first.recorded_at,
        _events_json(events),
        state.application_id,
        state.applicant_id,
        state.amount,
        state.income,
        state.employment_years,
        state.risk_score,
        state.decision,
        state.status,
        state.scoring_model,
        state.scoring_model_version,
        row.created_at,
        state.submitted_by,
        state.decided_by,
        state.recommended_outcome,
        list(state.reason_codes),  # jsonb: the connection's codec encodes it
        row.in_review_since,
        row.reviewed_at,
        _history_json(history),
    ]
    statement = sql.RUN_COMMAND
    if claim is not None:
        statement = sql.RUN_KEYED_COMMAND
        arguments += [
            claim.scope,
            claim.key,
            claim.fingerprint,
            claim.retention,
            lock_key(claim.scope, claim.key),
            response.status_code if response else None,
            list(response.parts) if response else None,
            list(response.slots) if response else None,
        ]
    try:
        record = await connection.fetchrow(statement, *arguments)
    except asyncpg.UniqueViolationError as error:
        if error.constraint_name == "events_stream_version_unique":
            raise ConcurrencyConflict(first.stream_id, expected_version) from None
        raise
    assert record is not None
    body = record["r_body"]
    return CommandWrite(
        outcome=record["r_outcome"],
        status_code=record["r_status_code"],
        body=bytes(body) if body is not None else None,
        positions=list(record["r_positions"] or ()),
    )
