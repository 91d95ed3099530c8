"""The loan application aggregate: rules, commands, and the pure `decide` / `evolve`.

No I/O and no clock reads here: the caller passes `now` and the scoring model in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from uuid import UUID

from ledger.errors import InvalidCommand
from ledger.events import (
    ApplicationDecided,
    ApplicationScored,
    ApplicationSubmitted,
    DomainEvent,
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

DECISION_STATUS = {"approved": STATUS_APPROVED, "review": STATUS_IN_REVIEW}


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


def decide(
    state: ApplicationState | None,
    command: SubmitApplication,
    now: datetime,
    model: ScoringModel,
) -> list[DomainEvent]:
    """Turn a command into the events it causes, or raise InvalidCommand.

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
            decided_by=f"policy:{model.name}-{model.version}",
            rule=score.rule,
        ),
    ]


def evolve(state: ApplicationState | None, event: DomainEvent) -> ApplicationState:
    """Apply one event to the state. Events are facts: evolve never rejects them, but an
    event that cannot follow the state it meets means the stream is corrupt."""
    match event:
        case ApplicationSubmitted():
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
            )
        case ApplicationScored():
            current = _require(state, event)
            return replace(
                current,
                status=STATUS_SCORED,
                version=current.version + 1,
                risk_score=event.risk_score,
                scoring_model=event.model_name,
                scoring_model_version=event.model_version,
            )
        case ApplicationDecided():
            current = _require(state, event)
            return replace(
                current,
                status=DECISION_STATUS[event.decision],
                version=current.version + 1,
                decision=event.decision,
            )
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
