"""Live ledger notifications for the SSE stream: one LISTEN connection per process.

The sequencer NOTIFYs `ledger_sequenced` (payload: the new last seq) when it has appended
to the ledger log. One `LedgerTail` per process listens on a dedicated connection and wakes
every subscriber; each subscriber then reads its next page from the pool. So a thousand
open streams cost one database connection, not a thousand.

A notification only says "look again": subscribers never trust it for content or order,
they read the log by `seq`. That is why a missed notification (listener reconnecting,
NOTIFY queue overflow) costs latency, never events: subscribers also poll slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import asyncpg

from ledger.db import Connection, connect

logger = logging.getLogger(__name__)

CHANNEL = "ledger_sequenced"


@dataclass(frozen=True)
class LiveSettings:
    # How often a subscriber re-reads the log when no notification came (missed ones).
    poll_interval: float = 5.0
    # How often an idle stream sends a `: keep-alive` comment (proxies drop silent streams).
    keep_alive_interval: float = 15.0
    # How often the listener checks its connection, and waits before reconnecting.
    health_interval: float = 5.0


class LedgerTail:
    """Wakes every waiting subscriber when the ledger log grows, or when it closes."""

    def __init__(self, dsn: str, settings: LiveSettings | None = None) -> None:
        self._dsn = dsn
        self.settings = settings or LiveSettings()
        # Replaced on every wake-up: a subscriber takes the current event *before* it reads
        # the log, so a notification that arrives during the read is never lost.
        self._changed = asyncio.Event()
        self._closed = False
        self.listening = False
        self.subscribers = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def next_change(self) -> asyncio.Event:
        """An event set at the next notification (or at close)."""
        return self._changed

    def wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        """End every stream: subscribers see `closed` and finish their responses."""
        self._closed = True
        self.wake()

    async def run(self) -> None:
        """Listen until cancelled; reconnect after errors. Never raises but CancelledError."""
        while True:
            connection: Connection | None = None
            try:
                connection = await connect(self._dsn)
                await connection.add_listener(CHANNEL, self._on_notify)
                self.listening = True
                # Notifications sent while no listener was connected are gone: look again.
                self.wake()
                while True:
                    await asyncio.sleep(self.settings.health_interval)
                    await asyncio.wait_for(
                        connection.fetchval("SELECT 1"), self.settings.health_interval
                    )
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                logger.warning("live feed listener lost its connection (%s); reconnecting", error)
            finally:
                self.listening = False
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.close(), timeout=2)
                    if not connection.is_closed():
                        connection.terminate()
            await asyncio.sleep(self.settings.health_interval)

    def _on_notify(self, *_: object) -> None:
        self.wake()


SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


Handler = Callable[[int, FrameType | None], Any]


@contextlib.asynccontextmanager
async def closing_on_shutdown_signals(tail: LedgerTail) -> AsyncIterator[None]:
    """While in this block, the first SIGINT/SIGTERM also closes `tail` (ending every open
    stream), then goes on to the handler installed before (uvicorn's), unchanged.

    Why: uvicorn (0.54) waits for open responses *before* it runs the app's shutdown, and
    an SSE response stays open until its client leaves, so without this a worker with open
    streams would take its whole graceful-shutdown timeout to stop. Only chains onto a
    Python-level handler, only in the main thread, and restores the previous handler on
    exit if ours is still installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    installed: dict[signal.Signals, tuple[Handler, Handler]] = {}
    for sig in SHUTDOWN_SIGNALS:
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def on_signal(signum: int, frame: FrameType | None, previous: Handler = previous) -> None:
            # A signal handler may run in the middle of the event loop's own code: hand the
            # work to the loop instead of touching asyncio objects here.
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(tail.close)
            previous(signum, frame)

        signal.signal(sig, on_signal)
        installed[sig] = (previous, on_signal)
    try:
        yield
    finally:
        for sig, (previous, ours) in installed.items():
            if signal.getsignal(sig) is ours:
                signal.signal(sig, previous)
