"""The loan application aggregate: rules, commands, and the pure `decide` / `evolve`.

No I/O and no clock reads here: the caller passes `now` and the scoring model in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from uuid import UUID

from ledger.errors import ConcurrencyConflict, InvalidCommand, InvalidTransition, NotAllowed
from ledger.events import (
    UNKNOWN_ACTOR,
    AgentActionRecorded,
    ApplicationDecided,
    ApplicationReviewed,
    ApplicationScored,
    ApplicationSubmitted,
    ApplicationWithdrawn,
    DomainEvent,
    ManualReviewRequested,
    ReasonCode,
    ScoringInputs,
)
from ledger.scoring import ScoringModel

# --- The rules an application must meet (the API validates with these same functions). ---

APPLICANT_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{3,64}")
MONEY_LIMIT = Decimal("10000000000")  # amounts and incomes stay below ten billion
MAX_EMPLOYMENT_YEARS = 80

STREAM_PREFIX = "loan-application-"


def stream_id_for(application_id: UUID) -> str:
    return f"{STREAM_PREFIX}{application_id}"


def check_applicant_id(value: str) -> str:
    if not APPLICANT_ID_PATTERN.fullmatch(value):
        raise ValueError("must be 3 to 64 characters of letters, digits and _ . : -")
    return value


CENT = Decimal("0.01")
_MONEY_CONTEXT = Context(prec=28, rounding=ROUND_HALF_EVEN)


def check_money(value: Decimal) -> Decimal:
    """Validate an amount of money and return it with exactly two decimal places."""
    if not value.is_finite():
        raise ValueError("must be a finite number")
    if value <= 0:
        raise ValueError("must be greater than 0")
    if value >= MONEY_LIMIT:
        raise ValueError("must be below 10,000,000,000")
    cents = value.quantize(CENT, context=_MONEY_CONTEXT)
    if cents != value:
        raise ValueError("must have at most 2 decimal places")
    return cents


def check_employment_years(value: int) -> int:
    if not 0 <= value <= MAX_EMPLOYMENT_YEARS:
        raise ValueError(f"must be an integer from 0 to {MAX_EMPLOYMENT_YEARS}")
    return value


# --- Commands ---


@dataclass(frozen=True, slots=True)
class SubmitApplication:
    application_id: UUID
    applicant_id: str
    amount: Decimal
    income: Decimal
    employment_years: int
    submitted_by: str = UNKNOWN_ACTOR


@dataclass(frozen=True, slots=True)
class ReviewApplication:
    """An analyst's decision. `expected_version` is the stream version the analyst saw."""

    application_id: UUID
    outcome: str  # "approved" | "declined"
    reason_codes: tuple[str, ...]
    justification: str
    reviewer: str
    reviewer_is_analyst: bool
    expected_version: int
    # False only when callers cannot be told apart (open mode: no API keys, development).
    enforce_maker_checker: bool = True


@dataclass(frozen=True, slots=True)
class WithdrawApplication:
    application_id: UUID
    reason: str
    withdrawn_by: str
    channel: str  # "applicant" | "analyst"
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class RequestManualReview:
    application_id: UUID
    reason: str
    requested_by: str
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class RecordAgentAction:
    application_id: UUID
    agent_id: str
    model_name: str
    prompt: str | None
    prompt_sha256: str
    prompt_ref: str | None
    output: str
    action: str
    rationale: str
    expected_version: int | None = None


Command = (
    SubmitApplication
    | ReviewApplication
    | WithdrawApplication
    | RequestManualReview
    | RecordAgentAction
)


def validated(command: SubmitApplication) -> SubmitApplication:
    """The command with every rule checked and money normalised to two places."""
    field_name = "applicant_id"
    try:
        check_applicant_id(command.applicant_id)
        field_name = "amount"
        amount = check_money(command.amount)
        field_name = "income"
        income = check_money(command.income)
        field_name = "employment_years"
        check_employment_years(command.employment_years)
    except ValueError as error:
        raise InvalidCommand(f"{field_name} {error}", field=field_name) from None
    return replace(command, amount=amount, income=income)


# --- State ---

STATUS_SUBMITTED = "submitted"
STATUS_SCORED = "scored"
STATUS_APPROVED = "approved"
STATUS_IN_REVIEW = "in_review"
STATUS_DECLINED = "declined"
STATUS_WITHDRAWN = "withdrawn"

STATUSES = (
    STATUS_SUBMITTED,
    STATUS_SCORED,
    STATUS_APPROVED,
    STATUS_IN_REVIEW,
    STATUS_DECLINED,
    STATUS_WITHDRAWN,
)
FINAL_STATUSES = frozenset({STATUS_DECLINED, STATUS_WITHDRAWN})

DECISION_STATUS = {"approved": STATUS_APPROVED, "review": STATUS_IN_REVIEW}
REVIEW_OUTCOMES = {"approved": STATUS_APPROVED, "declined": STATUS_DECLINED}
WITHDRAWAL_CHANNELS = ("applicant", "analyst")
AGENT_ACTIONS = ("request_more_data", "manual_review", "auto_process", "other")
POLICY_PREFIX = "policy:"


@dataclass(frozen=True, slots=True)
class ApplicationState:
    application_id: UUID
    applicant_id: str
    amount: Decimal
    income: Decimal
    employment_years: int
    status: str
    version: int
    risk_score: Decimal | None = None
    decision: str | None = None
    scoring_model: str | None = None
    scoring_model_version: str | None = None
    submitted_by: str = UNKNOWN_ACTOR
    decided_by: str | None = None
    recommended_outcome: str | None = None
    reason_codes: tuple[str, ...] = ()

    @property
    def model_key(self) -> str | None:
        """The registry key of the model that scored it, e.g. "ratio-v1"."""
        if self.scoring_model is None:
            return None
        return f"{self.scoring_model}-{self.scoring_model_version}"


# --- decide: commands -> events (pure; raises a LedgerError when the command is refused) ---


def decide(
    state: ApplicationState | None,
    command: SubmitApplication,
    now: datetime,
    model: ScoringModel,
) -> list[DomainEvent]:
    """Submit, score and decide automatically, or raise InvalidCommand.

    `now` is part of the signature so time-dependent rules stay pure; submitting does not
    depend on it (the store stamps the recorded time of each event).
    """
    del now
    if state is not None:
        raise InvalidCommand(f"application {command.application_id} already exists")
    command = validated(command)
    inputs = ScoringInputs(command.amount, command.income, command.employment_years)
    score = model.score(inputs)
    return [
        ApplicationSubmitted(
            application_id=command.application_id,
            applicant_id=command.applicant_id,
            amount=command.amount,
            income=command.income,
            employment_years=command.employment_years,
            submitted_by=command.submitted_by,
        ),
        ApplicationScored(
            application_id=command.application_id,
            model_name=model.name,
            model_version=model.version,
            model_fingerprint=model.fingerprint,
            inputs=inputs,
            risk_score=score.risk_score,
            reason_codes=score.reason_codes,
        ),
        ApplicationDecided(
            application_id=command.application_id,
            decision=score.decision,
            decided_by=f"{POLICY_PREFIX}{model.name}-{model.version}",
            rule=score.rule,
            recommended_outcome=score.recommended_outcome,
        ),
    ]


def _check_version(state: ApplicationState, expected: int | None) -> None:
    if expected is not None and expected != state.version:
        raise ConcurrencyConflict(
            stream_id_for(state.application_id),
            expected,
            current_version=state.version,
        )


def _require_status(state: ApplicationState, allowed: tuple[str, ...], action: str) -> None:
    if state.status not in allowed:
        raise InvalidTransition(
            f"cannot {action} application {state.application_id}: its status is "
            f"{state.status!r} (allowed from: {', '.join(allowed)})",
            current_status=state.status,
        )


def _require_text(value: str, field_name: str) -> str:
    text = value.strip()
    if not text:
        raise InvalidCommand(f"{field_name} must not be empty", field=field_name)
    return text


def decide_review(
    state: ApplicationState, command: ReviewApplication, catalogue: Mapping[str, str]
) -> list[DomainEvent]:
    """An analyst approves or declines an application in review.

    `catalogue` is the reason catalogue of the model that scored the application: a
    decline must cite at least one of its codes, and the event records each code's text.
    """
    _check_version(state, command.expected_version)
    _require_status(state, (STATUS_IN_REVIEW,), "review")
    if command.outcome not in REVIEW_OUTCOMES:
        raise InvalidCommand("outcome must be approved or declined", field="outcome")
    # Maker-checker: whoever submitted an application never decides on it.
    if command.enforce_maker_checker and command.reviewer == state.submitted_by:
        raise NotAllowed(
            f"{command.reviewer} submitted application {state.application_id} and so cannot "
            "review it; another analyst must"
        )
    if command.outcome == "declined" and not command.reviewer_is_analyst:
        raise NotAllowed("only an analyst may decline an application")
    if command.outcome == "declined" and not command.reason_codes:
        raise InvalidCommand(
            "a decline needs at least one reason code from the catalogue", field="reason_codes"
        )
    unknown = [code for code in command.reason_codes if code not in catalogue]
    if unknown:
        raise InvalidCommand(
            f"unknown reason code(s) {', '.join(unknown)}; the catalogue of "
            f"{state.model_key} has {', '.join(sorted(catalogue))}",
            field="reason_codes",
        )
    if len(set(command.reason_codes)) != len(command.reason_codes):
        raise InvalidCommand("reason codes must not repeat", field="reason_codes")
    justification = _require_text(command.justification, "justification")
    return [
        ApplicationReviewed(
            application_id=state.application_id,
            outcome=command.outcome,
            reviewer=command.reviewer,
            reason_codes=tuple(ReasonCode(code, catalogue[code]) for code in command.reason_codes),
            justification=justification,
            catalogue=state.model_key or "",
        )
    ]


def decide_withdrawal(state: ApplicationState, command: WithdrawApplication) -> list[DomainEvent]:
    _check_version(state, command.expected_version)
    open_statuses = tuple(s for s in STATUSES if s not in FINAL_STATUSES)
    _require_status(state, open_statuses, "withdraw")
    if command.channel not in WITHDRAWAL_CHANNELS:
        raise InvalidCommand("channel must be applicant or analyst", field="channel")
    return [
        ApplicationWithdrawn(
            application_id=state.application_id,
            withdrawn_by=command.withdrawn_by,
            channel=command.channel,
            reason=_require_text(command.reason, "reason"),
        )
    ]


def decide_manual_review(
    state: ApplicationState, command: RequestManualReview
) -> list[DomainEvent]:
    """Send an automatically approved application to an analyst (an agent's escalation)."""
    _check_version(state, command.expected_version)
    _require_status(state, (STATUS_APPROVED,), "request manual review of")
    if not (state.decided_by or "").startswith(POLICY_PREFIX):
        raise InvalidTransition(
            f"application {state.application_id} was approved by an analyst "
            f"({state.decided_by}); a human decision is not sent back to review",
            current_status=state.status,
        )
    return [
        ManualReviewRequested(
            application_id=state.application_id,
            requested_by=command.requested_by,
            reason=_require_text(command.reason, "reason"),
        )
    ]


def decide_agent_action(state: ApplicationState, command: RecordAgentAction) -> list[DomainEvent]:
    """Recording what an agent did is allowed in every status: it is a fact about the agent."""
    _check_version(state, command.expected_version)
    if command.action not in AGENT_ACTIONS:
        raise InvalidCommand(f"action must be one of {', '.join(AGENT_ACTIONS)}", field="action")
    return [
        AgentActionRecorded(
            application_id=state.application_id,
            agent_id=command.agent_id,
            model_name=command.model_name,
            prompt=command.prompt,
            prompt_sha256=command.prompt_sha256,
            prompt_ref=command.prompt_ref,
            output=command.output,
            action=command.action,
            rationale=_require_text(command.rationale, "rationale"),
        )
    ]


# --- evolve: events -> state (pure; never rejects a fact) ---


def evolve(state: ApplicationState | None, event: DomainEvent) -> ApplicationState:
    """Apply one event to the state. Events are facts: evolve never rejects them, but an
    event that cannot follow the state it meets means the stream is corrupt."""
    if isinstance(event, ApplicationSubmitted):
        if state is not None:
            raise ValueError("ApplicationSubmitted must be the first event of its stream")
        return ApplicationState(
            application_id=event.application_id,
            applicant_id=event.applicant_id,
            amount=event.amount,
            income=event.income,
            employment_years=event.employment_years,
            status=STATUS_SUBMITTED,
            version=1,
            submitted_by=event.submitted_by,
        )
    current = _require(state, event)
    version = current.version + 1
    match event:
        case ApplicationScored():
            return replace(
                current,
                status=STATUS_SCORED,
                version=version,
                risk_score=event.risk_score,
                scoring_model=event.model_name,
                scoring_model_version=event.model_version,
                reason_codes=event.reason_codes,
            )
        case ApplicationDecided():
            return replace(
                current,
                status=DECISION_STATUS[event.decision],
                version=version,
                decision=event.decision,
                decided_by=event.decided_by,
                recommended_outcome=event.recommended_outcome,
            )
        case ManualReviewRequested():
            return replace(current, status=STATUS_IN_REVIEW, version=version, decision="review")
        case ApplicationReviewed():
            return replace(
                current,
                status=REVIEW_OUTCOMES[event.outcome],
                version=version,
                decision=event.outcome,
                decided_by=event.reviewer,
            )
        case ApplicationWithdrawn():
            return replace(current, status=STATUS_WITHDRAWN, version=version)
        case AgentActionRecorded():
            return replace(current, version=version)
    raise ValueError(f"unhandled event {type(event).__name__}")


def _require(state: ApplicationState | None, event: DomainEvent) -> ApplicationState:
    if state is None:
        raise ValueError(f"{event.event_type} before ApplicationSubmitted")
    return state


def fold(events: list[DomainEvent]) -> ApplicationState | None:
    state: ApplicationState | None = None
    for event in events:
        state = evolve(state, event)
    return state
