"""The `applications` projection: `loan_applications` (one row per application) and
`application_history` (one row per decision-relevant event), from one pure fold.

`project` is pure; `ApplicationsProjector.apply` is the thin SQL around it: it loads the
rows the batch touches, folds, and writes them back in two statements.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from ledger.application import STATUS_IN_REVIEW, STREAM_PREFIX, ApplicationState, evolve
from ledger.db import Connection
from ledger.events import (
    AgentActionRecorded,
    ApplicationDecided,
    ApplicationReviewed,
    ApplicationScored,
    ApplicationSubmitted,
    ApplicationWithdrawn,
    DomainEvent,
    JsonObject,
    ManualReviewRequested,
    RecordedEvent,
    decimal_to_json,
)
from ledger.store import recorded_event_from_row
from projections import sql


@dataclass(frozen=True, slots=True)
class ApplicationRow:
    """One row of `loan_applications`: the application's state plus envelope times."""

    state: ApplicationState
    created_at: datetime
    updated_at: datetime
    last_event_position: int
    in_review_since: datetime | None = None  # when it last entered review (queue order)
    reviewed_at: datetime | None = None

    @classmethod
    def from_record(cls, row: asyncpg.Record | dict[str, Any]) -> ApplicationRow:
        return cls(
            state=ApplicationState(
                application_id=row["application_id"],
                applicant_id=row["applicant_id"],
                amount=row["amount"],
                income=row["income"],
                employment_years=row["employment_years"],
                status=row["status"],
                version=row["stream_version"],
                risk_score=row["risk_score"],
                decision=row["decision"],
                scoring_model=row["scoring_model"],
                scoring_model_version=row["scoring_model_version"],
                submitted_by=row["submitted_by"],
                decided_by=row["decided_by"],
                recommended_outcome=row["recommended_outcome"],
                reason_codes=tuple(row["reason_codes"]),
            ),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            last_event_position=row["last_event_position"],
            in_review_since=row["in_review_since"],
            reviewed_at=row["reviewed_at"],
        )


@dataclass(frozen=True, slots=True)
class HistoryRow:
    application_id: UUID
    stream_version: int
    event_position: int
    event_type: str
    status: str
    details: JsonObject
    recorded_at: datetime


def history_details(event: object) -> JsonObject | None:
    """What a timeline shows for an event; None for events that are not decision-relevant."""
    match event:
        case ApplicationSubmitted():
            return {
                "amount": decimal_to_json(event.amount),
                "income": decimal_to_json(event.income),
                "employment_years": event.employment_years,
                "submitted_by": event.submitted_by,
            }
        case ApplicationScored():
            return {
                "model": f"{event.model_name}-{event.model_version}",
                "model_fingerprint": event.model_fingerprint,
                "risk_score": decimal_to_json(event.risk_score),
                "reason_codes": list(event.reason_codes),
            }
        case ApplicationDecided():
            return {
                "decision": event.decision,
                "decided_by": event.decided_by,
                "rule": event.rule,
                "recommended_outcome": event.recommended_outcome,
            }
        case ManualReviewRequested():
            return {"requested_by": event.requested_by, "reason": event.reason}
        case ApplicationReviewed():
            return {
                "outcome": event.outcome,
                "reviewer": event.reviewer,
                "reason_codes": [reason.to_data() for reason in event.reason_codes],
                "justification": event.justification,
            }
        case ApplicationWithdrawn():
            return {
                "withdrawn_by": event.withdrawn_by,
                "channel": event.channel,
                "reason": event.reason,
            }
        case AgentActionRecorded():
            return {
                "agent_id": event.agent_id,
                "model_name": event.model_name,
                "action": event.action,
                "rationale": event.rationale,
                "prompt_sha256": event.prompt_sha256,
            }
    return None


def project(
    row: ApplicationRow | None, event: RecordedEvent, domain_event: DomainEvent | None = None
) -> tuple[ApplicationRow, HistoryRow | None]:
    """The pure fold step: the row after `event`, and the timeline entry it adds.
    `domain_event` is `event.decode()` when the caller has it already (a command does)."""
    if domain_event is None:
        domain_event = event.decode()
    before = row.state if row else None
    state = evolve(before, domain_event)
    in_review_since = row.in_review_since if row else None
    if state.status == STATUS_IN_REVIEW and (before is None or before.status != STATUS_IN_REVIEW):
        in_review_since = event.recorded_at
    new_row = ApplicationRow(
        state=state,
        created_at=row.created_at if row else event.recorded_at,
        updated_at=event.recorded_at,
        last_event_position=event.position,
        in_review_since=in_review_since,
        reviewed_at=event.recorded_at
        if isinstance(domain_event, ApplicationReviewed)
        else (row.reviewed_at if row else None),
    )
    details = history_details(domain_event)
    entry = None
    if details is not None:
        entry = HistoryRow(
            application_id=state.application_id,
            stream_version=event.stream_version,
            event_position=event.position,
            event_type=event.event_type,
            status=state.status,
            details=details,
            recorded_at=event.recorded_at,
        )
    return new_row, entry


def fold_into(
    rows: dict[str, ApplicationRow],
    events: Iterable[RecordedEvent],
    decoded: Iterable[DomainEvent | None] | None = None,
) -> list[HistoryRow]:
    """Fold `events` (in stream order per stream) into `rows`, keyed by stream id, which
    holds each application's row before them (absent: a new stream). Events of other
    streams are skipped. Returns the history entries the events add. `decoded`, when
    given, holds each event's `decode()` (a command's own events, not yet stored)."""
    history: list[HistoryRow] = []
    pairs = (
        zip(events, decoded, strict=True)
        if decoded is not None
        else ((event, None) for event in events)
    )
    for event, domain_event in pairs:
        if not event.stream_id.startswith(STREAM_PREFIX):
            continue
        new_row, entry = project(rows.get(event.stream_id), event, domain_event)
        rows[event.stream_id] = new_row
        if entry is not None:
            history.append(entry)
    return history


def fold_applications(
    events: Sequence[RecordedEvent],
) -> tuple[dict[UUID, ApplicationRow], list[HistoryRow]]:
    """Fold a whole event log from nothing: what both tables must contain."""
    rows: dict[str, ApplicationRow] = {}
    history = fold_into(rows, events)
    return {row.state.application_id: row for row in rows.values()}, history


class ApplicationsProjector:
    name = "applications"
    tables = ("loan_applications", "application_history")

    async def apply(self, connection: Connection, events: Sequence[RecordedEvent]) -> None:
        """Fold `events` (in stream order per stream) into both tables."""
        relevant = [e for e in events if e.stream_id.startswith(STREAM_PREFIX)]
        if not relevant:
            return
        rows: dict[str, ApplicationRow] = {}
        existing = [
            UUID(e.stream_id.removeprefix(STREAM_PREFIX)) for e in relevant if e.stream_version > 1
        ]
        if existing:
            for record in await connection.fetch(sql.SELECT_APPLICATIONS_BY_ID, existing):
                loaded = ApplicationRow.from_record(record)
                rows[f"{STREAM_PREFIX}{loaded.state.application_id}"] = loaded

        history = fold_into(rows, relevant)
        await connection.execute(sql.UPSERT_APPLICATIONS, *_application_columns(rows.values()))
        if history:
            await connection.execute(sql.INSERT_HISTORY, *_history_columns(history))

    async def fold_log(
        self,
        connection: Connection,
        last_transaction_id: int,
        last_position: int,
        parts: int = 1,
        part: int = 0,
    ) -> list[RecordedEvent]:
        """Fold the ledger log up to the sequencer's cursor (`last_transaction_id`,
        `last_position`) set-based, in the database, into the EMPTY tables on `search_path`
        (a rebuild's shadow): one statement for the streams the SQL can vouch for
        (projections/sql.py, FOLD_LOG_INTO), `part` of `parts` by a hash of the stream id.

        Returns the events of the streams it left (an unknown event type or schema
        version, data the decoders would read differently), in stream order: the caller
        folds those with `apply`, which also reports the event that fails.
        """
        left: list[str] = await connection.fetchval(
            sql.UNFOLDABLE_IN_LOG, STREAM_PREFIX, last_transaction_id, last_position, parts, part
        )
        await connection.execute(
            sql.FOLD_LOG_INTO,
            STREAM_PREFIX,
            last_transaction_id,
            last_position,
            parts,
            part,
            left,
        )
        return await _events_of(connection, left, last_transaction_id, last_position)

    async def fold_own_transaction(self, connection: Connection) -> list[RecordedEvent]:
        """Fold the events written by the connection's current transaction, all of them
        new streams (a bulk import's batch), set-based into the tables on `search_path`;
        the events of the streams it leaves, in stream order, for `apply`."""
        left: list[str] = await connection.fetchval(sql.UNFOLDABLE_IN_TRANSACTION, STREAM_PREFIX)
        await connection.execute(sql.FOLD_TRANSACTION_INTO, STREAM_PREFIX, left)
        return await _events_of(connection, left, None, None)


async def _events_of(
    connection: Connection,
    stream_ids: list[str],
    last_transaction_id: int | None,
    last_position: int | None,
) -> list[RecordedEvent]:
    if not stream_ids:
        return []
    rows = await connection.fetch(
        sql.SELECT_EVENTS_OF_STREAMS, stream_ids, last_transaction_id, last_position
    )
    return [recorded_event_from_row(row) for row in rows]


def _application_columns(rows: Any) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in range(20)]
    for row in rows:
        s = row.state
        values = (
            s.application_id,
            s.applicant_id,
            s.amount,
            s.income,
            s.employment_years,
            s.risk_score,
            s.decision,
            s.status,
            s.scoring_model,
            s.scoring_model_version,
            row.created_at,
            row.updated_at,
            s.version,
            row.last_event_position,
            s.submitted_by,
            s.decided_by,
            s.recommended_outcome,
            orjson.dumps(list(s.reason_codes)).decode(),
            row.in_review_since,
            row.reviewed_at,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


def _history_columns(rows: Sequence[HistoryRow]) -> list[list[Any]]:
    return [
        [r.application_id for r in rows],
        [r.stream_version for r in rows],
        [r.event_position for r in rows],
        [r.event_type for r in rows],
        [r.status for r in rows],
        [r.details for r in rows],
        [r.recorded_at for r in rows],
    ]
