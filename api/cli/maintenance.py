"""`lending-ledger rebuild`, `catch-up` and `verify`: the maintenance commands.

Exit codes (docs/operations.md):
- rebuild / catch-up: 0 done; 1 it failed (the message says where; the live tables are
  untouched); 2 a usage error (unknown projection, catch-up of an inline projection);
  3 another rebuild or catch-up of the projection is running.
- verify: 0 no finding; 1 at least one finding; 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from api.cli.progress import ProgressBar
from api.jsonio import dumps
from api.service.embedded import database_url
from api.service.settings import Settings
from ledger.db import Connection, connect
from ledger.errors import RebuildInProgress, RebuildNotPermitted
from ledger.signing import SigningKeyError, read_public_key
from ledger.verify import VerifyReport
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

Subparsers = argparse._SubParsersAction  # argparse has no public name for it


def add_maintenance_parsers(commands: Subparsers[argparse.ArgumentParser]) -> None:
    names = ", ".join(p.name for p in all_projectors())
    rebuild_parser = commands.add_parser(
        "rebuild",
        help="rebuild read models from the events and swap them in atomically",
        description="Fold the events into fresh tables while the service keeps running, "
        "then swap them in atomically. Progress on stderr, a summary on stdout.",
    )
    rebuild_parser.add_argument(
        "--projection", metavar="NAME", help=f"one projection ({names}); default: all"
    )
    rebuild_parser.add_argument("--batch-size", type=int, default=2000, metavar="N")
    rebuild_parser.add_argument(
        "--lock-timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long the swap waits for the live tables before it catches up and retries",
    )
    catch_up_parser = commands.add_parser(
        "catch-up",
        help="bring projections the runner drives up to the end of the ledger log",
        description="Apply the ledger log from each runner projection's checkpoint, in "
        "batches; stop at the first event that fails and name its seq and position.",
    )
    catch_up_parser.add_argument("--projection", metavar="NAME", help="one projection")
    catch_up_parser.add_argument("--batch-size", type=int, default=1000, metavar="N")
    verify_parser = commands.add_parser(
        "verify",
        help="recompute hash chains, check the ledger log, triggers and read models",
        description="Recompute every stream's hash chain, check that the ledger log is "
        "contiguous and in order, that the immutability triggers are enabled, and that "
        "the read models equal a fresh fold of the events. Exit 1 on any finding.",
    )
    verify_parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    verify_parser.add_argument(
        "--public-key",
        action="append",
        type=Path,
        metavar="FILE",
        help="a PEM public (or private) key seals may be signed with; repeatable. "
        "Default: the configured signing key (LEDGER_SIGNING_KEY_FILE), if it exists",
    )
    verify_parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="worker processes for the streams (default 0: one per core once the ledger "
        "has 200,000 events or more, else 1)",
    )
    verify_parser.add_argument(
        "--skip-read-models",
        action="store_true",
        help="only the tamper evidence (chains, log, triggers): skip folding the read models",
    )


def _selected(name: str | None, err: TextIO) -> Sequence[Projector] | None:
    if name is None:
        return all_projectors()
    projector = find_projector(name)
    if projector is None:
        known = ", ".join(p.name for p in all_projectors())
        err.write(f"lending-ledger: no projection {name!r} (known: {known})\n")
        return None
    return (projector,)


def _check_batch_size(args: argparse.Namespace, err: TextIO) -> bool:
    if not 1 <= args.batch_size <= 100_000:
        err.write("lending-ledger: --batch-size must be from 1 to 100000\n")
        return False
    return True


def run_rebuild(
    settings: Settings,
    args: argparse.Namespace,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    projectors = _selected(args.projection, err)
    if projectors is None or not _check_batch_size(args, err):
        return EXIT_USAGE
    if not 0 < args.lock_timeout <= 600:
        err.write("lending-ledger: --lock-timeout must be more than 0 and at most 600\n")
        return EXIT_USAGE
    with database_url(settings.database_url, settings.data_dir) as url:
        return asyncio.run(_rebuild_all(url, projectors, args, out, err))


async def _rebuild_all(
    url: str,
    projectors: Sequence[Projector],
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
) -> int:
    async def open_connection() -> Connection:
        return await connect(url)

    connection = await connect(url)
    try:
        for projector in projectors:
            bar = ProgressBar(f"rebuild {projector.name}", err)
            last = (0, 0)

            def progress(done: int, total: int, bar: ProgressBar = bar) -> None:
                nonlocal last
                last = (done, total)
                bar.update(done, total)

            try:
                result = await rebuild(
                    connection,
                    projector,
                    batch_size=args.batch_size,
                    lock_timeout=args.lock_timeout,
                    on_progress=progress,
                    open_connection=open_connection,
                )
            except RebuildInProgress as busy:
                err.write(f"lending-ledger: {busy.detail}\n")
                return EXIT_BUSY
            except RebuildNotPermitted as refused:
                err.write(f"lending-ledger: {refused.detail}\n")
                return EXIT_FAILED
            except (ProjectionFailed, ShapeMismatch, SwapTimedOut) as error:
                err.write(f"\nlending-ledger: rebuild of {projector.name!r} failed: {error}\n")
                err.write("lending-ledger: the live tables are untouched\n")
                return EXIT_FAILED
            bar.finish(result.events, max(result.events, last[1]))
            out.write(describe_rebuild(result))
            out.flush()
    finally:
        await connection.close()
    return EXIT_OK


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


def run_catch_up(
    settings: Settings,
    args: argparse.Namespace,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    projectors = _selected(args.projection, err)
    if projectors is None or not _check_batch_size(args, err):
        return EXIT_USAGE
    if args.projection is not None and is_inline(projectors[0]):
        err.write(
            f"lending-ledger: projection {args.projection!r} is written with every append "
            "and is always current; use `lending-ledger rebuild` to rebuild it\n"
        )
        return EXIT_USAGE
    driven = [p for p in projectors if not is_inline(p)]
    if not driven:
        out.write("catch-up: no projection is driven by the runner; nothing to do\n")
        return EXIT_OK
    with database_url(settings.database_url, settings.data_dir) as url:
        return asyncio.run(_catch_up_all(url, driven, args.batch_size, out, err))


async def _catch_up_all(
    url: str, projectors: Sequence[Projector], batch_size: int, out: TextIO, err: TextIO
) -> int:
    connection = await connect(url)
    try:
        for projector in projectors:
            bar = ProgressBar(f"catch-up {projector.name}", err)
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                result = await catch_up_projection(
                    connection, projector, batch_size=batch_size, on_progress=bar.update
                )
            except RebuildInProgress as busy:
                err.write(f"lending-ledger: {busy.detail}\n")
                return EXIT_BUSY
            except ProjectionFailed as failed:
                err.write(f"\nlending-ledger: catch-up failed: {failed}\n")
                err.write(
                    "lending-ledger: batches before it are committed; fix the projector "
                    "and run catch-up again to continue from the checkpoint\n"
                )
                return EXIT_FAILED
            if result.events:
                bar.finish(result.events, result.events)
            out.write(describe_catch_up(projector.name, result, loop.time() - started))
    finally:
        await connection.close()
    return EXIT_OK


def describe_catch_up(name: str, result: CatchUpResult, seconds: float) -> str:
    rate = result.events / seconds if seconds > 0 else 0.0
    return (
        f"caught up {name}: {result.events:,} events in {seconds:.2f} s "
        f"({rate:,.0f} events/s), checkpoint at seq {result.last_seq:,}\n"
    )


# --- verify ---


def run_verify(
    settings: Settings,
    args: argparse.Namespace,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    if not 0 <= args.jobs <= 64:
        err.write("lending-ledger: --jobs must be from 0 to 64\n")
        return EXIT_USAGE
    try:
        trusted_keys = _trusted_keys(settings, args.public_key)
    except SigningKeyError as error:
        err.write(f"lending-ledger: {error}\n")
        return EXIT_USAGE
    with database_url(settings.database_url, settings.data_dir) as url:
        try:
            report = asyncio.run(
                _verify(
                    url,
                    read_models=not args.skip_read_models,
                    trusted_keys=trusted_keys,
                    jobs=args.jobs,
                )
            )
        except (OSError, asyncpg.PostgresError) as error:
            err.write(f"lending-ledger: verify could not read the database: {error}\n")
            return EXIT_USAGE
    if args.json:
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
    url: str, *, read_models: bool, trusted_keys: list[Ed25519PublicKey], jobs: int
) -> VerifyReport:
    async def open_connection() -> Connection:
        return await connect(url)

    return await verify_ledger(
        open_connection,
        read_models=read_models,
        trusted_keys=trusted_keys,
        jobs=jobs,
        database_url=url,
    )
