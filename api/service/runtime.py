"""The running service's resources: the pool, the sequencer, and readiness.

Nothing here is created at import time; the app's lifespan starts and stops it. Start-up
does not block on the database: the service answers /healthz at once and /readyz with 503
until it has connected and applied the schema, retrying with backoff meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from api.service import metrics
from api.service.dbrole import ensure_schema
from api.service.errors import DATABASE_UNAVAILABLE, ServiceUnavailable
from api.service.live import LedgerTail, LiveSettings
from api.service.settings import Settings
from ledger import idempotency
from ledger.db import connect, create_pool
from ledger.log_status import (
    LagObserver,
    LogStatus,
    read_log_status,
    replayed_up_to,
    replica_lag_seconds,
)
from ledger.scoring import ScoringModel, get_model
from ledger.sealer import Sealer
from ledger.sequencer import Sequencer, SequencerSettings, sequencer_settings_for
from ledger.signing import SigningKey, load_or_create_signing_key
from ledger.witness import witness_for

logger = logging.getLogger(__name__)


_THREAD_STOP_SECONDS = 10.0


async def run_in_own_loop(work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `work()` on an event loop of its own in a thread, until it ends or this coroutine
    is cancelled (which cancels it there and waits for it).

    For the sequencer: on the request loop, each of its round trips would wait behind every
    request ready to run, and under load that, not the database, made an event wait tens
    of milliseconds for its `seq`. Its own loop resumes it as soon as the GIL allows."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(work())
    caller = asyncio.get_running_loop()
    stopped = asyncio.Event()

    def run() -> None:
        try:
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
        finally:
            with contextlib.suppress(RuntimeError):  # the caller's loop is already closed
                caller.call_soon_threadsafe(stopped.set)

    thread = threading.Thread(target=run, name="ledger-sequencer", daemon=True)
    thread.start()
    # Awaited as an event, not joined from an executor thread: a join left waiting in the
    # default executor, if the work ever failed to stop, hung this loop's own shutdown
    # (which waits for its executor), as a test session's teardown once did.
    try:
        await stopped.wait()
    finally:
        if not stopped.is_set():
            loop.call_soon_threadsafe(task.cancel)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), _THREAD_STOP_SECONDS)
        if stopped.is_set():
            loop.close()
        else:
            logger.warning(
                "the sequencer's thread did not stop within %.0f s of its cancellation; "
                "left to end with the process",
                _THREAD_STOP_SECONDS,
            )


class LedgerService:
    def __init__(
        self,
        settings: Settings,
        database_url: str,
        sequencer_settings: SequencerSettings | None = None,
        live_settings: LiveSettings | None = None,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        # Session-level work (the sequencer's advisory lock, LISTEN, applying the schema)
        # needs a real session: behind pgBouncer in transaction mode, a direct URL.
        self.direct_database_url = settings.direct_database_url or database_url
        self.scoring_model: ScoringModel = get_model(settings.scoring_model)
        self._pool: asyncpg.Pool | None = None
        self._read_pool: asyncpg.Pool | None = None
        self._ready = asyncio.Event()
        self._last_error: str | None = "starting"
        self.lag = LagObserver()
        # Generated on first start when absent; a broken key file stops start-up here.
        self.signing_key: SigningKey = load_or_create_signing_key(settings.signing_key_path)
        self.witness = witness_for(settings.witness_dir)
        # None where another process sequences (`serve`: api/service/sequencer_process.py).
        self.sequencer: Sequencer | None = (
            Sequencer(
                self.direct_database_url,
                sequencer_settings_for(sequencer_settings, settings.batch_seal_interval_ms),
                signing_key=self.signing_key,
                witness=self.witness,
            )
            if settings.sequencer_in_workers
            else None
        )
        self.tail = LedgerTail(self.direct_database_url, live_settings)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None or not self._ready.is_set():
            raise ServiceUnavailable(f"the database is not ready ({self._last_error})")
        return self._pool

    async def read_pool_at(self, min_lsn: str | None) -> asyncpg.Pool:
        """The pool to read from for a caller that has seen the write at `min_lsn` (a
        response's `X-Ledger-LSN`): the replica once it has replayed that far (waiting at
        most `read_min_lsn_wait_ms`), else the primary."""
        replica = self._read_pool
        if replica is None:
            return self.pool
        if min_lsn is None:
            return replica
        deadline = time.monotonic() + self.settings.read_min_lsn_wait_ms / 1000
        delay = 0.005
        try:
            async with replica.acquire(timeout=1) as connection:
                while not await replayed_up_to(connection, min_lsn):
                    if time.monotonic() + delay > deadline:
                        return self.pool
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.1)
        except (*DATABASE_UNAVAILABLE, TimeoutError, asyncpg.PostgresError) as error:
            logger.warning("read replica unavailable (%r); reading the primary", error)
            return self.pool
        return replica

    async def log_status(self) -> tuple[LogStatus, float]:
        """The ledger's background work (ledger/log_status.py) and the sequencer lag in
        seconds, from the primary."""
        async with self.pool.acquire(timeout=2) as connection:
            status = await read_log_status(connection)
        return status, self.lag.lag_seconds(status)

    async def replica_lag(self) -> float | None:
        """Seconds the replica is behind (None: no replica, or not connected)."""
        if self._read_pool is None:
            return None
        try:
            async with self._read_pool.acquire(timeout=2) as connection:
                return await replica_lag_seconds(connection)
        except (*DATABASE_UNAVAILABLE, TimeoutError, asyncpg.PostgresError):
            return None

    def sample_process_metrics(self) -> None:
        """This worker's pool and stream gauges (api/service/metrics.py)."""
        pool = self._pool
        if pool is not None:
            size = pool.get_size()
            metrics.POOL_SIZE.set(size)
            metrics.POOL_IN_USE.set(size - pool.get_idle_size())
        metrics.SSE_SUBSCRIBERS.set(self.tail.subscribers)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def status_detail(self) -> str | None:
        return None if self.ready else self._last_error

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._connect(), name="ledger-connect"))

    def run_in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` until it ends or the service stops (then it is cancelled)."""
        self._tasks.append(asyncio.create_task(work, name=name))

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _connect(self) -> None:
        delay = 0.2
        while True:
            try:
                connection = await connect(
                    self.direct_database_url,
                    statement_cache_size=self.settings.statement_cache_size,
                )
                try:
                    # Applied if this role may; else it must be current (api/service/dbrole.py).
                    await ensure_schema(connection)
                finally:
                    await connection.close()
                self._pool = await create_pool(
                    self.database_url,
                    min_size=1,
                    max_size=self.settings.pool_size,
                    statement_cache_size=self.settings.statement_cache_size,
                )
                break
            except DATABASE_UNAVAILABLE as error:
                self._last_error = f"cannot reach the database: {error}"
                logger.warning("%s; retrying in %.1fs", self._last_error, delay)
            except asyncpg.PostgresError as error:
                self._last_error = f"cannot apply the schema: {error}"
                logger.error("%s; retrying in %.1fs", self._last_error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        self._last_error = None
        self._ready.set()
        logger.info("database ready; schema applied")
        if self.sequencer is not None:
            self._tasks.append(
                asyncio.create_task(run_in_own_loop(self.sequencer.run), name="ledger-sequencer")
            )
        if self.settings.seal_interval_seconds > 0:
            sealer = Sealer(
                self.pool,
                self.signing_key,
                self.settings.seal_interval_seconds,
                witness=self.witness,
            )
            self._tasks.append(asyncio.create_task(sealer.run(), name="ledger-sealer"))
        self._tasks.append(asyncio.create_task(self.tail.run(), name="ledger-live-listener"))
        self._tasks.append(
            asyncio.create_task(self._purge_idempotency_keys(), name="ledger-idempotency-purge")
        )
        self._tasks.append(asyncio.create_task(self._sample_metrics(), name="ledger-metrics"))
        if self.settings.read_database_url is not None:
            self._tasks.append(
                asyncio.create_task(
                    self._connect_replica(self.settings.read_database_url), name="ledger-replica"
                )
            )

    async def _connect_replica(self, url: str) -> None:
        """Reads that may lag go to the replica once it is reachable; until then (and
        whenever it is down: see read_pool_at) they read the primary."""
        delay = 0.2
        while True:
            try:
                self._read_pool = await create_pool(
                    url,
                    min_size=1,
                    max_size=self.settings.pool_size,
                    statement_cache_size=self.settings.statement_cache_size,
                )
                logger.info("read replica connected")
                return
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as error:
                logger.warning(
                    "cannot reach the read replica (%s); retrying in %.1fs", error, delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _sample_metrics(self) -> None:
        """With several workers a scrape reads every worker's last sample: keep it fresh."""
        while True:
            self.sample_process_metrics()
            await asyncio.sleep(1.0)

    async def _purge_idempotency_keys(self) -> None:
        """Delete expired idempotency records now and then (bounded batches). Expired keys
        are already treated as unused when claimed; this only keeps the table small."""
        retention = self.settings.idempotency_retention
        # A record lives at most a quarter of the retention past its expiry.
        interval = min(max(retention.total_seconds() / 4, 1.0), 600.0)
        while True:
            try:
                async with self.pool.acquire() as connection:
                    deleted = await idempotency.purge_expired(connection, retention)
                if deleted:
                    logger.info("deleted %d expired idempotency records", deleted)
            except (ServiceUnavailable, asyncpg.PostgresError, *DATABASE_UNAVAILABLE) as error:
                logger.warning("idempotency purge failed (%r); will retry", error)
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        # Open SSE streams end first, so their responses finish instead of being cut off.
        self.tail.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._ready.clear()
        metrics.process_exiting()
        if self._read_pool is not None:
            read_pool, self._read_pool = self._read_pool, None
            try:
                await asyncio.wait_for(read_pool.close(), timeout=10)
            except TimeoutError:
                read_pool.terminate()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=10)
            except TimeoutError:
                pool.terminate()
