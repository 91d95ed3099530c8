"""The event store on real PostgreSQL: immutability, optimistic concurrency, hash chains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID, uuid4

import asyncpg
import pytest

from ledger.application import SubmitApplication, decide, stream_id_for
from ledger.chain import verify_stream
from ledger.db import connect, create_pool
from ledger.errors import ConcurrencyConflict
from ledger.events import ApplicationDecided, EventMetadata, NewEvent, RecordedEvent
from ledger.scoring import RATIO_V1
from ledger.sequencer import sequence_all
from ledger.store import append, read_stream, stream_head
from tests.conftest import MakeDatabase

METADATA = EventMetadata(actor="test", correlation_id="corr-1")


@pytest.fixture(scope="module")
async def pool(make_database: MakeDatabase) -> AsyncIterator[asyncpg.Pool]:
    """A database of this module's own: these tests append events without projecting them,
    which would break the "read models equal the fold" checks on the shared database."""
    own = await create_pool(await make_database(), min_size=1, max_size=10)
    yield own
    await own.close()


def application_events(applicant: str = "cust_store") -> tuple[str, list[NewEvent]]:
    command = SubmitApplication(uuid4(), applicant, Decimal("5000"), Decimal("90000"), 6)
    events = decide(None, command, datetime.now(UTC), RATIO_V1)
    return stream_id_for(command.application_id), [NewEvent(uuid4(), e, METADATA) for e in events]


def extra_decision(stream_id: str) -> NewEvent:
    application_id = stream_id.removeprefix("loan-application-")
    event = ApplicationDecided(
        application_id=UUID(application_id),
        decision="approved",
        decided_by="test",
        rule="test",
    )
    return NewEvent(uuid4(), event, METADATA)


async def append_committed(pool: asyncpg.Pool) -> tuple[str, list[RecordedEvent]]:
    stream_id, new_events = application_events()
    async with pool.acquire() as connection, connection.transaction():
        recorded = await append(connection, stream_id, 0, new_events, datetime.now(UTC))
    return stream_id, recorded


async def test_appended_events_read_back_identically_and_verify(pool: asyncpg.Pool) -> None:
    stream_id, recorded = await append_committed(pool)
    async with pool.acquire() as connection:
        stored = await read_stream(connection, stream_id)
        assert await stream_head(connection, stream_id) == (3, recorded[-1].hash)
    assert [(e.event_id, e.hash, e.data, e.recorded_at) for e in stored] == [
        (e.event_id, e.hash, e.data, e.recorded_at) for e in recorded
    ]
    assert [e.stream_version for e in stored] == [1, 2, 3]
    assert stored[0].position < stored[1].position < stored[2].position
    assert verify_stream(stored) is None


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET data = '{}' WHERE position = $1",
        "DELETE FROM events WHERE position = $1",
        "TRUNCATE events CASCADE",
        "UPDATE ledger_log SET seq = seq WHERE position = $1",
        "DELETE FROM ledger_log WHERE position = $1",
        "TRUNCATE ledger_log",
    ],
)
async def test_the_ledger_refuses_update_delete_and_truncate(
    pool: asyncpg.Pool, statement: str
) -> None:
    _, recorded = await append_committed(pool)
    position = recorded[0].position
    async with pool.acquire() as connection:
        await sequence_all(connection)  # so the ledger_log row exists too
        arguments = (position,) if "$1" in statement else ()
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await connection.execute(statement, *arguments)
        assert (
            await connection.fetchval("SELECT count(*) FROM events WHERE position = $1", position)
            == 1
        )


async def test_concurrent_appends_at_one_version_exactly_one_wins(pool: asyncpg.Pool) -> None:
    stream_id, _ = await append_committed(pool)
    writers = 16

    async def attempt() -> str:
        async with pool.acquire() as connection:
            try:
                async with connection.transaction():
                    await append(
                        connection, stream_id, 3, [extra_decision(stream_id)], datetime.now(UTC)
                    )
            except ConcurrencyConflict:
                return "conflict"
        return "appended"

    outcomes = await asyncio.gather(*(attempt() for _ in range(writers)))
    assert outcomes.count("appended") == 1
    assert outcomes.count("conflict") == writers - 1
    async with pool.acquire() as connection:
        stored = await read_stream(connection, stream_id)
    assert [e.stream_version for e in stored] == [1, 2, 3, 4]
    assert verify_stream(stored) is None


async def test_a_stale_or_future_expected_version_conflicts(pool: asyncpg.Pool) -> None:
    stream_id, _ = await append_committed(pool)
    async with pool.acquire() as connection:
        for expected in (0, 2, 5):
            with pytest.raises(ConcurrencyConflict):
                async with connection.transaction():
                    await append(
                        connection,
                        stream_id,
                        expected,
                        [extra_decision(stream_id)],
                        datetime.now(UTC),
                    )
        assert (await stream_head(connection, stream_id))[0] == 3


async def test_nothing_is_committed_when_the_handler_rolls_back(pool: asyncpg.Pool) -> None:
    stream_id, new_events = application_events()
    async with pool.acquire() as connection:
        transaction = connection.transaction()
        await transaction.start()
        await append(connection, stream_id, 0, new_events, datetime.now(UTC))
        assert len(await read_stream(connection, stream_id)) == 3  # visible inside
        await transaction.rollback()  # the handler failed after appending
        assert await read_stream(connection, stream_id) == []


async def test_a_superuser_edit_of_one_byte_breaks_the_chain(make_database: MakeDatabase) -> None:
    url = await make_database()  # its own database: this test corrupts it on purpose
    connection = await connect(url)
    try:
        stream_id, new_events = application_events()
        async with connection.transaction():
            await append(connection, stream_id, 0, new_events, datetime.now(UTC))
        async with connection.transaction():
            await connection.execute(
                "ALTER TABLE events DISABLE TRIGGER events_reject_update_delete"
            )
            await connection.execute(
                "UPDATE events SET data = jsonb_set(data, '{amount}', '\"5001.00\"') "
                "WHERE stream_id = $1 AND stream_version = 1",
                stream_id,
            )
            await connection.execute(
                "ALTER TABLE events ENABLE TRIGGER events_reject_update_delete"
            )
        broken = verify_stream(await read_stream(connection, stream_id))
        assert broken is not None
        assert broken.stream_version == 1
        assert "contents" in broken.reason
    finally:
        await connection.close()
