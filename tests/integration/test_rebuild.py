"""Rebuilding projections on real PostgreSQL: rebuilt == inline after random workloads, no
lost or doubled rows with appends during the rebuild (and events not yet sequenced at the
swap), identical tables and indexes, crashes that leave the live tables untouched, catch-up
of a projection added later, the CLI and the admin HTTP surface."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from api.cli.main import main
from api.cli.progress import ProgressBar, render
from api.service.dbrole import with_credentials
from api.service.importer import import_file
from api.service.settings import Settings
from api.web.app import create_app
from ledger.db import Connection, connect
from ledger.errors import RebuildInProgress
from ledger.events import RecordedEvent
from ledger.schema import apply_schema
from ledger.scoring import RATIO_V1
from projections import runner
from projections.applications import ApplicationsProjector
from projections.rebuild import (
    SwapTimedOut,
    catch_up_projection,
    last_rebuild,
    live_checkpoint,
    projection_lock_held,
    rebuild,
    table_shape,
    try_lock_projection,
    unlock_projection,
)
from projections.runner import ProjectionFailed
from tests.conftest import FAST_SEQUENCER, MakeDatabase
from tests.integration.test_import import as_line, write_lines
from tests.integration.test_properties_db import assert_read_models_equal_the_fold
from tests.support.helpers import assert_problem, wait_until_sequenced
from tests.support.keyed import lifespan_in_own_task
from tests.support.workload import Command, Service, commands, fresh_service, new_run, run_command
from tests.system.test_e2e import service_command

APPLICATIONS = ApplicationsProjector()
TABLES = APPLICATIONS.tables
DEADLINE = 60.0


async def table_rows(connection: Connection, table: str, schema: str = "public") -> list[str]:
    """Every row of a table as canonical JSON text, sorted: equal lists = equal tables."""
    rows = await connection.fetch(f'SELECT to_jsonb(t)::text AS row FROM "{schema}"."{table}" t')
    return sorted(row["row"] for row in rows)


async def snapshot(connection: Connection) -> dict[str, list[str]]:
    return {table: await table_rows(connection, table) for table in TABLES}


async def rebuild_schemas(connection: Connection) -> list[str]:
    rows = await connection.fetch(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'rebuild%' ORDER BY 1"
    )
    return [row["nspname"] for row in rows]


async def rebuild_applications(url: str, **options: Any) -> Any:
    connection = await connect(url)
    try:
        return await rebuild(connection, APPLICATIONS, **options)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def service(make_database: MakeDatabase) -> AsyncIterator[Service]:
    async with fresh_service(make_database) as running:
        yield running


# --- Rebuilt == inline ---


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(commands)
async def test_rebuilt_tables_equal_the_inline_ones_row_for_row(
    service: Service, workload: list[Command]
) -> None:
    run, submitted = new_run(), list[str]()
    for command in workload:
        await run_command(service.client, run, command, submitted)
    async with service.pool.acquire() as connection:
        inline = await snapshot(connection)
    assert inline["loan_applications"]
    result = await rebuild_applications(service.url, batch_size=7)
    async with service.pool.acquire() as connection:
        assert await snapshot(connection) == inline
        await assert_read_models_equal_the_fold(connection)
        assert await rebuild_schemas(connection) == []
    assert result.rows == {table: len(rows) for table, rows in inline.items()}


# --- Appends during a rebuild ---


class GatedProjector:
    """The applications projector, held at its first batch until `gate` opens, so appends
    are known to happen while the rebuild runs."""

    name = APPLICATIONS.name
    tables = APPLICATIONS.tables

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.reached = asyncio.Event()

    async def apply(self, connection: Connection, events: Sequence[RecordedEvent]) -> None:
        self.reached.set()
        await self.gate.wait()
        await APPLICATIONS.apply(connection, events)


async def apply_one(service: Service, applicant: str) -> str:
    response = await service.client.post(
        "/lending/apply",
        json={
            "applicant_id": applicant,
            "amount": "1200",
            "income": "64000",
            "employment_years": 4,
        },
    )
    assert response.status_code == 200, response.text
    application_id: str = response.json()["application_id"]
    return application_id


async def test_appends_during_a_rebuild_all_reach_the_rebuilt_tables(
    make_database: MakeDatabase,
) -> None:
    async with fresh_service(make_database) as service:
        acknowledged = [await apply_one(service, "before_1") for _ in range(30)]
        await wait_until_sequenced(service.pool)
        gated = GatedProjector()
        stop = asyncio.Event()

        enough_while_held = asyncio.Event()

        async def writer(number: int) -> None:
            # Bounded: at most 60 appends each, and only until the rebuild is over.
            for _ in range(60):
                if stop.is_set():
                    return
                acknowledged.append(await apply_one(service, f"during_{number}"))
                if len(acknowledged) >= 45:
                    enough_while_held.set()

        dedicated = await connect(service.url)
        try:
            rebuilding = asyncio.create_task(rebuild(dedicated, gated, batch_size=10))
            async with asyncio.timeout(DEADLINE):
                await gated.reached.wait()
                writers = [asyncio.create_task(writer(n)) for n in range(3)]
                await enough_while_held.wait()  # appended while the rebuild holds at its gate
                gated.gate.set()
                result = await rebuilding
                stop.set()
                await asyncio.gather(*writers)
        finally:
            await dedicated.close()
        acknowledged.append(await apply_one(service, "after_1"))  # writes the new tables
        assert result.events >= 3 * 45
        await wait_until_sequenced(service.pool)
        async with service.pool.acquire() as connection:
            stored = {
                str(row["application_id"])
                for row in await connection.fetch("SELECT application_id FROM loan_applications")
            }
            assert stored == set(acknowledged)
            assert len(acknowledged) == len(set(acknowledged))
            await assert_read_models_equal_the_fold(connection)
            assert await rebuild_schemas(connection) == []


async def test_the_swap_applies_committed_events_the_sequencer_has_not_reached(
    make_database: MakeDatabase,
) -> None:
    """A transaction that holds the horizon back keeps newer events out of the ledger log.
    The rebuild must still finish (it never waits for the sequencer under its locks) and
    the swapped-in tables must hold those events, exactly once."""
    async with fresh_service(make_database) as service:
        for _ in range(5):
            await apply_one(service, "early")
        await wait_until_sequenced(service.pool)
        holder = await connect(service.url)
        try:
            await holder.execute("BEGIN; SELECT pg_current_xact_id()")
            late = [await apply_one(service, "late") for _ in range(4)]
            async with service.pool.acquire() as connection:
                unsequenced = await connection.fetchval(
                    "SELECT count(*) FROM events e WHERE NOT EXISTS "
                    "(SELECT 1 FROM ledger_log l WHERE l.position = e.position)"
                )
                inline = await snapshot(connection)
            assert unsequenced == 3 * len(late)
            async with asyncio.timeout(DEADLINE):
                result = await rebuild_applications(service.url)
            assert result.late_events == unsequenced
            async with service.pool.acquire() as connection:
                assert await snapshot(connection) == inline
        finally:
            await holder.close()
        await wait_until_sequenced(service.pool)
        async with service.pool.acquire() as connection:
            await assert_read_models_equal_the_fold(connection)


# --- Identical tables ---


async def test_tables_indexes_and_grants_survive_two_rebuilds_and_a_schema_reapply(
    make_database: MakeDatabase,
) -> None:
    async with fresh_service(make_database) as service:
        await apply_one(service, "shape_1")
        async with service.pool.acquire() as connection:
            # What CREATE TABLE ... LIKE does not copy, and the rebuild must.
            await connection.execute("ALTER TABLE loan_applications SET (fillfactor = 90)")
            await connection.execute("GRANT REFERENCES (status) ON loan_applications TO PUBLIC")
            before = {table: await table_shape(connection, "public", table) for table in TABLES}
            assert before["loan_applications"]["options"] == ["fillfactor=90"]
            assert before["loan_applications"]["column_grants"]
            indexes_before = await connection.fetchval("SELECT count(*) FROM pg_indexes")
        for _ in range(2):
            await rebuild_applications(service.url)
        async with service.pool.acquire() as connection:
            after = {table: await table_shape(connection, "public", table) for table in TABLES}
            assert after == before
            assert any(
                name == "loan_applications_applicant_newest"
                for name, *_ in after["loan_applications"]["indexes"]
            )
            await apply_schema(connection)
            assert await connection.fetchval("SELECT count(*) FROM pg_indexes") == indexes_before
            for table in TABLES:
                assert await connection.fetchval(
                    "SELECT has_table_privilege('lending_ledger_app', $1, "
                    "'SELECT, INSERT, UPDATE, DELETE')",
                    f"public.{table}",
                )
        assert (await apply_one(service, "shape_2")) is not None  # the service still writes


# --- Crashes and contention ---


async def test_a_rebuild_killed_mid_build_or_mid_swap_leaves_the_live_tables_untouched(
    make_database: MakeDatabase, server_url: str
) -> None:
    async with fresh_service(make_database) as service:
        for _ in range(4):
            await apply_one(service, "crash")
        await wait_until_sequenced(service.pool)
        async with service.pool.acquire() as connection:
            before = await snapshot(connection)

        async def kill_backend_of(connection: asyncpg.Connection) -> None:
            admin = await asyncpg.connect(server_url)
            try:
                assert await admin.fetchval(
                    "SELECT pg_terminate_backend($1)", connection.get_server_pid()
                )
            finally:
                await admin.close()

        # Killed while building: held at the projector's gate, then its backend dies.
        gated = GatedProjector()
        builder = await connect(service.url)
        building = asyncio.create_task(rebuild(builder, gated))
        async with asyncio.timeout(DEADLINE):
            await gated.reached.wait()
            await kill_backend_of(builder)
            gated.gate.set()
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                await building
        await builder.close()
        async with service.pool.acquire() as looking:
            assert await snapshot(looking) == before
            assert await rebuild_schemas(looking) == ["rebuild_applications"]  # left over
            status = await last_rebuild(looking, "applications")
            assert status is not None
            assert status.status == "interrupted"

        # Killed while swapping: a reader holds the live table, the swap waits on its lock.
        reader = await connect(service.url)
        swapper = await connect(service.url)
        try:
            await reader.execute("BEGIN; LOCK TABLE loan_applications IN ACCESS SHARE MODE")
            swapping = asyncio.create_task(rebuild(swapper, APPLICATIONS, lock_timeout=60))
            async with asyncio.timeout(DEADLINE):
                while not await reader.fetchval(  # noqa: ASYNC110 - polls the database
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted "
                    "AND mode = 'AccessExclusiveLock')",
                    swapper.get_server_pid(),
                ):
                    await asyncio.sleep(0.02)
                await kill_backend_of(swapper)
                with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                    await swapping
            await reader.execute("ROLLBACK")
        finally:
            await reader.close()
            await swapper.close()
        async with service.pool.acquire() as connection:
            assert await snapshot(connection) == before

        # The next rebuild drops the leftovers and succeeds.
        result = await rebuild_applications(service.url)
        assert result.rows == {table: len(rows) for table, rows in before.items()}
        async with service.pool.acquire() as connection:
            assert await snapshot(connection) == before
            assert await rebuild_schemas(connection) == []
            status = await last_rebuild(connection, "applications")
            assert status is not None
            assert status.status == "succeeded"


async def shadow_checkpoint(connection: Connection) -> int:
    """How far the rebuild's shadow has folded the log (0 before it has a checkpoint)."""
    try:
        last_seq = await connection.fetchval(
            "SELECT last_seq FROM rebuild_applications.projection_checkpoints "
            "WHERE projection = 'applications'"
        )
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        return 0
    return int(last_seq or 0)


async def building_shadow_waits(connection: Connection) -> bool:
    """Whether the shadow exists and the rebuild's bulk statement waits for a lock on the
    event table."""
    waiting: bool = await connection.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'rebuild_applications') "
        "AND EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.relation = 'events'::regclass AND NOT l.granted "
        "AND a.query LIKE '%hashtext(e.stream_id)%')"
    )
    return waiting


def kill_if_running(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(DEADLINE)


@pytest.mark.slow
async def test_the_rebuild_command_killed_mid_build_leaves_the_live_tables_whole_and_reruns(
    make_database: MakeDatabase, tmp_path: Path
) -> None:
    """`lending-ledger rebuild` as a separate process, SIGKILLed while it builds its shadow
    (no handler runs, no failure is recorded): the live tables are the ones from before,
    appends keep working, the status reads `interrupted`, and the next run starts afresh,
    drops the leftovers and swaps in tables equal to the fold."""
    async with fresh_service(make_database) as service:
        applications = 1200
        source = write_lines(
            tmp_path / "history.jsonl",
            [
                as_line(
                    {
                        "applicant_id": f"cust_kill_{number % 300}",
                        "amount": str(1000 + number),
                        "income": "52000",
                        "employment_years": number % 9,
                    }
                )
                for number in range(applications)
            ],
        )
        imported = await import_file(service.url, source, model=RATIO_V1)
        assert imported.events == 3 * applications
        await wait_until_sequenced(service.pool)
        async with service.pool.acquire() as connection:
            before = await snapshot(connection)
        assert len(before["loan_applications"]) == applications

        def start_rebuild(log_name: str) -> subprocess.Popen[bytes]:
            environment = {**os.environ, "DATABASE_URL": service.url}
            with (tmp_path / log_name).open("wb") as log:
                # Popen only starts the process; every wait below is bounded.
                return subprocess.Popen(
                    [
                        *service_command(),
                        "rebuild",
                        "--projection",
                        "applications",
                        "--batch-size",
                        "10",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=environment,
                )

        # The build reads the whole log in one statement per connection, so "part built"
        # is a shadow that exists while that statement runs. Hold it there: a transaction
        # of the test locks the event table, the rebuild's statement waits for it, and the
        # process is killed while it waits (its transaction never commits).
        holder = await connect(service.url)
        try:
            await holder.execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            process = start_rebuild("killed.log")
            try:
                async with service.pool.acquire() as looking, asyncio.timeout(DEADLINE):
                    while not await building_shadow_waits(looking):
                        assert process.poll() is None, (tmp_path / "killed.log").read_text()
                        await asyncio.sleep(0.005)
                    process.send_signal(signal.SIGKILL)
                    assert await asyncio.to_thread(process.wait, DEADLINE) == -signal.SIGKILL
            finally:
                kill_if_running(process)
            await holder.execute("ROLLBACK")
        finally:
            await holder.close()

        async with service.pool.acquire() as connection:
            assert await shadow_checkpoint(connection) == 0  # it died with the shadow unbuilt
            assert await snapshot(connection) == before
            assert await rebuild_schemas(connection) == ["rebuild_applications"]
            # The server ends the dead client's session, which releases its lock.
            async with asyncio.timeout(DEADLINE):
                while await projection_lock_held(connection, "applications"):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            status = await last_rebuild(connection, "applications")
            assert status is not None
            assert status.status == "interrupted"

        during = await apply_one(service, "after_kill")  # the live tables still take appends
        await wait_until_sequenced(service.pool)

        process = start_rebuild("rerun.log")
        try:
            code = await asyncio.to_thread(process.wait, DEADLINE)
        finally:
            kill_if_running(process)
        output = (tmp_path / "rerun.log").read_text()
        assert code == 0, output
        assert f"rebuilt applications: {3 * (applications + 1):,} events" in output
        async with service.pool.acquire() as connection:
            after = await snapshot(connection)
            assert len(after["loan_applications"]) == applications + 1
            assert during in {
                json.loads(row)["application_id"] for row in after["loan_applications"]
            }
            assert await rebuild_schemas(connection) == []
            status = await last_rebuild(connection, "applications")
            assert status is not None
            assert status.status == "succeeded"
            await assert_read_models_equal_the_fold(connection)


async def test_a_swap_that_cannot_lock_gives_up_and_keeps_the_live_tables(
    make_database: MakeDatabase,
) -> None:
    async with fresh_service(make_database) as service:
        await apply_one(service, "timeout")
        async with service.pool.acquire() as connection:
            before = await snapshot(connection)
        reader = await connect(service.url)
        try:
            await reader.execute("BEGIN; LOCK TABLE application_history IN ACCESS SHARE MODE")
            with pytest.raises(SwapTimedOut, match="could not lock"):
                await rebuild_applications(service.url, lock_timeout=0.1, swap_attempts=2)
            await reader.execute("ROLLBACK")
        finally:
            await reader.close()
        async with service.pool.acquire() as connection:
            assert await snapshot(connection) == before
            assert await rebuild_schemas(connection) == []
            status = await last_rebuild(connection, "applications")
            assert status is not None
            assert status.status == "failed"
            assert status.error is not None
            assert "could not lock" in status.error


async def test_only_one_rebuild_of_a_projection_at_a_time(make_database: MakeDatabase) -> None:
    url = await make_database()
    holder = await connect(url)
    try:
        assert await try_lock_projection(holder, "applications")
        with pytest.raises(RebuildInProgress):
            await rebuild_applications(url)
        await unlock_projection(holder, "applications")
        await rebuild_applications(url)
    finally:
        await holder.close()


# --- A projection added later, driven by the runner ---


class EventCounts:
    """A test-only projection added later: events per type. `fail_at` makes it fail on the
    event at that position, like a projector bug."""

    name = "test_event_counts"
    tables = ("test_event_counts",)

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at

    async def apply(self, connection: Connection, events: Sequence[RecordedEvent]) -> None:
        for event in events:
            if event.position == self.fail_at:
                raise ValueError(f"cannot count the event at position {event.position}")
        counts: dict[str, int] = {}
        for event in events:
            counts[event.event_type] = counts.get(event.event_type, 0) + 1
        await connection.execute(
            "INSERT INTO test_event_counts (event_type, events) "
            "SELECT * FROM unnest($1::text[], $2::bigint[]) "
            "ON CONFLICT (event_type) DO UPDATE "
            "SET events = test_event_counts.events + EXCLUDED.events",
            list(counts),
            list(counts.values()),
        )


async def counted(connection: Connection) -> dict[str, int]:
    rows = await connection.fetch("SELECT event_type, events FROM test_event_counts")
    return {row["event_type"]: row["events"] for row in rows}


async def expected_counts(connection: Connection) -> dict[str, int]:
    rows = await connection.fetch(
        "SELECT e.event_type, count(*) AS events FROM ledger_log l "
        "JOIN events e ON e.position = l.position GROUP BY 1"
    )
    return {row["event_type"]: row["events"] for row in rows}


async def test_catch_up_of_a_projection_added_later_stops_at_the_failing_event(
    make_database: MakeDatabase,
) -> None:
    async with fresh_service(make_database) as service:
        for _ in range(6):
            await apply_one(service, "counts")
        head = await wait_until_sequenced(service.pool)
        async with service.pool.acquire() as connection:
            # Test-only DDL: the projection's table exists before it runs, as schema.sql
            # would provide for a real one.
            await connection.execute(
                "CREATE TABLE test_event_counts (event_type text PRIMARY KEY, events bigint)"
            )
            fail_seq = 11
            fail_position = await connection.fetchval(
                "SELECT position FROM ledger_log WHERE seq = $1", fail_seq
            )
        dedicated = await connect(service.url)
        try:
            with pytest.raises(ProjectionFailed) as failed:
                await catch_up_projection(
                    dedicated, EventCounts(fail_at=fail_position), batch_size=4
                )
            assert (failed.value.seq, failed.value.position) == (fail_seq, fail_position)
            assert f"seq {fail_seq} (position {fail_position})" in str(failed.value)
            # The batches before the failing one are committed, with their checkpoint.
            assert await live_checkpoint(dedicated, "test_event_counts") == 8
            assert sum((await counted(dedicated)).values()) == 8

            progress: list[tuple[int, int]] = []
            result = await catch_up_projection(
                dedicated,
                EventCounts(),
                batch_size=4,
                on_progress=lambda done, total: progress.append((done, total)),
            )
            assert (result.events, result.last_seq) == (head - 8, head)
            assert progress[-1] == (head - 8, head)
            assert await counted(dedicated) == await expected_counts(dedicated)

            # A rebuild of it swaps fresh tables in and moves the checkpoint with them.
            await dedicated.execute("UPDATE test_event_counts SET events = 0")
            rebuilt = await rebuild(dedicated, EventCounts(), batch_size=5)
            assert rebuilt.through_seq == head
            assert await counted(dedicated) == await expected_counts(dedicated)
            assert await live_checkpoint(dedicated, "test_event_counts") == head
        finally:
            await dedicated.close()


# --- CLI ---


def run_cli(argv: list[str], url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """`lending-ledger ARGV` in this process, against `url`; (exit code, stdout, stderr)."""
    monkeypatch.setenv("DATABASE_URL", url)
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    code = main(argv)
    return code, out.getvalue(), err.getvalue()


async def test_the_rebuild_and_catch_up_commands(
    make_database: MakeDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with fresh_service(make_database) as service:
        for _ in range(3):
            await apply_one(service, "cli")
        await wait_until_sequenced(service.pool)
        async with service.pool.acquire() as connection:
            before = await snapshot(connection)
            await connection.execute(
                "CREATE TABLE test_event_counts (event_type text PRIMARY KEY, events bigint)"
            )

        def cli(*argv: str) -> tuple[int, str, str]:
            return run_cli(list(argv), service.url, monkeypatch)

        code, out, err = await asyncio.to_thread(cli, "rebuild", "--projection", "applications")
        assert code == 0, err
        assert "rebuilt applications: 9 events" in out
        assert "loan_applications" in out
        assert "3 rows" in out
        assert "events/s" in err  # the progress line
        async with service.pool.acquire() as connection:
            assert await snapshot(connection) == before

        assert (await asyncio.to_thread(cli, "rebuild", "--projection", "nope"))[0] == 2
        code, _, err = await asyncio.to_thread(cli, "catch-up", "--projection", "applications")
        assert code == 2
        assert "use `lending-ledger rebuild`" in err
        code, out, _ = await asyncio.to_thread(cli, "catch-up")
        assert (code, out) == (
            0,
            "catch-up: no projection is driven by the runner; nothing to do\n",
        )

        monkeypatch.setattr(runner, "RUNNER_PROJECTORS", (EventCounts(),))
        code, out, err = await asyncio.to_thread(cli, "catch-up", "--batch-size", "2")
        assert code == 0, err
        assert "caught up test_event_counts: 9 events" in out
        async with service.pool.acquire() as connection:
            assert await counted(connection) == await expected_counts(connection)

        holder = await connect(service.url)
        try:
            assert await try_lock_projection(holder, "applications")
            code, _, err = await asyncio.to_thread(cli, "rebuild", "--projection", "applications")
            assert code == 3
            assert "already running" in err
        finally:
            await holder.close()


def test_the_progress_bar_shows_rate_and_time_left() -> None:
    line = render("rebuild applications", 250, 1000, 0.5)
    assert "[#######.....................]  25%" in line
    assert "250/1,000 events" in line
    assert "500 events/s" in line
    assert "ETA 0:02" in line
    assert render("x", 10, 10, 1.0).endswith("done")
    now = [0.0]
    stream = io.StringIO()
    bar = ProgressBar("x", stream, clock=lambda: now[0], interactive=True)
    bar.update(1, 10)
    bar.update(2, 10)  # within 0.1 s: not drawn
    now[0] = 1.0
    bar.update(5, 10)
    bar.finish(10, 10)
    drawn = stream.getvalue()
    assert drawn.count("\r") == 3
    assert drawn.endswith("\n")
    assert drawn.rstrip().endswith("10/10 events  10 events/s  done")


# --- Admin HTTP ---


async def test_the_admin_surface_starts_a_rebuild_and_reports_it(
    make_database: MakeDatabase,
) -> None:
    async with fresh_service(make_database) as service:
        await apply_one(service, "admin")
        await wait_until_sequenced(service.pool)
        listed = await service.client.get("/admin/projections")
        assert listed.status_code == 200, listed.text
        [applications] = [p for p in listed.json() if p["name"] == "applications"]
        assert applications["mode"] == "inline"
        assert applications["tables"] == list(TABLES)
        assert applications["checkpoint"] is None
        assert applications["log_head"] == 3
        assert applications["last_rebuild"] is None

        assert_problem(await service.client.post("/admin/projections/nope/rebuild"), 404)

        holder = await connect(service.url)
        try:
            assert await try_lock_projection(holder, "applications")
            busy = await service.client.post("/admin/projections/applications/rebuild")
            assert_problem(busy, 409, "rebuild-in-progress")
        finally:
            await holder.close()

        started = await service.client.post("/admin/projections/applications/rebuild")
        assert started.status_code == 202, started.text
        assert started.json() == {
            "projection": "applications",
            "status": "running",
            "status_url": "/admin/projections",
        }
        assert started.headers["location"] == "/admin/projections"
        deadline = time.monotonic() + DEADLINE
        while True:
            listed = await service.client.get(started.json()["status_url"])
            [applications] = [p for p in listed.json() if p["name"] == "applications"]
            last = applications["last_rebuild"]
            # The rows are counted just after the swap commits: null for that moment.
            if last["status"] != "running" and (last["status"] != "succeeded" or last["rows"]):
                break
            assert time.monotonic() < deadline, "the rebuild did not finish"
            await asyncio.sleep(0.05)
        assert last["status"] == "succeeded", last
        assert (last["events"], last["through_seq"]) == (3, 3)
        assert last["rows"] == {"loan_applications": 1, "application_history": 3}


async def test_the_service_role_may_not_rebuild(make_database: MakeDatabase) -> None:
    """The service's restricted database role owns no table: 409 before anything starts."""
    url = await make_database()
    role = f"rebuild_test_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'x' IN ROLE lending_ledger_app")
        restricted = with_credentials(url, role, "x")
        app = create_app(
            Settings(app_env="test"), database_url=restricted, sequencer_settings=FAST_SEQUENCER
        )
        async with lifespan_in_own_task(app):
            await app.state.service.wait_ready(30)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                refused = await client.post("/admin/projections/applications/rebuild")
                problem = assert_problem(refused, 409, "rebuild-not-permitted")
                assert "schema owner" in problem["detail"]
                listed = await client.get("/admin/projections")
                assert listed.status_code == 200, listed.text
        assert await rebuild_schemas(admin) == []
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()
