"""An app that enforces API keys, on a database of its own.

The session-shared `app` fixture runs in open mode (no key exists in its database), and
must stay so for the other test files; tests of authentication build this one instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from api.service.access import Role
from api.service.keystore import create_key, revoke_key
from api.service.settings import Settings
from api.web.app import create_app
from ledger.db import connect, create_pool
from tests.conftest import FAST_SEQUENCER, MakeDatabase
from tests.support.helpers import row_counts

WRITES = """
SELECT (SELECT count(*) FROM api_keys) AS keys,
       (SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL) AS revoked
"""


@dataclass(frozen=True)
class KeyedApp:
    app: FastAPI
    client: httpx.AsyncClient
    pool: asyncpg.Pool  # the test's own pool (the owner's role), for looking at the data
    database_url: str
    keys: dict[Role, str]  # one active key per role
    revoked_key: str
    spare_key_id: str  # an active admin key that a test may revoke

    def headers(self, role: Role) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[role]}"}

    async def writes(self) -> tuple[int, ...]:
        """Everything a refused request could have written: events, applications,
        idempotency records, keys and revocations."""
        async with self.pool.acquire() as connection:
            row = await connection.fetchrow(WRITES)
        assert row is not None
        return (*await row_counts(self.pool), row["keys"], row["revoked"])


@asynccontextmanager
async def lifespan_in_own_task(app: FastAPI) -> AsyncIterator[None]:
    """Run the app's lifespan in a task of its own, entered and exited by that task.

    Task groups in the lifespan (the MCP session manager's) must be exited by the task
    that entered them, and pytest-asyncio runs a fixture's setup and teardown in
    different tasks."""
    started = asyncio.Event()
    stop = asyncio.Event()

    async def hold() -> None:
        async with app.router.lifespan_context(app):
            started.set()
            await stop.wait()

    holder = asyncio.create_task(hold(), name="test-app-lifespan")
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({holder, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if holder.done():  # start-up failed: raise its error here
        waiter.cancel()
        holder.result()
    try:
        yield
    finally:
        stop.set()
        await holder


@asynccontextmanager
async def keyed_app(
    make_database: MakeDatabase, app_env: str = "test", **overrides: Any
) -> AsyncIterator[KeyedApp]:
    """`overrides`: further Settings (e.g. allow_privileged_database_role for production,
    since tests connect as the database's owner)."""
    url = await make_database()
    connection = await connect(url)
    try:
        keys = {}
        for role in Role:
            _, keys[role] = await create_key(connection, f"test-{role}", role.value)
        revoked, revoked_key = await create_key(connection, "test-revoked", Role.ADMIN.value)
        await revoke_key(connection, revoked.id)
        spare, _ = await create_key(connection, "test-spare", Role.ADMIN.value)
    finally:
        await connection.close()
    settings = Settings(app_env=app_env, **overrides)
    app = create_app(settings, database_url=url, sequencer_settings=FAST_SEQUENCER)
    pool = await create_pool(url, min_size=1, max_size=4)
    try:
        async with lifespan_in_own_task(app):
            await app.state.service.wait_ready(30)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://ledger.test"
            ) as http:
                yield KeyedApp(app, http, pool, url, keys, revoked_key, spare.id)
    finally:
        await pool.close()
