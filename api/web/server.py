"""Running uvicorn, with TCP_NODELAY on every connection, also with several workers.

uvicorn (0.54 and earlier) creates the listening socket its multi-worker supervisor hands
to the workers with `proto` 0. Accepted sockets inherit it, and asyncio sets TCP_NODELAY
only on sockets that report IPPROTO_TCP, so with `--workers N` Nagle's algorithm stays on.
uvicorn writes a response's head and body in two writes; the body then waits for the
client's delayed ACK, and every keep-alive request after the first costs about 40 ms on
Linux, however idle the machine (uvicorn issue #3149). A single worker is unaffected
(asyncio binds from getaddrinfo, which reports the protocol). The fix is the listener's
protocol, set here before the workers inherit it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from api.service.logs import dict_config
from api.service.sequencer_process import sequencer_beside_workers
from api.service.settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class NoDelayConfig(uvicorn.Config):
    """uvicorn's configuration, binding a listener whose accepted sockets get TCP_NODELAY."""

    def bind_socket(self) -> socket.socket:
        listener = super().bind_socket()
        if listener.family in (socket.AF_INET, socket.AF_INET6) and listener.proto == 0:
            return socket.socket(
                listener.family, listener.type, socket.IPPROTO_TCP, fileno=listener.detach()
            )
        return listener


@contextlib.contextmanager
def metrics_directory(workers: int) -> Iterator[None]:
    """With several workers, a fresh PROMETHEUS_MULTIPROC_DIR for this start (each worker
    writes its metrics there, a scrape of any worker reads them all; api/service/metrics.py).
    A directory given in the environment is emptied first (stale files would count twice);
    one made here is deleted at the end. One worker needs none."""
    given = os.environ.get(MULTIPROC_ENV)
    if workers <= 1 and not given:
        yield
        return
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
        yield
        return
    directory = Path(tempfile.mkdtemp(prefix="lending-ledger-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


WORKER_HEALTHCHECK_SECONDS = 30


def run(app: str, *, sequencer_process: bool = False, **options: Any) -> bool:
    """`uvicorn.run(app, **options)` for an import string, with NoDelayConfig. Returns
    whether the server started (with workers, whether the supervisor ran).

    Unless `log_config` is given, uvicorn's logging (in every worker) is the service's
    pipeline (api/service/logs.py): JSON lines, or console on a terminal, one access line
    per request from api.web.access unless `access_log=False` or LEDGER_ACCESS_LOG=false.

    With `sequencer_process` (`lending-ledger serve`) the workers run no sequencer: one
    process beside them does, restarted if it exits, stopped with the server
    (api/service/sequencer_process.py)."""
    # A worker answers the supervisor's health pings only once it has imported the app;
    # uvicorn's 5 s kills and restarts a worker still importing on a busy machine, over
    # and over (seen at a load average of 9 on 2 cores).
    options.setdefault("timeout_worker_healthcheck", WORKER_HEALTHCHECK_SECONDS)
    if "log_config" not in options:
        access_log = options.get("access_log", True) and Settings.from_env().access_log
        options["log_config"] = dict_config(
            options.get("log_level") or "info", access_log=access_log
        )
        options["access_log"] = False  # uvicorn's own; api.web.access replaces it
    config = NoDelayConfig(app, **options)
    sequencing = (
        sequencer_beside_workers(options.get("log_level") or "info")
        if sequencer_process
        else contextlib.nullcontext()
    )
    with metrics_directory(config.workers), sequencing:
        if config.workers > 1:
            Multiprocess(config, sockets=[config.bind_socket()]).run()
            return True
        server = uvicorn.Server(config)
        server.run()
        return server.started
