"""Event types, their registry, and the envelopes they travel in.

Events are immutable facts in the past tense. Each has an explicit `event_type` name and a
`schema_version`; the registry maps (name, version) to the class that decodes it. The stored
name never comes from a Python module path, so renaming a class cannot break stored data.
An old schema version is upcast on read by a registered function; stored rows are never
rewritten.
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class ApplicationSubmitted:
    event_type: ClassVar[str] = "ApplicationSubmitted"
    schema_version: ClassVar[int] = 1

    application_id: UUID
    applicant_id: str
    amount: Decimal
    income: Decimal
    employment_years: int

    def to_data(self) -> JsonObject:
        return {
            "application_id": str(self.application_id),
            "applicant_id": self.applicant_id,
            "amount": decimal_to_json(self.amount),
            "income": decimal_to_json(self.income),
            "employment_years": self.employment_years,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ApplicationSubmitted:
        return cls(
            application_id=UUID(data["application_id"]),
            applicant_id=data["applicant_id"],
            amount=Decimal(data["amount"]),
            income=Decimal(data["income"]),
            employment_years=int(data["employment_years"]),
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
    event_type: ClassVar[str] = "ApplicationDecided"
    schema_version: ClassVar[int] = 1

    application_id: UUID
    decision: str  # "approved" | "review"
    decided_by: str  # who decided: "policy:<model>" for the automatic decision
    rule: str  # the rule that produced it, in words, for the audit trail

    def to_data(self) -> JsonObject:
        return {
            "application_id": str(self.application_id),
            "decision": self.decision,
            "decided_by": self.decided_by,
            "rule": self.rule,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ApplicationDecided:
        return cls(
            application_id=UUID(data["application_id"]),
            decision=data["decision"],
            decided_by=data["decided_by"],
            rule=data["rule"],
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


REGISTRY = EventRegistry()
REGISTRY.register(ApplicationSubmitted.event_type, 1, ApplicationSubmitted.from_data)
REGISTRY.register(ApplicationScored.event_type, 1, ApplicationScored.from_data)
REGISTRY.register(ApplicationDecided.event_type, 1, ApplicationDecided.from_data)


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
