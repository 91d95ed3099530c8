"""Audit values: score reconstruction (the audit endpoint and `rescore --json`) and seals
(the seal endpoints and the decision record)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, Field

from api.service.models import MoneyOut
from ledger.reconstruction import ScoreCheck, Status
from ledger.seals import Seal

HEX_32 = "lowercase hex of 32 bytes"


class ScoringInputsOut(BaseModel):
    amount: MoneyOut
    income: MoneyOut
    employment_years: int


class RecordedScore(BaseModel):
    """What was recorded: the score event, and the policy decision of the same command."""

    inputs: ScoringInputsOut
    model_name: str
    model_version: str
    model_fingerprint: str
    risk_score: MoneyOut = Field(description="exactly as recorded")
    reason_codes: list[str] = Field(description="ranked: the principal reason first")
    decision: str | None = Field(description="approved | review; null if no decision found")
    rule: str | None
    recommended_outcome: str | None = Field(
        description="approved | declined | null; null also when the decision event "
        "predates the field"
    )


class RecomputedScore(BaseModel):
    """What the registry's version of the model gives on the recorded inputs today."""

    risk_score: MoneyOut
    reason_codes: list[str]
    decision: str
    rule: str
    recommended_outcome: str | None


class ScoreReconstruction(BaseModel):
    position: int
    seq: int | None
    stream_id: str
    stream_version: int
    event_id: UUID
    recorded_at: datetime
    status: Status
    match: bool = Field(description="true only when status is match")
    model: str | None = Field(description="<name>-<version> the score recorded, e.g. scorecard-v2")
    recorded: RecordedScore | None = Field(description="null only when status is unreadable")
    registry_fingerprint: str | None = Field(
        description="the registry's fingerprint of that model version; null if unknown"
    )
    recomputed: RecomputedScore | None = Field(
        description="null when the model is unknown, refused the inputs, or the event is unreadable"
    )
    differences: list[str] = Field(
        description="recorded outputs the recomputation does not reproduce: risk_score, "
        "reason_codes, decision, rule, recommended_outcome"
    )
    detail: str

    @classmethod
    def from_check(cls, check: ScoreCheck) -> ScoreReconstruction:
        event, result = check.event, check.reconstruction
        recorded = None
        if result.scored is not None:
            scored, decision = result.scored, result.decision
            recorded = RecordedScore(
                inputs=ScoringInputsOut(
                    amount=scored.inputs.amount,
                    income=scored.inputs.income,
                    employment_years=scored.inputs.employment_years,
                ),
                model_name=scored.model_name,
                model_version=scored.model_version,
                model_fingerprint=scored.model_fingerprint,
                risk_score=scored.risk_score,
                reason_codes=list(scored.reason_codes),
                decision=None if decision is None else decision.decision,
                rule=None if decision is None else decision.rule,
                recommended_outcome=None if decision is None else decision.recommended_outcome,
            )
        recomputed = None
        if result.recomputed is not None:
            score = result.recomputed
            recomputed = RecomputedScore(
                risk_score=score.risk_score,
                reason_codes=list(score.reason_codes),
                decision=score.decision,
                rule=score.rule,
                recommended_outcome=score.recommended_outcome,
            )
        return cls(
            position=event.position,
            seq=event.seq,
            stream_id=event.stream_id,
            stream_version=event.stream_version,
            event_id=event.event_id,
            recorded_at=event.recorded_at,
            status=result.status,
            match=result.match,
            model=result.model_key,
            recorded=recorded,
            registry_fingerprint=result.registry_fingerprint,
            recomputed=recomputed,
            differences=list(result.differences),
            detail=result.detail,
        )


class ScoreReconstructionReport(BaseModel):
    application_id: UUID
    scores: list[ScoreReconstruction] = Field(description="every recorded score, in stream order")


class RescoreSummary(BaseModel):
    checked: int
    matched: int
    mismatched: int
    model_unknown: int
    fingerprint_mismatch: int
    recompute_failed: int
    unreadable: int


class SealOut(BaseModel):
    """A signed checkpoint of the ledger log's first `tree_size` events."""

    tree_size: int = Field(description="events sealed: seq 1 to tree_size (the tree's leaves)")
    root_hash: str = Field(description="RFC 9162 Merkle tree hash of the leaves; " + HEX_32)
    previous_seal_hash: str = Field(
        description="seal_hash of the previous seal; 64 zeros for the first; " + HEX_32
    )
    sealed_at: str = Field(description="UTC with microseconds and Z, exactly as signed")
    key_id: str = Field(description="SHA-256 of the raw Ed25519 public key, lowercase hex")
    signature: str = Field(description="Ed25519 signature of the statement, lowercase hex")
    seal_hash: str = Field(description="SHA-256 of the statement's canonical bytes; " + HEX_32)

    @classmethod
    def from_seal(cls, seal: Seal) -> SealOut:
        return cls.model_validate(seal.to_json())
