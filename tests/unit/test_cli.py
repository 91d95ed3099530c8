"""The command line without a database: --help lists every command, usage errors exit 2
with a message on stderr before any database is touched, `main()` returns exit codes
(and raises SystemExit for parser errors, as argparse did), and the progress display
picks the rich bar, plain lines or nothing as documented (docs/operations.md)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli.main import COMMANDS, app, main
from api.cli.progress import shows_bar, tracking

# Any attempt to reach a database fails at once: these tests must stop before one.
NO_DATABASE = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "LEDGER_PORT": None}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env=NO_DATABASE)


def test_help_lists_every_command(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert f" {command} " in result.stdout, command
    keys = runner.invoke(app, ["keys", "--help"])
    assert keys.exit_code == 0
    for action in ("create", "list", "revoke"):
        assert f" {action} " in keys.stdout
    for command in COMMANDS:
        if command != "keys":
            assert runner.invoke(app, [command, "--help"]).exit_code == 0, command


@pytest.mark.parametrize(
    "command",
    ["keys create", "keys list", "keys revoke", "seal", "rebuild", "catch-up", "verify",
     "rescore", "import", "migrate"],
)  # fmt: skip
def test_every_reporting_command_offers_json(runner: CliRunner, command: str) -> None:
    assert "--json" in runner.invoke(app, [*command.split(), "--help"]).stdout


@pytest.mark.parametrize("command", ["rebuild", "catch-up", "verify", "rescore", "import"])
def test_every_long_command_offers_progress_and_every_command_verbose(
    runner: CliRunner, command: str
) -> None:
    shown = runner.invoke(app, [command, "--help"]).stdout
    assert "--progress" in shown
    assert "--no-progress" in shown
    assert "--verbose" in shown


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["no-such-command"], "No such command"),
        (["keys", "create", "--name", "x"], "--role"),
        (["keys", "create", "--role", "root", "--name", "x"], "root"),
        (["keys", "revoke"], "ID"),
        (["verify", "--jobs", "many"], "--jobs"),
        (["verify", "--jobs", "65"], "--jobs must be from 0 to 64"),
        (["rebuild", "--projection", "nope"], "no projection 'nope'"),
        (["rebuild", "--batch-size", "0"], "--batch-size must be from 1 to 100000"),
        (["rebuild", "--lock-timeout", "0"], "--lock-timeout"),
        (["catch-up", "--projection", "applications"], "use `lending-ledger rebuild`"),
        (["rescore"], "exactly one of --all and --application"),
        (["rescore", "--all", "--application", "x"], "exactly one of --all and --application"),
        (["rescore", "--application", "not-a-uuid"], "not an application id"),
        (["import"], "--file"),
        (["import", "--file", "/nonexistent/a.jsonl"], "no such file"),
        (["import", "--file", "/nonexistent/a.jsonl", "--actor", "no spaces"], "actor"),
        (["export", "--application", "not-a-uuid"], "not an application id"),
        (["export", "--application", "x", "--format", "pdf"], "--format"),
        (["serve", "--workers", "0"], "--workers must be at least 1"),
        (["serve", "--log-level", "loud"], "--log-level"),
    ],
)
def test_usage_errors_exit_2_with_a_message_on_stderr(
    runner: CliRunner, argv: list[str], message: str
) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in result.stderr, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("argv", [[], ["keys"]])
def test_no_command_prints_the_help_and_exits_2(runner: CliRunner, argv: list[str]) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert "Usage" in result.stdout


def test_a_configuration_error_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(app, ["migrate"], env={"LEDGER_PORT": "not-a-port"})
    assert result.exit_code == 2
    assert "configuration error" in result.stderr
    assert "LEDGER_PORT" in result.stderr


def test_main_returns_exit_codes_and_raises_for_parser_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """For Python callers (the tests among them): a command that ran returns its code,
    whatever it is; the parser's own errors and --help end in SystemExit, like argparse."""
    for name, value in NO_DATABASE.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert main(["rescore"]) == 2
    assert main(["rebuild", "--projection", "nope"]) == 2
    with pytest.raises(SystemExit) as unknown:
        main(["no-such-command"])
    assert unknown.value.code == 2
    with pytest.raises(SystemExit) as helped:
        main(["--help"])
    assert helped.value.code == 0
    assert "Usage" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "--json"],
        ["rescore", "--all", "--json"],
        ["export", "--application", "640dcd80-1d93-4552-bcd3-084dae0f0d51"],
    ],
)
def test_a_database_that_cannot_be_read_exits_2(runner: CliRunner, argv: list[str]) -> None:
    result = runner.invoke(app, [*argv, "--no-progress"] if argv[0] != "export" else argv)
    assert result.exit_code == 2, result.stderr
    assert "could not read the database" in result.stderr
    assert result.stdout == ""


def test_import_of_a_file_that_does_not_exist_is_a_usage_error(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["import", "--file", str(tmp_path / "none.jsonl"), "--json"])
    assert (result.exit_code, result.stdout) == (2, "")


# --- The progress display ---


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_rich_bar_on_a_terminal_or_when_forced() -> None:
    assert shows_bar(None, Terminal())
    assert not shows_bar(None, io.StringIO())
    assert shows_bar(True, io.StringIO())
    assert not shows_bar(False, Terminal())
    stream = io.StringIO()
    with tracking("verify", option=True, total=400, stream=stream) as tracker:
        tracker.advance(100)
        tracker.advance(300)
    drawn = stream.getvalue()
    assert "verify" in drawn
    assert "400/400" in drawn
    assert "events/s" in drawn
    assert "ETA" in drawn
    assert "\x1b[" in drawn  # drawn for a terminal: forced


def test_off_a_terminal_progress_is_plain_lines_and_with_no_progress_nothing() -> None:
    stream = io.StringIO()
    with tracking("import a.jsonl", option=None, total=10, unit="applications", stream=stream) as t:
        t.advance(4)
        t.advance(6)
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("import a.jsonl [")
    assert lines[-1].endswith("done")
    assert "10/10 applications" in lines[-1]
    assert "applications/s" in lines[-1]
    assert "\r" not in stream.getvalue()
    assert "\x1b[" not in stream.getvalue()

    silent = Terminal()
    with tracking("verify", option=False, total=10, stream=silent) as quiet:
        quiet.advance(10)
    assert silent.getvalue() == ""
    assert quiet.done == 10


def test_a_total_that_grows_and_work_beyond_the_total_still_end_at_done() -> None:
    stream = io.StringIO()
    with tracking("rebuild applications", option=None, stream=stream) as tracker:
        tracker.update(5, 10)
        tracker.update(12, 11)  # appends meanwhile: done passes the total it was told
    last = stream.getvalue().splitlines()[-1]
    assert "12/12 events" in last
    assert last.endswith("done")
