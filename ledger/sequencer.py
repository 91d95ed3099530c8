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

Given a signing key, the leader also seals what it logs (`_seal`), beside its batches on a
second connection: after a batch commits, at most once per `seal_interval` (default 1 s), so
every event is covered by a signed seal about a second after its commit, and a superuser's
forgery of a recent event has that long, not the background sealer's minute, before it
would be signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Coroutine
from typing import Any

import asyncpg

from ledger import seal_sql, sql
from ledger.db import Connection, connect
from ledger.errors import LedgerIntegrityError
from ledger.seals import create_seal, latest_seal, system_clock
from ledger.signing import SigningKey
from ledger.witness import Witness

logger = logging.getLogger(__name__)

# Arbitrary but fixed: every process must contend for the same key.
LEADERSHIP_LOCK_KEY = 7250115081426013002

# The sequencer's sessions in pg_stat_activity: each contender's (batches, leadership), and
# the leader's second one, for its seals.
APPLICATION_NAME = "lending-ledger sequencer"
SEALING_APPLICATION_NAME = "lending-ledger sequencer seals"


async def sequence_batch(connection: Connection, limit: int = 1000) -> int:
    """Add the next committed events (at most `limit`) to the ledger log; return how many.

    One statement, one round trip (schema.sql, ledger_sequence_batch): on a connection
    outside a transaction it is its own transaction, so the log rows, the cursor that covers
    them and the notification commit together. Inside a caller's transaction they commit
    with it instead.
    """
    row = await connection.fetchrow(sql.SEQUENCE_BATCH, limit)
    assert row is not None
    added: int = row["added"]
    return added


async def sequence_all(connection: Connection, batch_size: int = 1000) -> int:
    """Sequence until nothing below the horizon is left; return how many were added."""
    total = 0
    while added := await sequence_batch(connection, batch_size):
        total += added
    return total


@dataclasses.dataclass
class SequencerSettings:
    batch_size: int = 1000
    poll_interval: float = 0.1  # the longest wait between polls, when idle
    retry_interval: float = 1.0
    min_poll_interval: float = 0.005  # the wait between polls while events keep coming
    # Seconds between the seals the leader takes after its batches (with a signing key);
    # 0: after every batch; None: the sequencer does not seal. Per batch is affordable
    # (docs/benchmarks.md, "Per-batch sealing"), but under load a batch can hold a single
    # event and every seal is a row and a witness file for good: at most one a second keeps
    # that to 86,400 a day while bounding the forgery window to about a second.
    seal_interval: float | None = 1.0
    # Its seals check the whole log by count and max (O(n)) at most this often; the cheap
    # checks of ledger.seals._check_base run on every seal.
    full_check_interval: float = 60.0
    # After a refusal (the stored ledger was altered), wait this long before trying again.
    refused_retry_interval: float = 30.0


def sequencer_settings_for(
    base: SequencerSettings | None, batch_seal_interval_ms: int
) -> SequencerSettings:
    """`base` (default settings if None) with the configured seal interval; 0 ms: no seals."""
    seal_interval = batch_seal_interval_ms / 1000 if batch_seal_interval_ms > 0 else None
    return dataclasses.replace(base or SequencerSettings(), seal_interval=seal_interval)


class Sequencer:
    """Contends for leadership and, while leading, keeps the ledger log up to date (and, with
    a signing key, sealed)."""

    def __init__(
        self,
        dsn: str,
        settings: SequencerSettings | None = None,
        *,
        signing_key: SigningKey | None = None,
        witness: Witness | None = None,
    ) -> None:
        self._dsn = dsn
        self._settings = settings or SequencerSettings()
        self.is_leader = False
        self.connection: Connection | None = None
        self._seal_connection: Connection | None = None
        self._key = signing_key if self._settings.seal_interval is not None else None
        self._witness = witness
        self._logged = asyncio.Event()  # set: the log may hold rows no seal covers yet
        self._next_seal_at = 0.0
        self._next_full_check_at = 0.0
        self.seal_seconds: list[float] = []
        """Duration of each of the last seals this sequencer took (for measurements)."""

    @property
    def dsn(self) -> str:
        """The URL it connects with (the direct one, behind a pooler)."""
        return self._dsn

    async def run(self) -> None:
        """Run until cancelled. Connection failures are logged and retried, never raised."""
        while True:
            try:
                await self._contend_and_lead()
            except asyncio.CancelledError:
                raise
            # InternalClientError too: asyncpg raises it for the next query on a connection
            # whose backend was terminated while idle, before it has noticed the loss.
            except (
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
            ) as error:
                logger.warning("sequencer lost its connection (%s); retrying", error)
            finally:
                self.is_leader = False
                await self._close()
            await asyncio.sleep(self._settings.retry_interval)

    async def _contend_and_lead(self) -> None:
        self.connection = await connect(self._dsn, application_name=APPLICATION_NAME)
        # Polling rather than blocking in pg_advisory_lock keeps shutdown and connection
        # loss simple to handle; a follower takes over within one retry_interval.
        while not await self.connection.fetchval(sql.TRY_LEADERSHIP, LEADERSHIP_LOCK_KEY):  # noqa: ASYNC110
            await asyncio.sleep(self._settings.retry_interval)
        self.is_leader = True
        logger.info("sequencer: this process now leads")
        if self._key is None:
            await self._sequence(self.connection)
            return
        self._logged.set()  # unknown at start: look
        self._seal_connection = await connect(self._dsn, application_name=SEALING_APPLICATION_NAME)
        await _until_one_fails(
            self._sequence(self.connection), self._seal(self._seal_connection, self._key)
        )

    async def _sequence(self, connection: Connection) -> None:
        interval = self._settings.min_poll_interval
        while True:
            added = 0
            while batch := await sequence_batch(connection, self._settings.batch_size):
                added += batch
                self._logged.set()
            if added:
                interval = self._settings.min_poll_interval
            else:
                interval = min(interval * 2, self._settings.poll_interval)
            await asyncio.sleep(interval)

    async def _seal(self, connection: Connection, key: SigningKey) -> None:
        """Seal what the batches log, at most once per `seal_interval`, beside them.

        On a connection of its own, so a seal (a dozen round trips, one signature, and the
        whole-log check now and then) never holds up numbering: under load, sealing between
        batches on the batches' connection made every event committed meanwhile wait for it,
        which set the tail of the sequencing lag. Its transaction still holds the horizon
        back while it writes, from its first node insert to its commit.

        Ordering: each seal is its own transaction, begun after the batch it follows has
        committed:
        - it covers only committed log rows, so every seq it seals is already readable and
          provable by everyone, and a crash between the two leaves sequenced rows unsealed
          for the next seal, never a seal of rows that roll back;
        - a seal that refuses (LedgerIntegrityError: the stored ledger was altered) rolls
          back alone and is logged as an ERROR: numbering, the feed and the SSE stream go on,
          and it is tried again after `refused_retry_interval`;
        - the sealing lock is only tried (wait=False), so while an on-demand seal holds it
          this one looks again after `poll_interval` rather than waiting.
        The window in which a committed event is not yet covered by a signature is then its
        sequencing lag plus at most `seal_interval` plus one seal's duration.
        """
        interval = self._settings.seal_interval or 0.0
        while True:
            await self._logged.wait()
            await asyncio.sleep(max(self._next_seal_at - time.monotonic(), 0.0))
            self._logged.clear()  # what is logged from here on waits for the next seal
            now = time.monotonic()
            full_check = now >= self._next_full_check_at
            started = time.perf_counter()
            try:
                async with connection.transaction():
                    seal = await create_seal(
                        connection, key, system_clock, wait=False, check_whole_log=full_check
                    )
            except LedgerIntegrityError as refused:
                logger.error("sequencer: refusing to seal: %s", refused.detail)
                self._next_seal_at = now + self._settings.refused_retry_interval
                self._logged.set()
                continue
            self._next_seal_at = now + interval
            if full_check:
                self._next_full_check_at = now + self._settings.full_check_interval
            if seal is None:
                # Nothing new, or another sealer holds the lock: look which.
                latest = await latest_seal(connection)
                last_seq = await connection.fetchval(seal_sql.SELECT_LAST_SEQ)
                if last_seq > (latest.tree_size if latest is not None else 0):
                    self._next_seal_at = max(self._next_seal_at, now + self._settings.poll_interval)
                    self._logged.set()
                continue
            self.seal_seconds = [*self.seal_seconds[-999:], time.perf_counter() - started]
            logger.debug("sequencer: sealed the ledger log up to seq %d", seal.tree_size)
            if self._witness is not None:
                await self._witness.record(connection, seal)

    async def _close(self) -> None:
        for connection in (self._seal_connection, self.connection):
            if connection is None:
                continue
            # Closing the session releases the advisory lock for the next leader.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=2)
            if not connection.is_closed():
                connection.terminate()
        self.connection = self._seal_connection = None


async def _until_one_fails(*work: Coroutine[Any, Any, None]) -> None:
    """Run `work` concurrently until one of them raises (then raise that, the others
    cancelled) or this is cancelled (then all of them are)."""
    tasks = [asyncio.create_task(each) for each in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
