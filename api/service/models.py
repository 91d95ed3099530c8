"""Request and response models of the HTTP API."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from ledger.application import (
    MAX_EMPLOYMENT_YEARS,
    check_applicant_id,
    check_employment_years,
    check_money,
)
from ledger.events import RecordedEvent
from projections.applications import ApplicationRow

MONEY_STRING = re.compile(r"[0-9]+(\.[0-9]{1,2})?")
# What the OpenAPI document publishes: MONEY_STRING narrowed to the accepted range (above 0,
# at most 10 integer digits), so that every string it allows is accepted.
PUBLISHED_MONEY_STRING = re.compile(
    r"0*[1-9][0-9]{0,9}(?:\.[0-9]{1,2})?|0+\.(?:0[1-9]|[1-9][0-9]?)"
)


def _money_input(value: Any) -> Any:
    # bool is an int subclass in Python and a distinct type in JSON: never a number here.
    # Floats cannot arrive from the exact JSON parser; from Python callers they are refused
    # because they may already have lost the cents.
    if isinstance(value, bool | float):
        raise ValueError("must be a JSON number or a decimal string, not " + type(value).__name__)
    # Decimal() alone would also read " 5000", "5_000", "1e3" and non-ASCII digits.
    if isinstance(value, str) and not MONEY_STRING.fullmatch(value):
        raise ValueError(
            "a decimal string must be ASCII digits with up to 2 decimals, like 5000.10"
        )
    return value


def _integer_input(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a JSON integer")
    return value


Money = Annotated[
    Decimal,
    BeforeValidator(_money_input),
    AfterValidator(check_money),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "exclusiveMaximum": 10_000_000_000,
                    "multipleOf": 0.01,
                },
                {"type": "string", "pattern": f"^(?:{PUBLISHED_MONEY_STRING.pattern})$"},
            ],
            "description": "Greater than 0, below 10,000,000,000, at most 2 decimal places. "
            "A JSON number (parsed exactly, never as a float) or a decimal string.",
        }
    ),
]

MoneyOut = Annotated[Decimal, WithJsonSchema({"type": "number"})]

ApplicantId = Annotated[
    str,
    Field(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$", strict=True),
    AfterValidator(check_applicant_id),
]

EmploymentYears = Annotated[
    int,
    BeforeValidator(_integer_input),
    AfterValidator(check_employment_years),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_EMPLOYMENT_YEARS}),
]


class ApplyRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "applicant_id": "cust_1001",
                    "amount": 5000,
                    "income": 90000,
                    "employment_years": 6,
                }
            ]
        },
    )

    applicant_id: ApplicantId
    amount: Money
    income: Money
    employment_years: EmploymentYears


class Application(BaseModel):
    """An application's current state (the `loan_applications` read model)."""

    application_id: UUID
    applicant_id: str
    amount: MoneyOut
    income: MoneyOut
    employment_years: int
    risk_score: MoneyOut | None
    decision: str | None = Field(
        description="approved | review | declined (null until decided; review while an "
        "analyst decides)"
    )
    status: str = Field(
        description="submitted | scored | approved | in_review | declined | withdrawn"
    )
    scoring_model: str | None = Field(description="model name and version, e.g. ratio-v1")
    reason_codes: list[str] = Field(
        description="the score's reason codes, principal reason first (see /lending/reason-codes)"
    )
    recommended_outcome: str | None = Field(
        description="for an application in review: what the model recommends (approved | "
        "declined), or null"
    )
    submitted_by: str = Field(description="the actor who submitted it")
    decided_by: str | None = Field(
        description="policy:<model> for an automatic decision, else the reviewing analyst"
    )
    in_review_since: datetime | None = Field(description="when it last entered review")
    reviewed_at: datetime | None = Field(description="when an analyst decided it")
    created_at: datetime
    updated_at: datetime
    stream_version: int = Field(
        description="version of the application's stream; send it back as If-Match or "
        "expected_version when acting on what you saw"
    )

    @classmethod
    def from_row(cls, row: ApplicationRow) -> Application:
        state = row.state
        model = state.model_key
        return cls(
            application_id=state.application_id,
            applicant_id=state.applicant_id,
            amount=state.amount,
            income=state.income,
            employment_years=state.employment_years,
            risk_score=state.risk_score,
            decision=state.decision,
            status=state.status,
            scoring_model=model,
            reason_codes=list(state.reason_codes),
            recommended_outcome=state.recommended_outcome,
            submitted_by=state.submitted_by,
            decided_by=state.decided_by,
            in_review_since=row.in_review_since,
            reviewed_at=row.reviewed_at,
            created_at=row.created_at,
            updated_at=row.updated_at,
            stream_version=state.version,
        )


class Event(BaseModel):
    """One stored event. Every event in every response has exactly this shape."""

    position: int = Field(description="global position: increasing, not gap-free")
    seq: int | None = Field(
        description="ledger sequence: contiguous; null for a few ms after commit"
    )
    stream_id: str
    stream_version: int
    event_id: UUID
    type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    recorded_at: datetime
    prev_hash: str = Field(description="SHA-256, lowercase hex")
    hash: str = Field(description="SHA-256, lowercase hex")

    @classmethod
    def from_recorded(cls, event: RecordedEvent) -> Event:
        return cls(
            position=event.position,
            seq=event.seq,
            stream_id=event.stream_id,
            stream_version=event.stream_version,
            event_id=event.event_id,
            type=event.event_type,
            schema_version=event.schema_version,
            data=event.data,
            metadata=event.metadata,
            recorded_at=event.recorded_at,
            prev_hash=event.prev_hash.hex(),
            hash=event.hash.hex(),
        )


# --- Workflow: review, withdraw, manual review, agent actions ---

# PostgreSQL text cannot hold NUL (U+0000), and reasons and justifications must say
# something: the schema states both, so a client built from the document never sends
# what would be refused.
NO_NUL = r"^[^\x00]*$"
NOT_BLANK = r"^[^\x00]*[^\x00\s][^\x00]*$"
ShortText = Annotated[str, Field(min_length=1, max_length=2000, pattern=NOT_BLANK, strict=True)]
Identifier = Annotated[
    str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:@/\-]+$", strict=True)
]
ExpectedVersion = Annotated[int, Field(ge=1, le=2**31 - 1, strict=True)]


class ReviewRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "outcome": "declined",
                    "reason_codes": ["INCOME_LOW_FOR_AMOUNT"],
                    "justification": "Income does not support the amount requested.",
                    "expected_version": 3,
                }
            ]
        },
    )

    outcome: Literal["approved", "declined"]
    reason_codes: list[Annotated[str, Field(min_length=1, max_length=64, strict=True)]] = Field(
        default_factory=list,
        max_length=10,
        description="codes from the catalogue of the model that scored the application "
        "(GET /lending/reason-codes); at least one for a decline",
    )
    justification: ShortText
    expected_version: ExpectedVersion | None = Field(
        default=None,
        description="the stream_version you saw; or send it as If-Match. One is required.",
    )


class WithdrawRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: ShortText
    expected_version: ExpectedVersion | None = None


class ManualReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: ShortText
    expected_version: ExpectedVersion | None = None


AgentActionName = Literal["request_more_data", "manual_review", "auto_process", "other"]
SHA256_HEX = r"^[0-9a-f]{64}$"


class AgentActionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "agent_id": "underwriter-agent-7",
                    "model_name": "gpt-example-2026-10",
                    "prompt": "Assess application ... for prequalification.",
                    "output": "Score in review band; income verification missing.",
                    "action": "manual_review",
                    "rationale": "Model recommends a human look at income.",
                }
            ],
            # Published so that clients (and the schema fuzzer) know the rule below.
            "anyOf": [
                {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
                {
                    "required": ["prompt_sha256"],
                    "properties": {"prompt_sha256": {"type": "string"}},
                },
            ],
        },
    )

    agent_id: Identifier
    model_name: Identifier
    prompt: (
        Annotated[str, Field(min_length=1, max_length=100_000, pattern=NO_NUL, strict=True)] | None
    ) = None
    prompt_sha256: Annotated[str, Field(pattern=SHA256_HEX, strict=True)] | None = Field(
        default=None, description="lowercase hex SHA-256 of the UTF-8 prompt"
    )
    prompt_ref: (
        Annotated[str, Field(min_length=1, max_length=2000, pattern=NO_NUL, strict=True)] | None
    ) = None
    output: Annotated[str, Field(min_length=1, max_length=100_000, pattern=NO_NUL, strict=True)]
    action: AgentActionName
    rationale: ShortText
    expected_version: ExpectedVersion | None = None

    @model_validator(mode="after")
    def _prompt_or_its_hash(self) -> AgentActionRequest:
        if self.prompt is None and self.prompt_sha256 is None:
            raise ValueError("send the prompt, or its prompt_sha256 (and a prompt_ref)")
        given = self.prompt_sha256
        if self.prompt is not None and given is not None and prompt_digest(self.prompt) != given:
            raise ValueError("prompt_sha256 is not the SHA-256 of the prompt")
        return self


def prompt_digest(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


class AgentAction(BaseModel):
    """An agent action as recorded: one AgentActionRecorded event."""

    application_id: UUID
    event_id: UUID
    position: int
    stream_version: int
    agent_id: str
    model_name: str
    action: str
    prompt_sha256: str
    recorded_at: datetime


class ReviewQueuePage(BaseModel):
    items: list[Application]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null on the last page"
    )


class ReasonCodeText(BaseModel):
    code: str
    text: str


class ReasonCatalogue(BaseModel):
    model: str = Field(description="model name and version, e.g. scorecard-v2")
    fingerprint: str
    reasons: list[ReasonCodeText]
