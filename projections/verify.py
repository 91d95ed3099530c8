"""`lending-ledger verify`: recompute every hash chain, check the ledger log, the
immutability triggers and the read models, in one consistent snapshot.

Streaming throughout: events come through a server-side cursor in (stream_id,
stream_version) order, a chunk at a time, and only the current stream is kept in memory.
The read models are read through ordered cursors too and merged with the fold of each
stream as it completes. The log and trigger checks run on another connection at the same
time (they are mostly work for the database), and every connection imports the same
exported snapshot, so appends committed meanwhile are invisible to all of them alike.

Pure parts (findings, the report, chain state, trigger rules) are in ledger/integrity.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from datetime import datetime
from hashlib import sha256
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.application import STREAM_PREFIX
from ledger.db import Connection, connect
from ledger.events import RecordedEvent
from ledger.integrity import (
    EXPECTED_TRIGGERS,
    IMMUTABILITY_FUNCTION,
    LOG,
    READ_MODEL,
    SEALS,
    Finding,
    StreamChains,
    TriggerRow,
    VerifyReport,
    check_triggers,
    contains_float,
    function_body,
    stored_envelope_bytes,
)
from ledger.schema import schema_sql
from ledger.seals import verify_seals
from projections import sql, verify_sql
from projections.applications import ApplicationRow, HistoryRow, project

OpenConnection = Callable[[], Awaitable[Connection]]

CHUNK = 2000  # rows per FETCH
SLICE = 250  # rows hashed between two chances for the event loop to read the next chunk
LOG_FINDING_LIMIT = 100
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")


async def verify_ledger(
    open_connection: OpenConnection,
    *,
    read_models: bool = True,
    trusted_keys: Sequence[Ed25519PublicKey] | None = None,
    jobs: int = 1,
    database_url: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Run every check; the report lists each finding (empty when the ledger is sound).

    `read_models=False` skips folding the read models (the slow part): only the tamper
    evidence is checked (chains, log, triggers, seals). `trusted_keys`: the public keys a
    seal may be signed with; None skips the seals. `jobs` > 1 (0: as many as the machine
    has cores, for a large ledger) splits the streams into ranges checked by that many
    worker processes, all in the same snapshot; it needs `database_url`. `progress`, if
    given, is called with the number of events just hashed (per chunk; per range of
    streams when worker processes check them)."""
    started = time.monotonic()
    report = VerifyReport()
    async with contextlib.AsyncExitStack() as stack:
        events = await _in_snapshot(stack, open_connection, None)
        snapshot: str = await events.fetchval(verify_sql.EXPORT_SNAPSHOT)
        log = await _in_snapshot(stack, open_connection, snapshot)
        seals = None
        if trusted_keys is not None:
            seals = await _in_snapshot(stack, open_connection, snapshot)
        unhashed: int = await events.fetchval(verify_sql.COUNT_UNHASHED)
        set_based = unhashed <= STREAMING_FROM_UNHASHED
        ranges: list[StreamRange] = [("", None)]
        if set_based:
            parts = _connections_for(jobs)
            workers = [events] + [
                await _in_snapshot(stack, open_connection, snapshot) for _ in range(parts - 1)
            ]
        elif jobs != 1 and database_url is not None:
            ranges = await stream_ranges(events, jobs)

        # The log, trigger and seal checks run while the streams are checked: much of their
        # work is the database's, which then overlaps.
        side_checks = [asyncio.create_task(_check_log_and_triggers(log, report))]
        if seals is not None and trusted_keys is not None:
            side_checks.append(asyncio.create_task(_check_seals(seals, report, trusted_keys)))
        try:
            if set_based:
                results = [await _check_set_based(workers, read_models)]
                if progress is not None:  # one step: the database checked every event at once
                    progress(results[0][0].get("events", 0))
            elif len(ranges) == 1:
                applications = await _in_snapshot(stack, open_connection, snapshot)
                history = await _in_snapshot(stack, open_connection, snapshot)
                results = [
                    await _check_streams(
                        events, applications, history, read_models, ranges[0], progress
                    )
                ]
            else:
                assert database_url is not None
                results = await _check_ranges_in_processes(
                    database_url, snapshot, ranges, read_models, progress
                )
        finally:
            await asyncio.wait(side_checks)
        for check in side_checks:
            check.result()
    for counts, findings in results:
        for name, count in counts.items():
            report.checked[name] = report.checked.get(name, 0) + count
        report.findings.extend(findings)
    report.seconds = time.monotonic() - started
    report.findings.sort(key=_finding_order)
    report.checked = {name: report.checked[name] for name in CHECKED if name in report.checked}
    return report


async def _in_snapshot(
    stack: contextlib.AsyncExitStack, open_connection: OpenConnection, snapshot: str | None
) -> Connection:
    """A connection in a read-only REPEATABLE READ transaction, importing `snapshot`."""
    connection = await open_connection()
    stack.push_async_callback(connection.close)
    await stack.enter_async_context(
        connection.transaction(isolation="repeatable_read", readonly=True)
    )
    if snapshot is not None:
        # Literals of SET cannot be $n parameters; the id is checked against its format.
        if not _SNAPSHOT_ID.fullmatch(snapshot):
            raise ValueError(f"not a snapshot id: {snapshot!r}")
        await connection.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
    return connection


# --- Set-based: the database checks every event against its stored canonical bytes ---

STREAMING_FROM_UNHASHED = 10_000
"""With more events than this lacking stored canonical bytes (a ledger written before
`events.hashed`), every stream is checked by the streaming check instead."""


SET_BASED_WORK_MEM = "1GB"


def _connections_for(jobs: int) -> int:
    return min(MAX_JOBS, jobs if jobs >= 1 else (os.cpu_count() or 1))


@dataclass(slots=True)
class _PartFound:
    counts: dict[str, int]
    chain_suspects: list[str]
    read_model_suspects: list[UUID]
    unfoldable: list[str]


async def _check_set_based(
    workers: Sequence[Connection], read_models: bool
) -> tuple[dict[str, int], list[Finding]]:
    """Each worker connection (all in the same snapshot) checks one part of the streams (a
    hash of the stream id) set-based: the chains against the stored canonical bytes
    (verify_sql.CHAIN_SUSPECTS) and the read models against their set-based fold
    (projections/sql.py, FOLD_DIFFERENCES). What either finds suspect is then judged by the
    streaming check and the projector's own fold, in Python, which name each finding
    exactly as before: the first bad event of a stream, the differing fields of a row."""
    parts = len(workers)
    found = await asyncio.gather(
        *(_check_part(worker, parts, part, read_models) for part, worker in enumerate(workers))
    )
    counts: dict[str, int] = {}
    for part in found:
        for name, count in part.counts.items():
            counts[name] = counts.get(name, 0) + count
    connection = workers[0]
    findings: list[Finding] = []
    suspects = sorted({stream for part in found for stream in part.chain_suspects})
    if suspects:
        _, findings = await _check_streams(
            connection, connection, connection, False, ("", None), stream_ids=suspects
        )
    if read_models:
        keys = {key for part in found for key in part.read_model_suspects}
        unfoldable = [stream for part in found for stream in part.unfoldable]
        findings += await _recheck_read_models(connection, keys, unfoldable)
    return counts, findings


async def _check_part(
    connection: Connection, parts: int, part: int, read_models: bool
) -> _PartFound:
    # The sorts and the fold's materialised steps stay in memory (this transaction only).
    await connection.execute(sql.SET_LOCAL, "work_mem", SET_BASED_WORK_MEM)
    try:
        async with connection.transaction():  # a savepoint: the snapshot outlives a failure
            row = await connection.fetchrow(verify_sql.CHAIN_SUSPECTS, part, parts)
            assert row is not None
            counts = {"streams": row["streams"], "events": row["events"]}
            chain_suspects = list(row["suspects"])
    except asyncpg.DataError:
        # Stored bytes that hash right but are not UTF-8 JSON: judge the part in Python.
        row = await connection.fetchrow(verify_sql.STREAMS_OF_PART, part, parts)
        assert row is not None
        counts = {"streams": len(row["streams"]), "events": row["events"]}
        chain_suspects = list(row["streams"])
    found = _PartFound(counts, chain_suspects, [], [])
    if read_models:
        found.unfoldable = await connection.fetchval(
            sql.UNFOLDABLE_IN_SNAPSHOT, STREAM_PREFIX, parts, part
        )
        found.read_model_suspects = await connection.fetchval(
            sql.FOLD_DIFFERENCES, STREAM_PREFIX, parts, part, found.unfoldable
        )
        rows = await connection.fetchrow(
            verify_sql.COUNT_READ_MODEL_ROWS, STREAM_PREFIX, parts, part
        )
        assert rows is not None
        counts["applications"] = rows["applications"]
        counts["history_rows"] = rows["history_rows"]
    return found


async def _recheck_read_models(
    connection: Connection, keys: set[UUID], unfoldable: list[str]
) -> list[Finding]:
    """The read-model rows of these applications (and of the streams the SQL does not
    fold) against the projector's own fold of their streams, as the streaming check
    compares them."""
    findings: list[Finding] = []
    for stream_id in unfoldable:
        try:
            keys.add(UUID(stream_id.removeprefix(STREAM_PREFIX)))
        except ValueError:
            findings.append(
                Finding(READ_MODEL, stream_id, None, "an application stream id without a uuid")
            )
    if not keys:
        return findings
    ordered = sorted(keys)
    stored = {
        record["application_id"]: ApplicationRow.from_record(record)
        for record in await connection.fetch(verify_sql.APPLICATIONS_BY_ID, ordered)
    }
    stored_history: dict[UUID, list[HistoryRow]] = {}
    for record in await connection.fetch(verify_sql.HISTORY_BY_ID, ordered):
        entry = HistoryRow(**dict(record))
        stored_history.setdefault(entry.application_id, []).append(entry)
    stream_ids = [f"{STREAM_PREFIX}{key}" for key in ordered]
    streams: dict[str, list[_StreamEvent]] = {}
    for row in await connection.fetch(verify_sql.EVENTS_OF_STREAMS, stream_ids):
        streams.setdefault(row["stream_id"], []).append(_stream_event(row))
    for key, stream_id in zip(ordered, stream_ids, strict=True):
        if stream_id in streams:
            compare_stream(
                stream_id,
                key,
                streams[stream_id],
                stored.get(key),
                stored_history.get(key, []),
                findings,
            )
        else:
            _no_events(key, stored.get(key), stored_history.get(key, []), findings)
    return findings


def _stream_event(row: Any) -> _StreamEvent:
    try:
        data, metadata = orjson.loads(row["data"]), orjson.loads(row["metadata"])
    except orjson.JSONDecodeError:
        data = metadata = None
    return _StreamEvent(
        row["position"],
        row["stream_version"],
        row["event_id"],
        row["event_type"],
        row["schema_version"],
        data,
        metadata,
        row["recorded_at"],
        bytes(row["prev_hash"]),
        bytes(row["hash"]),
    )


def _no_events(
    key: UUID, stored: ApplicationRow | None, history: list[HistoryRow], findings: list[Finding]
) -> None:
    if stored is not None:
        findings.append(
            Finding(
                READ_MODEL,
                f"{STREAM_PREFIX}{key}",
                None,
                f"loan_applications has a row for application {key}, which has no events",
            )
        )
    if history:
        versions = [entry.stream_version for entry in history]
        findings.append(
            Finding(
                READ_MODEL,
                f"{STREAM_PREFIX}{key}",
                None,
                f"application_history has rows (versions {versions}) for application "
                f"{key}, which has no events",
            )
        )


# --- Parallel: stream ranges in worker processes ---

StreamRange = tuple[str, str | None]
"""Stream ids from the first (inclusive) to the second (exclusive; None: to the end), in
the database's own order for stream_id, the order of its unique index."""

AUTO_JOBS_FROM_EVENTS = 200_000
MAX_JOBS = 16


async def stream_ranges(connection: Connection, jobs: int) -> list[StreamRange]:
    """Split the streams into about `jobs` ranges of similar size (0: one per core, once the
    ledger is large enough for the workers' start-up to pay off), from a sample of the
    events, split in the database's collation so each range is an index range there."""
    estimate = max(0, await connection.fetchval(verify_sql.ESTIMATED_EVENTS) or 0)
    if jobs == 0:
        jobs = 1 if estimate < AUTO_JOBS_FROM_EVENTS else (os.cpu_count() or 1)
    jobs = min(jobs, MAX_JOBS)
    if jobs <= 1:
        return [("", None)]
    sample_percent = min(100.0, max(0.01, 20_000 * 100 / max(estimate, 1)))
    fractions = [n / jobs for n in range(1, jobs)]
    bounds = await connection.fetchval(verify_sql.STREAM_SPLITS, fractions, sample_percent)
    splits = sorted(set(bounds or ()) - {None, ""}, key=list(bounds or ()).index)
    edges: list[str | None] = ["", *splits, None]
    return [(str(edges[n]), edges[n + 1]) for n in range(len(edges) - 1)]


async def _check_ranges_in_processes(
    url: str,
    snapshot: str,
    ranges: list[StreamRange],
    read_models: bool,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[dict[str, int], list[Finding]]]:
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")  # no inherited event loop or sockets

    def range_done(future: asyncio.Future[tuple[dict[str, int], list[Finding]]]) -> None:
        if progress is not None and not future.cancelled() and future.exception() is None:
            progress(future.result()[0]["events"])

    with ProcessPoolExecutor(max_workers=len(ranges), mp_context=context) as workers:
        checks = [
            loop.run_in_executor(
                workers, check_range_in_process, url, snapshot, stream_range, read_models
            )
            for stream_range in ranges
        ]
        for check in checks:
            check.add_done_callback(range_done)
        return list(await asyncio.gather(*checks))


def check_range_in_process(
    url: str, snapshot: str, stream_range: StreamRange, read_models: bool
) -> tuple[dict[str, int], list[Finding]]:
    """A worker process: hash and fold one range of streams in the exported snapshot."""
    return asyncio.run(_check_range(url, snapshot, stream_range, read_models))


async def _check_range(
    url: str, snapshot: str, stream_range: StreamRange, read_models: bool
) -> tuple[dict[str, int], list[Finding]]:
    async def open_connection() -> Connection:
        return await connect(url)

    async with contextlib.AsyncExitStack() as stack:
        events, applications, history = [
            await _in_snapshot(stack, open_connection, snapshot) for _ in range(3)
        ]
        return await _check_streams(events, applications, history, read_models, stream_range)


CHECKED = (
    "streams",
    "events",
    "log_entries",
    "triggers",
    "applications",
    "history_rows",
    "seals",
)
"""The counts in a report, in this order."""


def _finding_order(finding: Finding) -> tuple[int, str, int]:
    checks = ("triggers", "log", "chain", "read_model", "seals")
    rank = checks.index(finding.check) if finding.check in checks else len(checks)
    return rank, finding.stream_id or "", finding.position or 0


# --- The SEALS hook: the one place seal findings join the report ---


async def _check_seals(
    connection: Connection, report: VerifyReport, trusted_keys: Sequence[Ed25519PublicKey]
) -> None:
    """SEALS: every Merkle seal against the events, in the shared snapshot, by
    ledger.seals.verify_seals (the seals' own verifier: roots, chain of seals, signatures by
    one of `trusted_keys`). Each of its findings becomes a `seals` finding here."""
    report.checked["seals"] = await connection.fetchval(verify_sql.COUNT_SEALS)
    for found in await verify_seals(connection, trusted_keys):
        stream_id = None
        if found.position is not None:
            stream_id = await connection.fetchval(verify_sql.STREAM_OF_POSITION, found.position)
        report.findings.append(
            Finding(
                SEALS,
                stream_id,
                found.position,
                f"seal of tree size {found.tree_size}: {found.problem}: {found.detail}",
            )
        )


# --- Hash chains and read models, stream by stream ---


@dataclass(slots=True)
class _StreamEvent:
    """One event of the current stream, kept until the stream ends (for the fold)."""

    position: int
    stream_version: int
    event_id: UUID
    event_type: str
    schema_version: int
    data: Any
    metadata: Any
    recorded_at: str | None
    prev_hash: bytes
    hash: bytes


async def _check_streams(
    events: Connection,
    applications: Connection,
    history: Connection,
    read_models: bool,
    stream_range: StreamRange,
    progress: Callable[[int], None] | None = None,
    stream_ids: list[str] | None = None,
) -> tuple[dict[str, int], list[Finding]]:
    """Hash every stream of the range, or of `stream_ids` (and fold it into read-model
    rows to compare); the counts and the findings."""
    chains = StreamChains()
    merge = _ReadModelMerge(applications, history, stream_range)
    findings: list[Finding] = []
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    current: str | None = None
    folding = False
    stream: list[_StreamEvent] = []
    count = 0

    first, end = stream_range
    if stream_ids is not None:
        cursor = await events.cursor(verify_sql.EVENTS_OF_STREAMS, stream_ids)
    elif end is None:
        cursor = await events.cursor(verify_sql.EVENTS_IN_STREAM_ORDER_FROM, first)
    else:
        cursor = await events.cursor(verify_sql.EVENTS_IN_STREAM_ORDER_BETWEEN, first, end)
    pending = asyncio.ensure_future(cursor.fetch(CHUNK))
    try:
        while rows := await pending:
            # Ask for the next chunk before hashing this one: the server reads it meanwhile.
            pending = asyncio.ensure_future(cursor.fetch(CHUNK))
            for start in range(0, len(rows), SLICE):
                await asyncio.sleep(0)
                for row in rows[start : start + SLICE]:
                    (
                        stream_id,
                        version,
                        position,
                        event_id,
                        event_type,
                        schema_version,
                        data_text,
                        metadata_text,
                        recorded_at,
                        prev_hash,
                        stored_hash,
                        stored_bytes,
                    ) = row
                    if stream_id != current:
                        if folding:
                            await merge.compare(current, stream, findings)
                        current = stream_id
                        chains.begin(stream_id)
                        folding = read_models and stream_id.startswith(STREAM_PREFIX)
                        stream = []
                    try:
                        data = loads(data_text)
                        metadata = loads(metadata_text)
                    except decode_error:
                        data = metadata = None
                    if not chains.broken:
                        computed: bytes | None = None
                        unreadable = None
                        differ = False
                        if data is None:
                            unreadable = "data or metadata is not JSON this ledger can read"
                        elif contains_float(data) or contains_float(metadata):
                            unreadable = "data or metadata holds a non-integer number"
                        elif recorded_at is None:
                            unreadable = "recorded_at is not a finite time"
                        else:
                            encoded = stored_envelope_bytes(
                                stream_id=stream_id,
                                stream_version=version,
                                event_id=str(event_id),
                                event_type=event_type,
                                schema_version=schema_version,
                                data=data,
                                metadata=metadata,
                                recorded_at=recorded_at,
                                prev_hash=prev_hash,
                            )
                            computed = sha256(encoded).digest()
                            differ = stored_bytes is not None and stored_bytes != encoded
                        finding = chains.check(
                            position, version, prev_hash, stored_hash, computed, unreadable, differ
                        )
                        if finding is not None:
                            findings.append(finding)
                    if folding:
                        stream.append(
                            _StreamEvent(
                                position,
                                version,
                                event_id,
                                event_type,
                                schema_version,
                                data,
                                metadata,
                                recorded_at,
                                prev_hash,
                                stored_hash,
                            )
                        )
            count += len(rows)
            if progress is not None:
                progress(len(rows))
        if folding:
            await merge.compare(current, stream, findings)
        if read_models:
            await merge.finish(findings)
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
    counts = {"streams": chains.streams, "events": count}
    if read_models:
        counts["applications"] = merge.applications_seen
        counts["history_rows"] = merge.history_seen
    return counts, findings


def _recorded(stream_id: str, event: _StreamEvent) -> RecordedEvent:
    assert event.recorded_at is not None
    return RecordedEvent(
        position=event.position,
        seq=None,
        stream_id=stream_id,
        stream_version=event.stream_version,
        event_id=event.event_id,
        event_type=event.event_type,
        schema_version=event.schema_version,
        data=event.data,
        metadata=event.metadata,
        recorded_at=datetime.fromisoformat(event.recorded_at),
        prev_hash=event.prev_hash,
        hash=event.hash,
    )


def fold_stream(
    stream_id: str, events: Sequence[_StreamEvent]
) -> tuple[ApplicationRow | None, list[HistoryRow], Finding | None]:
    """The read-model rows the projector makes of one stream, or why it cannot."""
    row: ApplicationRow | None = None
    entries: list[HistoryRow] = []
    for event in events:
        if event.data is None or event.recorded_at is None:
            return (
                None,
                [],
                Finding(
                    READ_MODEL, stream_id, event.position, "the event cannot be read to fold it"
                ),
            )
        try:
            row, entry = project(row, _recorded(stream_id, event))
        except Exception as error:  # any failure of the projector is a finding, not a crash
            return (
                None,
                [],
                Finding(
                    READ_MODEL,
                    stream_id,
                    event.position,
                    f"the projector cannot fold the stream here: {error!r}",
                ),
            )
        if entry is not None:
            entries.append(entry)
    return row, entries, None


class _Ordered:
    """Rows of one ordered cursor, pulled on demand, grouped by application id."""

    def __init__(self, rows: AsyncIterator[Any]) -> None:
        self._rows = rows
        self._next: Any = None
        self.exhausted = False

    async def peek(self) -> Any:
        if self._next is None and not self.exhausted:
            try:
                self._next = await anext(self._rows)
            except StopAsyncIteration:
                self.exhausted = True
        return self._next

    async def take(self) -> Any:
        value = await self.peek()
        self._next = None
        return value


async def _chunks(connection: Connection, query: str, *args: Any) -> AsyncIterator[Any]:
    cursor = await connection.cursor(query, *args)
    while rows := await cursor.fetch(CHUNK):
        for row in rows:
            yield row


class _ReadModelMerge:
    """Merges the fold of each application stream with the stored read-model rows.

    Both read models are read in application id order. The events arrive in stream_id
    order, which is the same order for `loan-application-<uuid>` ids under the usual
    collations; rows pulled ahead wait in `pending_*` until their stream comes, so a
    different collation costs memory, never a wrong finding. Rows still pending at the end
    have no stream: they are extra.
    """

    def __init__(
        self, applications: Connection, history: Connection, stream_range: StreamRange
    ) -> None:
        first, end = stream_range
        if (first, end) == ("", None):
            application_rows = _chunks(applications, verify_sql.APPLICATIONS_IN_ID_ORDER)
            history_rows = _chunks(history, verify_sql.HISTORY_IN_ID_ORDER)
        else:
            # The rows whose stream id falls in the range, compared in the database's
            # collation like the events' range, so every row is in exactly one range.
            application_rows = _chunks(
                applications, verify_sql.APPLICATIONS_IN_RANGE, STREAM_PREFIX, first, end
            )
            history_rows = _chunks(history, verify_sql.HISTORY_IN_RANGE, STREAM_PREFIX, first, end)
        self._applications = _Ordered(application_rows)
        self._history = _Ordered(history_rows)
        self.pending_applications: dict[UUID, ApplicationRow] = {}
        self.pending_history: dict[UUID, list[HistoryRow]] = {}
        self.applications_seen = 0
        self.history_seen = 0

    async def _pull_through(self, key: UUID) -> None:
        while (record := await self._applications.peek()) is not None and (
            record["application_id"] <= key
        ):
            await self._applications.take()
            self.applications_seen += 1
            row = ApplicationRow.from_record(record)
            self.pending_applications[row.state.application_id] = row
        while (record := await self._history.peek()) is not None and (
            record["application_id"] <= key
        ):
            await self._history.take()
            self.history_seen += 1
            entry = HistoryRow(**dict(record))
            self.pending_history.setdefault(entry.application_id, []).append(entry)

    async def compare(
        self, stream_id: str | None, events: Sequence[_StreamEvent], findings: list[Finding]
    ) -> None:
        assert stream_id is not None
        try:
            key = UUID(stream_id.removeprefix(STREAM_PREFIX))
        except ValueError:
            findings.append(
                Finding(READ_MODEL, stream_id, None, "an application stream id without a uuid")
            )
            return
        await self._pull_through(key)
        stored = self.pending_applications.pop(key, None)
        stored_history = self.pending_history.pop(key, [])
        compare_stream(stream_id, key, events, stored, stored_history, findings)

    async def finish(self, findings: list[Finding]) -> None:
        """Whatever is left in the read models belongs to no stream."""
        last = UUID(int=2**128 - 1)
        await self._pull_through(last)
        for key in sorted(self.pending_applications.keys() | self.pending_history.keys()):
            _no_events(
                key,
                self.pending_applications.get(key),
                self.pending_history.get(key, []),
                findings,
            )


def compare_stream(
    stream_id: str,
    key: UUID,
    events: Sequence[_StreamEvent],
    stored: ApplicationRow | None,
    stored_history: list[HistoryRow],
    findings: list[Finding],
) -> None:
    """The stored rows of one application stream against the projector's fold of it."""
    folded, folded_history, problem = fold_stream(stream_id, events)
    if problem is not None:
        findings.append(problem)
        return
    if folded is None:
        return
    if stored is None:
        findings.append(
            Finding(
                READ_MODEL,
                stream_id,
                folded.last_event_position,
                f"loan_applications has no row for application {key}",
            )
        )
    elif stored != folded:
        findings.append(
            Finding(
                READ_MODEL,
                stream_id,
                folded.last_event_position,
                f"loan_applications row of application {key} differs from the fold in "
                + describe_difference(stored, folded),
            )
        )
    history_finding = _compare_history(stream_id, key, stored_history, folded_history)
    if history_finding is not None:
        findings.append(history_finding)


def _compare_history(
    stream_id: str, key: UUID, stored: list[HistoryRow], folded: list[HistoryRow]
) -> Finding | None:
    stored_by_version = {entry.stream_version: entry for entry in stored}
    folded_by_version = {entry.stream_version: entry for entry in folded}
    missing = sorted(folded_by_version.keys() - stored_by_version.keys())
    extra = sorted(stored_by_version.keys() - folded_by_version.keys())
    different = sorted(
        version
        for version in folded_by_version.keys() & stored_by_version.keys()
        if folded_by_version[version] != stored_by_version[version]
    )
    if not (missing or extra or different):
        return None
    parts = []
    if missing:
        parts.append(f"missing versions {missing}")
    if extra:
        parts.append(f"extra versions {extra}")
    if different:
        first = different[0]
        parts.append(
            f"versions {different} differ (version {first}: "
            + describe_difference(stored_by_version[first], folded_by_version[first])
            + ")"
        )
    first_version = min(missing + extra + different)
    entry = folded_by_version.get(first_version) or stored_by_version[first_version]
    return Finding(
        READ_MODEL,
        stream_id,
        entry.event_position,
        f"application_history of application {key}: " + "; ".join(parts),
    )


def describe_difference(stored: object, folded: object, limit: int = 3) -> str:
    """`status (stored 'approved', folded 'in_review')` for the first differing fields."""
    differences = list(_differences(stored, folded, ""))
    shown = [
        f"{name} (stored {value!r}, folded {other!r})" for name, value, other in differences[:limit]
    ]
    if len(differences) > limit:
        shown.append(f"{len(differences) - limit} more")
    return ", ".join(shown) or "an unknown field"


def _differences(stored: object, folded: object, prefix: str) -> list[tuple[str, Any, Any]]:
    if type(stored) is not type(folded) or not hasattr(stored, "__dataclass_fields__"):
        return [(prefix.rstrip(".") or "value", stored, folded)]
    found: list[tuple[str, Any, Any]] = []
    for item in fields(stored):  # type: ignore[arg-type]
        value, other = getattr(stored, item.name), getattr(folded, item.name)
        if value == other:
            continue
        if hasattr(value, "__dataclass_fields__"):
            found.extend(_differences(value, other, f"{prefix}{item.name}."))
        else:
            found.append((f"{prefix}{item.name}", value, other))
    return found


# --- The ledger log and the triggers ---


async def _check_log_and_triggers(connection: Connection, report: VerifyReport) -> None:
    rows = await connection.fetch(verify_sql.TRIGGERS)
    triggers = [
        TriggerRow(
            table=row["table_name"],
            name=row["name"],
            enabled=row["enabled"],
            type_bits=row["type_bits"],
            function=row["function"],
            function_body=row["function_body"],
        )
        for row in rows
    ]
    report.findings.extend(
        check_triggers(triggers, function_body(schema_sql(), IMMUTABILITY_FUNCTION))
    )
    report.checked["triggers"] = len(EXPECTED_TRIGGERS)

    summary = await connection.fetchrow(verify_sql.LOG_SUMMARY)
    assert summary is not None, "schema.sql inserts the cursor row"
    report.checked["log_entries"] = summary["entries"]
    findings = report.findings
    problems = await connection.fetch(verify_sql.LOG_PROBLEMS, LOG_FINDING_LIMIT + 1)
    for problem in problems[:LOG_FINDING_LIMIT]:
        seq = problem["seq"]
        if problem["seq"] != (problem["prev_seq"] or 0) + 1:
            after = problem["prev_seq"]
            gap = f"follows seq {after}" if after is not None else "is the first entry"
            findings.append(
                Finding(
                    LOG,
                    problem["stream_id"],
                    problem["position"],
                    f"seq {seq} {gap}: the log has a hole (an entry was deleted)",
                )
            )
        if problem["missing"]:
            findings.append(
                Finding(
                    LOG,
                    None,
                    problem["position"],
                    f"seq {seq} names position {problem['position']}, which is not in the "
                    "event table (the event was deleted, or the entry was written for none)",
                )
            )
        if problem["out_of_order"]:
            findings.append(
                Finding(
                    LOG,
                    problem["stream_id"],
                    problem["position"],
                    f"seq {seq} (version {problem['stream_version']}) is out of the order the "
                    "sequencer logs in: entries were reordered",
                )
            )
    if len(problems) > LOG_FINDING_LIMIT:
        findings.append(
            Finding(
                LOG, None, None, f"more log entries are wrong after the first {LOG_FINDING_LIMIT}"
            )
        )
    if summary["max_seq"] != summary["cursor_seq"]:
        findings.append(
            Finding(
                LOG,
                None,
                None,
                f"the log ends at seq {summary['max_seq']} but the sequencer's cursor is at "
                f"seq {summary['cursor_seq']}",
            )
        )
    if summary["events_below_cursor"] != summary["entries"]:
        unlogged = await connection.fetch(verify_sql.UNLOGGED_BELOW_CURSOR, LOG_FINDING_LIMIT)
        for row in unlogged:
            findings.append(
                Finding(
                    LOG,
                    row["stream_id"],
                    row["position"],
                    f"version {row['stream_version']} was passed by the sequencer but has no "
                    "log entry",
                )
            )
