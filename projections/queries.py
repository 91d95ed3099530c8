"""Queries over the read models."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from ledger.db import Connection
from projections import sql
from projections.applications import ApplicationRow, HistoryRow


async def get_application(connection: Connection, application_id: UUID) -> ApplicationRow | None:
    records = await connection.fetch(sql.SELECT_APPLICATIONS_BY_ID, [application_id])
    return ApplicationRow.from_record(records[0]) if records else None


async def applicant_history(
    connection: Connection, applicant_id: str, limit: int
) -> list[ApplicationRow]:
    """An applicant's applications, newest first."""
    records = await connection.fetch(sql.SELECT_APPLICANT_HISTORY, applicant_id, limit)
    return [ApplicationRow.from_record(record) for record in records]


async def applicant_history_json(connection: Connection, applicant_id: str, limit: int) -> bytes:
    """`applicant_history` as the response's JSON bytes, rendered by PostgreSQL: a list of
    `Application` documents, byte for byte what the service would write for those rows."""
    body: bytes = await connection.fetchval(sql.SELECT_APPLICANT_HISTORY_JSON, applicant_id, limit)
    return body


_QUEUE_START = (datetime(1, 1, 1, tzinfo=UTC), UUID(int=0))


async def review_queue(
    connection: Connection, pending: bool, after: tuple[datetime, UUID] | None, limit: int
) -> list[ApplicationRow]:
    """Pending reviews in the order they entered review, or completed ones in the order they
    were reviewed; `after` is the (time, application id) of the previous page's last row."""
    moment, application_id = after or _QUEUE_START
    statement = sql.SELECT_REVIEWS_PENDING if pending else sql.SELECT_REVIEWS_COMPLETED
    records = await connection.fetch(statement, moment, application_id, limit)
    return [ApplicationRow.from_record(record) for record in records]


async def all_applications(connection: Connection) -> dict[UUID, ApplicationRow]:
    records = await connection.fetch(sql.SELECT_ALL_APPLICATIONS)
    rows = (ApplicationRow.from_record(record) for record in records)
    return {row.state.application_id: row for row in rows}


async def all_history(connection: Connection) -> list[HistoryRow]:
    records = await connection.fetch(sql.SELECT_ALL_HISTORY)
    return [HistoryRow(**dict(record)) for record in records]
