"""`lending-ledger import --file F.jsonl`: historical applications, recorded as events
(api/service/importer.py does the work).

Exit codes: 0 imported (or checked, with --check), 1 the file has refused lines (nothing
imported) or changed during the import, 2 a usage error (no such file, a bad --actor or
--batch-size) or a database that cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TextIO

import asyncpg

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


def add_import_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "import",
        help="record historical applications from a JSON Lines file",
        description="Record historical applications (one JSON object per line: applicant_id, "
        "amount, income, employment_years, optional submitted_at in RFC 3339) exactly as "
        "POST /lending/apply would, in batches. Every line is checked first: if any is "
        "refused, each refused line is reported and nothing is imported (exit 1). Running "
        "the same file again records nothing twice.",
    )
    parser.add_argument("--file", required=True, type=Path, help="the JSON Lines file")
    parser.add_argument(
        "--actor",
        default=DEFAULT_ACTOR,
        help=f"who the events name as actor and submitter (default {DEFAULT_ACTOR!r})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"applications per transaction (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--check", action="store_true", help="check every line, import nothing")


def report_import(result: ImportResult, check_only: bool, out: TextIO, err: TextIO) -> int:
    for bad in result.bad_lines:
        err.write(f"{result.file}:{bad.line_number}: {bad.message}\n")
    if result.bad_count:
        more = result.bad_count - len(result.bad_lines)
        if more:
            err.write(f"... and {more} more refused line(s)\n")
        err.write(f"lending-ledger import: {result.bad_count} refused line(s); nothing imported\n")
        return EXIT_BAD_LINES
    if check_only:
        out.write(f"lending-ledger import: {result.file}: every line is valid\n")
        return EXIT_IMPORTED
    out.write(
        f"lending-ledger import: {result.applications} application(s), {result.events} "
        f"event(s) in {result.seconds:.1f} s ({result.events_per_second:,.0f} events/s); "
        f"{result.already_present} already recorded by an earlier import of this file\n"
    )
    return EXIT_IMPORTED


def run_import(settings: Settings, args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        actor = check_actor(args.actor)
    except ValueError as error:
        sys.stderr.write(f"lending-ledger import: {error}\n")
        return EXIT_USAGE
    if args.batch_size < 1:
        sys.stderr.write("lending-ledger import: --batch-size must be at least 1\n")
        return EXIT_USAGE
    if not path.is_file():
        sys.stderr.write(f"lending-ledger import: no such file: {path}\n")
        return EXIT_USAGE
    with database_url(settings.database_url, settings.data_dir) as url:
        try:
            result = asyncio.run(
                import_file(
                    url,
                    path,
                    model=get_model(settings.scoring_model),
                    actor=actor,
                    batch_size=args.batch_size,
                    check_only=args.check,
                )
            )
        except (FileChanged, LedgerError) as error:
            sys.stderr.write(f"lending-ledger import: {error}\n")
            return EXIT_BAD_LINES
        except (OSError, asyncpg.PostgresError) as error:
            sys.stderr.write(f"lending-ledger import: could not use the database: {error}\n")
            return EXIT_USAGE
    return report_import(result, args.check, sys.stdout, sys.stderr)
