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


async def _ready_streak(port: int, needed: int, timeout: float, path: str = "/readyz") -> None:
    """`needed` consecutive 200s from `path` (every worker has had time to connect)."""
    deadline = time.monotonic() + timeout
    streak = 0
    request = http_request("GET", path)
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


def _service_env(extra: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        **extra,
        # The bench package is not installed: the service and its workers import it from here.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }


@asynccontextmanager
async def _served(
    module: str,
    arguments: list[str],
    env: dict[str, str],
    *,
    workers: int,
    access_log: bool,
    log_dir: Path,
    ready_path: str,
    ready_timeout: float,
) -> AsyncIterator[RunningService]:
    """`python -m module --port P --workers N ...` as a process group of its own, so that
    every worker is stopped with it; ready after 10 x N consecutive 200s from ready_path."""
    port = free_port()
    command = [sys.executable, "-m", module, *arguments]
    command += ["--port", str(port), "--workers", str(workers)]
    if access_log:
        command.append("--access-log")
    log_path = log_dir / f"{module.rpartition('.')[2]}-{port}.log"
    process = _start_process_group(command, env, log_path)
    try:
        await _ready_streak(port, needed=10 * workers, timeout=ready_timeout, path=ready_path)
        yield RunningService(process.pid, port, log_path)
    finally:
        await asyncio.to_thread(_stop_process_group, process, 15.0)


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
    env = _service_env(
        {
            "DATABASE_URL": database_url,
            "APP_ENV": "development",
            "LEDGER_DB_POOL_SIZE": str(pool_size),
        }
    )
    async with _served(
        "bench.app",
        [],
        env,
        workers=workers,
        access_log=access_log,
        log_dir=log_dir,
        ready_path="/readyz",
        ready_timeout=ready_timeout,
    ) as service:
        yield service


@asynccontextmanager
async def reference_process(
    app: str,
    database_url: str | None,
    *,
    workers: int,
    pool_size: int,
    access_log: bool,
    log_dir: Path,
    ready_timeout: float = 90.0,
) -> AsyncIterator[RunningService]:
    """A tutorial reference (bench/reference_app.py: `reference` or `bare`), served the way
    the product is served (same workers, same uvicorn settings, same listener)."""
    extra = {"REFERENCE_POOL_SIZE": str(pool_size)}
    if database_url is not None:
        extra["DATABASE_URL"] = database_url
    ready_path = "/bench/noop" if app == "bare" else "/lending/applicants/bench-ready-probe/history"
    async with _served(
        "bench.reference_app",
        ["--app", app],
        _service_env(extra),
        workers=workers,
        access_log=access_log,
        log_dir=log_dir,
        ready_path=ready_path,
        ready_timeout=ready_timeout,
    ) as service:
        yield service


@asynccontextmanager
async def reference_database(
    admin_url: str, *, history_prefix: str, applicants: int, applications_each: int
) -> AsyncIterator[str]:
    """A new database holding only the tutorial reference's table, seeded with the same
    history applicants as the product's (ids, counts); dropped on exit."""
    name = f"bench_reference_{secrets.token_hex(4)}"
    if not _DATABASE_NAME.fullmatch(name):
        raise ValueError(f"not a usable database name: {name!r}")
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(sql.CREATE_DATABASE.format(name=name))
        url = with_database(admin_url, name)
        try:
            connection = await asyncpg.connect(url)
            try:
                await connection.execute(sql.CREATE_REFERENCE_TABLE)
                if applicants:
                    await connection.execute(
                        sql.SEED_REFERENCE_HISTORY, history_prefix, applicants, applications_each
                    )
                await connection.execute(sql.ANALYZE_REFERENCE)
            finally:
                await connection.close()
            yield url
        finally:
            await admin.execute(sql.DROP_DATABASE.format(name=name))
    finally:
        await admin.close()


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
