"""The set-based rebuild (projections/sql.py, FOLD_LOG_INTO) against the Python fold, the
reference: arbitrary event histories written straight into the event table, with every
stored schema version (v1 events are upcast), data the SQL leaves to the Python fold,
recorded times in any order, streams interleaved in the log, and the build split over one
to three connections."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.application import STREAM_PREFIX
from ledger.canonical import GENESIS_HASH
from ledger.chain import hash_of_event
from ledger.db import Connection, connect
from ledger.events import RecordedEvent
from ledger.sequencer import sequence_all
from ledger.store import append_new_streams
from projections import sql
from projections.applications import ApplicationsProjector
from projections.rebuild import rebuild
from tests.conftest import MakeDatabase
from tests.integration.test_properties_db import assert_read_models_equal_the_fold
from tests.support.helpers import all_events

APPLICATIONS = ApplicationsProjector()
BASE_TIME = datetime(2024, 1, 1, tzinfo=UTC)

decimals = st.one_of(
    st.integers(1, 10**12).map(lambda cents: f"{cents // 100}.{cents % 100:02d}"),
    st.integers(0, 10_000).map(str),
    # not in the form str(Decimal) writes back: the SQL leaves these to the Python fold
    st.sampled_from(["007.50", "1E+3", "0.0000001"]),
)
actors = st.sampled_from(["agent-a", "analyst-b", "policy:ratio-v1", "ünïcode-ß"])
texts = st.text(max_size=12).filter(lambda text: "\x00" not in text)


def _submitted(application_id: str, version: int) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, Any] = {
        "application_id": st.just(application_id),
        "applicant_id": st.sampled_from(["cust_1", "cust_2"]),
        "amount": decimals,
        "income": decimals,
        "employment_years": st.integers(0, 80),
    }
    if version == 2:
        fields["submitted_by"] = actors
    return st.fixed_dictionaries(fields)


def _later(application_id: str) -> st.SearchStrategy[tuple[str, int, dict[str, Any]]]:
    app = st.just(application_id)
    scored = st.fixed_dictionaries(
        {
            "application_id": app,
            "model_name": st.sampled_from(["ratio", "scorecard"]),
            "model_version": st.sampled_from(["v1", "v2"]),
            "model_fingerprint": st.just("sha256:abc"),
            "inputs": st.fixed_dictionaries(
                {"amount": decimals, "income": decimals, "employment_years": st.integers(0, 9)}
            ),
            "risk_score": decimals,
            "reason_codes": st.lists(st.sampled_from(["R1", "R2", "R3"]), max_size=2),
        }
    )
    decided_v1 = {
        "application_id": app,
        "decision": st.sampled_from(["approved", "review"]),
        "decided_by": actors,
        "rule": texts,
    }
    decided_v2 = {
        **decided_v1,
        "recommended_outcome": st.sampled_from([None, "approved", "declined"]),
    }
    reviewed = st.fixed_dictionaries(
        {
            "application_id": app,
            "outcome": st.sampled_from(["approved", "declined"]),
            "reviewer": actors,
            "reason_codes": st.lists(
                st.fixed_dictionaries({"code": st.just("R1"), "text": texts}), max_size=2
            ),
            "justification": texts,
            "catalogue": st.just("ratio-v1"),
        }
    )
    manual = st.fixed_dictionaries({"application_id": app, "requested_by": actors, "reason": texts})
    withdrawn = st.fixed_dictionaries(
        {
            "application_id": app,
            "withdrawn_by": actors,
            "channel": st.sampled_from(["applicant", "analyst"]),
            "reason": texts,
        }
    )
    agent = st.fixed_dictionaries(
        {
            "application_id": app,
            "agent_id": actors,
            "model_name": texts,
            "prompt": st.one_of(st.none(), texts),
            "prompt_sha256": st.just("0" * 64),
            "prompt_ref": st.one_of(st.none(), texts),
            "output": texts,
            "action": st.sampled_from(["manual_review", "other"]),
            "rationale": texts,
        }
    )
    return st.one_of(
        scored.map(lambda d: ("ApplicationScored", 1, d)),
        st.fixed_dictionaries(decided_v1).map(lambda d: ("ApplicationDecided", 1, d)),
        st.fixed_dictionaries(decided_v2).map(lambda d: ("ApplicationDecided", 2, d)),
        manual.map(lambda d: ("ManualReviewRequested", 1, d)),
        reviewed.map(lambda d: ("ApplicationReviewed", 1, d)),
        withdrawn.map(lambda d: ("ApplicationWithdrawn", 1, d)),
        agent.map(lambda d: ("AgentActionRecorded", 1, d)),
    )


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, int, dict[str, Any]]]:
    application_id = "to be assigned"  # by `recorded`: fresh for every example
    version = draw(st.sampled_from([1, 2]))
    first = ("ApplicationSubmitted", version, draw(_submitted(application_id, version)))
    return [first, *draw(st.lists(_later(application_id), max_size=6))]


def recorded(
    stream: list[tuple[str, int, dict[str, Any]]], offsets: list[int]
) -> list[RecordedEvent]:
    application_id = str(uuid.uuid4())
    events, prev_hash = [], GENESIS_HASH
    for version, ((event_type, schema_version, data), offset) in enumerate(
        zip(stream, itertools.cycle(offsets), strict=False), start=1
    ):
        event = RecordedEvent(
            position=0,
            seq=None,
            stream_id=f"{STREAM_PREFIX}{application_id}",
            stream_version=version,
            event_id=uuid.uuid4(),
            event_type=event_type,
            schema_version=schema_version,
            data={**data, "application_id": application_id},
            metadata={"actor": "test", "correlation_id": "c"},
            recorded_at=BASE_TIME + timedelta(seconds=offset),
            prev_hash=prev_hash,
            hash=b"",
        )
        prev_hash = hash_of_event(event)
        events.append(replace(event, hash=prev_hash))
    return events


@pytest.fixture(scope="module")
async def ledger_url(make_database: MakeDatabase) -> str:
    return await make_database()


@pytest.fixture(scope="module")
async def ledger(ledger_url: str) -> AsyncIterator[Connection]:
    connection = await connect(ledger_url)
    yield connection
    await connection.close()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    streams=st.lists(histories(), min_size=1, max_size=5),
    offsets=st.lists(st.integers(-5000, 5000), min_size=1, max_size=4),
    batch_size=st.integers(1, 3),
    interleave=st.booleans(),
    jobs=st.integers(1, 3),
)
async def test_the_set_based_rebuild_equals_the_python_fold(
    ledger: Connection,
    ledger_url: str,
    streams: list[list[tuple[str, int, dict[str, Any]]]],
    offsets: list[int],
    batch_size: int,
    interleave: bool,
    jobs: int,
) -> None:
    chained = [recorded(stream, offsets) for stream in streams]
    if interleave:
        # Each stream's first event in one transaction, the rest in a later one: the log
        # interleaves the streams.
        async with ledger.transaction():
            await append_new_streams(ledger, [stream[0] for stream in chained])
        async with ledger.transaction():
            await append_new_streams(ledger, [event for stream in chained for event in stream[1:]])
    else:
        async with ledger.transaction():
            await append_new_streams(ledger, [event for stream in chained for event in stream])
    await sequence_all(ledger)
    # The streams the SQL leaves are folded by `apply` in batches of batch_size events, so
    # they straddle batches; the bulk build is split over `jobs` connections.

    async def open_connection() -> Connection:
        return await connect(ledger_url)

    await rebuild(
        ledger, APPLICATIONS, batch_size=batch_size, open_connection=open_connection, jobs=jobs
    )
    await assert_read_models_equal_the_fold(ledger)


async def test_the_sql_leaves_unusual_data_to_the_python_fold(ledger: Connection) -> None:
    stream = [
        (
            "ApplicationSubmitted",
            2,
            {
                "application_id": str(uuid.uuid4()),
                "applicant_id": "cust_odd",
                "amount": "007.50",  # Decimal reads it; str(Decimal) writes "7.50"
                "income": "100",
                "employment_years": 3,
                "submitted_by": "x",
            },
        )
    ]
    plain = [("ApplicationSubmitted", 1, {**stream[0][2], "amount": "7.50"})]
    events = recorded(stream, [0])
    plain_events = recorded(plain, [0])
    async with ledger.transaction():
        await append_new_streams(ledger, [*events, *plain_events])
    await sequence_all(ledger)
    cursor = await ledger.fetchrow(sql.SELECT_CURSOR)
    assert cursor is not None
    left = await ledger.fetchval(sql.UNFOLDABLE_IN_LOG, STREAM_PREFIX, cursor[0], cursor[1], 1, 0)
    assert events[0].stream_id in left
    assert plain_events[0].stream_id not in left
    await rebuild(ledger, APPLICATIONS)
    await assert_read_models_equal_the_fold(ledger)
    assert len(await all_events(ledger)) >= 1


async def test_a_missing_field_leaves_the_stream_to_the_python_fold(ledger: Connection) -> None:
    """A field's check on a missing field is NULL, not false; the stream must still be left
    to Python (whose decoder refuses it), never folded by the SQL with a NULL in its row."""
    submitted = (
        "ApplicationSubmitted",
        2,
        {
            "applicant_id": "cust_missing",
            "amount": "100.00",
            "income": "900.00",
            "employment_years": 2,
            "submitted_by": "x",
        },
    )
    decided = {"decision": "review", "decided_by": "rules", "rule": "r"}
    without = {key: value for key, value in decided.items() if key != "decided_by"}
    broken = recorded([submitted, ("ApplicationDecided", 1, without)], [0])
    whole = recorded([submitted, ("ApplicationDecided", 1, decided)], [0])
    async with ledger.transaction():
        await append_new_streams(ledger, [*broken, *whole])
    await sequence_all(ledger)
    cursor = await ledger.fetchrow(sql.SELECT_CURSOR)
    assert cursor is not None
    left = await ledger.fetchval(sql.UNFOLDABLE_IN_LOG, STREAM_PREFIX, cursor[0], cursor[1], 1, 0)
    assert broken[0].stream_id in left
    assert whole[0].stream_id not in left
