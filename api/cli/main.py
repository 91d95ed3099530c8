"""`lending-ledger`: serve the API, apply the schema."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from api.cli.export import add_export_parser, run_export
from api.cli.importing import add_import_parser, run_import
from api.cli.keys import add_keys_parser, prepare_to_serve, run_keys
from api.cli.maintenance import add_maintenance_parsers, run_catch_up, run_rebuild, run_verify
from api.cli.rescore import add_rescore_parser, run_rescore
from api.cli.seal import add_seal_parser, run_seal
from api.service.access import StartupRefused
from api.service.embedded import database_url
from api.service.settings import ConfigurationError, Settings
from api.web.server import run
from ledger.db import connect
from ledger.schema import apply_schema, schema_path
from ledger.signing import SigningKeyError, load_or_create_signing_key


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived: unwind, stopping what this process started."""


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn the first SIGINT/SIGTERM into StopRequested; ignore repeats while stopping.

    uvicorn drains in-flight requests on these signals, then restores the previous
    handlers (these) and re-raises the signal. Left to the default handler, that would end
    the process before the embedded database is stopped.
    """
    stopping = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise StopRequested(signal.Signals(signum).name)

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, request_stop) for sig in handled}
    try:
        yield
    except StopRequested:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    workers = args.workers or settings.workers
    try:  # here, once, before any worker starts (workers would also create it, race-free)
        load_or_create_signing_key(settings.signing_key_path)
    except SigningKeyError as error:
        print(f"lending-ledger: signing key: {error}", file=sys.stderr)
        return 2
    started = True  # a SIGINT/SIGTERM ends serving normally, wherever it arrives
    with stop_on_signals(), database_url(settings.database_url, settings.data_dir) as url:
        if settings.database_url is None:
            print(f"lending-ledger: embedded PostgreSQL, data in {settings.data_dir}", flush=True)
        try:  # the embedded database's service role; production's start-up checks
            url = prepare_to_serve(settings, url)
        except StartupRefused as refused:
            print(f"lending-ledger: refusing to start: {refused}", file=sys.stderr, flush=True)
            return 1
        # Every worker reads its settings from the environment: point them all at the one
        # database this parent process started (or was given).
        os.environ["DATABASE_URL"] = url
        print(
            f"lending-ledger: serving on http://{host}:{port} with {workers} worker(s)", flush=True
        )
        started = run(
            "api.web.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=args.log_level,
            timeout_graceful_shutdown=30,
        )
    if not started:
        print("lending-ledger: the server did not start (see the log above)", file=sys.stderr)
        return 1
    print("lending-ledger: stopped", flush=True)
    return 0


async def _migrate(url: str) -> None:
    connection = await connect(url)
    try:
        await apply_schema(connection)
    finally:
        await connection.close()


def _run_migrate(settings: Settings) -> int:
    with database_url(settings.database_url, settings.data_dir) as url:
        asyncio.run(_migrate(url))
    print(f"lending-ledger: schema applied ({schema_path()})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lending-ledger",
        description="Event-sourced lending ledger. Uses DATABASE_URL, or an embedded "
        "PostgreSQL under LEDGER_DATA_DIR when DATABASE_URL is unset.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", help="bind address (LEDGER_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (LEDGER_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (LEDGER_WORKERS, default 1)")
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    commands.add_parser("migrate", help="apply schema.sql (idempotent)")
    add_keys_parser(commands)
    add_rescore_parser(commands)
    add_export_parser(commands)
    add_import_parser(commands)
    add_seal_parser(commands)
    add_maintenance_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
    except ConfigurationError as error:
        print(f"lending-ledger: configuration error: {error}", file=sys.stderr)
        return 2
    if args.command == "serve":
        if args.workers is not None and args.workers < 1:
            print("lending-ledger: --workers must be at least 1", file=sys.stderr)
            return 2
        return _serve(settings, args)
    if args.command == "keys":
        return run_keys(settings, args)
    if args.command == "rescore":
        return run_rescore(settings, args)
    if args.command == "export":
        return run_export(settings, args)
    if args.command == "seal":
        return run_seal(settings, args)
    if args.command == "import":
        return run_import(settings, args)
    if args.command == "rebuild":
        return run_rebuild(settings, args)
    if args.command == "catch-up":
        return run_catch_up(settings, args)
    if args.command == "verify":
        return run_verify(settings, args)
    return _run_migrate(settings)


if __name__ == "__main__":
    sys.exit(main())
