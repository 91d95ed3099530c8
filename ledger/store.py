"""The event store. Every function takes a connection and never commits: the command
handler owns the transaction, so events, read models and idempotency records of one
command commit together or not at all."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

import asyncpg

from ledger import sql
from ledger.canonical import GENESIS_HASH
from ledger.chain import chain_new_events_hashed
from ledger.db import Connection
from ledger.errors import ConcurrencyConflict
from ledger.events import NewEvent, RecordedEvent

MAX_POSITION = 2**63 - 1

_CONFLICTING_STREAM = re.compile(r"=\((.+), \d+\)")


def recorded_event_from_row(row: asyncpg.Record) -> RecordedEvent:
    return RecordedEvent(
        position=row["position"],
        seq=row["seq"],
        stream_id=row["stream_id"],
        stream_version=row["stream_version"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        schema_version=row["schema_version"],
        data=row["data"],
        metadata=row["metadata"],
        recorded_at=row["recorded_at"],
        prev_hash=bytes(row["prev_hash"]),
        hash=bytes(row["hash"]),
    )


async def stream_head(connection: Connection, stream_id: str) -> tuple[int, bytes]:
    """(current version, hash of the last event); (0, genesis) for a stream not yet begun."""
    row = await connection.fetchrow(sql.SELECT_STREAM_HEAD, stream_id)
    if row is None:
        return 0, GENESIS_HASH
    return row["stream_version"], bytes(row["hash"])


async def append(
    connection: Connection,
    stream_id: str,
    expected_version: int,
    new_events: Sequence[NewEvent],
    recorded_at: datetime,
) -> list[RecordedEvent]:
    """Append events to a stream that must be at `expected_version` (0: must not exist).

    Raises ConcurrencyConflict when another writer got there first. The check is the
    database's UNIQUE (stream_id, stream_version): a concurrent writer expecting the same
    version blocks on the index entry until the first commits, then fails here.
    """
    if not new_events:
        return []
    if expected_version == 0:
        prev_hash = GENESIS_HASH
    else:
        version, prev_hash = await stream_head(connection, stream_id)
        if version != expected_version:
            raise ConcurrencyConflict(stream_id, expected_version)

    # Positions are assigned by the INSERT below; seq by the sequencer after the commit.
    events, hashed = chain_new_events_hashed(
        stream_id, expected_version, prev_hash, new_events, recorded_at
    )
    try:
        rows = await connection.fetch(
            sql.INSERT_EVENTS,
            stream_id,
            recorded_at,
            [e.stream_version for e in events],
            [e.event_id for e in events],
            [e.event_type for e in events],
            [e.schema_version for e in events],
            [e.data for e in events],
            [e.metadata for e in events],
            [e.prev_hash for e in events],
            [e.hash for e in events],
            hashed,
        )
    except asyncpg.UniqueViolationError as error:
        if error.constraint_name == "events_stream_version_unique":
            raise ConcurrencyConflict(stream_id, expected_version) from None
        raise

    positions = {row["stream_version"]: row["position"] for row in rows}
    return [replace(e, position=positions[e.stream_version]) for e in events]


async def append_new_streams(
    connection: Connection, events: Sequence[RecordedEvent]
) -> list[RecordedEvent]:
    """Insert the already-chained events of new streams (from `chain_new_events`, each
    stream from version 1) in one statement; return them with their positions.

    For bulk loads. Raises ConcurrencyConflict if one of the streams was begun meanwhile.
    """
    if not events:
        return []
    try:
        rows = await connection.fetch(
            sql.INSERT_EVENTS_OF_STREAMS,
            [e.stream_id for e in events],
            [e.stream_version for e in events],
            [e.event_id for e in events],
            [e.event_type for e in events],
            [e.schema_version for e in events],
            [e.data for e in events],
            [e.metadata for e in events],
            [e.recorded_at for e in events],
            [e.prev_hash for e in events],
            [e.hash for e in events],
        )
    except asyncpg.UniqueViolationError as error:
        if error.constraint_name == "events_stream_version_unique":
            raise ConcurrencyConflict(conflicting_stream(error), 0) from None
        raise
    positions = {row["event_id"]: row["position"] for row in rows}
    return [replace(e, position=positions[e.event_id]) for e in events]


def conflicting_stream(error: asyncpg.UniqueViolationError) -> str:
    """The stream a bulk insert found begun. PostgreSQL names the conflicting key:
    "Key (stream_id, stream_version)=(s, 1)"."""
    found = _CONFLICTING_STREAM.search(error.detail or "")
    return found.group(1) if found else "one of the batch's streams"


async def existing_streams(connection: Connection, stream_ids: Sequence[str]) -> set[str]:
    """Which of `stream_ids` have at least one event."""
    rows = await connection.fetch(sql.SELECT_EXISTING_STREAMS, list(stream_ids))
    return {row["stream_id"] for row in rows}


async def read_stream(
    connection: Connection,
    stream_id: str,
    up_to_position: int = MAX_POSITION,
    recorded_until: datetime | None = None,
) -> list[RecordedEvent]:
    """A stream's events in order, up to a global position and (optionally) as it stood at
    a recorded time: the events before the first one recorded after `recorded_until`."""
    if recorded_until is not None:
        return await read_streams(connection, [stream_id], recorded_until, up_to_position)
    rows = await connection.fetch(sql.SELECT_STREAM, stream_id, up_to_position)
    return [recorded_event_from_row(row) for row in rows]


async def read_streams(
    connection: Connection,
    stream_ids: Sequence[str],
    recorded_until: datetime,
    up_to_position: int = MAX_POSITION,
) -> list[RecordedEvent]:
    """Several streams as they stood at `recorded_until` (see read_stream), stream by stream."""
    rows = await connection.fetch(
        sql.SELECT_STREAMS_AS_OF, list(stream_ids), recorded_until, up_to_position
    )
    return [recorded_event_from_row(row) for row in rows]


async def read_feed(connection: Connection, after_seq: int, limit: int) -> list[RecordedEvent]:
    """Committed events in ledger order: contiguous `seq`, each exactly once."""
    rows = await connection.fetch(sql.SELECT_FEED, after_seq, limit)
    return [recorded_event_from_row(row) for row in rows]
