"""`lending-ledger`: the command line (typer). Serves the API, applies the schema, and
gathers the commands of the other api/cli modules; docs/operations.md documents them all."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from types import FrameType
from typing import Annotated

import typer

from api.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    OUTCOME,
    PROG,
    JsonOption,
    Outcome,
    VerboseOption,
    configure_logging,
    exits,
    fail,
    settings_from_env,
    write_json,
)
from api.cli.export import export_command
from api.cli.importing import import_command
from api.cli.keys import keys_app, prepare_to_serve
from api.cli.maintenance import catch_up_command, rebuild_command, verify_command
from api.cli.rescore import rescore_command
from api.cli.seal import seal_command
from api.service.access import StartupRefused
from api.service.embedded import database_url
from api.service.settings import Settings
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


app = typer.Typer(
    name=PROG,
    help="Event-sourced lending ledger. Uses DATABASE_URL, or an embedded PostgreSQL under "
    "LEDGER_DATA_DIR when DATABASE_URL is unset.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    ctx: typer.Context,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Also log at INFO on stderr (any command; the command's own -v too).",
        ),
    ] = False,
) -> None:
    """Event-sourced lending ledger. Uses DATABASE_URL, or an embedded PostgreSQL under
    LEDGER_DATA_DIR when DATABASE_URL is unset."""
    configure_logging(verbose, serving=ctx.invoked_subcommand == "serve")


class UvicornLogLevel(StrEnum):
    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    DEBUG = "debug"


@app.command("serve")
@exits
def serve_command(
    host: Annotated[
        str | None, typer.Option(help="Bind address (LEDGER_HOST, default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (LEDGER_PORT, default 8000).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (LEDGER_WORKERS, default 1).")
    ] = None,
    log_level: Annotated[
        UvicornLogLevel, typer.Option(help="uvicorn's log level.")
    ] = UvicornLogLevel.INFO,
    verbose: VerboseOption = False,
) -> int:
    """Run the HTTP API (uvicorn). Exit 0 after a clean stop, 1 refused to start."""
    settings = settings_from_env(verbose, serving=True)
    if workers is not None and workers < 1:
        fail("--workers must be at least 1")
        return EXIT_USAGE
    return _serve(settings, host=host, port=port, workers=workers, log_level=log_level.value)


def _serve(
    settings: Settings, *, host: str | None, port: int | None, workers: int | None, log_level: str
) -> int:
    host = host or settings.host
    port = settings.port if port is None else port
    workers = workers or settings.workers
    try:  # here, once, before any worker starts (workers would also create it, race-free)
        load_or_create_signing_key(settings.signing_key_path)
    except SigningKeyError as error:
        fail(f"signing key: {error}")
        return EXIT_USAGE
    started = True  # a SIGINT/SIGTERM ends serving normally, wherever it arrives
    with stop_on_signals(), database_url(settings.database_url, settings.data_dir) as url:
        if settings.database_url is None:
            print(f"lending-ledger: embedded PostgreSQL, data in {settings.data_dir}", flush=True)
        try:  # the embedded database's service role; production's start-up checks
            url = prepare_to_serve(settings, url)
        except StartupRefused as refused:
            print(f"lending-ledger: refusing to start: {refused}", file=sys.stderr, flush=True)
            return EXIT_FAILED
        # Every worker reads its settings from the environment: point them all at the one
        # database this parent process started (or was given).
        os.environ["DATABASE_URL"] = url
        print(
            f"lending-ledger: serving on http://{host}:{port} with {workers} worker(s)", flush=True
        )
        started = run(
            "api.web.app:create_app",
            factory=True,
            sequencer_process=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            timeout_graceful_shutdown=30,
        )
    if not started:
        print("lending-ledger: the server did not start (see the log above)", file=sys.stderr)
        return EXIT_FAILED
    print("lending-ledger: stopped", flush=True)
    return EXIT_OK


async def _migrate(url: str) -> None:
    connection = await connect(url)
    try:
        await apply_schema(connection)
    finally:
        await connection.close()


@app.command("migrate")
@exits
def migrate_command(as_json: JsonOption = False, verbose: VerboseOption = False) -> int:
    """Apply schema.sql (idempotent). With --json: {"schema": path, "applied": true}."""
    settings = settings_from_env(verbose)
    with database_url(settings.database_url, settings.data_dir) as url:
        asyncio.run(_migrate(url))
    if as_json:
        write_json({"schema": str(schema_path()), "applied": True})
    else:
        print(f"lending-ledger: schema applied ({schema_path()})")
    return EXIT_OK


app.add_typer(keys_app)
app.command("seal")(seal_command)
app.command("rebuild")(rebuild_command)
app.command("catch-up")(catch_up_command)
app.command("verify")(verify_command)
app.command("rescore")(rescore_command)
app.command("import")(import_command)
app.command("export")(export_command)

COMMANDS = (
    "serve",
    "migrate",
    "keys",
    "seal",
    "rebuild",
    "catch-up",
    "verify",
    "rescore",
    "import",
    "export",
)
"""Every command, as `--help` lists them (tests/unit/test_cli.py holds the two together)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run `lending-ledger ARGV` (default: sys.argv[1:]) and return the command's exit code.

    Usage errors found by the parser (and --help) raise SystemExit, as argparse did: code 2
    with the message on stderr (0 for --help)."""
    outcome = Outcome()
    token = OUTCOME.set(outcome)
    try:
        typer.main.get_command(app).main(
            args=None if argv is None else list(argv), prog_name=PROG, standalone_mode=True
        )
    except SystemExit:
        if outcome.code is None:
            raise
    finally:
        OUTCOME.reset(token)
    return EXIT_OK if outcome.code is None else outcome.code


if __name__ == "__main__":
    sys.exit(main())
