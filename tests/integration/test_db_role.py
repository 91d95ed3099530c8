"""The database role the service connects as: exactly the grants in schema.sql, a ledger
it can append to and read but never rewrite, and a schema only the owner changes."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from api.service.dbrole import (
    APP_GROUP_ROLE,
    CREDENTIAL_FILE,
    EMBEDDED_SERVICE_ROLE,
    SchemaNotCurrent,
    ensure_login_role,
    ensure_schema,
    ledger_rewrite_privileges,
    prepare_embedded_database,
    with_credentials,
)
from api.service.settings import Settings
from api.web.app import create_app
from ledger.db import connect, create_pool
from ledger.schema import apply_schema
from tests.conftest import FAST_SEQUENCER, MakeDatabase, new_applicant
from tests.support.helpers import wait_until_sequenced
from tests.support.keyed import lifespan_in_own_task

_RW = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})

# Every table in the public schema, and what the service's role may do with it. A table
# added to schema.sql needs its GRANT in the block at the end of schema.sql AND an entry
# here (an empty set is a decision too: the service never touches it).
EXPECTED_PRIVILEGES: dict[str, frozenset[str]] = {
    "events": frozenset({"SELECT", "INSERT"}),
    "ledger_log": frozenset({"SELECT", "INSERT"}),
    "ledger_cursor": frozenset({"SELECT", "UPDATE"}),
    "seals": frozenset({"SELECT", "INSERT"}),
    "merkle_nodes": frozenset({"SELECT", "INSERT"}),
    "loan_applications": _RW,
    "application_history": _RW,
    "projection_checkpoints": _RW,
    "projection_rebuilds": frozenset({"SELECT", "INSERT", "UPDATE"}),
    "idempotency_keys": _RW,
    "api_keys": frozenset({"SELECT", "INSERT", "UPDATE (revoked_at)"}),
    "schema_applied": frozenset({"SELECT"}),
}

GRANTS = """
SELECT c.relname AS table_name, a.privilege_type AS privilege
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL aclexplode(c.relacl) a
WHERE n.nspname = 'public' AND a.grantee = $1::regrole
UNION ALL
SELECT c.relname, a.privilege_type || ' (' || att.attname || ')'
FROM pg_attribute att
JOIN pg_class c ON c.oid = att.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL aclexplode(att.attacl) a
WHERE n.nspname = 'public' AND a.grantee = $1::regrole
"""


@dataclass(frozen=True)
class AppRole:
    owner_url: str
    url: str  # a LOGIN member of lending_ledger_app


@pytest.fixture
async def app_role(make_database: MakeDatabase, server_url: str) -> AsyncIterator[AppRole]:
    """A fresh database and a login role of the app group, dropped afterwards."""
    owner_url = await make_database()
    name = f"ledger_test_service_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    connection = await connect(owner_url)
    try:
        await ensure_login_role(connection, name, password)
    finally:
        await connection.close()
    yield AppRole(owner_url, with_credentials(owner_url, name, password))
    admin = await asyncpg.connect(server_url)
    try:
        # Its sessions first: the service under test may still be closing its pool.
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name
        )
        await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
    finally:
        await admin.close()


async def test_every_table_has_exactly_its_grant_decision(database_url: str) -> None:
    connection = await connect(database_url)
    try:
        tables = {
            row["tablename"]
            for row in await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
        granted: dict[str, set[str]] = {}
        for row in await connection.fetch(GRANTS, APP_GROUP_ROLE):
            granted.setdefault(row["table_name"], set()).add(row["privilege"])
    finally:
        await connection.close()
    undecided = sorted(tables - EXPECTED_PRIVILEGES.keys())
    assert not undecided, (
        f"tables without a grant decision: {undecided}. Grant the service what it needs in "
        "the block at the end of schema.sql and record it in EXPECTED_PRIVILEGES here."
    )
    assert not EXPECTED_PRIVILEGES.keys() - tables, "EXPECTED_PRIVILEGES names a dropped table"
    actual = {table: frozenset(granted.get(table, ())) for table in tables}
    assert actual == EXPECTED_PRIVILEGES


async def insert_event(connection: asyncpg.Connection) -> int:
    position: int = await connection.fetchval(
        """
        INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version,
                            data, metadata, recorded_at, prev_hash, hash)
        VALUES ($1, 1, $2, 'Probe', 1, '{}', '{}', $3, $4, $4)
        RETURNING position
        """,
        f"probe-{uuid.uuid4()}",
        uuid.uuid4(),
        datetime.now(UTC),
        bytes(32),
    )
    return position


async def test_the_app_role_appends_and_reads_but_the_database_refuses_any_rewrite(
    app_role: AppRole,
) -> None:
    connection = await connect(app_role.url)
    try:
        assert await connection.fetchval("SELECT current_user") != "postgres"
        position = await insert_event(connection)
        assert await connection.fetchval("SELECT count(*) FROM events") == 1
        await connection.execute("INSERT INTO ledger_log (seq, position) VALUES (1, $1)", position)
        assert await connection.fetchval("SELECT count(*) FROM ledger_log") == 1
        refused = [
            "UPDATE events SET event_type = 'Forged'",
            "DELETE FROM events",
            "TRUNCATE events",
            "UPDATE ledger_log SET seq = 2",
            "DELETE FROM ledger_log",
            "TRUNCATE ledger_log",
            "UPDATE api_keys SET hash = hash",
            "DELETE FROM api_keys",
            "UPDATE schema_applied SET applied_at = now()",
            "ALTER TABLE events DISABLE TRIGGER USER",
        ]
        for statement in refused:
            # insufficient_privilege (42501), not the trigger's restrict_violation (23001):
            # the privilege check comes first.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(statement)
        await connection.execute("UPDATE api_keys SET revoked_at = now() WHERE false")
        assert await ledger_rewrite_privileges(connection) == []
    finally:
        await connection.close()
    owner = await connect(app_role.owner_url)
    try:  # the owner is stopped only by the trigger
        with pytest.raises(asyncpg.RestrictViolationError):
            await owner.execute("DELETE FROM events")
        assert await ledger_rewrite_privileges(owner) != []
    finally:
        await owner.close()


async def test_the_service_runs_as_the_app_role_and_only_the_owner_warns(
    app_role: AppRole, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="api.service.access")
    owner_pool = await create_pool(app_role.owner_url, min_size=1, max_size=2)
    try:
        for url, owner in ((app_role.url, False), (app_role.owner_url, True)):
            caplog.clear()
            await serve_one_application(url, owner_pool, caplog)
            assert ("can rewrite the ledger" in caplog.text) == owner, caplog.text
    finally:
        await owner_pool.close()


async def serve_one_application(
    url: str, owner_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(app_env="test"), database_url=url, sequencer_settings=FAST_SEQUENCER)
    async with lifespan_in_own_task(app):
        await app.state.service.wait_ready(30)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = {
                "applicant_id": new_applicant(),
                "amount": "100",
                "income": "90000",
                "employment_years": 2,
            }
            created = await client.post(
                "/lending/apply", json=body, headers={"idempotency-key": str(uuid.uuid4())}
            )
            assert created.status_code == 200, created.text
        # Its sequencer numbers the events: INSERT ledger_log, UPDATE ledger_cursor.
        assert await wait_until_sequenced(owner_pool) >= 3
        deadline = time.monotonic() + 10
        while "OPEN MODE" not in caplog.text:  # logged after the privilege check
            assert time.monotonic() < deadline, "the start-up checks never ran"
            await asyncio.sleep(0.02)


async def test_a_role_that_cannot_migrate_waits_for_the_owner_to(app_role: AppRole) -> None:
    owner = await connect(app_role.owner_url)
    try:
        await owner.execute("UPDATE schema_applied SET sha256 = $1", bytes(32))
        service_role = await connect(app_role.url)
        try:
            with pytest.raises(SchemaNotCurrent, match="lending-ledger migrate"):
                await ensure_schema(service_role)
        finally:
            await service_role.close()

        app = create_app(Settings(app_env="test"), database_url=app_role.url)
        async with lifespan_in_own_task(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                deadline = time.monotonic() + 10
                while "migrate" not in str((await client.get("/readyz")).json()["detail"]):
                    assert time.monotonic() < deadline, "readyz never named the fix"
                    await asyncio.sleep(0.05)
                await apply_schema(owner)  # what `lending-ledger migrate` does
                await app.state.service.wait_ready(30)
                assert (await client.get("/readyz")).status_code == 200

        service_role = await connect(app_role.url)
        try:
            assert await ensure_schema(service_role) is False  # current: nothing to apply
        finally:
            await service_role.close()
        assert await ensure_schema(owner) is True  # the owner always applies
    finally:
        await owner.close()


async def test_the_embedded_setup_makes_a_service_login_role(
    make_database: MakeDatabase, server_url: str, tmp_path: Path
) -> None:
    superuser_url = await make_database()
    admin = await asyncpg.connect(server_url)
    try:
        existed = await admin.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", EMBEDDED_SERVICE_ROLE
        )
        url = await prepare_embedded_database(superuser_url, tmp_path)
        assert os.stat(tmp_path / CREDENTIAL_FILE).st_mode & 0o777 == 0o600
        assert await prepare_embedded_database(superuser_url, tmp_path) == url  # same password
        connection = await connect(url)
        try:
            assert await connection.fetchval("SELECT current_user") == EMBEDDED_SERVICE_ROLE
            assert await connection.fetchval("SELECT pg_has_role($1, 'MEMBER')", APP_GROUP_ROLE)
            assert await ledger_rewrite_privileges(connection) == []
            assert await ensure_schema(connection) is False
        finally:
            await connection.close()
    finally:
        if not existed:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                EMBEDDED_SERVICE_ROLE,
            )
            await admin.execute(f'DROP ROLE IF EXISTS "{EMBEDDED_SERVICE_ROLE}"')
        await admin.close()
