"""Running projectors: inline (in the append transaction) and from the ledger log.

Inline: built-in read models are updated in the same transaction as the append, so an agent
reads its own write at once. The runner: the same projector code follows the ledger log
(`seq` order, no holes) from a checkpoint, in batches, one transaction per batch with the
checkpoint written in it. It never swallows an error: it stops and reports where.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import asyncpg

from ledger.db import Connection
from ledger.events import RecordedEvent
from ledger.store import read_feed, recorded_event_from_row
from projections import rebuild_sql, sql
from projections.applications import ApplicationsProjector


class Projector(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def tables(self) -> tuple[str, ...]:
        """The read-model tables the projector writes."""
        ...

    async def apply(self, connection: Connection, events: Sequence[RecordedEvent]) -> None: ...


@runtime_checkable
class SetBasedProjector(Projector, Protocol):
    """A projector that can also fold the whole ledger log in the database, set-based, into
    empty tables (rebuilds use it; `apply` stays the reference and folds whatever it
    leaves, returned in stream order)."""

    async def fold_log(
        self,
        connection: Connection,
        last_transaction_id: int,
        last_position: int,
        parts: int = 1,
        part: int = 0,
    ) -> list[RecordedEvent]: ...

    async def fold_own_transaction(self, connection: Connection) -> list[RecordedEvent]: ...


INLINE_PROJECTORS: tuple[Projector, ...] = (ApplicationsProjector(),)
"""Written in every append transaction; the runner only rebuilds them."""

RUNNER_PROJECTORS: tuple[Projector, ...] = ()
"""Projections added later: the runner alone writes them, catching up from their checkpoint
(`lending-ledger catch-up`). Their tables must exist (schema.sql) before they run."""


def all_projectors() -> tuple[Projector, ...]:
    return INLINE_PROJECTORS + RUNNER_PROJECTORS


def is_inline(projector: Projector) -> bool:
    return any(projector.name == inline.name for inline in INLINE_PROJECTORS)


def find_projector(name: str) -> Projector | None:
    return next((p for p in all_projectors() if p.name == name), None)


async def project_inline(connection: Connection, events: Sequence[RecordedEvent]) -> None:
    """Run every built-in projector on freshly appended events, in the caller's transaction."""
    for projector in INLINE_PROJECTORS:
        await projector.apply(connection, events)


NEW_STREAMS_WORK_MEM = "256MB"


async def project_new_streams(connection: Connection) -> None:
    """Run every built-in projector on the events the connection's current transaction
    appended, all of them streams begun in it (a bulk import's batch): set-based where the
    projector can (the streams it leaves go to its `apply`), else `apply` on the events."""
    events: list[RecordedEvent] | None = None
    # The set-based fold's sort and materialised steps stay in memory (this transaction only).
    await connection.execute(sql.SET_LOCAL, "work_mem", NEW_STREAMS_WORK_MEM)
    for projector in INLINE_PROJECTORS:
        if isinstance(projector, SetBasedProjector):
            left = await projector.fold_own_transaction(connection)
            if left:
                await projector.apply(connection, left)
        else:
            if events is None:
                events = [
                    recorded_event_from_row(row)
                    for row in await connection.fetch(sql.SELECT_OWN_TRANSACTION_EVENTS)
                ]
            await projector.apply(connection, events)


class ProjectionFailed(Exception):
    def __init__(
        self, projection: str, seq: int | None, position: int, cause: BaseException
    ) -> None:
        where = f"seq {seq}" if seq is not None else "an event not yet in the ledger log"
        super().__init__(
            f"projection {projection!r} stopped at {where} (position {position}): {cause!r}"
        )
        self.projection = projection
        self.seq = seq
        self.position = position


@dataclass(frozen=True, slots=True)
class CatchUpResult:
    events: int
    last_seq: int


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


async def create_shadow_schema(connection: Connection, schema: str, projector: Projector) -> None:
    """An empty copy of the projector's tables (and a checkpoint table) in `schema`.

    Identifiers cannot be $n parameters; the name is checked against a strict pattern and
    quoted instead. `LIKE ... INCLUDING ALL` names the copied indexes after their columns;
    they are renamed to the live names, so a shadow swapped in is identical to the live
    table (and a later schema.sql finds its `CREATE INDEX IF NOT EXISTS` names in place).
    """
    if not _SCHEMA_NAME.fullmatch(schema) or schema == "public":
        raise ValueError(f"not a usable shadow schema name: {schema!r}")
    await connection.execute(f'CREATE SCHEMA "{schema}"')
    for table in (*projector.tables, "projection_checkpoints"):
        await connection.execute(
            f'CREATE TABLE "{schema}"."{table}" (LIKE public."{table}" INCLUDING ALL)'
        )
        await copy_index_names(connection, "public", schema, table)


async def copy_index_names(connection: Connection, source: str, target: str, table: str) -> None:
    """Rename the indexes of `target.table` to the names of their twins in `source.table`."""
    twins: dict[tuple[bool, bool, str], list[str]] = {}
    for row in await connection.fetch(rebuild_sql.SELECT_INDEXES, source, table):
        twins.setdefault((row["is_unique"], row["is_primary"], row["definition"]), []).append(
            row["name"]
        )
    for row in await connection.fetch(rebuild_sql.SELECT_INDEXES, target, table):
        names = twins.get((row["is_unique"], row["is_primary"], row["definition"]))
        if names and (wanted := names.pop(0)) != row["name"]:
            await connection.execute(
                f"ALTER INDEX {quote_identifier(target)}.{quote_identifier(row['name'])} "
                f"RENAME TO {quote_identifier(wanted)}"
            )


def quote_identifier(name: str) -> str:
    """An SQL identifier, quoted (for DDL, where $n parameters cannot be used)."""
    return '"' + name.replace('"', '""') + '"'


OnBatch = Callable[[int, int], None]
"""Called after each committed batch with (events applied so far, checkpoint seq)."""


async def catch_up(
    pool: asyncpg.Pool,
    projector: Projector,
    *,
    batch_size: int = 1000,
    schema: str | None = None,
    until_seq: int | None = None,
    on_batch: OnBatch | None = None,
) -> CatchUpResult:
    """Bring `projector` up to the end of the ledger log (or `until_seq`) from its checkpoint.

    With `schema`, the tables (and checkpoint) in that schema are written instead of the
    live ones; the event tables still resolve to public.
    """
    async with pool.acquire() as connection:
        return await catch_up_on(
            connection,
            projector,
            batch_size=batch_size,
            schema=schema,
            until_seq=until_seq,
            on_batch=on_batch,
        )


async def catch_up_on(
    connection: Connection,
    projector: Projector,
    *,
    batch_size: int = 1000,
    schema: str | None = None,
    until_seq: int | None = None,
    on_batch: OnBatch | None = None,
) -> CatchUpResult:
    """`catch_up` on a connection the caller holds (one transaction per batch)."""
    search_path = f'"{schema}", public' if schema else None
    total = 0
    while True:
        async with connection.transaction():
            if search_path:
                await connection.execute(sql.SET_SEARCH_PATH, search_path)
            last_seq = await connection.fetchval(sql.SELECT_CHECKPOINT, projector.name) or 0
            limit = batch_size if until_seq is None else min(batch_size, until_seq - last_seq)
            events = await read_feed(connection, last_seq, limit) if limit > 0 else []
            if not events:
                return CatchUpResult(total, last_seq)
            await apply_reporting(connection, projector, events)
            assert events[-1].seq is not None
            await connection.execute(sql.SAVE_CHECKPOINT, projector.name, events[-1].seq)
        total += len(events)
        if on_batch is not None:
            on_batch(total, events[-1].seq)


async def apply_reporting(
    connection: Connection, projector: Projector, events: Sequence[RecordedEvent]
) -> None:
    """Apply a batch; on failure find the first event that fails, for the report."""
    try:
        async with connection.transaction():  # a savepoint, so the batch can be retried
            await projector.apply(connection, events)
            return
    except Exception as batch_error:
        for event in events:
            try:
                async with connection.transaction():
                    await projector.apply(connection, [event])
            except Exception as error:
                raise ProjectionFailed(projector.name, event.seq, event.position, error) from error
        raise ProjectionFailed(
            projector.name, events[0].seq, events[0].position, batch_error
        ) from batch_error
