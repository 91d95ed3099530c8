"""The sequencer in a process of its own, beside the uvicorn workers of `lending-ledger serve`.

In a worker, the sequencer's thread (api/service/runtime.py, run_in_own_loop) shares the GIL
with request handling: under load every wake-up of the sequencer waits for the request
thread to give the GIL up (the switch interval is 5 ms), several times per batch. In a
process of its own only the operating system schedules it.

- `sequencer_beside_workers` (api/web/server.py runs uvicorn inside it): tells the workers
  started within it not to run a sequencer (LEDGER_SEQUENCER_IN_WORKERS=false in their
  environment) and runs one `SequencerProcess` beside them, stopped on every way out.
- `SequencerProcess`: spawns the process, starts another when it exits (after a backoff,
  logged), and stops it: SIGTERM, then SIGKILL after `stop_timeout`.
- `run_sequencer_process`: the process itself. `Sequencer.run` (leadership, batches, seals,
  witness) with the settings of the environment, until SIGTERM or until its parent is gone.

Other ways of hosting the app (create_app, `uvicorn --factory`, the tests) keep the
sequencer in a thread of each worker: LEDGER_SEQUENCER_IN_WORKERS defaults to true.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from multiprocessing.context import SpawnProcess

from api.service.logs import configure_logging
from api.service.settings import SEQUENCER_IN_WORKERS_ENV, ConfigurationError, Settings
from ledger.sequencer import Sequencer, sequencer_settings_for
from ledger.signing import load_or_create_signing_key
from ledger.witness import witness_for

logger = logging.getLogger(__name__)


def sequencer_from_settings(settings: Settings) -> Sequencer:
    """The sequencer a worker would run (api/service/runtime.py, LedgerService), from the
    same settings: database (direct URL first), batch seal interval, signing key, witness."""
    url = settings.direct_database_url or settings.database_url
    if url is None:
        raise ConfigurationError("the sequencer process needs DATABASE_URL")
    return Sequencer(
        url,
        sequencer_settings_for(None, settings.batch_seal_interval_ms),
        signing_key=load_or_create_signing_key(settings.signing_key_path),
        witness=witness_for(settings.witness_dir),
    )


def run_sequencer_process(log_level: str | int) -> None:
    """The dedicated process's entry point (spawned: it imports afresh and reads its settings
    from the environment it inherited)."""
    # Ctrl-C on a terminal reaches the whole process group. The server then drains its
    # requests, which may still write events; this process stops when the server tells it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(log_level, access_log=False)
    asyncio.run(_lead_until_stopped(Settings.from_env()))


async def _lead_until_stopped(settings: Settings) -> None:
    sequencer = sequencer_from_settings(settings)
    running = asyncio.create_task(sequencer.run(), name="ledger-sequencer")
    loop = asyncio.get_running_loop()
    parent = multiprocessing.parent_process()

    def stop() -> None:
        if parent is not None:
            loop.remove_reader(parent.sentinel)  # readable for good once the parent is gone
        if not running.cancelling():
            running.cancel()  # Sequencer.run closes its connection: the lead passes on at once

    loop.add_signal_handler(signal.SIGTERM, stop)
    if parent is not None:
        # A parent killed outright (SIGKILL) cannot stop this process: it notices instead.
        loop.add_reader(parent.sentinel, stop)
    with suppress(asyncio.CancelledError):
        await running


class SequencerProcess:
    """One dedicated sequencer process, started again whenever it exits until `stop`.

    A process that ran for `stable_after` seconds is replaced after `first_backoff`; one that
    keeps exiting sooner waits twice as long each time, up to `max_backoff`."""

    def __init__(
        self,
        log_level: str | int = "info",
        *,
        stop_timeout: float = 10.0,
        first_backoff: float = 0.5,
        max_backoff: float = 30.0,
        stable_after: float = 60.0,
    ) -> None:
        self._log_level = log_level
        self._stop_timeout = stop_timeout
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._stable_after = stable_after
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # stop() never races a start of the next process
        self._stopping = threading.Event()
        self._process: SpawnProcess | None = None
        self._started_at = 0.0
        self._supervisor: threading.Thread | None = None
        self.restarts = 0
        """How many times the process was started again after it exited."""

    @property
    def pid(self) -> int | None:
        """The current process's id (None before start)."""
        process = self._process
        return None if process is None else process.pid

    def start(self) -> None:
        with self._lock:
            self._process = self._spawn()
        self._supervisor = threading.Thread(
            target=self._supervise, name="ledger-sequencer-supervisor", daemon=True
        )
        self._supervisor.start()

    def stop(self) -> None:
        """Stop the process (SIGTERM, SIGKILL after `stop_timeout`) and its supervision.
        Idempotent."""
        with self._lock:
            self._stopping.set()
            process = self._process
        # Only the supervising thread reaps the process (join); here its sentinel tells
        # whether it has ended, so the two threads never both wait for it.
        if process is not None and not _ended(process, 0):
            process.terminate()
            if not _ended(process, self._stop_timeout):
                logger.warning(
                    "sequencer: its process (pid %s) did not stop within %.0f s; killing it",
                    process.pid,
                    self._stop_timeout,
                )
                process.kill()
                _ended(process, self._stop_timeout)
            logger.info("sequencer: its process (pid %s) stopped", process.pid)
        if self._supervisor is not None:
            self._supervisor.join(self._stop_timeout)

    def _spawn(self) -> SpawnProcess:
        process = self._context.Process(
            target=run_sequencer_process,
            args=(self._log_level,),
            name="lending-ledger-sequencer",
            daemon=True,  # belt and braces: multiprocessing's exit handler ends it too
        )
        process.start()
        self._started_at = time.monotonic()
        logger.info("sequencer: started in a process of its own (pid %s)", process.pid)
        return process

    def _supervise(self) -> None:
        backoff = self._first_backoff
        while True:
            process = self._process
            assert process is not None
            process.join()
            if self._stopping.is_set():
                return
            if time.monotonic() - self._started_at >= self._stable_after:
                backoff = self._first_backoff
            logger.warning(
                "sequencer: its process (pid %s) exited with code %s; starting another in %.1f s",
                process.pid,
                process.exitcode,
                backoff,
            )
            if self._stopping.wait(backoff):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self._process = self._spawn()
                self.restarts += 1
            backoff = min(backoff * 2, self._max_backoff)


def _ended(process: SpawnProcess, timeout: float) -> bool:
    """Whether `process` has ended, waiting at most `timeout` seconds for it."""
    return bool(multiprocessing.connection.wait([process.sentinel], timeout))


@contextmanager
def sequencer_beside_workers(log_level: str | int = "info") -> Iterator[SequencerProcess]:
    """While the block runs, workers started in it (from this environment) run no sequencer,
    and one `SequencerProcess` runs beside them. Stopped, and the environment restored, on
    every way out of the block."""
    previous = os.environ.get(SEQUENCER_IN_WORKERS_ENV)
    os.environ[SEQUENCER_IN_WORKERS_ENV] = "false"
    sequencer = SequencerProcess(log_level)
    try:
        sequencer.start()
        yield sequencer
    finally:
        try:
            sequencer.stop()
        finally:
            if previous is None:
                os.environ.pop(SEQUENCER_IN_WORKERS_ENV, None)
            else:
                os.environ[SEQUENCER_IN_WORKERS_ENV] = previous
