"""Running projectors: inline (in the append transaction) and from the ledger log.

Inline: built-in read models are updated in the same transaction as the append, so an agent
reads its own write at once. The runner: the same projector code follows the ledger log
(`seq` order, no holes) from a checkpoint, in batches, one transaction per batch with the
checkpoint written in it. It never swallows an error: it stops and reports where.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from ledger.db import Connection
from ledger.events import RecordedEvent
from ledger.store import read_feed
from projections import sql
from projections.applications import ApplicationsProjector


class Projector(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def tables(self) -> tuple[str, ...]:
        """The read-model tables the projector writes."""
        ...

    async def apply(self, connection: Connection, events: Sequence[RecordedEvent]) -> None: ...


INLINE_PROJECTORS: tuple[Projector, ...] = (ApplicationsProjector(),)


async def project_inline(connection: Connection, events: Sequence[RecordedEvent]) -> None:
    """Run every built-in projector on freshly appended events, in the caller's transaction."""
    for projector in INLINE_PROJECTORS:
        await projector.apply(connection, events)


class ProjectionFailed(Exception):
    def __init__(self, projection: str, seq: int, position: int, cause: BaseException) -> None:
        super().__init__(
            f"projection {projection!r} stopped at seq {seq} (position {position}): {cause!r}"
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
    quoted instead.
    """
    if not _SCHEMA_NAME.fullmatch(schema) or schema == "public":
        raise ValueError(f"not a usable shadow schema name: {schema!r}")
    await connection.execute(f'CREATE SCHEMA "{schema}"')
    for table in (*projector.tables, "projection_checkpoints"):
        await connection.execute(
            f'CREATE TABLE "{schema}"."{table}" (LIKE public."{table}" INCLUDING ALL)'
        )


async def catch_up(
    pool: asyncpg.Pool,
    projector: Projector,
    *,
    batch_size: int = 1000,
    schema: str | None = None,
) -> CatchUpResult:
    """Bring `projector` up to the end of the ledger log from its checkpoint.

    With `schema`, the tables (and checkpoint) in that schema are written instead of the
    live ones; the event tables still resolve to public.
    """
    search_path = f'"{schema}", public' if schema else None
    total = 0
    async with pool.acquire() as connection:
        while True:
            async with connection.transaction():
                if search_path:
                    await connection.execute(sql.SET_SEARCH_PATH, search_path)
                last_seq = await connection.fetchval(sql.SELECT_CHECKPOINT, projector.name) or 0
                events = await read_feed(connection, last_seq, batch_size)
                if not events:
                    return CatchUpResult(total, last_seq)
                await _apply_reporting(connection, projector, events)
                assert events[-1].seq is not None
                await connection.execute(sql.SAVE_CHECKPOINT, projector.name, events[-1].seq)
            total += len(events)


async def _apply_reporting(
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
                assert event.seq is not None
                raise ProjectionFailed(projector.name, event.seq, event.position, error) from error
        raise ProjectionFailed(
            projector.name, events[0].seq or 0, events[0].position, batch_error
        ) from batch_error
