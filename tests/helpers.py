"""Helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from ledger.db import Connection
from ledger.events import RecordedEvent
from ledger.sql import EVENT_COLUMNS
from ledger.store import read_feed, recorded_event_from_row

ALL_EVENTS = f"""
SELECT {EVENT_COLUMNS}
FROM events e LEFT JOIN ledger_log l ON l.position = e.position
ORDER BY e.stream_id, e.stream_version
"""

UNSEQUENCED = """
SELECT count(*) FROM events e
WHERE NOT EXISTS (SELECT 1 FROM ledger_log l WHERE l.position = e.position)
"""


async def all_events(connection: Connection) -> list[RecordedEvent]:
    """Every stored event, grouped by stream, in stream order."""
    return [recorded_event_from_row(row) for row in await connection.fetch(ALL_EVENTS)]


async def wait_until_sequenced(pool: asyncpg.Pool, timeout: float = 20.0) -> int:
    """Wait until every committed event has a seq (bounded); return the last seq."""
    deadline = time.monotonic() + timeout
    while True:
        async with pool.acquire() as connection:
            pending = await connection.fetchval(UNSEQUENCED)
            if pending == 0:
                last: int = await connection.fetchval(
                    "SELECT coalesce(max(seq), 0) FROM ledger_log"
                )
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{pending} events still have no seq after {timeout}s")
        await asyncio.sleep(0.02)


async def whole_feed(connection: Connection) -> list[RecordedEvent]:
    """The whole ledger log, read page by page as a feed reader would."""
    events: list[RecordedEvent] = []
    while batch := await read_feed(connection, events[-1].seq or 0 if events else 0, 1000):
        events.extend(batch)
    return events
