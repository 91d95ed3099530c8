"""Helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx

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


PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:lending-ledger:problem:"
JSON_HEADERS = {"content-type": "application/json"}

ROW_COUNTS = """
SELECT (SELECT count(*) FROM events) AS events,
       (SELECT count(*) FROM loan_applications) AS applications,
       (SELECT count(*) FROM idempotency_keys) AS keys
"""


async def row_counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    """Rows in the tables a request could write to."""
    async with pool.acquire() as connection:
        row = await connection.fetchrow(ROW_COUNTS)
    assert row is not None
    return row["events"], row["applications"], row["keys"]


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> Any:
    """An RFC 9457 problem with this status (in the status line and the body); its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    problem = response.json()
    assert isinstance(problem, dict)
    assert {"type", "title", "status", "detail"} <= problem.keys()
    assert problem["status"] == response.status_code
    assert isinstance(problem["title"], str)
    assert problem["title"]
    assert isinstance(problem["detail"], str)
    assert problem["detail"]
    assert problem["type"].startswith(PROBLEM_TYPE_PREFIX)
    if slug is not None:
        assert problem["type"] == PROBLEM_TYPE_PREFIX + slug
    return problem
