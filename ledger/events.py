"""Event types, their registry, and the envelopes they travel in.

Events are immutable facts in the past tense. Each has an explicit `event_type` name and a
`schema_version`; the registry maps (name, version) to the class that decodes it. The stored
name never comes from a Python module path, so renaming a class cannot break stored data.
An old schema version is upcast on read by a registered function; stored rows are never
rewritten.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Protocol
from uuid import UUID

from ledger.errors import UnknownEventType

JsonObject = dict[str, Any]


def decimal_to_json(value: Decimal) -> str:
    """Decimals travel in events as strings, digit for digit (never floats)."""
    return str(value)


class DomainEvent(Protocol):
    event_type: ClassVar[str]
    schema_version: ClassVar[int]

    def to_data(self) -> JsonObject: ...


UNKNOWN_ACTOR = "unknown"
"""Who did it, for events of a schema version that did not record it."""


@dataclass(frozen=True, slots=True)
class ApplicationSubmitted:
    """v2 added `submitted_by` (maker-checker needs it); v1 data is upcast to UNKNOWN_ACTOR."""

    event_type: ClassVar[str] = "ApplicationSubmitted"
    schema_version: ClassVar[int] = 2

    application_id: UUID
    applicant_id: str
    amount: Decimal
    income: Decimal
    employment_years: int
    submitted_by: str = UNKNOWN_ACTOR

    def to_data(self) -> JsonObject:
        return {
            "application_id": str(self.application_id),
            "applicant_id": self.applicant_id,
            "amount": decimal_to_json(self.amount),
            "income": decimal_to_json(self.income),
            "employment_years": self.employment_years,
            "submitted_by": self.submitted_by,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ApplicationSubmitted:
        return cls(
            application_id=UUID(data["application_id"]),
            applicant_id=data["applicant_id"],
            amount=Decimal(data["amount"]),
            income=Decimal(data["income"]),
            employment_years=int(data["employment_years"]),
            submitted_by=data["submitted_by"],
        )


@dataclass(frozen=True, slots=True)
class ScoringInputs:
    """Exactly what a scoring model read. Recorded so the score can be recomputed."""

    amount: Decimal
    income: Decimal
    employment_years: int

    def to_data(self) -> JsonObject:
        return {
            "amount": decimal_to_json(self.amount),
            "income": decimal_to_json(self.income),
            "employment_years": self.employment_years,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ScoringInputs:
        return cls(
            amount=Decimal(data["amount"]),
            income=Decimal(data["income"]),
            employment_years=int(data["employment_years"]),
        )


@dataclass(frozen=True, slots=True)
class ApplicationScored:
    event_type: ClassVar[str] = "ApplicationScored"
    schema_version: ClassVar[int] = 1

    application_id: UUID
    model_name: str
    model_version: str
    model_fingerprint: str
    inputs: ScoringInputs
    risk_score: Decimal
    reason_codes: tuple[str, ...] = field(default=())

    def to_data(self) -> JsonObject:
        return {
            "application_id": str(self.application_id),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "model_fingerprint": self.model_fingerprint,
            "inputs": self.inputs.to_data(),
            "risk_score": decimal_to_json(self.risk_score),
            "reason_codes": list(self.reason_codes),
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ApplicationScored:
        return cls(
            application_id=UUID(data["application_id"]),
            model_name=data["model_name"],
            model_version=data["model_version"],
            model_fingerprint=data["model_fingerprint"],
            inputs=ScoringInputs.from_data(data["inputs"]),
            risk_score=Decimal(data["risk_score"]),
            reason_codes=tuple(data["reason_codes"]),
        )


@dataclass(frozen=True, slots=True)
class ApplicationDecided:
    """The automatic decision. v2 added `recommended_outcome` (None when upcast from v1)."""

    event_type: ClassVar[str] = "ApplicationDecided"
    schema_version: ClassVar[int] = 2

    application_id: UUID
    decision: str  # "approved" | "review"
    decided_by: str  # who decided: "policy:<model>" for the automatic decision
    rule: str  # the rule that produced it, in words, for the audit trail
    # For "review": what the model recommends the analyst do ("approved" | "declined").
    recommended_outcome: str | None = None

    def to_data(self) -> JsonObject:
        return {
            "application_id": str(self.application_id),
            "decision": self.decision,
            "decided_by": self.decided_by,
            "rule": self.rule,
            "recommended_outcome": self.recommended_outcome,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ApplicationDecided:
        return cls(
            application_id=UUID(data["application_id"]),
            decision=data["decision"],
            decided_by=data["decided_by"],
            rule=data["rule"],
            recommended_outcome=data["recommended_outcome"],
        )


@dataclass(frozen=True, slots=True)
class ManualReviewRequested:
    """An agent (or analyst) sent an automatically approved application to an analyst."""

    event_type: ClassVar[str] = "ManualReviewRequested"
    schema_version: ClassVar[int] = 1

    application_id: UUID
    requested_by: str
    reason: str

    def to_data(self) -> JsonObject:
        return {
            "application_id": str(self.application_id),
            "requested_by": self.requested_by,
            "reason": self.reason,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ManualReviewRequested:
        return cls(UUID(data["application_id"]), data["requested_by"], data["reason"])


@dataclass(frozen=True, slots=True)
class ReasonCode:
    """A reason as cited: the code and the catalogue's text at the time, both recorded."""

    code: str
    text: str

    def to_data(self) -> JsonObject:
        return {"code": self.code, "text": self.text}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ReasonCode:
        return cls(data["code"], data["text"])


@dataclass(frozen=True, slots=True)
class ApplicationReviewed:
    """An analyst's decision on an application in review: it ends approved or declined."""

    event_type: ClassVar[str] = "ApplicationReviewed"
    schema_version: ClassVar[int] = 1

    application_id: UUID
    outcome: str  # "approved" | "declined"
    reviewer: str
    reason_codes: tuple[ReasonCode, ...]
    justification: str
    catalogue: str  # the model whose reason catalogue the codes come from, "<name>-<version>"

    def to_data(self) -> JsonObject:
        return {
            "application_id": str(self.application_id),
            "outcome": self.outcome,
            "reviewer": self.reviewer,
            "reason_codes": [reason.to_data() for reason in self.reason_codes],
            "justification": self.justification,
            "catalogue": self.catalogue,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ApplicationReviewed:
        return cls(
            application_id=UUID(data["application_id"]),
            outcome=data["outcome"],
            reviewer=data["reviewer"],
            reason_codes=tuple(ReasonCode.from_data(item) for item in data["reason_codes"]),
            justification=data["justification"],
            catalogue=data["catalogue"],
        )


@dataclass(frozen=True, slots=True)
class ApplicationWithdrawn:
    event_type: ClassVar[str] = "ApplicationWithdrawn"
    schema_version: ClassVar[int] = 1

    application_id: UUID
    withdrawn_by: str
    channel: str  # "applicant" (an agent acting for the applicant) | "analyst"
    reason: str

    def to_data(self) -> JsonObject:
        return {
            "application_id": str(self.application_id),
            "withdrawn_by": self.withdrawn_by,
            "channel": self.channel,
            "reason": self.reason,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ApplicationWithdrawn:
        return cls(
            UUID(data["application_id"]), data["withdrawn_by"], data["channel"], data["reason"]
        )


@dataclass(frozen=True, slots=True)
class AgentActionRecorded:
    """What an AI agent did on an application and why, for the audit trail.

    The prompt itself is optional (it may hold personal data); its SHA-256 is always
    recorded, so a prompt kept elsewhere (`prompt_ref`) can be proven to be the one used.
    """

    event_type: ClassVar[str] = "AgentActionRecorded"
    schema_version: ClassVar[int] = 1

    application_id: UUID
    agent_id: str
    model_name: str
    prompt: str | None
    prompt_sha256: str
    prompt_ref: str | None
    output: str
    action: str
    rationale: str

    def to_data(self) -> JsonObject:
        return {
            "application_id": str(self.application_id),
            "agent_id": self.agent_id,
            "model_name": self.model_name,
            "prompt": self.prompt,
            "prompt_sha256": self.prompt_sha256,
            "prompt_ref": self.prompt_ref,
            "output": self.output,
            "action": self.action,
            "rationale": self.rationale,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> AgentActionRecorded:
        return cls(
            application_id=UUID(data["application_id"]),
            agent_id=data["agent_id"],
            model_name=data["model_name"],
            prompt=data["prompt"],
            prompt_sha256=data["prompt_sha256"],
            prompt_ref=data["prompt_ref"],
            output=data["output"],
            action=data["action"],
            rationale=data["rationale"],
        )


Decoder = Callable[[Mapping[str, Any]], DomainEvent]
Upcaster = Callable[[Mapping[str, Any]], JsonObject]


class EventRegistry:
    """(event type, schema version) -> decoder; older versions -> upcaster to the next."""

    def __init__(self) -> None:
        self._decoders: dict[tuple[str, int], Decoder] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, event_type: str, schema_version: int, decoder: Decoder) -> None:
        key = (event_type, schema_version)
        if key in self._decoders:
            raise ValueError(f"{event_type} v{schema_version} is registered twice")
        self._decoders[key] = decoder

    def register_upcaster(self, event_type: str, from_version: int, upcast: Upcaster) -> None:
        """`upcast` turns data of `from_version` into data of `from_version + 1`."""
        self._upcasters[(event_type, from_version)] = upcast

    def decode(self, event_type: str, schema_version: int, data: Mapping[str, Any]) -> DomainEvent:
        version = schema_version
        current: Mapping[str, Any] = data
        while (event_type, version) not in self._decoders:
            upcast = self._upcasters.get((event_type, version))
            if upcast is None:
                raise UnknownEventType(f"no decoder for {event_type} v{schema_version}")
            current = upcast(current)
            version += 1
        return self._decoders[(event_type, version)](current)

    def known(self) -> list[tuple[str, int]]:
        return sorted(self._decoders)


def _submitted_v1_to_v2(data: Mapping[str, Any]) -> JsonObject:
    return {**data, "submitted_by": UNKNOWN_ACTOR}


def _decided_v1_to_v2(data: Mapping[str, Any]) -> JsonObject:
    return {**data, "recommended_outcome": None}


REGISTRY = EventRegistry()
for _event_class in (
    ApplicationSubmitted,
    ApplicationScored,
    ApplicationDecided,
    ManualReviewRequested,
    ApplicationReviewed,
    ApplicationWithdrawn,
    AgentActionRecorded,
):
    REGISTRY.register(_event_class.event_type, _event_class.schema_version, _event_class.from_data)
REGISTRY.register_upcaster(ApplicationSubmitted.event_type, 1, _submitted_v1_to_v2)
REGISTRY.register_upcaster(ApplicationDecided.event_type, 1, _decided_v1_to_v2)


@dataclass(frozen=True, slots=True)
class EventMetadata:
    actor: str
    correlation_id: str
    causation_id: str | None = None
    idempotency_key: str | None = None

    def to_data(self) -> JsonObject:
        return {
            "actor": self.actor,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "idempotency_key": self.idempotency_key,
        }


def new_ids(count: int) -> list[UUID]:
    """`count` random (version 4) UUIDs from one read of the system's random source: one
    system call for a command's events, where `uuid4` makes one each."""
    raw = os.urandom(16 * count)
    return [UUID(bytes=raw[start : start + 16], version=4) for start in range(0, 16 * count, 16)]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be appended: everything but what the database assigns."""

    event_id: UUID
    event: DomainEvent
    metadata: EventMetadata


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """The stored envelope of one event, as read back from the event table."""

    position: int
    seq: int | None
    stream_id: str
    stream_version: int
    event_id: UUID
    event_type: str
    schema_version: int
    data: JsonObject
    metadata: JsonObject
    recorded_at: datetime
    prev_hash: bytes
    hash: bytes

    def decode(self, registry: EventRegistry = REGISTRY) -> DomainEvent:
        return registry.decode(self.event_type, self.schema_version, self.data)

    def at_position(self, position: int) -> RecordedEvent:
        """This envelope at `position`: `dataclasses.replace`, without its generic (and, on
        the command path, measurable) cost."""
        return RecordedEvent(
            position,
            self.seq,
            self.stream_id,
            self.stream_version,
            self.event_id,
            self.event_type,
            self.schema_version,
            self.data,
            self.metadata,
            self.recorded_at,
            self.prev_hash,
            self.hash,
        )
