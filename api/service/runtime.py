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
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from api.service.dbrole import ensure_schema
from api.service.errors import DATABASE_UNAVAILABLE, ServiceUnavailable
from api.service.live import LedgerTail, LiveSettings
from api.service.settings import Settings
from ledger import idempotency
from ledger.db import connect, create_pool
from ledger.scoring import ScoringModel, get_model
from ledger.seals import Sealer
from ledger.sequencer import Sequencer, SequencerSettings
from ledger.signing import SigningKey, load_or_create_signing_key

logger = logging.getLogger(__name__)


async def run_in_own_loop(work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `work()` on an event loop of its own in a thread, until it ends or this coroutine
    is cancelled (which cancels it there and waits for it).

    For the sequencer: on the request loop, each of its round trips would wait behind every
    request ready to run, and under load that, not the database, made an event wait tens
    of milliseconds for its `seq`. Its own loop resumes it as soon as the GIL allows."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(work())

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)

    thread = threading.Thread(target=run, name="ledger-sequencer", daemon=True)
    thread.start()
    try:
        await asyncio.shield(asyncio.to_thread(thread.join))
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(task.cancel)
            await asyncio.to_thread(thread.join, 10)
        if not thread.is_alive():
            loop.close()


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
        self.scoring_model: ScoringModel = get_model(settings.scoring_model)
        self._pool: asyncpg.Pool | None = None
        self._ready = asyncio.Event()
        self._last_error: str | None = "starting"
        self.sequencer = Sequencer(database_url, sequencer_settings)
        self.tail = LedgerTail(database_url, live_settings)
        # Generated on first start when absent; a broken key file stops start-up here.
        self.signing_key: SigningKey = load_or_create_signing_key(settings.signing_key_path)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None or not self._ready.is_set():
            raise ServiceUnavailable(f"the database is not ready ({self._last_error})")
        return self._pool

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
                connection = await connect(self.database_url)
                try:
                    # Applied if this role may; else it must be current (api/service/dbrole.py).
                    await ensure_schema(connection)
                finally:
                    await connection.close()
                self._pool = await create_pool(
                    self.database_url, min_size=1, max_size=self.settings.pool_size
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
        self._tasks.append(
            asyncio.create_task(run_in_own_loop(self.sequencer.run), name="ledger-sequencer")
        )
        if self.settings.seal_interval_seconds > 0:
            sealer = Sealer(self.pool, self.signing_key, self.settings.seal_interval_seconds)
            self._tasks.append(asyncio.create_task(sealer.run(), name="ledger-sealer"))
        self._tasks.append(asyncio.create_task(self.tail.run(), name="ledger-live-listener"))
        self._tasks.append(
            asyncio.create_task(self._purge_idempotency_keys(), name="ledger-idempotency-purge")
        )

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
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=10)
            except TimeoutError:
                pool.terminate()
