"""Reads from a real streaming replica (LEDGER_READ_DATABASE_URL), and reading your own
writes there with X-Ledger-LSN / X-Min-LSN.

A private primary cluster, a replica made from it with `pg_basebackup -R`, and the app
with its writes on the primary and its lag-tolerant reads on the replica. Replay on the
replica is paused to show what a reader may see (the replica's lag) and what X-Min-LSN
guarantees (never older than the write it names).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import asyncpg
import httpx

from api.service.settings import Settings
from api.web.app import create_app
from ledger.db import connect
from ledger.schema import apply_schema
from tests.conftest import FAST_SEQUENCER, new_applicant
from tests.integration.test_observability import parse, value
from tests.support.faults import private_cluster
from tests.support.helpers import assert_problem
from tests.support.replica import streaming_replica

DATABASE = "ledger"


async def history(http: httpx.AsyncClient, applicant: str, min_lsn: str | None = None) -> Any:
    headers = {"X-Min-LSN": min_lsn} if min_lsn else {}
    response = await http.get(f"/lending/applicants/{applicant}/history", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def replica_replayed(replica_url: str, lsn: str, timeout: float = 30) -> None:
    connection = await asyncpg.connect(replica_url)
    try:
        deadline = time.monotonic() + timeout
        while not await connection.fetchval(
            "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", lsn
        ):
            assert time.monotonic() < deadline, f"the replica did not replay up to {lsn}"
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


async def test_reads_come_from_the_replica_and_writers_read_their_writes() -> None:
    async with private_cluster() as primary:
        admin = await asyncpg.connect(primary.url("postgres"))
        try:
            await admin.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            await admin.close()
        connection = await connect(primary.url(DATABASE))
        try:
            await apply_schema(connection)
        finally:
            await connection.close()
        async with streaming_replica(primary) as replica:
            replica_url = replica.url(DATABASE)
            control = await asyncpg.connect(replica_url)
            try:
                assert await control.fetchval("SELECT pg_is_in_recovery()")
                settings = Settings(
                    app_env="test",
                    seal_interval_seconds=0,
                    read_database_url=replica_url,
                    read_min_lsn_wait_ms=300,
                )
                app = create_app(
                    settings, database_url=primary.url(DATABASE), sequencer_settings=FAST_SEQUENCER
                )
                async with app.router.lifespan_context(app):
                    service = app.state.service
                    await service.wait_ready(30)
                    deadline = time.monotonic() + 30
                    while service._read_pool is None:
                        assert time.monotonic() < deadline, "the replica pool never connected"
                        await asyncio.sleep(0.05)
                    transport = httpx.ASGITransport(app=app)
                    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                        await exercise(http, control, replica_url)
            finally:
                await control.close()


async def exercise(http: httpx.AsyncClient, control: asyncpg.Connection, replica_url: str) -> None:
    applicant = new_applicant()
    body = {"applicant_id": applicant, "amount": "500", "income": "60000", "employment_years": 3}

    # A write says where it committed; the replica serves the application once it replays.
    first = await http.post("/lending/apply", json=body)
    assert first.status_code == 200, first.text
    first_lsn = first.headers["x-ledger-lsn"]
    await replica_replayed(replica_url, first_lsn)
    [seen] = await history(http, applicant)
    assert seen["application_id"] == first.json()["application_id"]

    # Replay paused: the replica lags, and a plain read shows the older state.
    await control.execute("SELECT pg_wal_replay_pause()")
    try:
        second = await http.post("/lending/apply", json=body)
        assert second.status_code == 200
        second_id, second_lsn = second.json()["application_id"], second.headers["x-ledger-lsn"]
        stale = await history(http, applicant)
        assert [a["application_id"] for a in stale] == [seen["application_id"]]
        # With X-Min-LSN the read waits for the replica (300 ms here), then reads the primary.
        started = time.monotonic()
        fresh = await history(http, applicant, min_lsn=second_lsn)
        assert time.monotonic() - started >= 0.25
        assert second_id in {a["application_id"] for a in fresh}
        events = await http.get(
            f"/lending/applications/{second_id}/events", headers={"X-Min-LSN": second_lsn}
        )
        assert events.status_code == 200
        assert len(events.json()) == 3
        # An LSN the replica has already passed is served at once.
        assert len(await history(http, applicant, min_lsn=first_lsn)) == 1
        metrics = parse((await http.get("/metrics")).text)
        assert ("ledger_replica_lag_seconds", frozenset()) in metrics
    finally:
        await control.execute("SELECT pg_wal_replay_resume()")

    # Replay resumed: the replica catches up by itself and plain reads see the write.
    deadline = time.monotonic() + 30
    while len(await history(http, applicant)) != 2:
        assert time.monotonic() < deadline, "the replica never showed the second application"
        await asyncio.sleep(0.05)
    fresh_ids = {a["application_id"] for a in await history(http, applicant, second_lsn)}
    assert second_id in fresh_ids

    # The feed reads the replica too: every event, once sequenced on the primary and replayed.
    deadline = time.monotonic() + 30
    while len((await http.get("/events")).json()) < 6:
        assert time.monotonic() < deadline, "the feed on the replica never caught up"
        await asyncio.sleep(0.05)
    metrics = parse((await http.get("/metrics")).text)
    assert value(metrics, "ledger_replica_lag_seconds") >= 0

    # The read-only CLI checks run against the replica (DATABASE_URL pointed at it).
    for command in (["verify", "--json"], ["rescore", "--all", "--json"]):
        code, report = await asyncio.to_thread(cli_json, command, replica_url)
        assert code == 0, report
        assert report

    malformed = await http.get(
        f"/lending/applicants/{applicant}/history", headers={"X-Min-LSN": "yesterday"}
    )
    assert_problem(malformed, 422)


def cli_json(argv: list[str], database_url: str) -> tuple[int, Any]:
    """`lending-ledger ...` in a process of its own, with DATABASE_URL the replica's."""
    finished = subprocess.run(
        [sys.executable, "-m", "api.cli.main", *argv],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.stdout, finished.stderr
    return finished.returncode, json.loads(finished.stdout)
