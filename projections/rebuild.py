"""Rebuilding a projection from the events, and catching up projections the runner drives.

A rebuild folds the whole ledger log into fresh tables in a shadow schema
(`rebuild_<projection>`), while the service keeps appending and reading the live tables,
then swaps the shadow tables in, in one short transaction. Readers see the old tables or
the new ones, never a half-built model.

The swap, and why its order matters
------------------------------------
Inline projections (INLINE_PROJECTORS) are written in every append transaction, so the live
tables always reflect every committed event. The shadow follows the ledger log (`seq`),
which the sequencer assigns a little AFTER commit. So at any moment there may be committed
events that are already in the live tables but not yet in the log. The swap transaction:

1. takes ACCESS EXCLUSIVE locks on the live tables (with a short lock_timeout). From then
   on no append can write them: every transaction that wrote them has ended, and new ones
   wait. Readers wait too, for the few milliseconds the swap takes.
2. reads, in ONE statement (one snapshot), what the shadow lacks: the log after the
   shadow's checkpoint, and for inline projections the committed events the sequencer has
   not reached yet (after its cursor, `(transaction_id, position)` order). In one snapshot
   the log and the cursor agree, so this is exactly the set of committed events the shadow
   has not seen, each once. It is also exactly what the live tables hold beyond the shadow:
   an append whose events are committed has written the live tables in the same
   transaction, and an append still running is blocked on our lock and commits later.
3. applies those events to the shadow in that order (stream order within each stream),
4. checks that the shadow tables have the live tables' shape (columns, indexes and their
   names, constraints, owner, options), moves the live tables into a throw-away schema and
   the shadow tables into `public`, records the result, drops the old tables, commits.

It never waits for the sequencer while it holds the locks: the appends blocked behind the
locks hold the sequencer's horizon back, so that wait could never end. If the locks cannot
be had within the lock timeout (a long transaction is reading the live tables), the swap
rolls back, the shadow catches up further and the swap is tried again.

Appends blocked on the locks resume after the commit against the new tables: PostgreSQL
looks the table name up again once a lock wait ends (and re-plans prepared statements
whose tables changed), so they write the rebuilt tables, never the dropped ones.

Projections driven by the runner only (RUNNER_PROJECTORS) never hold events that are not in
the log; their swap applies the log tail and moves their checkpoint with the tables. Their
catch-up and their rebuild take the same advisory lock, so they never run at once.

A rebuild that dies leaves the live tables untouched (the swap is one transaction); its
shadow schema is dropped by the next rebuild of the projection, which starts afresh (the
projector code may have changed since, which is often why one rebuilds).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from ledger.db import Connection
from ledger.errors import RebuildInProgress, RebuildNotPermitted
from ledger.events import RecordedEvent
from ledger.store import recorded_event_from_row
from projections import rebuild_sql, sql
from projections.runner import (
    CatchUpResult,
    OnBatch,
    Projector,
    SetBasedProjector,
    apply_reporting,
    catch_up_on,
    create_shadow_schema,
    is_inline,
    quote_identifier,
)

# The class key of every projection's advisory lock (two-key form: class, projection).
PROJECTION_LOCK_CLASS = 725011508

PROJECTION_NAME_LIMIT = 40

BUILD_SETTINGS = (
    ("work_mem", "1GB"),
    ("maintenance_work_mem", "1GB"),
    ("synchronous_commit", "off"),
)
"""For the build's own transactions only (SET LOCAL): the bulk statement's sort and its
materialised steps stay in memory, and its commit does not wait for the WAL flush (a
build lost in a crash is dropped by the next rebuild anyway; the swap commits durably)."""

OpenConnection = Callable[[], Awaitable[Connection]]

T = TypeVar("T")

Progress = Callable[[int, int], None]
"""Called with (events folded so far, events in the ledger log)."""


class ShapeMismatch(Exception):
    """The shadow tables are not identical to the live ones; nothing was swapped."""


class SwapTimedOut(Exception):
    """The live tables could not be locked for the swap; nothing was swapped."""


@dataclass(frozen=True, slots=True)
class RebuildResult:
    projection: str
    events: int
    seconds: float
    rows: dict[str, int]
    through_seq: int
    late_events: int
    """Events applied under the swap's locks (log tail and not yet sequenced)."""
    attempts: int

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class RebuildStatus:
    """The last rebuild of a projection, as recorded in `projection_rebuilds`."""

    status: str  # running | succeeded | failed | interrupted
    started_at: datetime
    finished_at: datetime | None
    events: int
    through_seq: int | None
    rows: dict[str, int] | None = None
    """Rows per table, counted just after the swap commits: None until then (and for a
    rebuild that did not succeed), so a reader never takes "not counted yet" for zero."""
    error: str | None = None


# --- Locks ---


def projection_lock_key(name: str) -> int:
    """The projection's advisory lock key: 32 bits of SHA-256 of its name, signed."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big", signed=True)


async def try_lock_projection(connection: Connection, name: str) -> bool:
    """Take the projection's session-level lock if free; it is held until unlocked or until
    the connection closes (a crashed rebuild releases it with its connection)."""
    locked: bool = await connection.fetchval(
        rebuild_sql.TRY_LOCK_PROJECTION, PROJECTION_LOCK_CLASS, projection_lock_key(name)
    )
    return locked


async def unlock_projection(connection: Connection, name: str) -> None:
    await connection.fetchval(
        rebuild_sql.UNLOCK_PROJECTION, PROJECTION_LOCK_CLASS, projection_lock_key(name)
    )


async def projection_lock_held(connection: Connection, name: str) -> bool:
    """Whether some session (any process) holds the projection's lock."""
    held: bool = await connection.fetchval(
        rebuild_sql.PROJECTION_LOCK_HELD, PROJECTION_LOCK_CLASS, projection_lock_key(name)
    )
    return held


async def lock_projection(connection: Connection, name: str) -> None:
    if not await try_lock_projection(connection, name):
        raise RebuildInProgress(f"a rebuild or catch-up of projection {name!r} is already running")


# --- Rebuild ---


def shadow_schema(name: str) -> str:
    return f"rebuild_{name}"


def retired_schema(name: str) -> str:
    return f"rebuild_retired_{name}"


def check_projection_name(name: str) -> None:
    if not (
        name
        and len(name) <= PROJECTION_NAME_LIMIT
        and name[0].isascii()
        and name[0].islower()
        and all(c.isascii() and (c.islower() or c.isdigit() or c == "_") for c in name)
    ):
        raise ValueError(f"projection names are lowercase letters, digits and _: {name!r}")


async def rebuild(
    connection: Connection,
    projector: Projector,
    *,
    batch_size: int = 2000,
    lock_timeout: float = 2.0,
    swap_attempts: int = 10,
    on_progress: Progress | None = None,
    open_connection: OpenConnection | None = None,
    jobs: int = 0,
) -> RebuildResult:
    """Rebuild `projector`'s tables from the events and swap them in.

    `connection` must be a dedicated connection (not shared with other work while this
    runs): it holds the projection's advisory lock and runs every step. A set-based
    projector's bulk build is split over `jobs` connections (0: one per core), the others
    from `open_connection` (without it, `connection` alone). Raises RebuildInProgress if
    another rebuild or catch-up of the projection is running.
    """
    await lock_projection(connection, projector.name)
    try:
        return await rebuild_locked(
            connection,
            projector,
            batch_size=batch_size,
            lock_timeout=lock_timeout,
            swap_attempts=swap_attempts,
            on_progress=on_progress,
            open_connection=open_connection,
            jobs=jobs,
        )
    finally:
        if not connection.is_closed():
            await unlock_projection(connection, projector.name)


async def rebuild_locked(
    connection: Connection,
    projector: Projector,
    *,
    batch_size: int = 2000,
    lock_timeout: float = 2.0,
    swap_attempts: int = 10,
    on_progress: Progress | None = None,
    open_connection: OpenConnection | None = None,
    jobs: int = 0,
) -> RebuildResult:
    """`rebuild`, for a caller that already holds the projection's lock on `connection`."""
    check_projection_name(projector.name)
    await check_rebuild_privileges(connection, projector)
    started = time.monotonic()
    shadow = shadow_schema(projector.name)
    await record_rebuild_start(connection, projector.name)
    try:
        await _drop_schema(connection, shadow)
        await _drop_schema(connection, retired_schema(projector.name))
        await create_shadow_schema(connection, shadow, projector)
        await _copy_table_properties(connection, projector, shadow)
        built = CatchUpResult(0, 0)
        if isinstance(projector, SetBasedProjector):
            connections = 1 if open_connection is None else (jobs or os.cpu_count() or 1)
            built = await _build_set_based(
                connection,
                projector,
                shadow,
                batch_size,
                on_progress,
                open_connection,
                min(connections, MAX_BUILD_CONNECTIONS),
            )
        more = await _build(connection, projector, shadow, batch_size, on_progress, built.events)
        built = CatchUpResult(built.events + more.events, more.last_seq)
        attempt = 1
        while True:
            try:
                late, through_seq = await _swap(
                    connection, projector, shadow, lock_timeout, batch_size, built.events
                )
                break
            except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
                if attempt == swap_attempts:
                    raise SwapTimedOut(
                        f"could not lock the live tables of {projector.name!r} within "
                        f"{lock_timeout:g}s, {swap_attempts} times: a long transaction is "
                        "using them (see pg_stat_activity); nothing was swapped"
                    ) from None
                attempt += 1
                more = await _build(
                    connection, projector, shadow, batch_size, on_progress, built.events
                )
                built = CatchUpResult(built.events + more.events, more.last_seq)
    except BaseException as error:
        await _record_failure(connection, projector.name, shadow, error)
        raise
    # Counted after the commit, outside the locks: appends may already have added rows.
    rows = {table: await _count_rows(connection, table) for table in projector.tables}
    await connection.execute(rebuild_sql.RECORD_REBUILD_ROWS, projector.name, rows)
    return RebuildResult(
        projection=projector.name,
        events=built.events + late,
        seconds=time.monotonic() - started,
        rows=rows,
        through_seq=through_seq,
        late_events=late,
        attempts=attempt,
    )


async def _count_rows(connection: Connection, table: str) -> int:
    statement = f"SELECT count(*) FROM public.{quote_identifier(table)}"  # noqa: S608 - identifier
    count: int = await connection.fetchval(statement)
    return count


async def record_rebuild_start(connection: Connection, name: str) -> None:
    """Mark the projection's rebuild `running` in projection_rebuilds (its own commit)."""
    await connection.execute(rebuild_sql.START_REBUILD, name)


async def check_rebuild_privileges(connection: Connection, projector: Projector) -> None:
    """Raise RebuildNotPermitted unless this role can swap the projection's tables.

    The service's own database role (a member of lending_ledger_app) cannot: it may write
    the read models but owns nothing. Rebuild as the schema owner, like `migrate`.
    """
    row = await connection.fetchrow(rebuild_sql.REBUILD_PRIVILEGES, list(projector.tables))
    assert row is not None
    missing = [
        what
        for what, granted in (
            ("ownership of its tables", row["owns_tables"]),
            ("CREATE on the database", row["may_create_schemas"]),
            ("CREATE on schema public", row["may_create_in_public"]),
        )
        if not granted
    ]
    if missing:
        raise RebuildNotPermitted(
            f"the database role {row['role']!r} may not rebuild projection "
            f"{projector.name!r}: it lacks {', '.join(missing)}; run `lending-ledger "
            "rebuild` with the schema owner's DATABASE_URL (the role `migrate` uses)"
        )


MAX_BUILD_CONNECTIONS = 8


async def _build_set_based(
    connection: Connection,
    projector: SetBasedProjector,
    shadow: str,
    batch_size: int,
    on_progress: Progress | None,
    open_connection: OpenConnection | None,
    jobs: int,
) -> CatchUpResult:
    """The bulk build: the whole log up to the sequencer's cursor, folded in the database
    by one statement per connection (`jobs` parts by a hash of the stream id), into shadow
    tables without indexes; then the indexes and constraints, built once over the loaded
    rows; then the streams the SQL left, folded by `apply`; and the shadow's checkpoint.

    Each part is its own transaction: a build that dies leaves a part-built shadow (no
    checkpoint), which the next rebuild drops.
    """
    cursor = await connection.fetchrow(sql.SELECT_CURSOR)
    assert cursor is not None, "schema.sql inserts the cursor row"
    last_transaction_id, last_position, head = cursor
    if head == 0:
        return CatchUpResult(0, 0)
    deferred = await _drop_indexes(connection, projector, shadow)
    extra: list[Connection] = []
    try:
        if open_connection is not None:
            extra = [await open_connection() for _ in range(jobs - 1)]
        workers = [connection, *extra]

        async def fold_part(worker: Connection, part: int) -> list[RecordedEvent]:
            async with worker.transaction():
                await _build_session(worker, shadow)
                return await projector.fold_log(
                    worker, last_transaction_id, last_position, len(workers), part
                )

        parts = await _all(fold_part(worker, part) for part, worker in enumerate(workers))

        async def create_indexes(worker: Connection, statements: list[str]) -> None:
            for statement in statements:
                async with worker.transaction():
                    await _build_session(worker, shadow)
                    await worker.execute(statement)

        shares = [deferred[n :: len(workers)] for n in range(len(workers))]
        pairs = zip(workers, shares, strict=True)
        await _all(create_indexes(worker, share) for worker, share in pairs)
    finally:
        for worker in extra:
            await worker.close()

    left = sorted(
        (event for part in parts for event in part),
        key=lambda event: (event.stream_id, event.stream_version),
    )
    async with connection.transaction():
        await _build_session(connection, shadow)
        for start in range(0, len(left), batch_size):
            await apply_reporting(connection, projector, left[start : start + batch_size])
        await connection.execute(sql.SAVE_CHECKPOINT, projector.name, head)
    if on_progress is not None:
        on_progress(head, head)
    return CatchUpResult(head, head)


async def _all(work: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently; wait for every one (none is left running on a connection another
    step needs), then raise the first failure."""
    results = await asyncio.gather(*work, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


async def _build_session(connection: Connection, shadow: str) -> None:
    await connection.execute(sql.SET_SEARCH_PATH, f"{quote_identifier(shadow)}, public")
    for name, value in BUILD_SETTINGS:
        await connection.execute(sql.SET_LOCAL, name, value)


async def _drop_indexes(connection: Connection, projector: Projector, shadow: str) -> list[str]:
    """Drop the shadow tables' indexes and the constraints they back (a bulk load into a
    table without indexes, then one index build over the sorted rows, is several times
    faster than keeping them up to date row by row). Returns the statements that create
    them again exactly: same names, same definitions (the swap checks it)."""
    statements = []
    for table in projector.tables:
        target = f"{quote_identifier(shadow)}.{quote_identifier(table)}"
        for index in await connection.fetch(rebuild_sql.SELECT_INDEX_DEFINITIONS, shadow, table):
            if index["constraint_name"] is not None:
                name = quote_identifier(index["constraint_name"])
                await connection.execute(f"ALTER TABLE {target} DROP CONSTRAINT {name}")
                statements.append(
                    f"ALTER TABLE {target} ADD CONSTRAINT {name} {index['constraint_definition']}"
                )
            else:
                await connection.execute(
                    f"DROP INDEX {quote_identifier(shadow)}.{quote_identifier(index['name'])}"
                )
                statements.append(index["definition"])
    return statements


async def _build(
    connection: Connection,
    projector: Projector,
    shadow: str,
    batch_size: int,
    on_progress: Progress | None,
    already: int,
) -> CatchUpResult:
    """Fold the ledger log into the shadow with `apply`, from its checkpoint, unlocked,
    until it is close to the head (after a set-based build: the tail appended since).

    Each pass stops at the head it started from, so a steady stream of appends cannot keep
    it going for ever; a few passes leave only a short tail for the swap. `already`: events
    folded by earlier calls, for the progress report.
    """
    total = 0
    last_seq = 0
    for _ in range(5):
        head: int = await connection.fetchval(rebuild_sql.SELECT_LOG_HEAD)
        done_before = already + total

        def report(events: int, seq: int, base: int = done_before, head: int = head) -> None:
            if on_progress is not None:
                on_progress(base + events, max(head, seq))

        batch: OnBatch = report
        result = await catch_up_on(
            connection,
            projector,
            batch_size=batch_size,
            schema=shadow,
            until_seq=head,
            on_batch=batch,
        )
        total += result.events
        last_seq = result.last_seq
        if result.events <= batch_size:
            break
    return CatchUpResult(total, last_seq)


async def _swap(
    connection: Connection,
    projector: Projector,
    shadow: str,
    lock_timeout: float,
    batch_size: int,
    events_before: int,
) -> tuple[int, int]:
    """The swap transaction (see the module docstring for the order). Returns the events
    applied under the locks and the last seq covered."""
    inline = is_inline(projector)
    retired = retired_schema(projector.name)
    live = ", ".join(f"public.{quote_identifier(t)}" for t in projector.tables)
    async with connection.transaction():
        await connection.execute(rebuild_sql.SET_LOCK_TIMEOUT, f"{int(lock_timeout * 1000)}ms")
        await connection.execute(sql.SET_SEARCH_PATH, f"{quote_identifier(shadow)}, public")
        await connection.execute(f"LOCK TABLE {live} IN ACCESS EXCLUSIVE MODE")
        # Under the locks: no waiting on the sequencer from here to the commit.
        checkpoint: int = await connection.fetchval(sql.SELECT_CHECKPOINT, projector.name) or 0
        tail = [
            recorded_event_from_row(row)
            for row in await connection.fetch(rebuild_sql.SELECT_SWAP_TAIL, checkpoint, inline)
        ]
        for start in range(0, len(tail), batch_size):
            await apply_reporting(connection, projector, tail[start : start + batch_size])
        through_seq = max((e.seq for e in tail if e.seq is not None), default=checkpoint)

        for table in projector.tables:
            await _check_same_shape(connection, table, shadow)
        await connection.execute(f"CREATE SCHEMA {quote_identifier(retired)}")
        for table in projector.tables:
            await connection.execute(
                f"ALTER TABLE public.{quote_identifier(table)} "
                f"SET SCHEMA {quote_identifier(retired)}"
            )
        for table in projector.tables:
            await connection.execute(
                f"ALTER TABLE {quote_identifier(shadow)}.{quote_identifier(table)} "
                "SET SCHEMA public"
            )
        if not inline:
            await connection.execute(rebuild_sql.SAVE_LIVE_CHECKPOINT, projector.name, through_seq)
        await connection.execute(
            rebuild_sql.FINISH_REBUILD,
            projector.name,
            "succeeded",
            events_before + len(tail),
            through_seq,
            None,
        )
        for table in projector.tables:
            await connection.execute(
                f"DROP TABLE {quote_identifier(retired)}.{quote_identifier(table)}"
            )
        await connection.execute(f"DROP SCHEMA {quote_identifier(retired)}")
        await connection.execute(f"DROP SCHEMA {quote_identifier(shadow)} CASCADE")
    return len(tail), through_seq


async def _record_failure(
    connection: Connection, name: str, shadow: str, error: BaseException
) -> None:
    """Record the failure and drop the shadow. Best effort: the connection may be what
    failed (then the next rebuild drops the shadow, and the status reads `interrupted`)."""
    if connection.is_closed():
        return
    try:
        async with asyncio.timeout(5):
            await connection.execute(
                rebuild_sql.FINISH_REBUILD, name, "failed", 0, None, _describe(error)
            )
            await _drop_schema(connection, shadow)
    except Exception:  # noqa: S110 - reporting the original error matters more
        pass


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 2000 else text[:1997] + "..."


async def _drop_schema(connection: Connection, schema: str) -> None:
    """Drop a schema a crashed rebuild left behind (the rebuild_* names are reserved)."""
    await connection.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(schema)} CASCADE")


# --- Shape: the shadow must be the live table's twin ---


async def table_shape(connection: Connection, schema: str, table: str) -> dict[str, Any]:
    """Everything about a table that a swap must keep, minus its schema."""
    properties = await connection.fetchrow(rebuild_sql.SELECT_TABLE_PROPERTIES, schema, table)
    if properties is None:
        raise ShapeMismatch(f"table {schema}.{table} does not exist")
    return {
        "columns": [
            tuple(r) for r in await connection.fetch(rebuild_sql.SELECT_COLUMNS, schema, table)
        ],
        "indexes": [
            tuple(r) for r in await connection.fetch(rebuild_sql.SELECT_INDEXES, schema, table)
        ],
        "constraints": [
            tuple(r) for r in await connection.fetch(rebuild_sql.SELECT_CONSTRAINTS, schema, table)
        ],
        "grants": [
            tuple(r) for r in await connection.fetch(rebuild_sql.SELECT_GRANTS, schema, table)
        ],
        "column_grants": [
            tuple(r)
            for r in await connection.fetch(rebuild_sql.SELECT_COLUMN_GRANTS, schema, table)
        ],
        **dict(properties),
    }


async def _check_same_shape(connection: Connection, table: str, shadow: str) -> None:
    live = await table_shape(connection, "public", table)
    rebuilt = await table_shape(connection, shadow, table)
    differing = sorted(key for key in live if live[key] != rebuilt.get(key))
    if differing:
        raise ShapeMismatch(
            f"the rebuilt {table} differs from the live table in {', '.join(differing)} "
            "(was the schema changed during the rebuild?); nothing was swapped, run it again"
        )


_PRIVILEGES = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"}
)


async def _copy_table_properties(connection: Connection, projector: Projector, shadow: str) -> None:
    """What LIKE ... INCLUDING ALL does not copy: owner, grants (on the table and on its
    columns) and storage options.

    The service's database role reaches the read models through grants only, so a swapped
    in table without them would lock the service out. Triggers and row-level security
    policies are not copied; a live table with either is refused at the swap.
    """
    me: str = await connection.fetchval(rebuild_sql.SELECT_CURRENT_USER)
    for table in projector.tables:
        target = f"{quote_identifier(shadow)}.{quote_identifier(table)}"
        live = await connection.fetchrow(rebuild_sql.SELECT_TABLE_PROPERTIES, "public", table)
        assert live is not None, f"public.{table} exists: the shadow was copied from it"
        if live["options"]:
            options = ", ".join(live["options"])  # from the catalog: name=value items
            await connection.execute(f"ALTER TABLE {target} SET ({options})")
        for grant in await connection.fetch(rebuild_sql.SELECT_GRANTS, "public", table):
            privilege = grant["privilege_type"]
            if privilege not in _PRIVILEGES:
                continue
            option = " WITH GRANT OPTION" if grant["is_grantable"] else ""
            await connection.execute(f"GRANT {privilege} ON {target} TO {grant['grantee']}{option}")
        for grant in await connection.fetch(rebuild_sql.SELECT_COLUMN_GRANTS, "public", table):
            privilege = grant["privilege_type"]
            if privilege not in _PRIVILEGES:
                continue
            option = " WITH GRANT OPTION" if grant["is_grantable"] else ""
            await connection.execute(
                f"GRANT {privilege} ({grant['column_name']}) ON {target} "
                f"TO {grant['grantee']}{option}"
            )
        if live["owner"] != me:
            await connection.execute(
                f"ALTER TABLE {target} OWNER TO {quote_identifier(live['owner'])}"
            )


# --- Catch-up of projections the runner drives ---


async def catch_up_projection(
    connection: Connection,
    projector: Projector,
    *,
    batch_size: int = 1000,
    on_progress: Progress | None = None,
) -> CatchUpResult:
    """Bring a runner-driven projection up to the end of the log from its checkpoint, in
    batches (one transaction each, checkpoint included). Stops on the first event that
    fails with ProjectionFailed (its seq and position); earlier batches stay committed."""
    if is_inline(projector):
        raise ValueError(
            f"projection {projector.name!r} is written inline with every append; "
            "it never needs catching up (rebuild it instead)"
        )
    await lock_projection(connection, projector.name)
    try:
        head: int = await connection.fetchval(rebuild_sql.SELECT_LOG_HEAD)

        def report(events: int, seq: int) -> None:
            if on_progress is not None:
                on_progress(events, max(head, seq))

        return await catch_up_on(connection, projector, batch_size=batch_size, on_batch=report)
    finally:
        if not connection.is_closed():
            await unlock_projection(connection, projector.name)


# --- Status ---


async def last_rebuild(connection: Connection, name: str) -> RebuildStatus | None:
    row = await connection.fetchrow(rebuild_sql.SELECT_REBUILD, name)
    if row is None:
        return None
    status = row["status"]
    if status == "running" and not await projection_lock_held(connection, name):
        status = "interrupted"
    return RebuildStatus(
        status=status,
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        events=row["events"],
        through_seq=row["through_seq"],
        rows=dict(row["row_counts"]) or None,
        error=row["error"],
    )


async def live_checkpoint(connection: Connection, name: str) -> int | None:
    value: int | None = await connection.fetchval(rebuild_sql.SELECT_LIVE_CHECKPOINT, name)
    return value


async def log_head(connection: Connection) -> int:
    head: int = await connection.fetchval(rebuild_sql.SELECT_LOG_HEAD)
    return head
