"""Fast unit tests of the pure parts: rules, scoring, decide/evolve, registry."""

from __future__ import annotations

import decimal
from datetime import UTC, datetime
from decimal import Decimal
from uuid import uuid4

import pytest

from ledger.application import (
    STATUS_APPROVED,
    STATUS_IN_REVIEW,
    SubmitApplication,
    check_applicant_id,
    check_employment_years,
    check_money,
    decide,
    evolve,
    fold,
)
from ledger.errors import InvalidCommand, UnknownEventType
from ledger.events import (
    REGISTRY,
    UNKNOWN_ACTOR,
    ApplicationDecided,
    ApplicationScored,
    ApplicationSubmitted,
    EventRegistry,
    ScoringInputs,
)
from ledger.scoring import RATIO_V1, RatioModel, get_model

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def submit(amount: str = "5000", income: str = "90000", years: int = 6) -> SubmitApplication:
    return SubmitApplication(uuid4(), "cust_1001", Decimal(amount), Decimal(income), years)


def test_ratio_v1_scores_the_readme_example() -> None:
    score = RATIO_V1.score(ScoringInputs(Decimal("5000"), Decimal("90000"), 6))
    assert score.risk_score == Decimal("1830.00")
    assert str(score.risk_score) == "1830.00"
    assert score.decision == "approved"


@pytest.mark.parametrize(
    ("amount", "income", "years", "expected", "decision"),
    [
        ("100000", "50000", 2, "60.00", "review"),
        ("100000", "70000", 2, "80.00", "approved"),  # the threshold itself approves
        ("100000", "69990", 2, "79.99", "review"),
        ("100000", "69999.99", 2, "80.00", "approved"),  # 79.99999 rounds up to 80.00
        ("3", "1", 0, "33.33", "review"),  # 33.333... rounds down
        ("8", "1", 0, "12.50", "review"),
        ("0.01", "9999999999.99", 80, "100000000000300.00", "approved"),
        ("9999999999.99", "0.01", 0, "0.00", "review"),
    ],
)
def test_ratio_v1_formula(
    amount: str, income: str, years: int, expected: str, decision: str
) -> None:
    score = RATIO_V1.score(ScoringInputs(Decimal(amount), Decimal(income), years))
    assert str(score.risk_score) == expected
    assert score.decision == decision


def test_rounding_is_half_even_on_the_second_place() -> None:
    # income*100/amount = 0.125 -> 0.12 (half to even), 0.375 -> 0.38
    assert str(RATIO_V1.score(ScoringInputs(Decimal("800"), Decimal("1"), 0)).risk_score) == "0.12"
    assert str(RATIO_V1.score(ScoringInputs(Decimal("800"), Decimal("3"), 0)).risk_score) == "0.38"


def test_scores_ignore_the_process_decimal_context() -> None:
    inputs = ScoringInputs(Decimal("3"), Decimal("1"), 1)
    expected = RATIO_V1.score(inputs)
    with decimal.localcontext() as context:
        context.prec = 3
        context.rounding = decimal.ROUND_UP
        assert RATIO_V1.score(inputs) == expected


def test_fingerprint_changes_with_parameters_not_with_instances() -> None:
    assert RatioModel().fingerprint == RATIO_V1.fingerprint
    assert RATIO_V1.fingerprint.startswith("sha256:")
    assert RatioModel(approve_at_or_above=Decimal(81)).fingerprint != RATIO_V1.fingerprint


def test_model_registry() -> None:
    assert get_model("ratio-v1") is RATIO_V1
    with pytest.raises(ValueError, match="unknown scoring model"):
        get_model("ratio-v9")


@pytest.mark.parametrize("value", ["abc", "cust_1001", "a.b:c-d_e", "x" * 64])
def test_valid_applicant_ids(value: str) -> None:
    assert check_applicant_id(value) == value


@pytest.mark.parametrize("value", ["ab", "x" * 65, "a b", "a/b", "../x", "é" * 5, "abc\x00"])
def test_invalid_applicant_ids(value: str) -> None:
    with pytest.raises(ValueError, match="3 to 64"):
        check_applicant_id(value)


@pytest.mark.parametrize(
    ("value", "normalised"),
    [
        ("5000", "5000.00"),
        ("5000.1", "5000.10"),
        ("0.01", "0.01"),
        ("1E+3", "1000.00"),
        ("9999999999.99", "9999999999.99"),
        ("5000.100", "5000.10"),
    ],
)
def test_money_is_normalised_to_cents(value: str, normalised: str) -> None:
    assert str(check_money(Decimal(value))) == normalised


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "greater than 0"),
        ("-1", "greater than 0"),
        ("-0", "greater than 0"),
        ("0.001", "2 decimal places"),
        ("1.005", "2 decimal places"),
        ("1E-400", "2 decimal places"),
        ("10000000000", "below"),
        ("1E+309", "below"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
        ("-Infinity", "finite"),
    ],
)
def test_invalid_money(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_money(Decimal(value))


@pytest.mark.parametrize("value", [-1, 81, 1000])
def test_invalid_employment_years(value: int) -> None:
    with pytest.raises(ValueError, match="0 to 80"):
        check_employment_years(value)


def test_decide_emits_submitted_scored_decided() -> None:
    command = submit()
    events = decide(None, command, NOW, RATIO_V1)
    assert [type(e) for e in events] == [
        ApplicationSubmitted,
        ApplicationScored,
        ApplicationDecided,
    ]
    submitted, scored, decided = events
    assert isinstance(submitted, ApplicationSubmitted)
    assert submitted.amount == Decimal("5000.00")
    assert isinstance(scored, ApplicationScored)
    assert (scored.model_name, scored.model_version) == ("ratio", "v1")
    assert scored.model_fingerprint == RATIO_V1.fingerprint
    assert scored.inputs == ScoringInputs(Decimal("5000.00"), Decimal("90000.00"), 6)
    assert scored.risk_score == Decimal("1830.00")
    assert isinstance(decided, ApplicationDecided)
    assert decided.decision == "approved"


def test_decide_rejects_an_existing_application() -> None:
    command = submit()
    state = fold(decide(None, command, NOW, RATIO_V1))
    with pytest.raises(InvalidCommand, match="already exists"):
        decide(state, command, NOW, RATIO_V1)


def test_decide_enforces_the_rules_itself() -> None:
    with pytest.raises(InvalidCommand) as raised:
        decide(None, submit(amount="0.001"), NOW, RATIO_V1)
    assert raised.value.field == "amount"


def test_evolve_folds_to_the_decision() -> None:
    approved = fold(decide(None, submit(), NOW, RATIO_V1))
    assert approved is not None
    assert (approved.status, approved.version, approved.decision) == (
        STATUS_APPROVED,
        3,
        "approved",
    )
    review = fold(decide(None, submit("100000", "50000", 2), NOW, RATIO_V1))
    assert review is not None
    assert review.status == STATUS_IN_REVIEW
    assert review.risk_score == Decimal("60.00")


def test_evolve_rejects_events_out_of_order() -> None:
    submitted, scored, _ = decide(None, submit(), NOW, RATIO_V1)
    with pytest.raises(ValueError, match="before ApplicationSubmitted"):
        evolve(None, scored)
    state = evolve(None, submitted)
    with pytest.raises(ValueError, match="first event"):
        evolve(state, submitted)


def test_registry_round_trips_every_event() -> None:
    for event in decide(None, submit(), NOW, RATIO_V1):
        assert REGISTRY.decode(event.event_type, event.schema_version, event.to_data()) == event


def test_registry_upcasts_old_versions_on_read() -> None:
    application_id = str(uuid4())
    submitted_v1 = {
        "application_id": application_id,
        "applicant_id": "abc",
        "amount": "1.00",
        "income": "2.00",
        "employment_years": 4,
    }
    submitted = REGISTRY.decode("ApplicationSubmitted", 1, submitted_v1)
    assert isinstance(submitted, ApplicationSubmitted)
    assert submitted.submitted_by == UNKNOWN_ACTOR
    assert submitted.employment_years == 4
    assert submitted.to_data() == {**submitted_v1, "submitted_by": UNKNOWN_ACTOR}

    decided_v1 = {
        "application_id": application_id,
        "decision": "review",
        "decided_by": "policy:ratio-v1",
        "rule": "score 12.00 < 80",
    }
    decided = REGISTRY.decode("ApplicationDecided", 1, decided_v1)
    assert isinstance(decided, ApplicationDecided)
    assert decided.recommended_outcome is None
    assert decided.decision == "review"


def test_registry_upcasts_through_a_renamed_field() -> None:
    registry = EventRegistry()
    registry.register("ApplicationSubmitted", 2, ApplicationSubmitted.from_data)
    # a hypothetical version 1 that called the field "years" and had no submitter
    registry.register_upcaster(
        "ApplicationSubmitted",
        1,
        lambda d: {
            **{k: v for k, v in d.items() if k != "years"},
            "employment_years": d["years"],
            "submitted_by": UNKNOWN_ACTOR,
        },
    )
    old = {
        "application_id": str(uuid4()),
        "applicant_id": "abc",
        "amount": "1.00",
        "income": "2.00",
        "years": 4,
    }
    decoded = registry.decode("ApplicationSubmitted", 1, old)
    assert isinstance(decoded, ApplicationSubmitted)
    assert decoded.employment_years == 4


def test_registry_refuses_unknown_types_and_duplicates() -> None:
    with pytest.raises(UnknownEventType):
        REGISTRY.decode("ApplicationTeleported", 1, {})
    with pytest.raises(UnknownEventType):
        REGISTRY.decode("ApplicationSubmitted", 99, {})
    with pytest.raises(ValueError, match="twice"):
        REGISTRY.register("ApplicationSubmitted", 2, ApplicationSubmitted.from_data)


def test_events_are_frozen() -> None:
    event = decide(None, submit(), NOW, RATIO_V1)[0]
    assert isinstance(event, ApplicationSubmitted)
    with pytest.raises(AttributeError):
        event.amount = Decimal(1)  # type: ignore[misc]
