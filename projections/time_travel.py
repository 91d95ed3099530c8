"""Time travel: an application, or an applicant's applications, as they stood at a global
position or a recorded time, folded from the events up to that point (never from the read
model, which only knows the present)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from ledger.application import stream_id_for
from ledger.db import Connection
from ledger.store import MAX_POSITION, read_stream, read_streams
from projections.applications import ApplicationRow, fold_applications
from projections.time_travel_sql import SELECT_APPLICANT_APPLICATIONS_CREATED_BY


async def application_at(
    connection: Connection,
    application_id: UUID,
    *,
    at_position: int | None = None,
    as_of: datetime | None = None,
) -> ApplicationRow | None:
    """The application after the last of its events at or before global position
    `at_position`, or as it stood at `as_of`; None if it did not exist yet."""
    events = await read_stream(
        connection,
        stream_id_for(application_id),
        MAX_POSITION if at_position is None else at_position,
        as_of,
    )
    rows, _ = fold_applications(events)
    return rows.get(application_id)


async def applicant_history_at(
    connection: Connection, applicant_id: str, as_of: datetime, limit: int
) -> list[ApplicationRow]:
    """The applicant's applications as they stood at `as_of`, newest first.

    Which applications the applicant has comes from the read model (an application's
    applicant and creation time never change); each is folded from its own events up to
    `as_of`. Applications submitted after `as_of` are absent.
    """
    ids: list[UUID] = [
        row["application_id"]
        for row in await connection.fetch(
            SELECT_APPLICANT_APPLICATIONS_CREATED_BY, applicant_id, as_of, limit
        )
    ]
    if not ids:
        return []
    events = await read_streams(connection, [stream_id_for(i) for i in ids], as_of)
    rows, _ = fold_applications(events)
    return [rows[i] for i in ids if i in rows]
