"""`lending-ledger import --file F.jsonl`: historical applications, recorded as events
(api/service/importer.py does the work).

Exit codes: 0 imported (or checked, with --check), 1 the file has refused lines (nothing
imported) or changed during the import, 2 a usage error (no such file, a bad --actor or
--batch-size) or a database that cannot be used.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any, TextIO

import asyncpg
import typer

from api.cli.common import JsonOption, ProgressOption, VerboseOption, exits, settings_from_env
from api.cli.progress import tracking
from api.jsonio import dumps
from api.service.embedded import database_url
from api.service.importer import (
    DEFAULT_ACTOR,
    DEFAULT_BATCH_SIZE,
    FileChanged,
    ImportResult,
    import_file,
)
from api.service.settings import Settings
from ledger.bulk import check_actor
from ledger.errors import LedgerError
from ledger.scoring import get_model

EXIT_IMPORTED = 0
EXIT_BAD_LINES = 1
EXIT_USAGE = 2


def import_json(result: ImportResult, check_only: bool) -> dict[str, Any]:
    return {
        "file": result.file,
        "sha256": result.digest,
        "check_only": check_only,
        "ok": result.bad_count == 0,
        "applications": result.applications,
        "events": result.events,
        "already_present": result.already_present,
        "seconds": round(result.seconds, 3),
        "events_per_second": round(result.events_per_second, 1),
        "bad_count": result.bad_count,
        "bad_lines": [
            {"line": bad.line_number, "message": bad.message} for bad in result.bad_lines
        ],
    }


def report_import(
    result: ImportResult, check_only: bool, out: TextIO, err: TextIO, *, as_json: bool = False
) -> int:
    if as_json:
        out.write(dumps(import_json(result, check_only)).decode() + "\n")
        out.flush()
    for bad in result.bad_lines:
        err.write(f"{result.file}:{bad.line_number}: {bad.message}\n")
    if result.bad_count:
        more = result.bad_count - len(result.bad_lines)
        if more:
            err.write(f"... and {more} more refused line(s)\n")
        err.write(f"lending-ledger import: {result.bad_count} refused line(s); nothing imported\n")
        return EXIT_BAD_LINES
    if as_json:
        return EXIT_IMPORTED
    if check_only:
        out.write(f"lending-ledger import: {result.file}: every line is valid\n")
        return EXIT_IMPORTED
    out.write(
        f"lending-ledger import: {result.applications} application(s), {result.events} "
        f"event(s) in {result.seconds:.1f} s ({result.events_per_second:,.0f} events/s); "
        f"{result.already_present} already recorded by an earlier import of this file\n"
    )
    return EXIT_IMPORTED


def count_lines(path: Path) -> int:
    """Non-blank lines: the applications an import of a valid file records (the bar's total)."""
    with path.open("rb") as file:
        return sum(1 for line in file if line.strip())


@exits
def import_command(
    file: Annotated[Path, typer.Option(help="The JSON Lines file.")],
    actor: Annotated[
        str, typer.Option(help="Who the events name as actor and submitter.")
    ] = DEFAULT_ACTOR,
    batch_size: Annotated[
        int, typer.Option(metavar="N", help="Applications per transaction (at least 1).")
    ] = DEFAULT_BATCH_SIZE,
    check: Annotated[
        bool, typer.Option("--check", help="Check every line, import nothing.")
    ] = False,
    as_json: JsonOption = False,
    progress: ProgressOption = None,
    verbose: VerboseOption = False,
) -> int:
    """Record historical applications from a JSON Lines file.

    One JSON object per line: applicant_id, amount, income, employment_years, optional
    submitted_at (RFC 3339), recorded exactly as POST /lending/apply would, in batches.
    Every line is checked first: if any is refused, each refused line is reported and
    nothing is imported (exit 1). Running the same file again records nothing twice.
    Exit 0 imported (or checked), 1 refused lines or a file that changed, 2 usage error or
    a database that cannot be used.
    """
    settings = settings_from_env(verbose)
    return run_import(
        settings,
        file,
        actor=actor,
        batch_size=batch_size,
        check_only=check,
        as_json=as_json,
        progress=progress,
    )


def run_import(
    settings: Settings,
    path: Path,
    *,
    actor: str = DEFAULT_ACTOR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    check_only: bool = False,
    as_json: bool = False,
    progress: bool | None = None,
) -> int:
    try:
        actor = check_actor(actor)
    except ValueError as error:
        sys.stderr.write(f"lending-ledger import: {error}\n")
        return EXIT_USAGE
    if batch_size < 1:
        sys.stderr.write("lending-ledger import: --batch-size must be at least 1\n")
        return EXIT_USAGE
    if not path.is_file():
        sys.stderr.write(f"lending-ledger import: no such file: {path}\n")
        return EXIT_USAGE
    shown = progress is not False and not check_only
    with database_url(settings.database_url, settings.data_dir) as url:
        try:
            with tracking(
                f"import {path.name}",
                option=progress if shown else False,
                total=count_lines(path) if shown else None,
                unit="applications",
            ) as tracker:
                result = asyncio.run(
                    import_file(
                        url,
                        path,
                        model=get_model(settings.scoring_model),
                        actor=actor,
                        batch_size=batch_size,
                        check_only=check_only,
                        progress=tracker.advance if shown else None,
                    )
                )
        except (FileChanged, LedgerError) as error:
            sys.stderr.write(f"lending-ledger import: {error}\n")
            return EXIT_BAD_LINES
        except (OSError, asyncpg.PostgresError) as error:
            sys.stderr.write(f"lending-ledger import: could not use the database: {error}\n")
            return EXIT_USAGE
    return report_import(result, check_only, sys.stdout, sys.stderr, as_json=as_json)
