"""`lending-ledger rebuild`, `catch-up` and `verify`: the maintenance commands.

Exit codes (docs/operations.md):
- rebuild / catch-up: 0 done; 1 it failed (the message says where; the live tables are
  untouched); 2 a usage error (unknown projection, catch-up of an inline projection);
  3 another rebuild or catch-up of the projection is running.
- verify: 0 no finding; 1 at least one finding; 2 a usage or configuration error.

Progress on stderr (api/cli/progress.py); the summary, or with --json one document, on
stdout.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TextIO

import asyncpg
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from api.cli.common import (
    JsonOption,
    ProgressOption,
    VerboseOption,
    exits,
    settings_from_env,
)
from api.cli.progress import Tracker, tracking
from api.jsonio import dumps
from api.service.embedded import database_url
from api.service.settings import Settings
from ledger import sql
from ledger.db import Connection, connect
from ledger.errors import RebuildInProgress, RebuildNotPermitted
from ledger.integrity import VerifyReport
from ledger.signing import SigningKeyError, read_public_key
from ledger.witness import add_witness_findings
from projections.rebuild import (
    RebuildResult,
    ShapeMismatch,
    SwapTimedOut,
    catch_up_projection,
    rebuild,
)
from projections.runner import (
    CatchUpResult,
    ProjectionFailed,
    Projector,
    all_projectors,
    find_projector,
    is_inline,
)
from projections.verify import verify_ledger

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUSY = 3

ProjectionOption = Annotated[
    str | None,
    typer.Option(
        "--projection",
        metavar="NAME",
        help="One projection (default: all). Known: " + ", ".join(p.name for p in all_projectors()),
    ),
]


def _selected(name: str | None, err: TextIO) -> Sequence[Projector] | None:
    if name is None:
        return all_projectors()
    projector = find_projector(name)
    if projector is None:
        known = ", ".join(p.name for p in all_projectors())
        err.write(f"lending-ledger: no projection {name!r} (known: {known})\n")
        return None
    return (projector,)


def _check_batch_size(batch_size: int, err: TextIO) -> bool:
    if not 1 <= batch_size <= 100_000:
        err.write("lending-ledger: --batch-size must be from 1 to 100000\n")
        return False
    return True


@exits
def rebuild_command(
    projection: ProjectionOption = None,
    batch_size: Annotated[
        int, typer.Option(metavar="N", help="Events per transaction, 1 to 100000.")
    ] = 2000,
    lock_timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="How long the swap waits for the live tables before it catches up and "
            "retries (more than 0, at most 600).",
        ),
    ] = 2.0,
    as_json: JsonOption = False,
    progress: ProgressOption = None,
    verbose: VerboseOption = False,
) -> int:
    """Rebuild read models from the events and swap them in atomically.

    Folds the events into fresh tables while the service keeps running, then swaps them in.
    Exit 0 done, 1 failed (the live tables are untouched), 2 usage error, 3 another rebuild
    or catch-up of the projection is running.
    """
    settings = settings_from_env(verbose)
    return run_rebuild(
        settings,
        projection=projection,
        batch_size=batch_size,
        lock_timeout=lock_timeout,
        as_json=as_json,
        progress=progress,
    )


def run_rebuild(
    settings: Settings,
    *,
    projection: str | None = None,
    batch_size: int = 2000,
    lock_timeout: float = 2.0,
    as_json: bool = False,
    progress: bool | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    projectors = _selected(projection, err)
    if projectors is None or not _check_batch_size(batch_size, err):
        return EXIT_USAGE
    if not 0 < lock_timeout <= 600:
        err.write("lending-ledger: --lock-timeout must be more than 0 and at most 600\n")
        return EXIT_USAGE
    with database_url(settings.database_url, settings.data_dir) as url:
        report = MaintenanceReport(as_json, out, err)
        code = asyncio.run(
            _rebuild_all(url, projectors, batch_size, lock_timeout, progress, report, err)
        )
        return report.finish(code)


class MaintenanceReport:
    """What rebuild and catch-up print on stdout: a summary per projection as it is done,
    or (--json) one document at the end: {"ok", "projections": [...], "failed"}."""

    def __init__(self, as_json: bool, out: TextIO, err: TextIO) -> None:
        self.as_json = as_json
        self.out = out
        self.err = err
        self.projections: list[dict[str, Any]] = []
        self.failed: dict[str, Any] | None = None

    def done(self, text: str, document: dict[str, Any]) -> None:
        self.projections.append(document)
        if not self.as_json:
            self.out.write(text)
            self.out.flush()

    def fail(self, projection: str, reason: str, detail: str, *messages: str) -> None:
        self.failed = {"projection": projection, "reason": reason, "detail": detail}
        for message in messages:
            self.err.write(f"lending-ledger: {message}\n")
        self.err.flush()

    def finish(self, code: int) -> int:
        if self.as_json:
            document = {"ok": code == EXIT_OK, "projections": self.projections}
            document["failed"] = self.failed
            self.out.write(dumps(document).decode() + "\n")
            self.out.flush()
        return code


async def _rebuild_all(
    url: str,
    projectors: Sequence[Projector],
    batch_size: int,
    lock_timeout: float,
    progress: bool | None,
    report: MaintenanceReport,
    err: TextIO,
) -> int:
    async def open_connection() -> Connection:
        return await connect(url)

    connection = await connect(url)
    try:
        for projector in projectors:
            name = projector.name
            try:
                with tracking(f"rebuild {name}", option=progress, stream=err) as tracker:
                    result = await rebuild(
                        connection,
                        projector,
                        batch_size=batch_size,
                        lock_timeout=lock_timeout,
                        on_progress=tracker.update,
                        open_connection=open_connection,
                    )
                    tracker.update(result.events, max(result.events, tracker.total or 0))
            except RebuildInProgress as busy:
                report.fail(name, "busy", busy.detail, busy.detail)
                return EXIT_BUSY
            except RebuildNotPermitted as refused:
                report.fail(name, "refused", refused.detail, refused.detail)
                return EXIT_FAILED
            except (ProjectionFailed, ShapeMismatch, SwapTimedOut) as error:
                report.fail(
                    name,
                    "failed",
                    str(error),
                    f"rebuild of {name!r} failed: {error}",
                    "the live tables are untouched",
                )
                return EXIT_FAILED
            report.done(describe_rebuild(result), rebuild_json(result))
    finally:
        await connection.close()
    return EXIT_OK


def rebuild_json(result: RebuildResult) -> dict[str, Any]:
    return {
        "projection": result.projection,
        "events": result.events,
        "seconds": round(result.seconds, 3),
        "events_per_second": round(result.events_per_second, 1),
        "through_seq": result.through_seq,
        "late_events": result.late_events,
        "attempts": result.attempts,
        "rows": dict(result.rows),
    }


def describe_rebuild(result: RebuildResult) -> str:
    width = max(len(table) for table in result.rows) if result.rows else 0
    lines = [
        f"rebuilt {result.projection}: {result.events:,} events in {result.seconds:.2f} s "
        f"({result.events_per_second:,.0f} events/s), through seq {result.through_seq:,}; "
        f"{result.late_events:,} applied during the swap "
        f"(attempt {result.attempts})",
        *(f"  {table:<{width}}  {count:>12,} rows" for table, count in result.rows.items()),
    ]
    return "\n".join(lines) + "\n"


@exits
def catch_up_command(
    projection: ProjectionOption = None,
    batch_size: Annotated[
        int, typer.Option(metavar="N", help="Events per transaction, 1 to 100000.")
    ] = 1000,
    as_json: JsonOption = False,
    progress: ProgressOption = None,
    verbose: VerboseOption = False,
) -> int:
    """Bring projections the runner drives up to the end of the ledger log.

    Applies the log from each runner projection's checkpoint, in batches; stops at the first
    event that fails and names its seq and position. Exit 0 done, 1 failed (earlier batches
    stay committed), 2 usage error, 3 a rebuild or catch-up of the projection is running.
    """
    settings = settings_from_env(verbose)
    return run_catch_up(
        settings,
        projection=projection,
        batch_size=batch_size,
        as_json=as_json,
        progress=progress,
    )


def run_catch_up(
    settings: Settings,
    *,
    projection: str | None = None,
    batch_size: int = 1000,
    as_json: bool = False,
    progress: bool | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    projectors = _selected(projection, err)
    if projectors is None or not _check_batch_size(batch_size, err):
        return EXIT_USAGE
    if projection is not None and is_inline(projectors[0]):
        err.write(
            f"lending-ledger: projection {projection!r} is written with every append "
            "and is always current; use `lending-ledger rebuild` to rebuild it\n"
        )
        return EXIT_USAGE
    report = MaintenanceReport(as_json, out, err)
    driven = [p for p in projectors if not is_inline(p)]
    if not driven:
        if not as_json:
            out.write("catch-up: no projection is driven by the runner; nothing to do\n")
        return report.finish(EXIT_OK)
    with database_url(settings.database_url, settings.data_dir) as url:
        code = asyncio.run(_catch_up_all(url, driven, batch_size, progress, report, err))
    return report.finish(code)


async def _catch_up_all(
    url: str,
    projectors: Sequence[Projector],
    batch_size: int,
    progress: bool | None,
    report: MaintenanceReport,
    err: TextIO,
) -> int:
    connection = await connect(url)
    try:
        for projector in projectors:
            name = projector.name
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                with tracking(f"catch-up {name}", option=progress, stream=err) as tracker:
                    result = await catch_up_projection(
                        connection, projector, batch_size=batch_size, on_progress=tracker.update
                    )
                    tracker.update(result.events, result.events)
            except RebuildInProgress as busy:
                report.fail(name, "busy", busy.detail, busy.detail)
                return EXIT_BUSY
            except ProjectionFailed as failed:
                report.fail(
                    name,
                    "failed",
                    str(failed),
                    f"catch-up failed: {failed}",
                    "batches before it are committed; fix the projector and run catch-up "
                    "again to continue from the checkpoint",
                )
                return EXIT_FAILED
            seconds = loop.time() - started
            report.done(
                describe_catch_up(name, result, seconds), catch_up_json(name, result, seconds)
            )
    finally:
        await connection.close()
    return EXIT_OK


def catch_up_json(name: str, result: CatchUpResult, seconds: float) -> dict[str, Any]:
    return {
        "projection": name,
        "events": result.events,
        "seconds": round(seconds, 3),
        "events_per_second": round(result.events / seconds if seconds > 0 else 0.0, 1),
        "last_seq": result.last_seq,
    }


def describe_catch_up(name: str, result: CatchUpResult, seconds: float) -> str:
    rate = result.events / seconds if seconds > 0 else 0.0
    return (
        f"caught up {name}: {result.events:,} events in {seconds:.2f} s "
        f"({rate:,.0f} events/s), checkpoint at seq {result.last_seq:,}\n"
    )


# --- verify ---


@exits
def verify_command(
    as_json: JsonOption = False,
    public_key: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="FILE",
            help="A PEM public (or private) key seals may be signed with; repeatable. "
            "Default: the configured signing key (LEDGER_SIGNING_KEY_FILE), if it exists.",
        ),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Worker processes for the streams, 0 to 64 (default 0: one per core once "
            "the ledger has 200,000 events or more, else 1).",
        ),
    ] = 0,
    skip_read_models: Annotated[
        bool,
        typer.Option(
            "--skip-read-models",
            help="Only the tamper evidence (chains, log, triggers, seals): skip folding the "
            "read models.",
        ),
    ] = False,
    witness: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Also check the database's seals against the seals witnessed in DIR "
            "(LEDGER_WITNESS_DIR of the service): each must be in the database unchanged.",
        ),
    ] = None,
    progress: ProgressOption = None,
    verbose: VerboseOption = False,
) -> int:
    """Recompute hash chains, check the ledger log, triggers, seals and read models.

    Recomputes every stream's hash chain, checks that the ledger log is contiguous and in
    order, that the immutability triggers are enabled, and that the read models equal a
    fresh fold of the events. Exit 0 no finding, 1 at least one finding, 2 usage error or
    a database that cannot be read.
    """
    settings = settings_from_env(verbose)
    return run_verify(
        settings,
        as_json=as_json,
        public_keys=public_key,
        jobs=jobs,
        skip_read_models=skip_read_models,
        witness=witness,
        progress=progress,
    )


def run_verify(
    settings: Settings,
    *,
    as_json: bool = False,
    public_keys: list[Path] | None = None,
    jobs: int = 0,
    skip_read_models: bool = False,
    witness: Path | None = None,
    progress: bool | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    if not 0 <= jobs <= 64:
        err.write("lending-ledger: --jobs must be from 0 to 64\n")
        return EXIT_USAGE
    if witness is not None and not witness.is_dir():
        err.write(f"lending-ledger: --witness: {witness} is not a directory\n")
        return EXIT_USAGE
    try:
        trusted_keys = _trusted_keys(settings, public_keys)
    except SigningKeyError as error:
        err.write(f"lending-ledger: {error}\n")
        return EXIT_USAGE
    with database_url(settings.database_url, settings.data_dir) as url:
        try:
            with tracking("verify", option=progress, stream=err) as tracker:
                report = asyncio.run(
                    _verify(
                        url,
                        read_models=not skip_read_models,
                        trusted_keys=trusted_keys,
                        jobs=jobs,
                        witness=witness,
                        tracker=None if progress is False else tracker,
                    )
                )
        except (OSError, asyncpg.PostgresError) as error:
            err.write(f"lending-ledger: verify could not read the database: {error}\n")
            return EXIT_USAGE
    if as_json:
        out.write(dumps(report.to_json()).decode() + "\n")
    else:
        out.write(report.to_text())
    out.flush()
    return EXIT_OK if report.ok else EXIT_FAILED


def _trusted_keys(settings: Settings, files: list[Path] | None) -> list[Ed25519PublicKey]:
    """The keys seals may be signed with: those given, else the configured signing key's.
    With neither, any seal is reported as signed by an unknown key."""
    if files:
        return [read_public_key(path) for path in files]
    if settings.signing_key_path.exists():
        return [read_public_key(settings.signing_key_path)]
    return []


async def _verify(
    url: str,
    *,
    read_models: bool,
    trusted_keys: list[Ed25519PublicKey],
    jobs: int,
    witness: Path | None,
    tracker: Tracker | None,
) -> VerifyReport:
    async def open_connection() -> Connection:
        return await connect(url)

    if tracker is not None:  # the total, for the bar: counted only when it is shown
        connection = await open_connection()
        try:
            tracker.update(0, await connection.fetchval(sql.COUNT_EVENTS))
        finally:
            await connection.close()
    report = await verify_ledger(
        open_connection,
        read_models=read_models,
        trusted_keys=trusted_keys,
        jobs=jobs,
        database_url=url,
        progress=None if tracker is None else tracker.advance,
    )
    if witness is not None:
        await add_witness_findings(report, open_connection, witness, trusted_keys)
    return report
