"""The offline figures: bulk import, verify and rebuild, each in a scratch database.

Each calls the product's own code, so the figure is what an operator gets:

- bulk import: `api.service.importer.import_file` (`lending-ledger import`), timed whole (the
  checking pass included);
- rebuild: `projections.rebuild.rebuild` (`lending-ledger rebuild`) for every projection,
  swap included (the applications projection's shadow is built set-based in PostgreSQL,
  one statement per connection over the whole log, indexes after the load);
- verify: `projections.verify.verify_ledger` as plain `lending-ledger verify` runs it, in
  full: hash chains, ledger log, triggers, read models and a seal over the whole log
  (`bench_seal` signs one first, not timed; its public key is the trusted key). References:
  `verify --skip-read-models`, and the chains alone in one process, every event through a
  server-side cursor and `ledger.chain.verify_stream`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from api.service.importer import ImportResult, import_file
from bench import sql
from bench.stats import RateFigure, rate_figure
from bench.workload import write_import_file
from ledger.chain import verify_stream
from ledger.db import Connection, connect
from ledger.events import RecordedEvent
from ledger.scoring import get_model
from ledger.seals import create_seal, system_clock
from ledger.sequencer import sequence_all
from ledger.signing import SigningKey
from ledger.store import recorded_event_from_row
from projections.rebuild import rebuild
from projections.runner import all_projectors
from projections.verify import verify_ledger


async def import_applications(
    url: str,
    directory: Path,
    applications: int,
    *,
    applicants: int,
    applicant_prefix: str,
    scoring_model: str,
    seed: int,
    batch_size: int,
) -> ImportResult:
    """Write an import file (not timed) and import it with `lending-ledger import`'s code."""
    path = directory / f"{applicant_prefix}{applications}.jsonl"
    write_import_file(
        path,
        applications,
        applicants=applicants,
        applicant_prefix=applicant_prefix,
        seed=seed,
        now=datetime.now(UTC),
    )
    try:
        result = await import_file(
            url,
            path,
            model=get_model(scoring_model),
            actor="bench-import",
            batch_size=batch_size,
        )
    finally:
        path.unlink(missing_ok=True)
    if result.bad_count or result.applications != applications:
        raise RuntimeError(f"the bench's import file was not imported whole: {result}")
    return result


def import_figure(result: ImportResult, batch_size: int, name: str = "bulk_import") -> RateFigure:
    return rate_figure(
        name,
        result.events,
        result.seconds,
        "api.service.importer.import_file (lending-ledger import)",
        {"applications": result.applications, "batch_size": batch_size},
    )


async def sequence_everything(url: str) -> RateFigure:
    """Number every imported event in the ledger log, as the service's sequencer would
    (the rebuild follows the log). Reported for information only."""
    connection = await connect(url)
    try:
        started = time.perf_counter()
        added = await sequence_all(connection, batch_size=10_000)
        return rate_figure(
            "sequence", added, time.perf_counter() - started, "ledger.sequencer.sequence_all"
        )
    finally:
        await connection.close()


async def count_events(url: str) -> int:
    connection = await connect(url)
    try:
        count: int = await connection.fetchval(sql.COUNT_EVENTS)
        return count
    finally:
        await connection.close()


async def verify_chains(url: str, prefetch: int = 10_000) -> RateFigure:
    """Every stream's hash chain, from the stored envelopes, in one snapshot."""
    connection = await connect(url)
    try:
        started = time.perf_counter()
        events = breaks = 0
        stream: list[RecordedEvent] = []
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            async for row in connection.cursor(sql.SELECT_EVENTS_BY_STREAM, prefetch=prefetch):
                event = recorded_event_from_row(row)
                if stream and event.stream_id != stream[0].stream_id:
                    breaks += verify_stream(stream) is not None
                    stream = []
                stream.append(event)
                events += 1
            if stream:
                breaks += verify_stream(stream) is not None
        seconds = time.perf_counter() - started
    finally:
        await connection.close()
    if breaks:
        raise RuntimeError(f"{breaks} stream(s) of the bench's own data do not verify")
    return rate_figure(
        "verify_chains",
        events,
        seconds,
        "ledger.chain.verify_stream over an asyncpg cursor",
    )


async def bench_seal(url: str) -> SigningKey:
    """A seal over the whole log, signed by a fresh key (not timed): verify checks it."""
    key = SigningKey.generate()
    connection = await connect(url)
    try:
        async with connection.transaction():
            await create_seal(connection, key, system_clock)
    finally:
        await connection.close()
    return key


async def verify_command(
    url: str, events: int, *, read_models: bool, key: SigningKey | None = None
) -> RateFigure:
    """`lending-ledger verify` as the command runs it (one connection per core, each
    checking a part of the streams in the shared snapshot). With `read_models=False` it is
    `verify --skip-read-models`: the tamper evidence (chains, ledger log, triggers) only.
    With `key`, the seals are checked against its public key."""

    async def open_connection() -> Connection:
        return await connect(url)

    started = time.perf_counter()
    report = await verify_ledger(
        open_connection,
        read_models=read_models,
        trusted_keys=None if key is None else [key.public_key],
        jobs=0,
        database_url=url,
    )
    seconds = time.perf_counter() - started
    if not report.ok:
        raise RuntimeError(f"verify found problems in the bench's own data: {report.to_json()}")
    flags = "" if read_models else " --skip-read-models"
    return rate_figure(
        "verify" if read_models else "verify_skip_read_models",
        events,
        seconds,
        f"projections.verify.verify_ledger (lending-ledger verify{flags})",
        {"checked": dict(report.checked)},
    )


async def rebuild_all(url: str, events: int, batch_size: int) -> RateFigure:
    """Every projection rebuilt from the log and swapped in, as `lending-ledger rebuild`
    runs it (the bulk build over one connection per core)."""

    async def open_connection() -> Connection:
        return await connect(url)

    connection = await connect(url)
    try:
        started = time.perf_counter()
        results = [
            await rebuild(
                connection, projector, batch_size=batch_size, open_connection=open_connection
            )
            for projector in all_projectors()
        ]
        seconds = time.perf_counter() - started
    finally:
        await connection.close()
    return rate_figure(
        "rebuild",
        events,
        seconds,
        "projections.rebuild.rebuild for every projection (lending-ledger rebuild)",
        {
            "batch_size": batch_size,
            "projections": {r.projection: {"events": r.events, "rows": r.rows} for r in results},
        },
    )
