"""The background sealer: seals the ledger log at an interval, then witnesses the seal.

Apart from ledger/seals.py (tree heads and proofs) because it also writes the witness
(ledger/witness.py), which itself reads seals."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import asyncpg

from ledger.errors import LedgerIntegrityError
from ledger.seals import Seal, create_seal, system_clock
from ledger.signing import SigningKey
from ledger.witness import Witness

logger = logging.getLogger(__name__)


class Sealer:
    """Seals in the background: whenever new seqs exist and the latest seal is at least
    `interval` old. Every worker may run one; the sealing lock lets one seal at a time, and
    the interval is measured from the latest seal in the database, so several workers do not
    seal more often than one would."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        key: SigningKey,
        interval: float,
        *,
        poll_interval: float | None = None,
        clock: Callable[[], datetime] = system_clock,
        witness: Witness | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("the seal interval must be positive")
        self._pool = pool
        self._key = key
        self._interval = timedelta(seconds=interval)
        self._poll_interval = poll_interval if poll_interval is not None else min(interval, 5.0)
        self._clock = clock
        self._witness = witness

    async def seal_if_due(self) -> Seal | None:
        async with self._pool.acquire() as connection:
            async with connection.transaction():
                seal = await create_seal(
                    connection, self._key, self._clock, wait=False, min_interval=self._interval
                )
            if seal is not None and self._witness is not None:
                await self._witness.record(connection, seal)  # after the commit, never before
            return seal

    async def run(self) -> None:
        """Run until cancelled. Failures are logged and retried, never raised."""
        while True:
            try:
                seal = await self.seal_if_due()
                if seal is not None:
                    logger.info("sealed the ledger log up to seq %d", seal.tree_size)
            except asyncio.CancelledError:
                raise
            except LedgerIntegrityError as error:
                logger.error("sealer: %s", error.detail)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                logger.warning("sealer: %s; retrying", error)
            await asyncio.sleep(self._poll_interval)
