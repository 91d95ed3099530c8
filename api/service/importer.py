"""Importing historical applications from a JSON Lines file, recorded as events (the
`lending-ledger import` command is api/cli/importing.py).

Each line is one application, `{"applicant_id", "amount", "income", "employment_years"}`
plus an optional `"submitted_at"` (RFC 3339). It is checked with the rules of
`POST /lending/apply` (the same `ApplyRequest` model and exact JSON parser, then
`ledger.application.validated` inside `decide`), scored with the configured model, and
recorded as the same three events, hash-chained the same way, with the same read models
(`projections.runner.project_inline`). See ledger/bulk.py for what is particular to an
import (ids derived from the file, `submitted_at`, correlation ids).

All or nothing with respect to bad lines: a first pass reads the whole file and checks
every line; if any is refused, every refused line is reported with its number and nothing
is imported (exit 1). Otherwise the second pass imports in batches, one transaction per
batch: the batch's events by binary COPY into the event table (with the canonical bytes
each hash covers), then the read models of those new streams built set-based in the same
transaction (`projections.runner.project_new_streams`, the rebuild's fold restricted to
the transaction's own events). A crash mid-import leaves whole batches; running the same
command again skips the applications already recorded (their ids derive from the file's
SHA-256 and the line number) and imports the rest.

Both passes parse (pydantic, per line), and the second also scores, decides and hashes:
that is most of an import's CPU, so for a large file both run in worker processes (one per
core), on chunks of lines, while this process reads the file and writes to the database.
The second pass's workers also encode the events as binary COPY rows (ledger/copyformat.py),
so a chunk comes back as one `bytes` object that this process sends as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg
from pydantic import ValidationError

from api.jsonio import loads_exact
from api.service.commands import RequestContext, with_metadata
from api.service.dbrole import ensure_schema
from api.service.models import ApplyRequest
from ledger.application import SubmitApplication, decide, stream_id_for
from ledger.bulk import (
    SUBMITTED_AT_FIELD,
    BadLine,
    application_id_for,
    correlation_id_for,
    parse_submitted_at,
)
from ledger.canonical import GENESIS_HASH
from ledger.chain import ChainedEvent, chain_new_events_encoded
from ledger.copyformat import HEADER, TRAILER, event_row
from ledger.db import Connection, connect_for_copy
from ledger.errors import ConcurrencyConflict
from ledger.events import RecordedEvent
from ledger.scoring import ScoringModel
from ledger.sql import COPY_EVENT_COLUMNS
from ledger.store import conflicting_stream, existing_streams
from projections.runner import project_new_streams

DEFAULT_BATCH_SIZE = 10_000
"""Applications per transaction (three events each)."""

CHUNK_LINES = 2_000
"""Lines per task of a worker process."""

CHUNKS_AHEAD = 16
"""Chunks given to the worker processes ahead of the one being consumed: more than a batch,
so they keep working while this process writes one."""

PARALLEL_FROM_BYTES = 1_000_000
"""Files from this size are parsed and prepared in worker processes (one per core with
`jobs=0`); below it, starting them costs more than they save."""

MAX_REPORTED_BAD_LINES = 1000
"""Refused lines kept for the report; the count is always exact."""

DEFAULT_ACTOR = "import"


class LineRefused(ValueError):
    """One line of the file does not describe a valid application."""


@dataclass(frozen=True, slots=True)
class ParsedLine:
    line_number: int
    request: ApplyRequest
    submitted_at: datetime | None


@dataclass(slots=True)
class FileCheck:
    """The first pass: the file's SHA-256, its applications and its refused lines."""

    digest: bytes
    applications: int = 0
    bad_count: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)

    def refuse(self, line_number: int, message: str) -> None:
        self.bad_count += 1
        if len(self.bad_lines) < MAX_REPORTED_BAD_LINES:
            self.bad_lines.append(BadLine(line_number, message))


@dataclass(frozen=True, slots=True)
class ImportResult:
    file: str
    digest: str
    applications: int  # recorded by this run
    events: int
    already_present: int  # applications of this file recorded by an earlier run
    seconds: float
    bad_count: int = 0
    bad_lines: tuple[BadLine, ...] = ()

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class FileChanged(Exception):
    """The file's contents changed between the check and the import."""


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ())) or "line"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_line(raw: bytes, line_number: int, not_after: datetime) -> ParsedLine:
    """One line, checked as `POST /lending/apply` checks its body. Raises LineRefused."""
    try:
        document: Any = loads_exact(raw)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, bad UTF-8, NaN, dup keys
        raise LineRefused(f"not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise LineRefused("must be a JSON object")
    submitted_at = None
    raw_time = document.pop(SUBMITTED_AT_FIELD, None)
    if raw_time is not None:
        try:
            submitted_at = parse_submitted_at(raw_time, not_after)
        except ValueError as error:
            raise LineRefused(f"{SUBMITTED_AT_FIELD}: {error}") from None
    try:
        request = ApplyRequest.model_validate(document)
    except ValidationError as error:
        raise LineRefused(_describe(error)) from None
    return ParsedLine(line_number, request, submitted_at)


def _numbered_lines(file: BinaryIO, digest: Any) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based numbers, hashing every byte read."""
    for line_number, raw in enumerate(file, start=1):
        digest.update(raw)
        if raw.strip():
            yield line_number, raw


def chained_application(
    parsed: ParsedLine,
    file_digest: bytes,
    model: ScoringModel,
    actor: str,
    now: datetime,
) -> list[ChainedEvent]:
    """The events `POST /lending/apply` would record for this line, chained (position 0),
    with the canonical bytes each hash covers and the JSON of their data and metadata."""
    request = parsed.request
    command = SubmitApplication(
        application_id=application_id_for(file_digest, parsed.line_number),
        applicant_id=request.applicant_id,
        amount=request.amount,
        income=request.income,
        employment_years=request.employment_years,
        submitted_by=actor,
    )
    recorded_at = parsed.submitted_at or now
    context = RequestContext(
        actor=actor,
        correlation_id=correlation_id_for(file_digest, parsed.line_number),
        idempotency_key=None,
        fingerprint=b"",
    )
    return chain_new_events_encoded(
        stream_id_for(command.application_id),
        0,
        GENESIS_HASH,
        with_metadata(decide(None, command, recorded_at, model), context),
        recorded_at,
    )


def application_events(
    parsed: ParsedLine,
    file_digest: bytes,
    model: ScoringModel,
    actor: str,
    now: datetime,
) -> list[RecordedEvent]:
    """The events `POST /lending/apply` would record for this line, chained (position 0)."""
    return [c.event for c in chained_application(parsed, file_digest, model, actor, now)]


def application_rows(
    parsed: ParsedLine,
    file_digest: bytes,
    model: ScoringModel,
    actor: str,
    now: datetime,
) -> tuple[str, int, bytes]:
    """`application_events` as rows of the event table in COPY's binary form (with the
    canonical bytes each hash covers): (stream id, events, rows)."""
    chained = chained_application(parsed, file_digest, model, actor, now)
    rows = b"".join(
        event_row(
            c.event.stream_id,
            c.event.stream_version,
            c.event.event_id,
            c.event.event_type,
            c.event.schema_version,
            c.data_json,
            c.metadata_json,
            c.event.recorded_at,
            c.event.prev_hash,
            c.event.hash,
            c.hashed,
        )
        for c in chained
    )
    return chained[0].event.stream_id, len(chained), rows


@dataclass(frozen=True, slots=True)
class PreparedChunk:
    """Applications ready to write: their events as one run of binary COPY rows (what a
    worker process hands back: a few objects to pickle, not a tuple per event).
    Application n's rows are rows[ends[n - 1]:ends[n]] (from 0 for the first)."""

    stream_ids: list[str]
    events: list[int]
    ends: list[int]
    rows: bytes

    def __len__(self) -> int:
        return len(self.stream_ids)

    def start(self, n: int) -> int:
        return self.ends[n - 1] if n else 0

    def split(self, n: int) -> tuple[PreparedChunk, PreparedChunk]:
        """The first n applications, and the rest."""
        cut = self.start(n)
        return (
            PreparedChunk(self.stream_ids[:n], self.events[:n], self.ends[:n], self.rows[:cut]),
            PreparedChunk(
                self.stream_ids[n:],
                self.events[n:],
                [end - cut for end in self.ends[n:]],
                self.rows[cut:],
            ),
        )


Lines = list[tuple[int, bytes]]


def check_lines(lines: Lines, not_after: datetime) -> tuple[int, int, list[BadLine]]:
    """A chunk of the first pass: (valid lines, refused lines, the first refused of them)."""
    valid = refused = 0
    bad: list[BadLine] = []
    for line_number, raw in lines:
        try:
            parse_line(raw, line_number, not_after)
        except LineRefused as error:
            refused += 1
            if len(bad) < MAX_REPORTED_BAD_LINES:
                bad.append(BadLine(line_number, str(error)))
        else:
            valid += 1
    return valid, refused, bad


def prepare_lines(
    lines: Lines,
    file_digest: bytes,
    model: ScoringModel,
    actor: str,
    not_after: datetime,
) -> PreparedChunk:
    """A chunk of the second pass: each line's events as binary COPY rows."""
    stream_ids: list[str] = []
    events: list[int] = []
    ends: list[int] = []
    rows: list[bytes] = []
    end = 0
    for line_number, raw in lines:
        try:
            parsed = parse_line(raw, line_number, not_after)
        except LineRefused as refused:
            raise FileChanged(f"line {line_number} is refused now: {refused}") from None
        now = datetime.now(UTC)
        stream_id, count, encoded = application_rows(parsed, file_digest, model, actor, now)
        stream_ids.append(stream_id)
        events.append(count)
        end += len(encoded)
        ends.append(end)
        rows.append(encoded)
    return PreparedChunk(stream_ids, events, ends, b"".join(rows))


def _chunks(file: BinaryIO, digest: Any, size: int) -> Iterator[Lines]:
    chunk: Lines = []
    for numbered in _numbered_lines(file, digest):
        chunk.append(numbered)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def _in_order(
    executor: Executor | None, chunks: Iterator[Lines], work: Any, *args: Any
) -> AsyncIterator[Any]:
    """`work(chunk, *args)` for each chunk, in order; with an executor, a few chunks ahead
    in its worker processes (reading the next chunk of the file in this process)."""
    loop = asyncio.get_running_loop()
    if executor is None:
        for chunk in chunks:
            yield work(chunk, *args)
            await asyncio.sleep(0)
        return
    ahead = CHUNKS_AHEAD
    pending: list[asyncio.Future[Any]] = []
    try:
        for chunk in chunks:
            pending.append(loop.run_in_executor(executor, work, chunk, *args))
            while len(pending) >= ahead:
                yield await pending.pop(0)
        while pending:
            yield await pending.pop(0)
    finally:
        for future in pending:
            future.cancel()


def _count(check: FileCheck, valid: int, refused: int, bad: list[BadLine]) -> None:
    check.applications += valid
    check.bad_count += refused
    check.bad_lines.extend(bad[: MAX_REPORTED_BAD_LINES - len(check.bad_lines)])


def check_file(path: Path, not_after: datetime) -> FileCheck:
    """The first pass, in this process: every line checked, nothing written."""
    digest = hashlib.sha256()
    check = FileCheck(digest=b"")
    with path.open("rb") as file:
        for chunk in _chunks(file, digest, CHUNK_LINES):
            _count(check, *check_lines(chunk, not_after))
    check.digest = digest.digest()
    return check


async def check_file_async(
    path: Path, not_after: datetime, executor: Executor | None = None
) -> FileCheck:
    """The first pass, in the executor's worker processes (without one: `check_file` in a
    thread)."""
    if executor is None:
        return await asyncio.to_thread(check_file, path, not_after)
    digest = hashlib.sha256()
    check = FileCheck(digest=b"")
    with path.open("rb") as file:
        async for counted in _in_order(
            executor, _chunks(file, digest, CHUNK_LINES), check_lines, not_after
        ):
            _count(check, *counted)
    check.digest = digest.digest()
    return check


@dataclass(frozen=True, slots=True)
class BatchWritten:
    applications: int
    events: int
    already_present: int


async def write_batch(connection: Connection, chunks: list[PreparedChunk]) -> BatchWritten:
    """One transaction: the batch's events by binary COPY (skipping applications already
    recorded), then the read models of those new streams, set-based."""
    stream_ids = [stream_id for chunk in chunks for stream_id in chunk.stream_ids]
    async with connection.transaction():
        present = await existing_streams(connection, stream_ids)
        parts = [HEADER]
        events = 0
        for chunk in chunks:
            if present.isdisjoint(chunk.stream_ids):
                parts.append(chunk.rows)
                events += sum(chunk.events)
                continue
            for n, stream_id in enumerate(chunk.stream_ids):
                if stream_id not in present:
                    parts.append(chunk.rows[chunk.start(n) : chunk.ends[n]])
                    events += chunk.events[n]
        parts.append(TRAILER)
        if events:

            async def source() -> AsyncIterator[bytes]:
                for part in parts:
                    yield part

            try:
                await connection.copy_to_table(
                    "events", source=source(), columns=COPY_EVENT_COLUMNS, format="binary"
                )
            except asyncpg.UniqueViolationError as error:
                if error.constraint_name == "events_stream_version_unique":
                    raise ConcurrencyConflict(conflicting_stream(error), 0) from None
                raise
            await project_new_streams(connection)
    return BatchWritten(len(stream_ids) - len(present), events, len(present))


def _cut_batches(
    pending: list[PreparedChunk], size: int
) -> tuple[list[list[PreparedChunk]], list[PreparedChunk]]:
    """Whole batches of `size` applications cut from `pending` (a chunk is split where a
    batch ends), and the chunks left over for the next batch."""
    batches: list[list[PreparedChunk]] = []
    batch: list[PreparedChunk] = []
    count = 0
    for chunk in pending:
        while count + len(chunk) >= size:
            head, chunk = chunk.split(size - count)
            batches.append([*batch, head])
            batch, count = [], 0
        if len(chunk):
            batch.append(chunk)
            count += len(chunk)
    return batches, batch


async def import_checked_file(
    connection: Connection,
    path: Path,
    check: FileCheck,
    *,
    model: ScoringModel,
    actor: str,
    batch_size: int,
    not_after: datetime,
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int, int]:
    """The second pass over a file whose check found no refused line.

    Returns (applications recorded, events recorded, applications already present).
    Chunks are prepared (parsed, decided, hashed, encoded as COPY rows) in the executor's
    worker processes while this process writes the batch before: the database's work
    overlaps with theirs.
    """
    digest = hashlib.sha256()
    written: list[BatchWritten] = []
    pending: list[PreparedChunk] = []

    async def write(batch: list[PreparedChunk]) -> None:
        written.append(await write_batch(connection, batch))
        if progress is not None:
            progress(written[-1].applications + written[-1].already_present)

    with path.open("rb") as file:
        async for prepared in _in_order(
            executor,
            _chunks(file, digest, CHUNK_LINES),
            prepare_lines,
            check.digest,
            model,
            actor,
            not_after,
        ):
            batches, pending = _cut_batches([*pending, prepared], max(1, batch_size))
            for batch in batches:
                await write(batch)
        if pending:
            await write(pending)
    if digest.digest() != check.digest:
        raise FileChanged("the file changed while it was being imported")
    return (
        sum(w.applications for w in written),
        sum(w.events for w in written),
        sum(w.already_present for w in written),
    )


@contextlib.contextmanager
def _workers(path: Path, jobs: int) -> Iterator[Executor | None]:
    """Worker processes for a large file (`jobs` 0: one per core), else None."""
    if jobs == 0:
        jobs = (os.cpu_count() or 1) if path.stat().st_size >= PARALLEL_FROM_BYTES else 1
    if jobs <= 1:
        yield None
        return
    context = multiprocessing.get_context("spawn")  # no inherited event loop or sockets
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as executor:
        yield executor


async def import_file(
    url: str,
    path: Path,
    *,
    model: ScoringModel,
    actor: str = DEFAULT_ACTOR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    check_only: bool = False,
    jobs: int = 0,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Check the whole file, then (unless a line is refused, or `check_only`) import it.

    `jobs`: worker processes that parse and prepare (0: one per core for a large file).
    `progress`: called with the applications of each batch written (recorded or present)."""
    started = time.perf_counter()
    not_after = datetime.now(UTC)
    recorded = events = present = 0
    with _workers(path, jobs) as executor:
        check = await check_file_async(path, not_after, executor)
        if check.bad_count == 0 and not check_only and check.applications:
            connection = await connect_for_copy(url)
            try:
                await ensure_schema(connection)
                recorded, events, present = await import_checked_file(
                    connection,
                    path,
                    check,
                    model=model,
                    actor=actor,
                    batch_size=batch_size,
                    not_after=not_after,
                    executor=executor,
                    progress=progress,
                )
            finally:
                await connection.close()
    return ImportResult(
        file=str(path),
        digest=check.digest.hex(),
        applications=recorded,
        events=events,
        already_present=present,
        seconds=time.perf_counter() - started,
        bad_count=check.bad_count,
        bad_lines=tuple(check.bad_lines),
    )
