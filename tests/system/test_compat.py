"""Compatibility: the schema and the service on each system PostgreSQL found on the machine.

The default suite runs on the embedded PostgreSQL 18. Where Debian-style server binaries
are installed (/usr/lib/postgresql/<major>/bin, as on the CI machines, which have 15), the
same service path runs on each of them too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.service.settings import Settings
from api.web.app import create_app
from ledger.chain import verify_stream
from ledger.db import connect, create_pool
from ledger.events import RecordedEvent
from ledger.schema import apply_schema
from tests.conftest import FAST_SEQUENCER, new_applicant
from tests.integration.test_properties_db import assert_read_models_equal_the_fold
from tests.support.helpers import all_events, wait_until_sequenced, whole_feed

SYSTEM_SERVERS = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


def as_server_user(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@pytest.fixture(params=SYSTEM_SERVERS, ids=lambda path: f"postgresql-{path.parent.parent.name}")
def system_server(request: pytest.FixtureRequest) -> Iterator[str]:
    bin_dir: Path = request.param.parent
    root = Path(tempfile.mkdtemp(prefix="ledger-compat-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"

    def run(program: str, *args: str) -> None:
        command = as_server_user([str(bin_dir / program), *args])
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    run("initdb", "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8")
    options = f"-h '' -k {root} -c fsync=off"
    run("pg_ctl", "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        yield f"postgresql://postgres@/postgres?host={root}"
    finally:
        run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(not SYSTEM_SERVERS, reason="no system PostgreSQL binaries on this machine")
async def test_the_service_works_on_system_postgresql(system_server: str) -> None:
    connection = await connect(system_server)
    try:
        version = await connection.fetchval("SHOW server_version_num")
        assert int(version) >= 140000
        await apply_schema(connection)
        await apply_schema(connection)  # idempotent
    finally:
        await connection.close()

    app = create_app(
        Settings(app_env="test"), database_url=system_server, sequencer_settings=FAST_SEQUENCER
    )
    async with app.router.lifespan_context(app):
        await app.state.service.wait_ready(30)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            applicant = new_applicant()
            for amount in ("5000", "100000", "0.01"):
                body = {
                    "applicant_id": applicant,
                    "amount": amount,
                    "income": "90000",
                    "employment_years": 6,
                }
                response = await client.post("/lending/apply", json=body)
                assert response.status_code == 200, response.text
            history = (await client.get(f"/lending/applicants/{applicant}/history")).json()
            assert len(history) == 3

        pool = await create_pool(system_server)
        try:
            assert await wait_until_sequenced(pool) == 9
            async with pool.acquire() as pooled:
                feed = await whole_feed(pooled)
                assert [event.seq for event in feed] == list(range(1, 10))
                await assert_read_models_equal_the_fold(pooled)
                streams: dict[str, list[RecordedEvent]] = {}
                for event in await all_events(pooled):
                    streams.setdefault(event.stream_id, []).append(event)
                assert all(verify_stream(stream) is None for stream in streams.values())
        finally:
            await pool.close()
