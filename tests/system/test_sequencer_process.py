"""The sequencer in a process of its own (api/service/sequencer_process.py), as `lending-ledger
serve` runs it: it sequences, the workers run no sequencer of their own, it is started again
when it is killed, and it stops with the server (SIGTERM, or its parent killed outright).

Every process here listens on loopback only and is stopped in a finally; every wait is a
bounded poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from api.service.sequencer_process import sequencer_beside_workers
from api.service.settings import SEQUENCER_IN_WORKERS_ENV, Settings
from api.web.app import create_app
from ledger.db import Connection, connect, create_pool
from ledger.log_status import LEADERSHIP_CLASSID, LEADERSHIP_OBJID
from ledger.sequencer import APPLICATION_NAME, SEALING_APPLICATION_NAME
from ledger.store import append
from tests.conftest import MakeDatabase, new_applicant
from tests.integration.test_observability import parse, value
from tests.integration.test_store import application_events
from tests.support.helpers import wait_until_sequenced, whole_feed
from tests.system.test_e2e import Service, running_service

SETTLE_TIMEOUT = 60.0  # spawning a process and importing the service is slow on a busy machine

SEQUENCER_SESSIONS = """
SELECT pid FROM pg_stat_activity
WHERE application_name = $1 AND datname = current_database()
ORDER BY pid
"""

# The session holding the sequencer's leadership lock ($1, $2: ledger/log_status.py says how
# pg_locks shows a one-bigint advisory lock).
LEADER_SESSION = """
SELECT k.pid FROM pg_locks k
WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 1
  AND k.classid = $1::bigint::oid AND k.objid = $2::bigint::oid
  AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""

STARTED = re.compile(r"sequencer: started in a process of its own \(pid (\d+)\)")


def is_running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, ended but not yet reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def kill_if_running(pid: int) -> None:
    if is_running(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def started_sequencers(service: Service) -> list[int]:
    """The sequencer processes `serve` has started so far, from its log, in order."""
    return [int(pid) for pid in STARTED.findall(service.output())]


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {SETTLE_TIMEOUT:.0f} s: {what}")
        await asyncio.sleep(0.05)


async def sequencer_sessions(
    connection: Connection, application_name: str = APPLICATION_NAME
) -> list[int]:
    return [row["pid"] for row in await connection.fetch(SEQUENCER_SESSIONS, application_name)]


async def any_sequencer_session(connection: Connection) -> bool:
    """Whether any session of a sequencer, for batches or for seals, is still open."""
    for name in (APPLICATION_NAME, SEALING_APPLICATION_NAME):
        if await sequencer_sessions(connection, name):
            return True
    return False


async def apply_and_wait_for_seq(http: httpx.AsyncClient) -> None:
    body = {
        "applicant_id": new_applicant(),
        "amount": "5000",
        "income": "90000",
        "employment_years": 6,
    }
    response = await http.post("/lending/apply", json=body)
    assert response.status_code == 200, response.text
    path = f"/lending/applications/{response.json()['application_id']}/events"

    async def numbered() -> bool:
        events = (await http.get(path)).json()
        return all(event["seq"] is not None for event in events)

    await until(numbered, "the new events got their seq")


async def test_workers_told_so_run_no_sequencer(make_database: MakeDatabase) -> None:
    assert Settings.from_env({}).sequencer_in_workers
    assert not Settings.from_env({SEQUENCER_IN_WORKERS_ENV: "false"}).sequencer_in_workers
    settings = Settings(app_env="test", seal_interval_seconds=0, sequencer_in_workers=False)
    app = create_app(settings, database_url=await make_database())
    async with app.router.lifespan_context(app):
        service = app.state.service
        await service.wait_ready(30)
        assert service.sequencer is None


@pytest.mark.slow
async def test_the_process_sequences_is_started_again_when_killed_and_stops(
    make_database: MakeDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await make_database()
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("LEDGER_DATA_DIR", str(tmp_path))  # its signing key goes there
    monkeypatch.delenv(SEQUENCER_IN_WORKERS_ENV, raising=False)
    pool = await create_pool(url, min_size=1, max_size=4)
    pids: list[int] = []

    async def append_one_application() -> None:
        stream_id, new_events = application_events()
        async with pool.acquire() as connection, connection.transaction():
            await append(connection, stream_id, 0, new_events, datetime.now(UTC))

    try:
        with sequencer_beside_workers() as sequencer:
            assert os.environ[SEQUENCER_IN_WORKERS_ENV] == "false"  # for the workers
            assert sequencer.pid is not None
            pids.append(sequencer.pid)
            await append_one_application()
            await wait_until_sequenced(pool, SETTLE_TIMEOUT)

            os.kill(pids[0], signal.SIGKILL)

            async def replaced() -> bool:
                return sequencer.restarts == 1 and sequencer.pid not in (None, pids[0])

            await until(replaced, "a new sequencer process")
            assert sequencer.pid is not None
            pids.append(sequencer.pid)
            await append_one_application()
            await wait_until_sequenced(pool, SETTLE_TIMEOUT)
        assert SEQUENCER_IN_WORKERS_ENV not in os.environ
        assert not any(is_running(pid) for pid in pids)
        async with pool.acquire() as connection:
            assert [event.seq for event in await whole_feed(connection)] == [1, 2, 3, 4, 5, 6]

            async def sessions_gone() -> bool:
                return not await any_sequencer_session(connection)

            await until(sessions_gone, "the stopped sequencer's sessions ended")
    finally:
        for pid in pids:
            kill_if_running(pid)
        await pool.close()


@pytest.mark.slow
async def test_serve_runs_one_sequencer_beside_its_workers_and_stops_it(
    make_database: MakeDatabase, tmp_path: Path
) -> None:
    url = await make_database()
    env = {"DATABASE_URL": url, "APP_ENV": "test", "LEDGER_SEAL_INTERVAL_SECONDS": "0"}
    database = await connect(url)
    pids: list[int] = []
    try:
        async with (
            running_service(tmp_path, env, ["--workers", "2"]) as service,
            httpx.AsyncClient(base_url=service.base_url, timeout=15) as http,
        ):
            pids.extend(started_sequencers(service))
            assert len(pids) == 1

            async def both_workers_up() -> bool:
                scraped = parse((await http.get("/metrics")).text)
                return value(scraped, "ledger_db_pool_connections") >= 2

            await until(both_workers_up, "both workers connected")
            # One sequencer session in the database, and it leads: the workers have none.
            sessions = await sequencer_sessions(database)
            assert len(sessions) == 1
            assert len(await sequencer_sessions(database, SEALING_APPLICATION_NAME)) == 1
            leader = await database.fetchval(LEADER_SESSION, LEADERSHIP_CLASSID, LEADERSHIP_OBJID)
            assert leader == sessions[0]
            await apply_and_wait_for_seq(http)

            os.kill(pids[0], signal.SIGKILL)

            async def replaced() -> bool:
                started = started_sequencers(service)
                current = await sequencer_sessions(database)
                return len(started) == 2 and len(current) == 1 and current != sessions

            await until(replaced, "a new sequencer process with a session of its own")
            pids.append(started_sequencers(service)[1])
            await apply_and_wait_for_seq(http)
            assert await service.stop(signal.SIGTERM) == 0
        assert not is_running(pids[1])

        async def sessions_gone() -> bool:
            return not await any_sequencer_session(database)

        await until(sessions_gone, "the stopped sequencer's sessions ended")
        assert f"sequencer: its process (pid {pids[1]}) stopped" in service.output()
    finally:
        for pid in pids:
            kill_if_running(pid)
        await database.close()


@pytest.mark.slow
async def test_the_sequencer_process_ends_when_serve_is_killed_outright(
    make_database: MakeDatabase, tmp_path: Path
) -> None:
    url = await make_database()
    env = {"DATABASE_URL": url, "APP_ENV": "test", "LEDGER_SEAL_INTERVAL_SECONDS": "0"}
    pids: list[int] = []
    try:
        async with running_service(tmp_path, env) as service:
            pids.extend(started_sequencers(service))
            assert len(pids) == 1
            assert await service.stop(signal.SIGKILL) == -signal.SIGKILL

            async def ended() -> bool:
                return not is_running(pids[0])

            await until(ended, "the orphaned sequencer process ended")
    finally:
        for pid in pids:
            kill_if_running(pid)
