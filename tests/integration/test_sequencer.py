"""The sequencer: a contiguous `seq` over committed events that never skips a late commit.

Each test gets its own database and drives the sequencer directly, so what one step adds
is deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from ledger.chain import verify_stream
from ledger.db import Connection, connect, create_pool
from ledger.seals import Seal
from ledger.sequencer import (
    Sequencer,
    SequencerSettings,
    sequence_all,
    sequence_batch,
)
from ledger.signing import SigningKey
from ledger.store import append, read_stream
from ledger.witness import Witness
from tests.conftest import MakeDatabase
from tests.integration.test_store import application_events
from tests.support.helpers import wait_until_sequenced, whole_feed


@pytest.fixture
async def own_url(make_database: MakeDatabase) -> str:
    return await make_database()


@pytest.fixture
async def own_pool(own_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(own_url, min_size=1, max_size=40)
    yield pool
    await pool.close()


async def append_in(connection: Connection) -> list[int]:
    """Append one application's three events in the caller's open transaction."""
    stream_id, new_events = application_events()
    recorded = await append(connection, stream_id, 0, new_events, datetime.now(UTC))
    return [e.position for e in recorded]


async def seq_by_position(connection: Connection) -> dict[int, int]:
    rows = await connection.fetch("SELECT position, seq FROM ledger_log")
    return {row["position"]: row["seq"] for row in rows}


async def test_a_late_commit_is_waited_for_never_passed_over(own_pool: asyncpg.Pool) -> None:
    async with (
        own_pool.acquire() as early,
        own_pool.acquire() as late,
        own_pool.acquire() as sequencer,
    ):
        # `early` takes its positions first and holds its transaction open ...
        early_tx = early.transaction()
        await early_tx.start()
        early_positions = await append_in(early)
        # ... while `late` appends after it and commits first.
        async with late.transaction():
            late_positions = await append_in(late)
        assert min(late_positions) > max(early_positions)

        # A reader that follows positions now sees the late writer's events and would
        # remember "after max(late_positions)": the early events would never be read.
        visible = await sequencer.fetch("SELECT position FROM events ORDER BY position")
        assert [r["position"] for r in visible] == late_positions

        # The sequencer does not pass over the open transaction: it waits.
        assert await sequence_all(sequencer) == 0
        assert await seq_by_position(sequencer) == {}

        await early_tx.commit()
        assert await sequence_all(sequencer) == 6
        seqs = await seq_by_position(sequencer)
        assert [seqs[p] for p in early_positions + late_positions] == [1, 2, 3, 4, 5, 6]


async def test_an_older_transaction_with_a_higher_position_is_sequenced_first(
    own_pool: asyncpg.Pool,
) -> None:
    async with (
        own_pool.acquire() as older,
        own_pool.acquire() as younger,
        own_pool.acquire() as sequencer,
    ):
        older_tx = older.transaction()
        await older_tx.start()
        await older.fetchval("SELECT pg_current_xact_id()")  # takes its transaction id now
        async with younger.transaction():
            younger_positions = await append_in(younger)
        older_positions = await append_in(older)  # a higher position, an older transaction
        assert min(older_positions) > max(younger_positions)

        assert await sequence_all(sequencer) == 0  # the younger one waits behind the older
        await older_tx.commit()
        assert await sequence_all(sequencer) == 6
        seqs = await seq_by_position(sequencer)
        # (transaction id, position) order: the older transaction's events come first.
        assert [seqs[p] for p in older_positions + younger_positions] == [1, 2, 3, 4, 5, 6]


async def test_rolled_back_positions_leave_no_hole_in_seq(own_pool: asyncpg.Pool) -> None:
    async with own_pool.acquire() as connection:
        async with connection.transaction():
            kept_first = await append_in(connection)
        with contextlib.suppress(RuntimeError):
            async with connection.transaction():
                await append_in(connection)
                raise RuntimeError("roll back")
        async with connection.transaction():
            kept_last = await append_in(connection)
        assert min(kept_last) - max(kept_first) > 1  # a hole in positions
        assert await sequence_all(connection, batch_size=2) == 6  # several batches
        feed = await whole_feed(connection)
    assert [e.seq for e in feed] == [1, 2, 3, 4, 5, 6]
    assert [e.position for e in feed] == kept_first + kept_last


async def test_many_writers_and_a_tailing_reader_see_every_event_exactly_once(
    own_pool: asyncpg.Pool, own_url: str
) -> None:
    sequencer = Sequencer(
        own_url, SequencerSettings(batch_size=50, poll_interval=0.02, retry_interval=0.05)
    )
    running = asyncio.create_task(sequencer.run())
    writers, rounds = 12, 15
    committed: list[int] = []

    async def writer() -> None:
        for round_number in range(rounds):
            async with own_pool.acquire() as connection:
                transaction = connection.transaction()
                await transaction.start()
                positions = await append_in(connection)
                await asyncio.sleep(0.001 * (round_number % 3))  # commit out of order
                if round_number % 5 == 4:
                    await transaction.rollback()  # leaves a hole in positions
                else:
                    await transaction.commit()
                    committed.extend(positions)

    seen: list[tuple[int, int]] = []

    async def reader(stop: asyncio.Event) -> None:
        async with own_pool.acquire() as connection:
            while True:
                after = seen[-1][0] if seen else 0
                rows = await connection.fetch(
                    "SELECT seq, position FROM ledger_log WHERE seq > $1 ORDER BY seq LIMIT 100",
                    after,
                )
                seen.extend((row["seq"], row["position"]) for row in rows)
                if not rows:
                    if stop.is_set() and len(seen) >= len(committed):
                        return
                    await asyncio.sleep(0.01)

    stop = asyncio.Event()
    reading = asyncio.create_task(reader(stop))
    try:
        await asyncio.gather(*(writer() for _ in range(writers)))
        stop.set()
        await asyncio.wait_for(reading, timeout=30)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert [s for s, _ in seen] == list(range(1, len(seen) + 1))  # contiguous, once each
    assert sorted(p for _, p in seen) == sorted(committed)  # every committed event, no other
    assert len(committed) == writers * rounds * 3 * 4 // 5


async def test_leadership_passes_on_when_the_leader_dies(
    own_pool: asyncpg.Pool, own_url: str
) -> None:
    settings = SequencerSettings(batch_size=100, poll_interval=0.02, retry_interval=0.05)
    first, second = Sequencer(own_url, settings), Sequencer(own_url, settings)
    tasks = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
    try:
        await _until(lambda: first.is_leader or second.is_leader)
        await asyncio.sleep(0.2)
        assert first.is_leader != second.is_leader  # exactly one leads
        leader, follower = (first, second) if first.is_leader else (second, first)

        async with own_pool.acquire() as connection, connection.transaction():
            await append_in(connection)
        await wait_until_sequenced(own_pool, timeout=10)

        # Kill the leader's session as a crash would: PostgreSQL drops its advisory lock.
        assert leader.connection is not None
        pid = leader.connection.get_server_pid()
        async with own_pool.acquire() as connection:
            assert await connection.fetchval("SELECT pg_terminate_backend($1)", pid)
        await _until(lambda: follower.is_leader)

        async with own_pool.acquire() as connection, connection.transaction():
            await append_in(connection)
        await wait_until_sequenced(own_pool, timeout=10)
        async with own_pool.acquire() as connection:
            feed = await whole_feed(connection)
            assert [e.seq for e in feed] == [1, 2, 3, 4, 5, 6]
            total = await connection.fetchval("SELECT count(*) FROM events")
            assert total == 6
            for stream_id in {e.stream_id for e in feed}:
                assert verify_stream(await read_stream(connection, stream_id)) is None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_two_sequencers_at_once_cannot_corrupt_the_log(
    own_pool: asyncpg.Pool, own_url: str
) -> None:
    """Belt and braces: even without the leadership lock, batches serialise on the cursor."""
    async with own_pool.acquire() as connection, connection.transaction():
        for _ in range(20):
            await append_in(connection)
    first, second = await connect(own_url), await connect(own_url)
    try:
        added = await asyncio.gather(sequence_all(first, 7), sequence_all(second, 7))
    finally:
        await first.close()
        await second.close()
    assert sum(added) == 60
    async with own_pool.acquire() as connection:
        assert [e.seq for e in await whole_feed(connection)] == list(range(1, 61))


LOG_IN_SEQ_ORDER = """
SELECT l.seq, l.position FROM ledger_log l ORDER BY l.seq
"""

# The order the sequencer must follow: the log, once complete, is exactly this.
EVENTS_IN_READING_ORDER = "SELECT position FROM events ORDER BY transaction_id, position"


async def test_one_batch_is_one_statement_that_notifies_its_last_seq(own_url: str) -> None:
    listener, connection = await connect(own_url), await connect(own_url)
    announced: asyncio.Queue[str] = asyncio.Queue()

    def on_sequenced(*arguments: object) -> None:
        announced.put_nowait(str(arguments[-1]))

    try:
        await listener.add_listener("ledger_sequenced", on_sequenced)
        for _ in range(3):
            async with connection.transaction():
                await append_in(connection)
        assert await sequence_batch(connection, limit=4) == 4
        assert await sequence_batch(connection, limit=4) == 4
        assert await sequence_batch(connection, limit=4) == 1
        assert await sequence_batch(connection, limit=4) == 0  # nothing new: no notification
        # The function's own answer: how many it added, and the log's last seq either way.
        row = await connection.fetchrow("SELECT * FROM ledger_sequence_batch(10)")
        assert row is not None
        assert (row["added"], row["last_seq"]) == (0, 9)
        async with connection.transaction():
            await append_in(connection)
        assert await sequence_batch(connection) == 3
        # One session's notifications arrive in commit order: had an empty batch notified,
        # its payload would sit between these.
        payloads = [await asyncio.wait_for(announced.get(), 10) for _ in range(4)]
        assert payloads == ["4", "8", "9", "12"]
        assert announced.empty()
        # No transaction was left open: the cursor and the log agree from any session.
        cursor = await listener.fetchrow("SELECT last_seq, last_position FROM ledger_cursor")
        assert cursor is not None
        last = await listener.fetchrow("SELECT seq, position FROM ledger_log ORDER BY seq DESC")
        assert last is not None
        assert (cursor["last_seq"], cursor["last_position"]) == (last["seq"], last["position"])
    finally:
        await listener.close()
        await connection.close()


async def test_an_empty_poll_writes_nothing(own_pool: asyncpg.Pool) -> None:
    """No cursor lock when there is nothing to log: no transaction id, so no commit record
    and no WAL flush for the polls that find nothing."""
    async with own_pool.acquire() as connection:
        async with connection.transaction():
            await append_in(connection)
        assert await sequence_all(connection) == 3
        for expect_work in (False, True):
            if expect_work:
                async with connection.transaction():
                    await append_in(connection)
            async with connection.transaction():
                added = await sequence_batch(connection)
                assigned = await connection.fetchval("SELECT pg_current_xact_id_if_assigned()")
            assert added == (3 if expect_work else 0)
            assert (assigned is not None) == expect_work


async def test_batches_under_concurrent_writers_log_every_event_once_in_reading_order(
    own_pool: asyncpg.Pool,
) -> None:
    """Writers that commit out of order and roll back, two batch loops racing each other:
    the log is contiguous, holds every committed event exactly once, and follows
    (transaction_id, position): an event skipped below the horizon would be missing or out
    of that order."""
    writers, rounds = 8, 10
    writing = True

    async def writer() -> None:
        for round_number in range(rounds):
            async with own_pool.acquire() as connection:
                transaction = connection.transaction()
                await transaction.start()
                await append_in(connection)
                await asyncio.sleep(0.001 * (round_number % 3))
                if round_number % 4 == 3:
                    await transaction.rollback()
                else:
                    await transaction.commit()

    async def batches() -> int:
        added = 0
        async with own_pool.acquire() as connection:
            while writing:
                added += await sequence_batch(connection, limit=5)
                await asyncio.sleep(0)
            added += await sequence_all(connection, batch_size=5)
        return added

    sequencing = [asyncio.create_task(batches()) for _ in range(2)]
    try:
        await asyncio.gather(*(writer() for _ in range(writers)))
    finally:
        writing = False
        added = await asyncio.wait_for(asyncio.gather(*sequencing), 30)
    async with own_pool.acquire() as connection:
        log = await connection.fetch(LOG_IN_SEQ_ORDER)
        expected = [r["position"] for r in await connection.fetch(EVENTS_IN_READING_ORDER)]
    committed_rounds = sum(1 for round_number in range(rounds) if round_number % 4 != 3)
    assert len(expected) == writers * committed_rounds * 3
    assert sum(added) == len(expected)
    assert [r["seq"] for r in log] == list(range(1, len(expected) + 1))
    assert [r["position"] for r in log] == expected


async def test_a_batch_waiting_for_the_cursor_continues_from_the_batch_before_it(
    own_pool: asyncpg.Pool,
) -> None:
    """The batch statement's snapshot is taken after the cursor lock is granted: it sees the
    log rows and cursor of the batch it waited for, and the events committed meanwhile."""
    async with (
        own_pool.acquire() as first,
        own_pool.acquire() as second,
        own_pool.acquire() as writer,
    ):
        async with writer.transaction():
            await append_in(writer)
        holding = first.transaction()
        await holding.start()
        assert await sequence_batch(first) == 3  # holds the cursor's row lock until commit
        waiting = asyncio.create_task(sequence_batch(second))
        await _until_blocked_on_a_lock(writer, second.get_server_pid())
        async with writer.transaction():
            await append_in(writer)  # committed while `second` waits
        await holding.commit()
        assert await asyncio.wait_for(waiting, 10) == 3
        log = await writer.fetch(LOG_IN_SEQ_ORDER)
        expected = [r["position"] for r in await writer.fetch(EVENTS_IN_READING_ORDER)]
    assert [r["seq"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert [r["position"] for r in log] == expected


class StuckWitness(Witness):
    """A witness whose writes wait until released (slow storage, say)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def record(self, connection: Connection, seal: Seal) -> int:
        self.entered.set()
        await self.release.wait()
        return await super().record(connection, seal)


async def test_a_seal_that_waits_holds_up_no_numbering(
    own_pool: asyncpg.Pool, own_url: str, tmp_path: Path
) -> None:
    """The leader seals beside its batches, on a connection of its own: while a seal waits
    for its witness, numbering goes on, and the next seal covers what was numbered meanwhile."""
    witness = StuckWitness(tmp_path)
    witness.prepare()
    sequencer = Sequencer(
        own_url,
        SequencerSettings(batch_size=50, poll_interval=0.02, retry_interval=0.05, seal_interval=0),
        signing_key=SigningKey.generate(),
        witness=witness,
    )
    running = asyncio.create_task(sequencer.run())
    try:
        async with own_pool.acquire() as connection, connection.transaction():
            await append_in(connection)
        await asyncio.wait_for(witness.entered.wait(), 10)  # the first seal is stuck
        async with own_pool.acquire() as connection, connection.transaction():
            await append_in(connection)
        assert await wait_until_sequenced(own_pool, timeout=10) == 6
        witness.release.set()
        async with own_pool.acquire() as observer:
            deadline = time.monotonic() + 10
            while await observer.fetchval("SELECT max(tree_size) FROM seals") != 6:
                assert time.monotonic() < deadline, "no seal followed the numbering"
                await asyncio.sleep(0.02)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def _until_blocked_on_a_lock(observer: Connection, pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await observer.fetchval(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
    ):
        if time.monotonic() > deadline:
            raise AssertionError("the second batch never waited for the cursor lock")
        await asyncio.sleep(0.01)


async def test_a_confused_connection_is_replaced_not_fatal(
    own_pool: asyncpg.Pool, own_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend terminated while its connection is idle can make asyncpg's next query raise
    InternalClientError ("another operation is in progress"): the sequencer reconnects and
    goes on, as after any lost connection, instead of ending."""
    batches = 0

    async def confused_once(connection: Connection, limit: int = 1000) -> int:
        nonlocal batches
        batches += 1
        if batches == 1:
            raise asyncpg.InternalClientError("cannot switch to state 12")
        return await sequence_batch(connection, limit)

    monkeypatch.setattr("ledger.sequencer.sequence_batch", confused_once)
    sequencer = Sequencer(
        own_url, SequencerSettings(batch_size=50, poll_interval=0.02, retry_interval=0.05)
    )
    running = asyncio.create_task(sequencer.run())
    try:
        async with own_pool.acquire() as connection, connection.transaction():
            await append_in(connection)
        assert await wait_until_sequenced(own_pool, timeout=10) == 3
        assert batches > 1
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
