"""The service around the API: body limits, database outages, readiness, configuration,
schema application, and the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from api.cli.main import main
from api.service.settings import ConfigurationError, Settings
from api.web.app import create_app
from api.web.problems import register_error_handlers
from ledger.db import connect
from ledger.schema import apply_schema
from tests.conftest import MakeDatabase, new_applicant
from tests.support.helpers import assert_problem

UNREACHABLE = "postgresql://nobody@127.0.0.1:9/none?connect_timeout=1"


@pytest.fixture
async def app_without_database() -> AsyncIterator[FastAPI]:
    app = create_app(Settings(app_env="test"), database_url=UNREACHABLE)
    async with app.router.lifespan_context(app):
        yield app


async def test_bodies_over_the_limit_get_413_problem_json(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    async with pool.acquire() as connection:
        before = await connection.fetchval("SELECT count(*) FROM events")
    declared = await client.post(
        "/lending/apply", content=b" " * 70_000, headers={"content-type": "application/json"}
    )

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" " * 1000

    streamed = await client.post(
        "/lending/apply", content=chunks(), headers={"content-type": "application/json"}
    )
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "urn:lending-ledger:problem:body-too-large"
    async with pool.acquire() as connection:
        assert await connection.fetchval("SELECT count(*) FROM events") == before
    healthy = await client.get("/healthz")
    assert healthy.status_code == 200


async def test_without_a_database_writes_get_503_and_readyz_says_why(
    app_without_database: FastAPI,
) -> None:
    transport = httpx.ASGITransport(app=app_without_database)
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger.test") as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "starting"
        body = {"applicant_id": new_applicant(), "amount": 1, "income": 1, "employment_years": 1}
        for response in (
            await client.post("/lending/apply", json=body),
            await client.get("/lending/applicants/cust_1001/history"),
            await client.get("/events"),
        ):
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["retry-after"] == "1"
            assert "nothing was written" in response.json()["detail"]


async def test_the_service_becomes_ready_once_the_database_appears(
    make_database: MakeDatabase,
) -> None:
    """Start-up never blocks on the database: /readyz turns 200 once it connects."""
    url = await make_database()
    app = create_app(Settings(app_env="test"), database_url=url)
    async with app.router.lifespan_context(app):
        service = app.state.service
        await service.wait_ready(30)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/readyz")).json() == {"status": "ok", "detail": None}


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        ),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=type,
)
async def test_a_connection_lost_under_a_request_is_503_problem_not_500(error: Exception) -> None:
    """What asyncpg raises when a pooled connection's backend died under the request (the
    killed-connections test below meets these at random; here each one, every time)."""
    app = FastAPI()
    register_error_handlers(app)

    async def fails() -> None:
        raise error

    app.add_api_route("/fails", fails, methods=["POST"])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/fails")
    assert_problem(response, 503, "service-unavailable")
    assert response.headers["retry-after"] == "1"


async def test_the_service_recovers_when_its_database_connections_are_killed(
    make_database: MakeDatabase, server_url: str
) -> None:
    """Every backend of the service is killed (as in a database restart). The pool
    replaces dead connections; a request that still meets one gets 503 problem+json,
    never 500, and within a few requests writes succeed again."""
    url = await make_database()
    database = urlsplit(url).path.lstrip("/")
    app = create_app(Settings(app_env="test"), database_url=url)
    body = {"applicant_id": new_applicant(), "amount": 100, "income": 100, "employment_years": 1}
    async with app.router.lifespan_context(app):
        await app.state.service.wait_ready(30)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.post("/lending/apply", json=body)).status_code == 200
            admin = await asyncpg.connect(server_url)
            try:
                killed = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    database,
                )
            finally:
                await admin.close()
            assert killed >= 1
            statuses = []
            for _ in range(20):  # bounded: the pool replaces dead connections as they fail
                response = await client.post("/lending/apply", json=body)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    break
                assert response.status_code == 503, response.text
                assert response.headers["content-type"] == "application/problem+json"
            assert statuses[-1] == 200, statuses
    connection = await connect(url)
    try:
        written = await connection.fetchval("SELECT count(*) FROM loan_applications")
    finally:
        await connection.close()
    assert written == 2  # the 503s wrote nothing


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"APP_ENV": "staging"}, "APP_ENV"),
        ({"LEDGER_PORT": "eighty"}, "LEDGER_PORT"),
        ({"LEDGER_PORT": "70000"}, "LEDGER_PORT"),
        ({"LEDGER_WORKERS": "0"}, "LEDGER_WORKERS"),
        ({"LEDGER_SCORING_MODEL": "magic-v9"}, "LEDGER_SCORING_MODEL"),
        ({"LEDGER_MAX_BODY_BYTES": "10"}, "LEDGER_MAX_BODY_BYTES"),
    ],
)
def test_bad_configuration_is_refused_by_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env(env)


def test_configuration_defaults_and_overrides() -> None:
    defaults = Settings.from_env({})
    assert (defaults.host, defaults.port, defaults.workers, defaults.app_env) == (
        "127.0.0.1",
        8000,
        1,
        "development",
    )
    assert defaults.database_url is None
    assert defaults.data_dir.name == "lending-ledger"
    custom = Settings.from_env(
        {"DATABASE_URL": "postgresql://x/y", "LEDGER_PORT": "9001", "LEDGER_DATA_DIR": "/tmp/d"}
    )
    assert (custom.database_url, custom.port, str(custom.data_dir)) == (
        "postgresql://x/y",
        9001,
        "/tmp/d",
    )


def test_the_cli_reports_configuration_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LEDGER_PORT", "not-a-port")
    assert main(["migrate"]) == 2
    assert "LEDGER_PORT" in capsys.readouterr().err


async def test_migrate_applies_the_schema_idempotently(make_database: MakeDatabase) -> None:
    url = await make_database()  # schema already applied once
    for _ in range(2):
        finished = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "api.cli.main", "migrate"],
            env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert finished.returncode == 0, finished.stderr
        assert "schema applied" in finished.stdout
    connection = await connect(url)
    try:
        tables = {
            row["tablename"]
            for row in await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
    finally:
        await connection.close()
    assert {
        "events",
        "ledger_log",
        "ledger_cursor",
        "loan_applications",
        "application_history",
        "projection_checkpoints",
        "idempotency_keys",
    } <= tables


async def test_concurrent_schema_application_is_safe(make_database: MakeDatabase) -> None:
    """Several workers starting at once all apply schema.sql: the advisory lock serialises."""
    url = await make_database()
    connections = [await connect(url) for _ in range(6)]
    try:
        await asyncio.gather(*(apply_schema(connection) for connection in connections))
        cursor_rows = await connections[0].fetchval("SELECT count(*) FROM ledger_cursor")
        assert cursor_rows == 1
    finally:
        for connection in connections:
            await connection.close()
