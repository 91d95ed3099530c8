"""Request and response models of the HTTP API."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from ledger.application import (
    MAX_EMPLOYMENT_YEARS,
    check_applicant_id,
    check_employment_years,
    check_money,
)
from ledger.events import RecordedEvent
from projections.applications import ApplicationRow

MONEY_STRING = re.compile(r"[0-9]+(\.[0-9]{1,2})?")


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
                {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 10_000_000_000},
                {"type": "string", "pattern": f"^{MONEY_STRING.pattern}$"},
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
    decision: str | None = Field(description="approved | review (null until decided)")
    status: str = Field(description="submitted | scored | approved | in_review")
    scoring_model: str | None = Field(description="model name and version, e.g. ratio-v1")
    created_at: datetime
    updated_at: datetime
    stream_version: int = Field(description="version of the application's stream")

    @classmethod
    def from_row(cls, row: ApplicationRow) -> Application:
        state = row.state
        model = None
        if state.scoring_model is not None:
            model = f"{state.scoring_model}-{state.scoring_model_version}"
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


class Health(BaseModel):
    status: str
    detail: str | None = None


class Problem(BaseModel):
    """RFC 9457 problem details (media type application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, str]] | None = None
