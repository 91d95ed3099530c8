"""Unit and property tests of the pure workflow rules: the application state machine,
maker-checker, reason codes, and stale versions."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.application import (
    STATUS_APPROVED,
    STATUS_DECLINED,
    STATUS_IN_REVIEW,
    STATUS_WITHDRAWN,
    ApplicationState,
    RecordAgentAction,
    RequestManualReview,
    ReviewApplication,
    SubmitApplication,
    WithdrawApplication,
    decide,
    decide_agent_action,
    decide_manual_review,
    decide_review,
    decide_withdrawal,
    evolve,
    fold,
)
from ledger.errors import ConcurrencyConflict, InvalidCommand, InvalidTransition, NotAllowed
from ledger.events import ApplicationReviewed, DomainEvent, ReasonCode
from ledger.scoring import RATIO_V1

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CATALOGUE = RATIO_V1.reason_catalogue
SUBMITTER = "agent:intake-bot"


def submitted(amount: str, income: str, years: int) -> tuple[ApplicationState, list[DomainEvent]]:
    command = SubmitApplication(
        uuid4(), "cust_1001", Decimal(amount), Decimal(income), years, submitted_by=SUBMITTER
    )
    events = decide(None, command, NOW, RATIO_V1)
    state = fold(events)
    assert state is not None
    return state, events


def in_review() -> ApplicationState:
    state, _ = submitted("50000", "12000", 1)
    assert state.status == STATUS_IN_REVIEW
    return state


def approved() -> ApplicationState:
    state, _ = submitted("5000", "90000", 6)
    assert state.status == STATUS_APPROVED
    return state


def review(state: ApplicationState, **changes: object) -> ReviewApplication:
    command = ReviewApplication(
        application_id=state.application_id,
        outcome="declined",
        reason_codes=("INCOME_LOW_FOR_AMOUNT",),
        justification="Income too low.",
        reviewer="analyst:alice",
        reviewer_is_analyst=True,
        expected_version=state.version,
    )
    return replace(command, **changes)  # type: ignore[arg-type]


def test_a_decline_records_each_code_with_its_catalogue_text() -> None:
    state = in_review()
    [event] = decide_review(state, review(state), CATALOGUE)
    assert isinstance(event, ApplicationReviewed)
    assert event.reason_codes == (
        ReasonCode("INCOME_LOW_FOR_AMOUNT", CATALOGUE["INCOME_LOW_FOR_AMOUNT"]),
    )
    assert event.catalogue == "ratio-v1"
    after = evolve(state, event)
    assert (after.status, after.decision, after.decided_by) == (
        STATUS_DECLINED,
        "declined",
        "analyst:alice",
    )
    assert after.version == state.version + 1


def test_maker_checker_the_submitter_never_reviews_and_only_analysts_decline() -> None:
    state = in_review()
    with pytest.raises(NotAllowed, match="submitted"):
        decide_review(state, review(state, reviewer=SUBMITTER), CATALOGUE)
    with pytest.raises(NotAllowed, match="only an analyst"):
        decide_review(state, review(state, reviewer_is_analyst=False), CATALOGUE)
    # A non-analyst may approve within policy; open mode cannot tell callers apart.
    decide_review(state, review(state, outcome="approved", reviewer_is_analyst=False), CATALOGUE)
    decide_review(state, review(state, reviewer=SUBMITTER, enforce_maker_checker=False), CATALOGUE)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"expected_version": 2}, ConcurrencyConflict),
        ({"reason_codes": ()}, InvalidCommand),
        ({"reason_codes": ("NOT_A_CODE",)}, InvalidCommand),
        ({"reason_codes": ("UNABLE_TO_VERIFY", "UNABLE_TO_VERIFY")}, InvalidCommand),
        ({"justification": "  \n"}, InvalidCommand),
        ({"outcome": "deferred"}, InvalidCommand),
    ],
)
def test_bad_reviews_are_refused(changes: dict[str, object], error: type[Exception]) -> None:
    state = in_review()
    with pytest.raises(error):
        decide_review(state, review(state, **changes), CATALOGUE)


def test_only_applications_in_review_are_reviewed() -> None:
    state = approved()
    with pytest.raises(InvalidTransition) as raised:
        decide_review(state, review(state), CATALOGUE)
    assert raised.value.current_status == STATUS_APPROVED


def test_manual_review_only_reopens_automatic_approvals() -> None:
    state = approved()
    [event] = decide_manual_review(
        state, RequestManualReview(state.application_id, "odd documents", "agent:x")
    )
    reopened = evolve(state, event)
    assert reopened.status == STATUS_IN_REVIEW
    [approval] = decide_review(reopened, review(reopened, outcome="approved"), CATALOGUE)
    human = evolve(reopened, approval)
    with pytest.raises(InvalidTransition, match="human decision"):
        decide_manual_review(human, RequestManualReview(human.application_id, "again", "agent:x"))


def test_withdrawal_is_open_until_a_final_status() -> None:
    state = in_review()
    command = WithdrawApplication(state.application_id, "no longer needed", "agent:x", "applicant")
    [event] = decide_withdrawal(state, command)
    withdrawn = evolve(state, event)
    assert withdrawn.status == STATUS_WITHDRAWN
    with pytest.raises(InvalidTransition):
        decide_withdrawal(withdrawn, command)
    with pytest.raises(InvalidCommand):
        decide_withdrawal(state, replace(command, channel="carrier pigeon"))


def test_agent_actions_are_recorded_in_any_status_and_change_only_the_version() -> None:
    state = in_review()
    command = RecordAgentAction(
        state.application_id, "agent-1", "llm", None, "0" * 64, "ref", "out", "other", "why"
    )
    [event] = decide_agent_action(state, command)
    after = evolve(state, event)
    assert replace(after, version=state.version) == state
    with pytest.raises(InvalidCommand):
        decide_agent_action(state, replace(command, action="decline"))


# --- The state machine as a property: whatever is tried, only legal transitions happen ---

LEGAL = {
    "approved": {"in_review", "withdrawn", "approved"},
    "in_review": {"approved", "declined", "withdrawn", "in_review"},
    "declined": {"declined"},
    "withdrawn": {"withdrawn"},
}

attempts = st.lists(
    st.sampled_from(["approve", "decline", "withdraw", "escalate", "agent", "stale"]),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(
    amount=st.sampled_from(["5000", "50000"]),
    steps=attempts,
)
def test_only_legal_transitions_happen_and_final_statuses_stay_final(
    amount: str, steps: list[str]
) -> None:
    state, events = submitted(amount, "12000" if amount == "50000" else "90000", 3)
    for step in steps:
        try:
            match step:
                case "approve" | "decline":
                    new = decide_review(state, review(state, outcome=step + "d"), CATALOGUE)
                case "withdraw":
                    command = WithdrawApplication(state.application_id, "r", "a", "applicant")
                    new = decide_withdrawal(state, command)
                case "escalate":
                    request = RequestManualReview(state.application_id, "r", "agent:x")
                    new = decide_manual_review(state, request)
                case "agent":
                    action = RecordAgentAction(
                        state.application_id, "a", "m", "p", "0" * 64, None, "o", "other", "r"
                    )
                    new = decide_agent_action(state, action)
                case _:
                    new = decide_review(state, review(state, expected_version=1), CATALOGUE)
        except (InvalidTransition, ConcurrencyConflict, NotAllowed, InvalidCommand):
            continue
        before = state
        for event in new:
            state = evolve(state, event)
        events.extend(new)
        assert state.status in LEGAL[before.status]
        assert state.version == before.version + len(new)
    assert fold(events) == state
