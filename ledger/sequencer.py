"""The sequencer: gives every committed event a contiguous ledger `seq`.

Exactly one sequencer leads at a time across every worker and process: the one holding a
session-level PostgreSQL advisory lock on its own dedicated connection. If that connection
dies (process killed, network cut, backend terminated) PostgreSQL releases the lock and the
next contender takes over within one `retry_interval`. Even two leaders at once could not
corrupt the log: each batch locks the single cursor row first, and `seq` is a primary key.

Writers never wait for the sequencer, and do not wake it either: a NOTIFY from every
writing transaction would serialise their commits (schema.sql says why). It polls, with an
adaptive interval: `min_poll_interval` while batches keep finding events, doubling after
each empty poll up to `poll_interval` while the ledger is idle. Under load an event waits
about `min_poll_interval` for its `seq`; the first event after a quiet spell waits at most
`poll_interval`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import asyncpg

from ledger import sql
from ledger.db import Connection, connect

logger = logging.getLogger(__name__)

# Arbitrary but fixed: every process must contend for the same key.
LEADERSHIP_LOCK_KEY = 7250115081426013002


async def sequence_batch(connection: Connection, limit: int = 1000) -> int:
    """Add the next committed events (at most `limit`) to the ledger log; return how many.

    Owns its transaction: the log rows and the cursor that covers them commit together.
    """
    async with connection.transaction():
        cursor = await connection.fetchrow(sql.LOCK_CURSOR)
        assert cursor is not None, "schema.sql inserts the cursor row"
        row = await connection.fetchrow(
            sql.SEQUENCE_BATCH,
            cursor["last_transaction_id"],
            cursor["last_position"],
            cursor["last_seq"],
            limit,
        )
        assert row is not None
        added: int = row["added"]
        if added:
            await connection.execute(sql.NOTIFY_SEQUENCED, str(row["last_seq"]))
        return added


async def sequence_all(connection: Connection, batch_size: int = 1000) -> int:
    """Sequence until nothing below the horizon is left; return how many were added."""
    total = 0
    while added := await sequence_batch(connection, batch_size):
        total += added
    return total


@dataclass
class SequencerSettings:
    batch_size: int = 1000
    poll_interval: float = 0.1  # the longest wait between polls, when idle
    retry_interval: float = 1.0
    min_poll_interval: float = 0.005  # the wait between polls while events keep coming


class Sequencer:
    """Contends for leadership and, while leading, keeps the ledger log up to date."""

    def __init__(self, dsn: str, settings: SequencerSettings | None = None) -> None:
        self._dsn = dsn
        self._settings = settings or SequencerSettings()
        self.is_leader = False
        self.connection: Connection | None = None

    async def run(self) -> None:
        """Run until cancelled. Connection failures are logged and retried, never raised."""
        while True:
            try:
                await self._contend_and_lead()
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                logger.warning("sequencer lost its connection (%s); retrying", error)
            finally:
                self.is_leader = False
                await self._close()
            await asyncio.sleep(self._settings.retry_interval)

    async def _contend_and_lead(self) -> None:
        self.connection = await connect(self._dsn)
        # Polling rather than blocking in pg_advisory_lock keeps shutdown and connection
        # loss simple to handle; a follower takes over within one retry_interval.
        while not await self.connection.fetchval(sql.TRY_LEADERSHIP, LEADERSHIP_LOCK_KEY):  # noqa: ASYNC110
            await asyncio.sleep(self._settings.retry_interval)
        self.is_leader = True
        logger.info("sequencer: this process now leads")
        interval = self._settings.min_poll_interval
        while True:
            added = await sequence_all(self.connection, self._settings.batch_size)
            if added:
                interval = self._settings.min_poll_interval
            else:
                interval = min(interval * 2, self._settings.poll_interval)
            await asyncio.sleep(interval)

    async def _close(self) -> None:
        if self.connection is not None:
            connection, self.connection = self.connection, None
            # Closing the session releases the advisory lock for the next leader.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=2)
            if not connection.is_closed():
                connection.terminate()
