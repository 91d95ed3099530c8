"""Reliability under faults, against the real service process (`lending-ledger serve`):

- the service SIGKILLed under concurrent load and restarted;
- its PostgreSQL stopped in immediate mode (a crash, for the data) and started again while
  the service keeps running;
- SIGTERM with requests in flight.

After each: nothing acknowledged is lost, retries with the same Idempotency-Key never
duplicate, every stream's hash chain verifies, the read models equal a fresh fold and the
ledger log is contiguous. Every load is bounded in count and time, goes to 127.0.0.1 only,
and every process started here is killed in a finally.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from ledger.application import stream_id_for
from tests.conftest import MakeDatabase, new_applicant
from tests.support.faults import (
    Load,
    assert_ledger_consistent,
    assert_replays,
    private_cluster,
    read_models_locked,
    retry_with_the_same_keys,
    wait_for_lock_waiters,
)
from tests.support.helpers import assert_problem
from tests.system.test_e2e import STOP_TIMEOUT, running_service

pytestmark = pytest.mark.slow

RECOVERY_TIMEOUT = 60.0


async def stop_load(load: Load, running: asyncio.Task[None]) -> None:
    """Stop the load and wait for it (bounded: each request has a client timeout)."""
    load.stop.set()
    try:
        await asyncio.wait_for(running, 60)
    finally:
        if not running.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


async def test_sigkill_under_load_then_restart_loses_nothing_and_retries_never_duplicate(
    make_database: MakeDatabase, tmp_path: Path
) -> None:
    url = await make_database()
    env = {"DATABASE_URL": url, "APP_ENV": "test"}
    load = Load(run_id=uuid.uuid4().hex[:8], clients=16, per_client=40)

    async with running_service(tmp_path, env) as service:
        running = asyncio.create_task(load.run(service.base_url))
        try:
            await load.wait_for_acknowledged(48)
            # Kill while some requests are certainly mid-transaction (their events written,
            # their key claimed, nothing committed), besides whatever else is in flight.
            async with read_models_locked(url):
                await wait_for_lock_waiters(url, 4)
                assert await service.stop(signal.SIGKILL) == -signal.SIGKILL
        finally:
            await stop_load(load, running)

    acknowledged = load.acknowledged()
    unanswered = load.unacknowledged()
    assert len(acknowledged) >= 48
    assert not load.timed_out()
    assert len(unanswered) >= 4, load.statuses()
    # Before the kill every request succeeded; after it, none got any answer.
    assert set(load.statuses()) == {200, None}

    async with running_service(tmp_path, env) as service:
        await retry_with_the_same_keys(service.base_url, unanswered)
        # Retrying once more replays the retry's answer: still one application per key.
        await assert_replays(service.base_url, unanswered)
        await assert_replays(service.base_url, acknowledged[:: max(1, len(acknowledged) // 16)])
        assert await service.stop(signal.SIGTERM) == 0

    await assert_ledger_consistent(url, load.attempts)


async def wait_until_ready(base_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        while (ready := await http.get("/readyz")).status_code != 200:
            assert ready.status_code == 503, ready.text
            assert time.monotonic() < deadline, f"not ready {timeout}s after: {ready.text}"
            await asyncio.sleep(0.1)


async def test_the_database_stopped_immediately_mid_load_and_restarted_the_service_recovers(
    tmp_path: Path,
) -> None:
    """While PostgreSQL is down every request is a prompt 503 problem+json (never a 500,
    never a hang); once it is back the same running service recovers by itself."""
    async with private_cluster() as cluster:
        admin = await asyncpg.connect(cluster.url("postgres"))
        try:
            await admin.execute("CREATE DATABASE ledger")
        finally:
            await admin.close()
        url = cluster.url("ledger")
        env = {"DATABASE_URL": url, "APP_ENV": "test"}
        load = Load(
            run_id=uuid.uuid4().hex[:8],
            clients=8,
            per_client=300,
            stop_on_transport_error=False,
            timeout=10.0,
        )

        async with running_service(tmp_path, env) as service:
            running = asyncio.create_task(load.run(service.base_url))
            try:
                await load.wait_for_acknowledged(40)
                await cluster.stop("immediate")
                down_since = len(load.attempts)

                async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:
                    await wait_for_unavailable(load, down_since, count=16)
                    ready = await http.get("/readyz")
                    assert ready.status_code == 503
                    assert ready.json()["status"] == "unavailable"
                    for path in (f"/lending/applicants/{new_applicant()}/history", "/events"):
                        response = await http.get(path)
                        assert_problem(response, 503, "service-unavailable")
                        assert response.headers["retry-after"] == "1"

                await cluster.start()
                acknowledged_at_restart = len(load.acknowledged())
                await wait_until_ready(service.base_url, RECOVERY_TIMEOUT)
                await load.wait_for_acknowledged(acknowledged_at_restart + 16, RECOVERY_TIMEOUT)
            finally:
                await stop_load(load, running)

            assert not load.timed_out(), "a request hung while the database was down"
            statuses = load.statuses()
            assert set(statuses) == {200, 503}, statuses
            for attempt in load.unacknowledged():
                assert attempt.problem["type"] == "urn:lending-ledger:problem:service-unavailable"
            acknowledged = load.acknowledged()
            await retry_with_the_same_keys(service.base_url, load.unacknowledged())
            await assert_replays(service.base_url, acknowledged[:: max(1, len(acknowledged) // 16)])
            assert await service.stop(signal.SIGTERM) == 0
            log = service.output()
            assert "unexpected error" not in log  # what api/web/problems.py logs for a 500
            assert '" 500 ' not in log  # uvicorn's access log

        await assert_ledger_consistent(url, load.attempts)


async def wait_for_unavailable(load: Load, since: int, count: int) -> None:
    """Until the load has met `count` 503s after attempt number `since` (bounded)."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while sum(attempt.status == 503 for attempt in load.attempts[since:]) < count:
        assert time.monotonic() < deadline, load.statuses()
        await asyncio.sleep(0.02)


async def post_streamed(http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[str, Any]:
    """("complete", response) when the whole response arrived; ("refused", error) when
    the request failed before any byte of a response; ("cut", error) when a response
    started and did not finish."""
    try:
        async with http.stream("POST", "/lending/apply", json=body) as response:
            try:
                await response.aread()
            except httpx.TransportError as error:
                return "cut", error
            return "complete", response
    except httpx.TimeoutException as error:
        return "timeout", error
    except httpx.TransportError as error:
        return "refused", error


def accepts_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_sigterm_drains_in_flight_requests_and_cuts_none_mid_transaction(
    make_database: MakeDatabase, tmp_path: Path
) -> None:
    url = await make_database()
    env = {"DATABASE_URL": url, "APP_ENV": "test", "LEDGER_DB_POOL_SIZE": "16"}
    applicant = new_applicant()
    bodies = [
        {
            "applicant_id": applicant,
            "amount": str(1000 + n),
            "income": "70000",
            "employment_years": 4,
        }
        for n in range(12)
    ]
    async with running_service(tmp_path, env) as service:
        port = int(service.base_url.rsplit(":", 1)[1])
        async with httpx.AsyncClient(base_url=service.base_url, timeout=STOP_TIMEOUT) as http:
            async with read_models_locked(url):
                in_flight = [asyncio.create_task(post_streamed(http, body)) for body in bodies]
                try:
                    # Every request is now inside its transaction, held at the lock.
                    await wait_for_lock_waiters(url, len(bodies))
                    service.process.send_signal(signal.SIGTERM)
                    deadline = time.monotonic() + STOP_TIMEOUT
                    while accepts_connections(port):
                        assert time.monotonic() < deadline, "still listening after SIGTERM"
                        await asyncio.sleep(0.02)
                    assert service.process.poll() is None, "exited with requests in flight"
                    # A new request now is refused before any byte is exchanged.
                    async with httpx.AsyncClient(base_url=service.base_url, timeout=5) as late:
                        outcome, _ = await post_streamed(late, bodies[0])
                    assert outcome == "refused"
                except BaseException:
                    for task in in_flight:
                        task.cancel()
                    raise
            # Leaving the block released the lock: the held requests now finish.
            outcomes = await asyncio.wait_for(asyncio.gather(*in_flight), STOP_TIMEOUT)

        deadline = time.monotonic() + STOP_TIMEOUT
        while service.process.poll() is None:
            assert time.monotonic() < deadline, f"did not exit:\n{service.output()}"
            await asyncio.sleep(0.05)
        assert service.process.returncode == 0, service.output()

    assert [outcome for outcome, _ in outcomes] == ["complete"] * len(bodies)
    responses: list[httpx.Response] = [response for _, response in outcomes]
    assert [response.status_code for response in responses] == [200] * len(bodies)
    answered = {response.json()["application_id"]: response.json() for response in responses}
    assert len(answered) == len(bodies)

    connection = await asyncpg.connect(url)
    try:
        stored = {
            str(row["application_id"]): row["stream_version"]
            for row in await connection.fetch(
                "SELECT application_id, stream_version FROM loan_applications "
                "WHERE applicant_id = $1",
                applicant,
            )
        }
        events = {
            application_id: await connection.fetchval(
                "SELECT count(*) FROM events WHERE stream_id = $1",
                stream_id_for(UUID(application_id)),
            )
            for application_id in answered
        }
    finally:
        await connection.close()
    # Each acknowledged application whole: its read-model row and all of its events.
    assert stored == {key: application["stream_version"] for key, application in answered.items()}
    assert events == stored
    assert set(stored.values()) == {3}  # submitted, scored, decided
