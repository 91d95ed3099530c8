"""`lending-ledger verify` on real PostgreSQL: an untouched ledger verifies clean (exit 0);
every change a database superuser could make (disable a trigger, edit a row's data or hash,
delete a row, reorder a stream or the ledger log, edit a read model) is named, with the
stream and its first bad position, and the exit code is 1. Plus the pure parts."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.cli.main import main
from ledger.canonical import GENESIS_HASH
from ledger.chain import hash_of_event
from ledger.errors import LedgerIntegrityError
from ledger.events import RecordedEvent
from ledger.integrity import (
    EXPECTED_TRIGGERS,
    IMMUTABILITY_FUNCTION,
    Finding,
    StreamChains,
    TriggerRow,
    VerifyReport,
    check_triggers,
    contains_float,
    function_body,
    stored_envelope_bytes,
    stored_envelope_hash,
)
from ledger.schema import apply_schema, schema_sql
from ledger.seals import create_seal
from ledger.signing import SigningKey, public_key_pem
from projections.verify import stream_ranges
from tests.conftest import MakeDatabase, with_database
from tests.support.helpers import wait_until_sequenced
from tests.support.workload import Act, Apply, Command, new_run, run_command, service_on

# --- A populated ledger, copied for each test that tampers with it ---

LIVE_APPLY = Apply(9, Decimal(100), Decimal(5000), 1)


@dataclass(frozen=True)
class Template:
    name: str
    server_url: str
    events: int
    streams: int
    applications: int
    history_rows: int


@pytest.fixture(scope="module")
async def template(make_database: MakeDatabase, server_url: str) -> Template:
    url = await make_database()
    async with service_on(url) as service:
        run, submitted = new_run(), list[str]()
        workload: list[Command] = [
            *(Apply(n % 2, Decimal(1000 * (n + 1)), Decimal(52000), n) for n in range(5)),
            Act("withdraw", 0),
            Act("manual-review", 1),
            Act("review-decline", 1),
            Act("agent-action", 2),
        ]
        for command in workload:
            await run_command(service.client, run, command, submitted)
        await wait_until_sequenced(service.pool)
        async with service.pool.acquire() as connection:
            counts = await connection.fetchrow(
                "SELECT (SELECT count(*) FROM events) AS events, "
                "(SELECT count(DISTINCT stream_id) FROM events) AS streams, "
                "(SELECT count(*) FROM loan_applications) AS applications, "
                "(SELECT count(*) FROM application_history) AS history_rows"
            )
    assert counts is not None
    return Template(urlsplit(url).path.lstrip("/"), server_url, **dict(counts))


@pytest.fixture
async def ledger(template: Template) -> AsyncIterator[str]:
    """A copy of the populated ledger (CREATE DATABASE ... TEMPLATE), dropped afterwards."""
    name = f"ledger_verify_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(template.server_url)
    try:
        for attempt in range(50):  # bounded: the template's last sessions may still be ending
            try:
                await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template.name}"')
                break
            except asyncpg.ObjectInUseError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        yield with_database(template.server_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@dataclass(frozen=True)
class Stream:
    stream_id: str
    positions: list[int]  # by stream version, from 1


async def longest_streams(url: str, count: int = 2) -> list[Stream]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT stream_id, array_agg(position ORDER BY stream_version) AS positions "
            "FROM events GROUP BY stream_id ORDER BY count(*) DESC, stream_id LIMIT $1",
            count,
        )
    finally:
        await connection.close()
    return [Stream(row["stream_id"], list(row["positions"])) for row in rows]


async def as_superuser(url: str, *statements: str) -> None:
    """Run statements as a superuser with the user triggers off (replica mode)."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("SET session_replication_role = replica")
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def verify_cli(url: str, monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str]:
    monkeypatch.setenv("DATABASE_URL", url)
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    code = main(["verify", *argv])
    return code, out.getvalue()


async def verify_json(url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict[str, Any]]:
    code, out = await asyncio.to_thread(verify_cli, url, monkeypatch, "--json")
    report = json.loads(out)
    assert isinstance(report, dict)
    return code, report


def findings_of(report: dict[str, Any], check: str) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["check"] == check]


# --- Clean ---


async def test_an_untouched_ledger_verifies_clean(
    template: Template, ledger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, report = await verify_json(ledger, monkeypatch)
    assert code == 0, report
    seals = report["checked"].pop("seals")  # however many the service's sealer made
    assert isinstance(seals, int)
    assert report == {
        "ok": True,
        "checked": {
            "streams": template.streams,
            "events": template.events,
            "log_entries": template.events,
            "triggers": len(EXPECTED_TRIGGERS),
            "applications": template.applications,
            "history_rows": template.history_rows,
        },
        "findings": [],
    }
    code, text = await asyncio.to_thread(verify_cli, ledger, monkeypatch)
    assert code == 0
    assert text.startswith("verify: OK, no findings\n")
    assert f"{template.events} events" in text
    code, text = await asyncio.to_thread(verify_cli, ledger, monkeypatch, "--skip-read-models")
    assert code == 0
    assert "applications" not in text


async def test_appends_while_verify_reads_are_not_findings(
    ledger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verify reads one snapshot: events committed meanwhile (and not yet in the log, or in
    the read models) are simply not seen."""
    async with service_on(ledger) as service:
        stop, writing_started = asyncio.Event(), asyncio.Event()

        async def writer() -> int:
            written = 0
            while not stop.is_set() and written < 200:  # bounded
                await run_command(service.client, "live", LIVE_APPLY, [])
                written += 1
                writing_started.set()
            return written

        writing = asyncio.create_task(writer())
        try:
            async with asyncio.timeout(60):
                await writing_started.wait()
            for _ in range(3):
                code, report = await verify_json(ledger, monkeypatch)
                assert code == 0, report["findings"]
        finally:
            stop.set()
            assert await writing > 0


# --- Tampering, as a database superuser would ---


async def test_a_disabled_or_replica_only_trigger_is_named(
    ledger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await as_superuser(
        ledger,
        "ALTER TABLE events DISABLE TRIGGER events_reject_update_delete",
        "ALTER TABLE ledger_log ENABLE REPLICA TRIGGER ledger_log_reject_truncate",
    )
    code, report = await verify_json(ledger, monkeypatch)
    assert code == 1
    details = sorted(f["detail"] for f in findings_of(report, "triggers"))
    assert details == [
        "trigger events_reject_update_delete on events is disabled",
        "trigger ledger_log_reject_truncate on ledger_log is enabled for replica sessions only",
    ]
    assert report["findings"] == findings_of(report, "triggers")  # nothing else is wrong
    code, text = await asyncio.to_thread(verify_cli, ledger, monkeypatch)
    assert code == 1
    assert "events_reject_update_delete on events is disabled" in text


async def test_a_dropped_trigger_or_a_changed_trigger_function_is_named(
    ledger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await as_superuser(
        ledger,
        "DROP TRIGGER events_reject_truncate ON events",
        "CREATE OR REPLACE FUNCTION ledger_reject_mutation() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END; $$",
    )
    code, report = await verify_json(ledger, monkeypatch)
    assert code == 1
    details = [f["detail"] for f in findings_of(report, "triggers")]
    assert "trigger events_reject_truncate on events is missing" in details
    assert sum("whose body differs from schema.sql" in d for d in details) == 3


Tamper = Callable[[str, Stream], Awaitable[int]]
"""Changes the ledger; returns the first bad position the chain check must name."""


async def edit_data(url: str, stream: Stream) -> int:
    await as_superuser(
        url,
        f'UPDATE events SET data = data || \'{{"note": "forged"}}\' '
        f"WHERE position = {stream.positions[1]}",
    )
    return stream.positions[1]


async def edit_hash(url: str, stream: Stream) -> int:
    await as_superuser(
        url, f"UPDATE events SET hash = sha256('forged') WHERE position = {stream.positions[0]}"
    )
    return stream.positions[0]


async def delete_row(url: str, stream: Stream) -> int:
    await as_superuser(url, f"DELETE FROM events WHERE position = {stream.positions[1]}")
    return stream.positions[2]  # version 3 now follows version 1


async def swap_versions(url: str, stream: Stream) -> int:
    first, second = stream.positions[0], stream.positions[1]
    await as_superuser(
        url,
        f"UPDATE events SET stream_version = 1000 WHERE position = {first}",
        f"UPDATE events SET stream_version = 1 WHERE position = {second}",
        f"UPDATE events SET stream_version = 2 WHERE position = {first}",
    )
    return second  # now version 1, and its prev_hash is not the genesis


async def move_recorded_at(url: str, stream: Stream) -> int:
    await as_superuser(
        url,
        "UPDATE events SET recorded_at = recorded_at - interval '1 day' "
        f"WHERE position = {stream.positions[2]}",
    )
    return stream.positions[2]


async def edit_hashed(url: str, stream: Stream) -> int:
    """The stored canonical bytes alone: the columns and the hash still agree."""
    await as_superuser(
        url,
        "UPDATE events SET hashed = hashed || '\\x20'::bytea "
        f"WHERE position = {stream.positions[1]}",
    )
    return stream.positions[1]


async def edit_data_and_hashed(url: str, stream: Stream) -> int:
    """The data and, to match it, the stored bytes (re-encoded canonically): the hash
    they no longer match is what tells."""
    position = stream.positions[1]
    connection = await asyncpg.connect(url)
    try:
        row = await connection.fetchrow(
            "SELECT stream_id, stream_version, event_id, event_type, schema_version, "
            "data::text AS data, metadata::text AS metadata, prev_hash, "
            "to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS at "
            "FROM events WHERE position = $1",
            position,
        )
    finally:
        await connection.close()
    assert row is not None
    data = {**json.loads(row["data"]), "note": "forged"}
    encoded = stored_envelope_bytes(
        stream_id=row["stream_id"],
        stream_version=row["stream_version"],
        event_id=str(row["event_id"]),
        event_type=row["event_type"],
        schema_version=row["schema_version"],
        data=data,
        metadata=json.loads(row["metadata"]),
        recorded_at=row["at"],
        prev_hash=bytes(row["prev_hash"]),
    )
    await as_superuser(
        url,
        f"UPDATE events SET data = '{json.dumps(data)}'::jsonb, "
        f"hashed = '\\x{encoded.hex()}'::bytea WHERE position = {position}",
    )
    return position


@pytest.mark.parametrize("streaming", [False, True], ids=["set-based", "streaming"])
@pytest.mark.parametrize(
    "tamper",
    [
        edit_data,
        edit_hash,
        delete_row,
        swap_versions,
        move_recorded_at,
        edit_hashed,
        edit_data_and_hashed,
    ],
)
async def test_a_changed_event_is_named_with_its_stream_and_first_bad_position(
    ledger: str, monkeypatch: pytest.MonkeyPatch, tamper: Tamper, streaming: bool
) -> None:
    """Set-based (the events' stored canonical bytes, checked by the database) and
    streaming (every event encoded again in Python, as for a ledger written before
    `events.hashed`) name the same stream and position."""
    if streaming:
        monkeypatch.setattr("projections.verify.STREAMING_FROM_UNHASHED", -1)
    [stream, _] = await longest_streams(ledger)
    first_bad = await tamper(ledger, stream)
    code, report = await verify_json(ledger, monkeypatch)
    assert code == 1
    chain = findings_of(report, "chain")
    assert [(f["stream_id"], f["position"]) for f in chain] == [(stream.stream_id, first_bad)]
    # Whatever else is reported (the log, the read model, seals) is about this stream, its
    # events, or (a seal whose root no longer holds) the seal.
    for finding in report["findings"]:
        assert finding["stream_id"] in (stream.stream_id, None), finding
        if finding["stream_id"] is None and finding["check"] != "seals":
            assert finding["position"] in stream.positions, finding
    code, text = await asyncio.to_thread(verify_cli, ledger, monkeypatch)
    assert code == 1
    assert f"chain      {stream.stream_id} position {first_bad}: version" in text


async def test_every_broken_stream_is_named_once_at_its_first_bad_position(
    ledger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = await longest_streams(ledger)
    await edit_data(ledger, first)  # version 2 ...
    await edit_hash(ledger, replace(first, positions=first.positions[2:]))  # ... and version 3
    await delete_row(ledger, second)
    code, report = await verify_json(ledger, monkeypatch)
    assert code == 1
    chain = sorted((f["stream_id"], f["position"]) for f in findings_of(report, "chain"))
    assert chain == sorted(
        [(first.stream_id, first.positions[1]), (second.stream_id, second.positions[2])]
    )


async def test_a_deleted_last_event_is_named_by_the_log(
    ledger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chain cannot see a stream's last event go; the log (and the read model) can."""
    [stream, _] = await longest_streams(ledger)
    last = stream.positions[-1]
    await as_superuser(ledger, f"DELETE FROM events WHERE position = {last}")
    code, report = await verify_json(ledger, monkeypatch)
    assert code == 1
    assert findings_of(report, "chain") == []
    [missing] = findings_of(report, "log")
    assert missing["position"] == last
    assert "not in the event table" in missing["detail"]
    assert any(f["stream_id"] == stream.stream_id for f in findings_of(report, "read_model"))


async def test_a_log_entry_naming_no_event_is_named_and_never_sealed(
    ledger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the ledger log's FOREIGN KEY to events refused before schema.sql dropped it
    (docs/benchmarks.md, "Issue 12: the database cost of one apply"): without it the insert
    goes through, even as the service, but verify names the entry and no seal covers it."""
    connection = await asyncpg.connect(ledger)
    try:
        async with connection.transaction():
            await connection.execute("SET LOCAL ROLE lending_ledger_app")
            nowhere = await connection.fetchval("SELECT max(position) + 1000 FROM events")
            seq = await connection.fetchval(
                "INSERT INTO ledger_log (seq, position) "
                "SELECT max(seq) + 1, $1 FROM ledger_log RETURNING seq",
                nowhere,
            )
            await connection.execute("UPDATE ledger_cursor SET last_seq = $1", seq)
        # Both ways a sealer checks: the whole log at once, and row by row as it builds.
        for whole_log, refusal in ((True, "no longer exist"), (False, f"{nowhere} .* missing")):
            with pytest.raises(LedgerIntegrityError, match=refusal):
                async with connection.transaction():
                    await create_seal(
                        connection,
                        SigningKey.generate(),
                        lambda: datetime.now(UTC),
                        check_whole_log=whole_log,
                    )
    finally:
        await connection.close()
    code, report = await verify_json(ledger, monkeypatch)
    assert code == 1
    [dangling] = findings_of(report, "log")
    assert dangling["position"] == nowhere
    assert "not in the event table" in dangling["detail"]
    assert findings_of(report, "chain") == []


async def test_the_schema_drops_the_ledger_log_foreign_key_of_an_older_database(
    make_database: MakeDatabase,
) -> None:
    connection = await asyncpg.connect(await make_database())
    try:
        await connection.execute(
            "ALTER TABLE ledger_log ADD CONSTRAINT ledger_log_position_fkey "
            "FOREIGN KEY (position) REFERENCES events (position)"
        )
        for _ in range(2):  # idempotent
            await apply_schema(connection)
            foreign_keys = await connection.fetchval(
                "SELECT count(*) FROM pg_constraint "
                "WHERE conrelid = 'ledger_log'::regclass AND contype = 'f'"
            )
            assert foreign_keys == 0
    finally:
        await connection.close()


async def test_reordered_or_deleted_log_entries_are_named(
    ledger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = await asyncpg.connect(ledger)
    try:
        seq_a, seq_b = 4, 9
        position_a = await connection.fetchval("SELECT position FROM ledger_log WHERE seq = 4")
        position_b = await connection.fetchval("SELECT position FROM ledger_log WHERE seq = 9")
        last_seq = await connection.fetchval("SELECT max(seq) FROM ledger_log")
    finally:
        await connection.close()
    await as_superuser(
        ledger,
        f"UPDATE ledger_log SET position = -1 WHERE seq = {seq_a}",
        f"UPDATE ledger_log SET position = {position_a} WHERE seq = {seq_b}",
        f"UPDATE ledger_log SET position = {position_b} WHERE seq = {seq_a}",
        f"DELETE FROM ledger_log WHERE seq = {last_seq - 1}",
    )
    code, report = await verify_json(ledger, monkeypatch)
    assert code == 1
    details = [f["detail"] for f in findings_of(report, "log")]
    assert any(d.startswith(f"seq {seq_a + 1} ") and "reordered" in d for d in details), details
    assert any(d.startswith(f"seq {seq_b} ") and "reordered" in d for d in details), details
    assert any(d.startswith(f"seq {last_seq} follows seq {last_seq - 2}") for d in details)
    assert findings_of(report, "chain") == []


async def test_an_edited_read_model_is_named(ledger: str, monkeypatch: pytest.MonkeyPatch) -> None:
    [stream, other] = await longest_streams(ledger)
    application = stream.stream_id.removeprefix("loan-application-")
    other_application = other.stream_id.removeprefix("loan-application-")
    await as_superuser(
        ledger,
        f"UPDATE loan_applications SET amount = amount + 1 WHERE application_id = '{application}'",
        f"DELETE FROM application_history WHERE application_id = '{other_application}' "
        "AND stream_version = 2",
        # A copy of a row under a new id: an application without events.
        "INSERT INTO loan_applications SELECT (jsonb_populate_record(NULL::loan_applications,"
        " to_jsonb(l) || jsonb_build_object('application_id', gen_random_uuid()))).*"
        f" FROM loan_applications l WHERE application_id = '{other_application}'",
    )
    code, report = await verify_json(ledger, monkeypatch)
    assert code == 1
    assert findings_of(report, "chain") == []
    read_model = findings_of(report, "read_model")
    assert len(read_model) == 3, read_model
    edited = next(f for f in read_model if f["stream_id"] == stream.stream_id)
    assert edited["position"] == stream.positions[-1]
    assert "state.amount (stored Decimal(" in edited["detail"]
    deleted = next(f for f in read_model if f["stream_id"] == other.stream_id)
    assert "missing versions [2]" in deleted["detail"]
    assert deleted["position"] == other.positions[1]
    assert any("which has no events" in f["detail"] for f in read_model)


# --- The pure parts ---

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    data=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    metadata=st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    version=st.integers(1, 2**31 - 1),
    moment=st.datetimes(
        min_value=datetime(1000, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
    ),
    prev=st.binary(min_size=32, max_size=32),
)
def test_the_stored_envelope_hash_is_the_store_s_hash(
    data: dict[str, Any], metadata: dict[str, Any], version: int, moment: datetime, prev: bytes
) -> None:
    event = RecordedEvent(
        position=1,
        seq=None,
        stream_id="s-1",
        stream_version=version,
        event_id=uuid.uuid4(),
        event_type="Something",
        schema_version=1,
        data=data,
        metadata=metadata,
        recorded_at=moment,
        prev_hash=prev,
        hash=b"",
    )
    assert not contains_float(data)
    stored = stored_envelope_hash(
        stream_id=event.stream_id,
        stream_version=event.stream_version,
        event_id=str(event.event_id),
        event_type=event.event_type,
        schema_version=event.schema_version,
        data=data,
        metadata=metadata,
        recorded_at=moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        prev_hash=prev,
    )
    assert stored == hash_of_event(event)


def test_contains_float_finds_floats_at_any_depth() -> None:
    assert not contains_float({"a": [1, "1.5", {"b": None, "c": True}]})
    assert contains_float({"a": [1, {"b": [2.0]}]})
    assert contains_float(1.5)
    assert not contains_float([])


def test_stream_chains_report_the_first_break_of_each_stream_only() -> None:
    chains = StreamChains()
    chains.begin("a")
    h1, h2 = b"\x01" * 32, b"\x02" * 32
    assert chains.check(10, 1, GENESIS_HASH, h1, h1) is None
    broken = chains.check(11, 2, h1, h2, b"\x03" * 32)
    assert broken == Finding(
        "chain", "a", 11, "version 2: hash does not match the event's contents"
    )
    assert chains.check(12, 3, h2, h1, None, "unreadable") is None  # already broken
    chains.begin("b")
    gap = chains.check(20, 2, GENESIS_HASH, h1, h1)
    assert gap is not None
    assert gap.detail == "version 2: expected stream version 1, found 2"
    chains.begin("c")
    unreadable = chains.check(30, 1, GENESIS_HASH, h1, None, "recorded_at is not a finite time")
    assert unreadable is not None
    assert unreadable.detail == "version 1: recorded_at is not a finite time"
    assert chains.streams == 3


def test_trigger_rules() -> None:
    body = function_body(schema_sql(), IMMUTABILITY_FUNCTION)
    assert body is not None
    assert "RAISE EXCEPTION" in body
    healthy = [
        TriggerRow(table, name, "O", bits, IMMUTABILITY_FUNCTION, body)
        for name, (table, bits) in EXPECTED_TRIGGERS.items()
    ]
    assert check_triggers(healthy, body) == []
    always = [replace(healthy[0], enabled="A"), *healthy[1:]]
    assert check_triggers(always, body) == []
    wrong_events = [replace(healthy[0], type_bits=healthy[0].type_bits & ~16), *healthy[1:]]
    [finding] = check_triggers(wrong_events, body)
    assert "no longer fires" in finding.detail
    other_function = [*healthy[:-1], replace(healthy[-1], function="something_else")]
    [finding] = check_triggers(other_function, body)
    assert "calls something_else()" in finding.detail


def test_the_report_shape() -> None:
    report = VerifyReport(
        checked={"events": 3}, findings=[Finding("log", None, 7, "seq 2 follows seq 0")]
    )
    assert report.to_json() == {
        "ok": False,
        "checked": {"events": 3},
        "findings": [
            {"check": "log", "stream_id": None, "position": 7, "detail": "seq 2 follows seq 0"}
        ],
    }
    text = report.to_text()
    assert text.startswith("verify: 1 finding(s)\n  log        - position 7: seq 2 follows seq 0\n")


async def test_seal_findings_join_the_report(
    ledger: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = SigningKey.generate()
    connection = await asyncpg.connect(ledger)
    try:
        async with connection.transaction():
            seal = await create_seal(connection, key, lambda: datetime.now(UTC))
    finally:
        await connection.close()
    assert seal is not None
    trusted = tmp_path / "trusted.pem"
    trusted.write_text(public_key_pem(key.public_key))
    other = tmp_path / "other.pem"
    other.write_text(public_key_pem(SigningKey.generate().public_key))

    def verify_with(path: Path) -> tuple[int, dict[str, Any]]:
        code, out = verify_cli(ledger, monkeypatch, "--json", "--public-key", str(path))
        return code, json.loads(out)

    code, report = await asyncio.to_thread(verify_with, trusted)
    assert code == 0, report
    assert report["checked"]["seals"] >= 1
    code, report = await asyncio.to_thread(verify_with, other)
    assert code == 1
    assert findings_of(report, "seals")
    assert all("unknown-key" in f["detail"] for f in findings_of(report, "seals"))

    [stream, _] = await longest_streams(ledger)
    await edit_data(ledger, stream)
    code, report = await asyncio.to_thread(verify_with, trusted)
    assert code == 1
    sealed = findings_of(report, "seals")
    assert sealed
    assert all(f["stream_id"] in (stream.stream_id, None) for f in sealed), sealed
    assert any(f["position"] == stream.positions[1] for f in sealed), sealed


async def test_worker_processes_find_the_same_as_one_process(
    ledger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = await longest_streams(ledger)
    await edit_hash(ledger, first)
    application = second.stream_id.removeprefix("loan-application-")
    await as_superuser(
        ledger,
        f"UPDATE loan_applications SET income = income + 1 WHERE application_id = '{application}'",
        # a row without events, so "extra" rows are found by exactly one worker
        "INSERT INTO loan_applications SELECT (jsonb_populate_record(NULL::loan_applications,"
        " to_jsonb(l) || jsonb_build_object('application_id', gen_random_uuid()))).*"
        f" FROM loan_applications l WHERE application_id = '{application}'",
    )

    def verify_with_jobs(jobs: int) -> tuple[int, dict[str, Any]]:
        code, out = verify_cli(ledger, monkeypatch, "--json", "--jobs", str(jobs))
        return code, json.loads(out)

    one = await asyncio.to_thread(verify_with_jobs, 1)
    two = await asyncio.to_thread(verify_with_jobs, 2)
    three = await asyncio.to_thread(verify_with_jobs, 3)
    assert one[0] == 1
    assert len(findings_of(one[1], "read_model")) == 2
    assert one == two == three


async def test_stream_ranges_cover_every_stream_once(ledger: str) -> None:
    connection = await asyncpg.connect(ledger)
    try:
        async with connection.transaction():
            assert await stream_ranges(connection, 1) == [("", None)]
            ranges = await stream_ranges(connection, 3)
            streams = [
                row["stream_id"]
                for row in await connection.fetch(
                    "SELECT DISTINCT stream_id FROM events ORDER BY stream_id"
                )
            ]
            covered = []
            for first, end in ranges:
                covered += [
                    row["stream_id"]
                    for row in await connection.fetch(
                        "SELECT DISTINCT stream_id FROM events WHERE stream_id >= $1 "
                        "AND ($2::text IS NULL OR stream_id < $2) ORDER BY stream_id",
                        first,
                        end,
                    )
                ]
    finally:
        await connection.close()
    assert len(ranges) >= 2
    assert ranges[0][0] == ""
    assert ranges[-1][1] is None
    assert covered == streams
