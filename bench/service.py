"""The processes a benchmark run starts: the database server, scratch databases, the
service (uvicorn with the bench app, several workers) and the trivial responder.

Everything listens on loopback only, and everything started here is stopped by the
context managers' exits, on every path out (errors and Ctrl-C included).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from api.service.embedded import start_embedded
from bench import sql
from bench.loadgen import http_request, read_response, serve_trivial
from ledger.db import connect
from ledger.schema import apply_schema

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
_DATABASE_NAME = re.compile(r"bench_[a-z0-9_]{1,40}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@dataclass(frozen=True, slots=True)
class DatabaseServer:
    admin_url: str
    postmaster_pid: int | None  # None for a server given by URL (its CPU is not measured)
    embedded: bool


@contextmanager
def database_server(given_url: str | None, settings: list[str]) -> Iterator[DatabaseServer]:
    """The server given by URL, or an embedded one in a fresh temporary data directory
    (deleted afterwards). `settings`: `name=value` for ALTER SYSTEM on the embedded one
    (reloadable settings only)."""
    if given_url:
        yield DatabaseServer(given_url, None, embedded=False)
        return
    root = Path(tempfile.mkdtemp(prefix="lending-ledger-bench-"))
    try:
        server = start_embedded(root)
        try:
            for setting in settings:
                name, _, value = setting.partition("=")
                if not re.fullmatch(r"[a-z_]+", name):
                    raise ValueError(f"not a setting name: {name!r}")
                escaped = value.replace("'", "''")
                server.psql(f"ALTER SYSTEM SET {name} = '{escaped}'")
            if settings:
                server.psql("SELECT pg_reload_conf()")
            yield DatabaseServer(str(server.get_uri()), server.get_pid(), embedded=True)
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@asynccontextmanager
async def scratch_database(admin_url: str, purpose: str) -> AsyncIterator[str]:
    """A new database with schema.sql applied (and the bench's scratch table); dropped on
    exit. The name is made here and checked, so it can be spliced into the statement."""
    name = f"bench_{purpose}_{secrets.token_hex(4)}"
    if not _DATABASE_NAME.fullmatch(name):
        raise ValueError(f"not a usable database name: {name!r}")
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(sql.CREATE_DATABASE.format(name=name))
        url = with_database(admin_url, name)
        connection = await connect(url)
        try:
            await apply_schema(connection)
            await connection.execute(sql.CREATE_NAIVE_TABLE)
        finally:
            await connection.close()
        try:
            yield url
        finally:
            await admin.execute(sql.DROP_DATABASE.format(name=name))
    finally:
        await admin.close()


async def wait_until_sequenced(url: str, timeout: float) -> bool:
    """Wait (bounded) until the sequencer has numbered every committed event."""
    connection = await connect(url)
    try:
        deadline = time.monotonic() + timeout
        while await connection.fetchval(sql.UNSEQUENCED_EVENTS_EXIST):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True
    finally:
        await connection.close()


def _stop_process_group(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to the group this process leads, then SIGKILL if it has not ended."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # also any worker left behind
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def _start_process_group(
    command: list[str], env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start `command` as the leader of a new process group (returns at once)."""
    with log_path.open("wb") as log:
        return subprocess.Popen(  # noqa: S603 (our own interpreter, fixed arguments)
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


@dataclass(frozen=True, slots=True)
class RunningService:
    pid: int
    port: int
    log_path: Path


async def _ready_streak(port: int, needed: int, timeout: float) -> None:
    """`needed` consecutive 200s from /readyz (every worker has had time to connect)."""
    deadline = time.monotonic() + timeout
    streak = 0
    request = http_request("GET", "/readyz")
    while streak < needed:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service was not ready within {timeout:.0f} s")
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            try:
                writer.write(request)
                status, _ = await asyncio.wait_for(read_response(reader), 5)
            finally:
                writer.close()
            streak = streak + 1 if status == 200 else 0
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            streak = 0
        if streak < needed:
            await asyncio.sleep(0.05 if streak else 0.2)


@asynccontextmanager
async def service_process(
    database_url: str,
    *,
    workers: int,
    pool_size: int,
    access_log: bool,
    log_dir: Path,
    ready_timeout: float = 90.0,
) -> AsyncIterator[RunningService]:
    """The bench app (the product's app plus the reference routes), served as the product
    is, as a process group of its own so that every worker is stopped with it."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "APP_ENV": "development",
        "LEDGER_DB_POOL_SIZE": str(pool_size),
        # The bench package is not installed: the service and its workers import it from here.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        "-m",
        "bench.app",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if access_log:
        command.append("--access-log")
    log_path = log_dir / f"service-{port}.log"
    process = _start_process_group(command, env, log_path)
    try:
        await _ready_streak(port, needed=10 * workers, timeout=ready_timeout)
        yield RunningService(process.pid, port, log_path)
    finally:
        await asyncio.to_thread(_stop_process_group, process, 15.0)


@contextmanager
def trivial_responder(lifetime: float) -> Iterator[tuple[int, int]]:
    """A process answering every request with a fixed response; (its port, its pid)."""
    port = free_port()
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=serve_trivial, args=(port, lifetime), daemon=True)
    process.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as probe:
                if probe.connect_ex((LOOPBACK, port)) == 0:
                    break
            if time.monotonic() > deadline or not process.is_alive():
                raise RuntimeError("the trivial responder did not start")
            time.sleep(0.05)
        assert process.pid is not None
        yield port, process.pid
    finally:
        process.terminate()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)
