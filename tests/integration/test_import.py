"""`lending-ledger import` on real PostgreSQL: imported applications are exactly what
`POST /lending/apply` records (events, chains, read models); bad lines are reported with
their numbers and nothing is imported; importing the same file twice records nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.cli.main import main
from api.service.importer import (
    application_events,
    chained_application,
    check_file,
    import_file,
    parse_line,
)
from api.service.settings import Settings
from api.web.app import create_app
from ledger.bulk import application_id_for, correlation_id_for, parse_submitted_at
from ledger.chain import verify_stream
from ledger.copyformat import HEADER, TRAILER, event_row
from ledger.db import connect, connect_for_copy
from ledger.errors import ConcurrencyConflict
from ledger.events import RecordedEvent
from ledger.scoring import RATIO_V1
from ledger.sql import COPY_EVENT_COLUMNS
from ledger.store import append_new_streams
from projections.applications import ApplicationRow
from projections.queries import all_applications, applicant_history
from tests.conftest import FAST_SEQUENCER, MakeDatabase
from tests.integration.test_properties_db import assert_read_models_equal_the_fold
from tests.support.helpers import all_events
from tests.support.strategies import any_money, applicant_ids, years

ACTOR = "anonymous"  # the open-mode actor: what the API records without API keys

APPLICATIONS: list[dict[str, Any]] = [
    {"applicant_id": "cust_1001", "amount": 5000, "income": 90000, "employment_years": 6},
    {"applicant_id": "cust_1002", "amount": "250000.50", "income": 40000, "employment_years": 1},
    {
        "applicant_id": "cust_1001",
        "amount": 1200.75,
        "income": "1500",
        "employment_years": 0,
        "submitted_at": "2024-03-01T09:30:00.123456+02:00",
    },
    {
        "applicant_id": "cust.1003:x",
        "amount": 99999,
        "income": 99999.99,
        "employment_years": 80,
        "submitted_at": "2023-12-31T23:59:59Z",
    },
]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def as_line(application: dict[str, Any]) -> str:
    # Decimal text stays exact: json.dumps writes floats as their shortest repr, which for
    # these literals is the literal itself.
    return json.dumps(application)


async def events_by_stream(url: str) -> dict[str, list[RecordedEvent]]:
    connection = await connect(url)
    try:
        events = await all_events(connection)
    finally:
        await connection.close()
    streams: dict[str, list[RecordedEvent]] = {}
    for event in events:
        streams.setdefault(event.stream_id, []).append(event)
    return streams


@pytest.fixture
async def fresh_url(make_database: MakeDatabase) -> str:
    return await make_database()


@pytest.fixture
async def api_client(fresh_url: str) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(
        Settings(app_env="test"), database_url=fresh_url, sequencer_settings=FAST_SEQUENCER
    )
    async with application.router.lifespan_context(application):
        await application.state.service.wait_ready(30)
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://ledger.test") as client:
            yield client


def _comparable(event: RecordedEvent) -> tuple[Any, ...]:
    """What must be equal between an imported event and the API's for the same input."""
    data = {k: v for k, v in event.data.items() if k != "application_id"}
    metadata = {k: v for k, v in event.metadata.items() if k not in ("correlation_id",)}
    metadata["causation_id"] = metadata["causation_id"] is not None
    return (event.stream_version, event.event_type, event.schema_version, data, metadata)


def _comparable_row(row: ApplicationRow) -> tuple[Any, ...]:
    state = row.state
    return (
        state.applicant_id,
        state.amount,
        state.income,
        state.employment_years,
        state.status,
        state.version,
        state.risk_score,
        state.decision,
        state.scoring_model,
        state.scoring_model_version,
        state.submitted_by,
        state.decided_by,
        state.recommended_outcome,
        state.reason_codes,
        row.in_review_since is not None,
        row.reviewed_at,
    )


async def test_imported_applications_are_what_the_api_records(
    fresh_url: str, api_client: httpx.AsyncClient, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "apps.jsonl", [as_line(a) for a in APPLICATIONS])
    result = await import_file(fresh_url, path, model=RATIO_V1, actor=ACTOR, batch_size=3)
    assert (result.applications, result.events, result.bad_count) == (4, 12, 0)

    api_ids = []
    for application in APPLICATIONS:
        body = {k: v for k, v in application.items() if k != "submitted_at"}
        response = await api_client.post(
            "/lending/apply",
            content=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 200, response.text
        api_ids.append(uuid.UUID(response.json()["application_id"]))

    digest = bytes.fromhex(result.digest)
    streams = await events_by_stream(fresh_url)
    connection = await connect(fresh_url)
    try:
        rows = await all_applications(connection)
    finally:
        await connection.close()
    for line_number, (application, api_id) in enumerate(zip(APPLICATIONS, api_ids, strict=True), 1):
        imported_id = application_id_for(digest, line_number)
        imported = streams[f"loan-application-{imported_id}"]
        recorded = streams[f"loan-application-{api_id}"]
        assert [_comparable(e) for e in imported] == [_comparable(e) for e in recorded]
        assert verify_stream(imported) is None
        assert {e.metadata["correlation_id"] for e in imported} == {
            correlation_id_for(digest, line_number)
        }
        assert all(e.data["application_id"] == str(imported_id) for e in imported)
        if "submitted_at" in application:
            expected = parse_submitted_at(application["submitted_at"], datetime.now(UTC))
            assert {e.recorded_at for e in imported} == {expected}
            assert rows[imported_id].created_at == expected
        assert _comparable_row(rows[imported_id]) == _comparable_row(rows[api_id])


@pytest.mark.parametrize("jobs", [1, 2])
async def test_read_models_equal_the_fold_and_history_orders_by_submission(
    fresh_url: str, tmp_path: Path, jobs: int
) -> None:
    """With jobs=2 the lines are parsed and prepared in two worker processes."""
    old = {"applicant_id": "cust_hist", "amount": 100, "income": 1000, "employment_years": 1}
    lines = [
        as_line({**old, "submitted_at": "2020-01-01T00:00:00Z"}),
        as_line({**old, "amount": 200}),  # no submitted_at: recorded now, so newest
        as_line({**old, "amount": 300, "submitted_at": "2021-06-01T12:00:00-05:00"}),
    ]
    path = write_lines(tmp_path / "hist.jsonl", lines)
    result = await import_file(fresh_url, path, model=RATIO_V1, batch_size=2, jobs=jobs)
    assert result.applications == 3
    connection = await connect(fresh_url)
    try:
        await assert_read_models_equal_the_fold(connection)
        newest_first = await applicant_history(connection, "cust_hist", 10)
    finally:
        await connection.close()
    assert [row.state.amount for row in newest_first] == [
        Decimal("200.00"),
        Decimal("300.00"),
        Decimal("100.00"),
    ]
    assert {row.state.submitted_by for row in newest_first} == {"import"}


BAD_LINES = {
    2: "{not json",
    3: '["an", "array"]',
    4: '{"applicant_id": "cust_1", "amount": 100.123, "income": 1, "employment_years": 1}',
    5: '{"applicant_id": "x", "amount": 100, "income": 1, "employment_years": 1}',
    6: '{"applicant_id": "cust_1", "amount": 100, "income": 1}',
    7: '{"applicant_id": "cust_1", "amount": 100, "income": 1, "employment_years": 1, '
    '"submitted_at": "2024-03-01T09:30:00"}',
    8: '{"applicant_id": "cust_1", "amount": 100, "income": 1, "employment_years": 1, '
    '"submitted_at": "2999-01-01T00:00:00Z"}',
    9: '{"applicant_id": "cust_1", "amount": 100, "income": 1, "employment_years": 1, '
    '"colour": "red"}',
    10: '{"applicant_id": "cust_1", "amount": 100, "amount": 5, "income": 1, '
    '"employment_years": 1}',
    11: '{"applicant_id": "cust_1", "amount": NaN, "income": 1, "employment_years": 1}',
    12: '{"applicant_id": "cust_1", "amount": "1e3", "income": 1, "employment_years": 1}',
    13: '{"applicant_id": "cust_1", "amount": 100, "income": 1, "employment_years": true}',
    14: '{"applicant_id": "cust_1", "amount": 0, "income": 1, "employment_years": 81}',
}


@pytest.mark.parametrize("jobs", [1, 2])
async def test_bad_lines_are_reported_with_their_numbers_and_nothing_is_imported(
    fresh_url: str, tmp_path: Path, jobs: int
) -> None:
    good = as_line(APPLICATIONS[0])
    lines = [good] + [BAD_LINES[n] for n in sorted(BAD_LINES)] + ["", good]
    path = write_lines(tmp_path / "bad.jsonl", lines)
    result = await import_file(fresh_url, path, model=RATIO_V1, jobs=jobs)
    assert result.bad_count == len(BAD_LINES)
    assert [bad.line_number for bad in result.bad_lines] == sorted(BAD_LINES)
    messages = {bad.line_number: bad.message for bad in result.bad_lines}
    assert "not valid JSON" in messages[2]
    assert "JSON object" in messages[3]
    assert "submitted_at" in messages[7]
    assert "future" in messages[8]
    assert "employment_years" in messages[14]
    assert (result.applications, result.events) == (0, 0)
    assert await events_by_stream(fresh_url) == {}


async def test_importing_the_same_file_again_records_nothing_twice(
    fresh_url: str, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "again.jsonl", [as_line(a) for a in APPLICATIONS])
    first = await import_file(fresh_url, path, model=RATIO_V1, batch_size=2)
    second = await import_file(fresh_url, path, model=RATIO_V1, batch_size=3)
    assert (first.applications, first.already_present) == (4, 0)
    assert (second.applications, second.events, second.already_present) == (0, 0, 4)
    streams = await events_by_stream(fresh_url)
    assert len(streams) == 4
    assert sum(len(stream) for stream in streams.values()) == 12


async def cli(argv: list[str]) -> int:
    """`lending-ledger ARGS` in a thread: the command runs its own event loop."""
    return await asyncio.to_thread(main, argv)


async def test_the_command_line(
    fresh_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", fresh_url)
    good = write_lines(tmp_path / "good.jsonl", [as_line(a) for a in APPLICATIONS])
    bad = write_lines(tmp_path / "bad.jsonl", [as_line(APPLICATIONS[0]), BAD_LINES[5]])

    assert await cli(["import", "--file", str(bad)]) == 1
    captured = capsys.readouterr()
    assert f"{bad}:2: " in captured.err
    assert "nothing imported" in captured.err

    assert await cli(["import", "--file", str(good), "--check"]) == 0
    assert "every line is valid" in capsys.readouterr().out
    assert await events_by_stream(fresh_url) == {}

    assert await cli(["import", "--file", str(good), "--actor", "migration:2026"]) == 0
    assert "4 application(s), 12 event(s)" in capsys.readouterr().out
    streams = await events_by_stream(fresh_url)
    assert {e.metadata["actor"] for s in streams.values() for e in s} == {"migration:2026"}

    assert await cli(["import", "--file", str(tmp_path / "missing.jsonl")]) == 2
    assert await cli(["import", "--file", str(good), "--actor", "no spaces"]) == 2
    assert await cli(["import", "--file", str(good), "--batch-size", "0"]) == 2


# --- Pure parts ---


def test_application_ids_derive_from_the_file_and_the_line() -> None:
    digest = bytes(range(32))
    assert application_id_for(digest, 1) == application_id_for(digest, 1)
    assert application_id_for(digest, 1) != application_id_for(digest, 2)
    assert application_id_for(digest, 1) != application_id_for(bytes(32), 1)


def test_submitted_at_is_rfc3339_with_an_offset_and_not_in_the_future() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_submitted_at("2025-06-01T10:00:00+02:00", now) == datetime(
        2025, 6, 1, 8, tzinfo=UTC
    )
    assert parse_submitted_at("2025-06-01t10:00:00.5z", now) == datetime(
        2025, 6, 1, 10, 0, 0, 500000, tzinfo=UTC
    )
    for refused in (
        "2025-06-01T10:00:00",  # no offset
        "2025-06-01 10:00:00Z",  # not RFC 3339's T
        "2025-06-01T10:00:00.1234567Z",  # finer than the ledger records
        "2025-13-01T10:00:00Z",  # no such month
        "2026-01-01T00:00:01Z",  # after `now`
        20250601,
    ):
        with pytest.raises(ValueError):  # noqa: PT011 (the message is the report's, any)
            parse_submitted_at(refused, now)


applications = st.fixed_dictionaries(
    {
        "applicant_id": applicant_ids,
        "amount": any_money,
        "income": any_money,
        "employment_years": years,
    },
    optional={"submitted_at": st.integers(1, 10 * 365 * 86_400)},
)


def _line(application: dict[str, Any], now: datetime) -> bytes:
    document = dict(application)
    if "submitted_at" in document:
        moment = now - timedelta(seconds=document["submitted_at"])
        document["submitted_at"] = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    document["amount"] = orjson.Fragment(str(document["amount"]).encode())
    document["income"] = str(document["income"])
    return orjson.dumps(document)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(applications, min_size=1, max_size=8))
async def test_any_valid_file_imports_whole_with_chains_and_read_models_as_the_fold(
    make_database: MakeDatabase, tmp_path_factory: pytest.TempPathFactory, batch: list[Any]
) -> None:
    url = await make_database()
    now = datetime.now(UTC)
    path = tmp_path_factory.mktemp("prop") / "apps.jsonl"
    path.write_bytes(b"".join(_line(a, now) + b"\n" for a in batch))
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        parse_line(raw, number, now)  # every generated line is valid
    assert check_file(path, now).bad_count == 0
    result = await import_file(url, path, model=RATIO_V1, batch_size=3)
    assert (result.applications, result.events) == (len(batch), 3 * len(batch))
    connection = await connect(url)
    try:
        await assert_read_models_equal_the_fold(connection)
        rows = await all_applications(connection)
    finally:
        await connection.close()
    assert sorted(r.state.applicant_id for r in rows.values()) == sorted(
        a["applicant_id"] for a in batch
    )


async def test_a_stream_begun_meanwhile_is_a_conflict_naming_it(fresh_url: str) -> None:
    now = datetime.now(UTC)
    path_digest = bytes(32)
    parsed = parse_line(as_line(APPLICATIONS[0]).encode(), 1, now)
    events = application_events(parsed, path_digest, RATIO_V1, ACTOR, now)
    connection = await connect(fresh_url)
    try:
        async with connection.transaction():
            stored = await append_new_streams(connection, events)
        assert [e.position for e in stored] == sorted(e.position for e in stored)
        assert verify_stream(stored) is None
        again = application_events(parsed, path_digest, RATIO_V1, ACTOR, now)  # new event ids
        with pytest.raises(ConcurrencyConflict) as conflict:
            async with connection.transaction():
                await append_new_streams(connection, again)
        assert conflict.value.stream_id == events[0].stream_id
    finally:
        await connection.close()


class _RollBack(Exception):
    pass


@pytest.mark.parametrize(
    "recorded_at",
    [
        datetime(2026, 12, 2, 10, 46, 37, 482708, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
        datetime(1970, 1, 1, tzinfo=UTC),
    ],
)
async def test_binary_copy_rows_store_what_asyncpg_would(
    fresh_url: str, recorded_at: datetime
) -> None:
    """The import's workers write the event table's COPY rows themselves
    (ledger.copyformat); the stored rows are those asyncpg's own encoders give the same
    values, times before 2000 and outside UTC included."""
    line = {"applicant_id": "cust_7", "amount": "12.5", "income": 900, "employment_years": 3}
    parsed = parse_line(orjson.dumps(line), 7, datetime.now(UTC))
    chained = chained_application(parsed, bytes(32), RATIO_V1, "actor-ü", recorded_at)
    records = [
        (
            c.event.stream_id,
            c.event.stream_version,
            c.event.event_id,
            c.event.event_type,
            c.event.schema_version,
            c.data_json,
            c.metadata_json,
            c.event.recorded_at,
            c.event.prev_hash,
            c.event.hash,
            c.hashed,
        )
        for c in chained
    ]
    read_back = (
        f"SELECT {', '.join(COPY_EVENT_COLUMNS)} FROM events WHERE stream_id = $1 "
        "ORDER BY stream_version"
    )
    connection = await connect_for_copy(fresh_url)
    stored: list[list[tuple[Any, ...]]] = []

    async def store(write: Callable[[], Awaitable[object]]) -> None:
        """Write, read the rows back, roll back (the next write stores the same ids)."""
        with contextlib.suppress(_RollBack):
            async with connection.transaction():
                await write()
                rows = await connection.fetch(read_back, chained[0].event.stream_id)
                stored.append([tuple(row) for row in rows])
                raise _RollBack

    try:
        await store(
            lambda: connection.copy_records_to_table(
                "events", records=records, columns=COPY_EVENT_COLUMNS
            )
        )
        await store(
            lambda: connection.copy_to_table(
                "events",
                source=io.BytesIO(HEADER + b"".join(event_row(*r) for r in records) + TRAILER),
                columns=COPY_EVENT_COLUMNS,
                format="binary",
            )
        )
    finally:
        await connection.close()
    assert len(stored[0]) == 3
    assert stored[1] == stored[0]
