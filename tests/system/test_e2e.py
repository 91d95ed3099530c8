"""End to end: `lending-ledger serve` as a real process on a free loopback port."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from api.client import LedgerAPIError, LedgerClient
from tests.conftest import MakeDatabase, new_applicant

pytestmark = pytest.mark.slow

START_TIMEOUT = 90.0
STOP_TIMEOUT = 45.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def service_command() -> list[str]:
    """The installed console script, as a user runs it; the module if not installed."""
    script = Path(sys.executable).with_name("lending-ledger")
    if script.exists():
        return [str(script)]
    found = shutil.which("lending-ledger")
    return [found] if found else [sys.executable, "-m", "api.cli.main"]


class Service:
    def __init__(self, process: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
        self.process = process
        self.base_url = base_url
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"service ignored {sig.name}:\n{self.output()}")
            await asyncio.sleep(0.1)
        return self.process.returncode


@asynccontextmanager
async def running_service(
    tmp_path: Path, env: dict[str, str], args: Sequence[str] = ()
) -> AsyncIterator[Service]:
    port = free_port()
    log_path = tmp_path / f"service-{port}.log"
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environment.update(env)
    with log_path.open("wb") as log:
        # Popen only starts the process; every wait below is a bounded async poll.
        process = subprocess.Popen(  # noqa: ASYNC220
            [*service_command(), "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        service = Service(process, f"http://127.0.0.1:{port}", log_path)
        try:
            await wait_ready(service)
            yield service
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)


async def wait_ready(service: Service) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    async with httpx.AsyncClient(base_url=service.base_url, timeout=2) as http:
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise AssertionError(f"service exited early:\n{service.output()}")
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"service not ready in {START_TIMEOUT}s:\n{service.output()}")


async def test_the_agent_workflow_against_a_running_service(
    make_database: MakeDatabase, tmp_path: Path
) -> None:
    url = await make_database()
    async with running_service(tmp_path, {"DATABASE_URL": url, "APP_ENV": "test"}) as service:
        async with LedgerClient(service.base_url) as client:
            applicant = new_applicant()
            first_look = await client.evaluate_borrower(applicant)
            assert first_look["action"] == "request_more_data"

            approved = await client.apply(applicant, "5000", "90000", 6)
            assert approved["decision"] == "approved"
            decision = await client.evaluate_borrower(applicant)
            assert decision["action"] == "auto_process"
            assert decision.get("application_id") == approved["application_id"]

            review = await client.apply(applicant, "100000", "50000", 2)
            assert review["decision"] == "review"
            decision = await client.evaluate_borrower(applicant)
            assert decision["action"] == "manual_review"
            assert decision.get("application_id") == review["application_id"]

            with pytest.raises(LedgerAPIError) as rejected:
                await client.apply(applicant, "0.001", "1", 1)
            assert rejected.value.status == 422

            # The service's own sequencer gives the events their seq.
            deadline = time.monotonic() + 20
            while True:
                events = await client.application_events(review["application_id"])
                if all(event["seq"] is not None for event in events):
                    break
                assert time.monotonic() < deadline, "events never got a seq"
                await asyncio.sleep(0.05)
        assert await service.stop(signal.SIGTERM) == 0


async def test_embedded_database_with_two_workers_keeps_every_event_across_restarts(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    env = {"LEDGER_DATA_DIR": str(data_dir), "APP_ENV": "test"}
    acknowledged: list[str] = []
    applicant = new_applicant()

    async with running_service(tmp_path, env, ["--workers", "2"]) as service:
        postmaster = data_dir / "pgdata" / "postmaster.pid"
        assert postmaster.exists(), "the embedded server runs in the data directory"
        async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:

            async def submit(number: int) -> None:
                body = {
                    "applicant_id": applicant,
                    "amount": str(1000 + number),
                    "income": "60000",
                    "employment_years": number % 10,
                }
                try:
                    response = await http.post("/lending/apply", json=body)
                except httpx.TransportError:
                    return  # refused once shutdown began: not acknowledged, fine
                if response.status_code == 200:
                    acknowledged.append(response.json()["application_id"])
                else:  # during shutdown only a clean problem+json answer is acceptable
                    assert response.status_code == 503, response.text

            await asyncio.gather(*(submit(n) for n in range(10)))
            assert len(acknowledged) == 10
            # Stop while more requests are in flight: nothing acknowledged may be lost.
            in_flight = [asyncio.create_task(submit(n)) for n in range(10, 40)]
            await asyncio.sleep(0.05)
            assert await service.stop(signal.SIGINT) == 0
            await asyncio.gather(*in_flight)
        assert not postmaster.exists(), "stopping the service stops the database it started"

    async with running_service(tmp_path, env) as service, LedgerClient(service.base_url) as client:
        history = await client.history(applicant, limit=100)
        assert sorted(item["application_id"] for item in history) == sorted(acknowledged)
        for application_id in acknowledged:
            events = await client.application_events(application_id)
            assert [event["type"] for event in events] == [
                "ApplicationSubmitted",
                "ApplicationScored",
                "ApplicationDecided",
            ]
        assert await service.stop(signal.SIGTERM) == 0
