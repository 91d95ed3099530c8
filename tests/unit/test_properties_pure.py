"""Property tests of the pure invariants: canonical bytes, hash chains, scoring."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.application import SubmitApplication, decide, fold
from ledger.canonical import GENESIS_HASH, canonical_bytes, format_timestamp
from ledger.chain import (
    chain_new_events,
    chain_new_events_encoded,
    hash_of_event,
    verify_stream,
)
from ledger.events import DomainEvent, EventMetadata, NewEvent, RecordedEvent, ScoringInputs
from ledger.scoring import RATIO_V1
from tests.support.strategies import any_money, years

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_canonical_bytes_match_the_documented_stdlib_definition(value: Any) -> None:
    documented = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
    assert canonical_bytes(value) == documented


@pytest.mark.parametrize("value", [1.5, {"a": [0.1]}, float("nan")])
def test_canonical_bytes_refuse_floats(value: Any) -> None:
    with pytest.raises(TypeError, match="float"):
        canonical_bytes(value)


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, Decimal("1.5"), b"x"])
def test_canonical_bytes_refuse_what_they_do_not_define(value: Any) -> None:
    with pytest.raises(TypeError):
        canonical_bytes(value)


def build_stream(events: list[DomainEvent], start: datetime) -> list[RecordedEvent]:
    """Hash a stream exactly as the store does, without a database."""
    stream_id = f"loan-application-{uuid4()}"
    recorded: list[RecordedEvent] = []
    prev = GENESIS_HASH
    for version, event in enumerate(events, start=1):
        event_id = uuid4()
        metadata = {
            "actor": "t",
            "correlation_id": "c",
            "causation_id": None,
            "idempotency_key": None,
        }
        unhashed = RecordedEvent(
            position=version,
            seq=None,
            stream_id=stream_id,
            stream_version=version,
            event_id=event_id,
            event_type=event.event_type,
            schema_version=event.schema_version,
            data=event.to_data(),
            metadata=metadata,
            recorded_at=start + timedelta(microseconds=version),
            prev_hash=prev,
            hash=b"",
        )
        recorded.append(replace(unhashed, hash=hash_of_event(unhashed)))
        prev = recorded[-1].hash
    return recorded


def sample_stream(amount: Decimal, income: Decimal, employment_years: int) -> list[RecordedEvent]:
    command = SubmitApplication(UUID(int=1), "cust_1001", amount, income, employment_years)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return build_stream(decide(None, command, start, RATIO_V1), start)


def tamper(value: Any, choice: int) -> Any:
    """Change one character of one string, or one integer, somewhere inside `value`."""
    if isinstance(value, dict):
        keys = sorted(value)
        key = keys[choice % len(keys)]
        return {**value, key: tamper(value[key], choice // len(keys))}
    if isinstance(value, list) and value:
        index = choice % len(value)
        return [*value[:index], tamper(value[index], choice // len(value)), *value[index + 1 :]]
    if isinstance(value, bool) or value is None or value == []:
        return "tampered"
    if isinstance(value, int):
        return value + 1
    text = str(value)
    index = choice % len(text) if text else 0
    replacement = "1" if text[index : index + 1] != "1" else "2"
    return text[:index] + replacement + text[index + 1 :]


@given(any_money, any_money, years)
def test_untouched_streams_verify(amount: Decimal, income: Decimal, employment_years: int) -> None:
    assert verify_stream(sample_stream(amount, income, employment_years)) is None


@given(any_money, any_money, years, st.integers(0, 2), st.integers(0, 10_000))
def test_changing_any_data_breaks_the_chain_at_that_event(
    amount: Decimal, income: Decimal, employment_years: int, which: int, choice: int
) -> None:
    stream = sample_stream(amount, income, employment_years)
    victim = stream[which]
    changed = tamper(victim.data, choice)
    assert changed != victim.data
    stream[which] = RecordedEvent(**{**_fields(victim), "data": changed})
    broken = verify_stream(stream)
    assert broken is not None
    assert broken.stream_version == victim.stream_version


@given(any_money, any_money, years)
def test_dropping_or_swapping_events_breaks_the_chain(
    amount: Decimal, income: Decimal, employment_years: int
) -> None:
    stream = sample_stream(amount, income, employment_years)
    assert verify_stream([stream[0], stream[2]]) is not None
    assert verify_stream([stream[1], stream[0], stream[2]]) is not None
    assert verify_stream(stream[1:]) is not None


def _fields(event: RecordedEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in RecordedEvent.__slots__}


def exact_ratio_v1(amount: Decimal, income: Decimal, employment_years: int) -> Decimal:
    """The formula in exact rational arithmetic, rounded half-even to cents."""
    value = Fraction(income) * 100 / Fraction(amount) + 5 * employment_years
    scaled = value * 100
    whole, remainder = divmod(scaled.numerator, scaled.denominator)
    half = Fraction(remainder, scaled.denominator)
    if half > Fraction(1, 2) or (half == Fraction(1, 2) and whole % 2 == 1):
        whole += 1
    return Decimal(whole).scaleb(-2)


@settings(max_examples=500)
@given(any_money, any_money, years)
def test_scores_match_the_formula_exactly_and_reproduce(
    amount: Decimal, income: Decimal, employment_years: int
) -> None:
    inputs = ScoringInputs(amount, income, employment_years)
    score = RATIO_V1.score(inputs)
    assert score.risk_score == exact_ratio_v1(amount, income, employment_years)
    assert score.risk_score.as_tuple().exponent == -2
    assert score.decision == ("approved" if score.risk_score >= 80 else "review")
    # Same model version, same recorded inputs: the same score, byte for byte.
    replay = RATIO_V1.score(ScoringInputs.from_data(inputs.to_data()))
    assert str(replay.risk_score) == str(score.risk_score)


@given(any_money, any_money, years)
def test_fold_of_decided_events_matches_the_score(
    amount: Decimal, income: Decimal, employment_years: int
) -> None:
    command = SubmitApplication(UUID(int=7), "cust_1001", amount, income, employment_years)
    state = fold(decide(None, command, datetime(2026, 1, 1, tzinfo=UTC), RATIO_V1))
    assert state is not None
    assert state.risk_score == exact_ratio_v1(amount, income, employment_years)
    assert state.status == ("approved" if state.risk_score >= 80 else "in_review")


@given(
    moment=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-11)), timezone(timedelta(hours=13))]
        ),
    )
)
def test_the_hashed_time_is_the_documented_strftime(moment: datetime) -> None:
    """format_timestamp takes a faster path than the strftime the docs give; same text."""
    expected = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert format_timestamp(moment) == expected


@given(any_money, any_money, years, st.text(max_size=20))
def test_chaining_with_encoded_json_hashes_as_the_plain_envelope_does(
    amount: Decimal, income: Decimal, employment_years: int, actor: str
) -> None:
    """The command path encodes data and metadata once and embeds them in the envelope as
    fragments; the hash must be that of the plain canonical envelope."""
    command = SubmitApplication(uuid4(), "cust_1001", amount, income, employment_years, actor)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    new_events = [
        NewEvent(uuid4(), event, EventMetadata(actor, "c", None, "k"))
        for event in decide(None, command, now, RATIO_V1)
    ]
    chained = chain_new_events_encoded("loan-application-x", 0, GENESIS_HASH, new_events, now)
    assert [c.event for c in chained] == chain_new_events(
        "loan-application-x", 0, GENESIS_HASH, new_events, now
    )
    for item in chained:
        assert hash_of_event(item.event) == item.event.hash
        assert item.data_json == canonical_bytes(item.event.data)
        assert item.metadata_json == canonical_bytes(item.event.metadata)
    assert verify_stream([c.event for c in chained]) is None
    for item in chained:  # the stored bytes are what the hash covers
        assert hashlib.sha256(item.hashed).digest() == item.event.hash
