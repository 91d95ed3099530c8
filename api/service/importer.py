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
batch (events of many applications in one statement, then the read models). A crash
mid-import leaves whole batches; running the same command again skips the applications
already recorded (their ids derive from the file's SHA-256 and the line number) and
imports the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

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
from ledger.chain import chain_new_events
from ledger.db import Connection, connect
from ledger.events import RecordedEvent
from ledger.scoring import ScoringModel
from ledger.store import append_new_streams, existing_streams
from projections.runner import project_inline

DEFAULT_BATCH_SIZE = 2000
"""Applications per transaction (three events each)."""

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


def check_file(path: Path, not_after: datetime) -> FileCheck:
    """The first pass: every line checked, nothing written."""
    digest = hashlib.sha256()
    check = FileCheck(digest=b"")
    with path.open("rb") as file:
        for line_number, raw in _numbered_lines(file, digest):
            try:
                parse_line(raw, line_number, not_after)
            except LineRefused as refused:
                check.refuse(line_number, str(refused))
            else:
                check.applications += 1
    check.digest = digest.digest()
    return check


def application_events(
    parsed: ParsedLine,
    file_digest: bytes,
    model: ScoringModel,
    actor: str,
    now: datetime,
) -> list[RecordedEvent]:
    """The events `POST /lending/apply` would record for this line, chained (position 0)."""
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
    events = decide(None, command, recorded_at, model)
    return chain_new_events(
        stream_id_for(command.application_id),
        0,
        GENESIS_HASH,
        with_metadata(events, context),
        recorded_at,
    )


@dataclass(frozen=True, slots=True)
class BatchWritten:
    applications: int
    events: int
    already_present: int


async def write_batch(
    connection: Connection, applications: list[list[RecordedEvent]]
) -> BatchWritten:
    """One transaction: the batch's events (skipping applications already recorded) and
    their read models."""
    stream_ids = [events[0].stream_id for events in applications]
    async with connection.transaction():
        present = await existing_streams(connection, stream_ids)
        fresh = [e for events in applications if events[0].stream_id not in present for e in events]
        stored = await append_new_streams(connection, fresh)
        await project_inline(connection, stored)
    return BatchWritten(len(applications) - len(present), len(stored), len(present))


def _prepared_batches(
    file: BinaryIO,
    digest: Any,
    check: FileCheck,
    *,
    model: ScoringModel,
    actor: str,
    batch_size: int,
    not_after: datetime,
) -> Iterator[list[list[RecordedEvent]]]:
    """The file's applications as events, `batch_size` applications at a time."""
    batch: list[list[RecordedEvent]] = []
    for line_number, raw in _numbered_lines(file, digest):
        try:
            parsed = parse_line(raw, line_number, not_after)
        except LineRefused as refused:
            raise FileChanged(f"line {line_number} is refused now: {refused}") from None
        now = datetime.now(UTC)
        batch.append(application_events(parsed, check.digest, model, actor, now))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


async def import_checked_file(
    connection: Connection,
    path: Path,
    check: FileCheck,
    *,
    model: ScoringModel,
    actor: str,
    batch_size: int,
    not_after: datetime,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int, int]:
    """The second pass over a file whose check found no refused line.

    Returns (applications recorded, events recorded, applications already present).
    Batch k+1 is prepared (parsed, decided, hashed) in a thread while the event loop has
    the database write batch k: the server's work overlaps with this process's.
    `progress`, if given, is called with the number of applications of each batch written
    (recorded now or already present).
    """
    digest = hashlib.sha256()
    written: list[BatchWritten] = []
    writing: asyncio.Task[BatchWritten] | None = None
    try:
        with path.open("rb") as file:
            batches = _prepared_batches(
                file,
                digest,
                check,
                model=model,
                actor=actor,
                batch_size=batch_size,
                not_after=not_after,
            )
            # Only one thread at a time advances the generator: each next() is awaited.
            batch = await asyncio.to_thread(next, batches, None)
            while batch is not None:
                writing = asyncio.create_task(write_batch(connection, batch))
                batch = await asyncio.to_thread(next, batches, None)
                written.append(await writing)
                writing = None
                if progress is not None:
                    progress(written[-1].applications + written[-1].already_present)
    finally:
        if writing is not None:  # stopped by an error: the batch in flight rolls back
            writing.cancel()
            with contextlib.suppress(BaseException):
                await writing
    if digest.digest() != check.digest:
        raise FileChanged("the file changed while it was being imported")
    return (
        sum(w.applications for w in written),
        sum(w.events for w in written),
        sum(w.already_present for w in written),
    )


async def import_file(
    url: str,
    path: Path,
    *,
    model: ScoringModel,
    actor: str = DEFAULT_ACTOR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    check_only: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Check the whole file, then (unless a line is refused, or `check_only`) import it.
    `progress`: called with the applications of each batch written (import_checked_file)."""
    started = time.perf_counter()
    not_after = datetime.now(UTC)
    check = await asyncio.to_thread(check_file, path, not_after)
    recorded = events = present = 0
    if check.bad_count == 0 and not check_only and check.applications:
        connection = await connect(url)
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
