"""The running service's resources: the pool, the sequencer, and readiness.

Nothing here is created at import time; the app's lifespan starts and stops it. Start-up
does not block on the database: the service answers /healthz at once and /readyz with 503
until it has connected and applied the schema, retrying with backoff meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from api.errors import DATABASE_UNAVAILABLE, ServiceUnavailable
from api.settings import Settings
from ledger.db import connect, create_pool
from ledger.schema import apply_schema
from ledger.scoring import ScoringModel, get_model
from ledger.sequencer import Sequencer, SequencerSettings

logger = logging.getLogger(__name__)


class LedgerService:
    def __init__(
        self,
        settings: Settings,
        database_url: str,
        sequencer_settings: SequencerSettings | None = None,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.scoring_model: ScoringModel = get_model(settings.scoring_model)
        self._pool: asyncpg.Pool | None = None
        self._ready = asyncio.Event()
        self._last_error: str | None = "starting"
        self.sequencer = Sequencer(database_url, sequencer_settings)
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

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _connect(self) -> None:
        delay = 0.2
        while True:
            try:
                connection = await connect(self.database_url)
                try:
                    await apply_schema(connection)
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
        self._tasks.append(asyncio.create_task(self.sequencer.run(), name="ledger-sequencer"))

    async def stop(self) -> None:
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
