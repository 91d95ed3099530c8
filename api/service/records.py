"""The decision record of one application: every event with its hashes, what was scored and
decided and why, and the record's verification (hash chain, score reconstruction, inclusion
proofs in the latest seal). Served by `GET /audit/applications/{id}/record` and written by
`lending-ledger export` (api/cli/export.py); both call `read_decision_record`, then
`render_html` for a person (a Jinja2 template, api/service/templates/decision_record.html).

`read_decision_record` reads everything in one REPEATABLE READ read-only transaction, so the
events, the read-model row, the seal and the proofs describe one snapshot. Assembly
(`assemble_record`) and rendering (`render_html`) are pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jinja2 import Environment, PackageLoader, StrictUndefined
from pydantic import BaseModel, Field

from api.jsonio import dumps, to_plain
from api.service.audit_models import ScoreReconstruction, ScoringInputsOut, SealOut
from api.service.models import Application, Event, MoneyOut
from ledger.application import ApplicationState, evolve, stream_id_for
from ledger.chain import ChainBreak, hash_of_event, verify_stream
from ledger.db import Connection
from ledger.errors import LedgerError
from ledger.events import (
    REGISTRY,
    AgentActionRecorded,
    ApplicationDecided,
    ApplicationReviewed,
    ApplicationScored,
    ApplicationWithdrawn,
    DomainEvent,
    ManualReviewRequested,
    RecordedEvent,
    decimal_to_json,
)
from ledger.merkle import leaf_hash, verify_inclusion
from ledger.reconstruction import reconstruct_stream
from ledger.scoring import MODELS, ScoringModel
from ledger.seals import InclusionProof, Seal, inclusion_proof, latest_seal, statement_bytes
from ledger.signing import key_id, signature_is_valid
from ledger.store import read_stream
from projections.applications import ApplicationRow
from projections.queries import get_application

Format = Literal["json", "html"]
ProofStatus = Literal["verified", "invalid", "not_yet_sealed"]

# What a corrupted payload can raise while it is decoded or folded (see ledger.reconstruction).
_DECODE_ERRORS = (LedgerError, KeyError, TypeError, ValueError, ArithmeticError, AttributeError)


# --- The record (response model of the endpoint, document of `export --format json`) ---


class ReasonOut(BaseModel):
    code: str
    text: str | None = Field(description="the catalogue's text; null if the model is unknown")


class RecordEvent(Event):
    """A stored event, its metadata spelled out, and its inclusion in the latest seal."""

    actor: str | None
    correlation_id: str | None
    causation_id: str | None
    inclusion: InclusionOut


class InclusionOut(BaseModel):
    """The event's RFC 9162 inclusion proof in the latest seal (`verification.seal`)."""

    status: ProofStatus = Field(
        description="verified | invalid | not_yet_sealed (after the latest seal: not an error)"
    )
    leaf_index: int | None = Field(description="seq - 1; null when not yet sealed")
    tree_size: int | None = Field(description="the seal's tree size; null when not yet sealed")
    leaf_hash: str | None = Field(description="SHA-256(0x00 || event hash), lowercase hex")
    audit_path: list[str] = Field(description="inclusion path, leaf upwards, lowercase hex")
    detail: str


class FoldedState(BaseModel):
    """The application's state folded from its events, as they are stored now."""

    status: str
    stream_version: int
    risk_score: MoneyOut | None
    decision: str | None
    decided_by: str | None
    scoring_model: str | None
    reason_codes: list[str]


class ScoreOut(BaseModel):
    position: int
    stream_version: int
    recorded_at: datetime
    model: str = Field(description="<name>-<version>, e.g. ratio-v1")
    model_name: str
    model_version: str
    model_fingerprint: str
    inputs: ScoringInputsOut
    risk_score: MoneyOut
    reasons: list[ReasonOut] = Field(description="ranked: the principal reason first")


class AutomaticDecisionOut(BaseModel):
    position: int
    recorded_at: datetime
    decision: str
    decided_by: str
    rule: str
    recommended_outcome: str | None


class ReviewOut(BaseModel):
    position: int
    recorded_at: datetime
    outcome: str
    reviewer: str
    reasons: list[ReasonOut]
    justification: str
    catalogue: str


class ManualReviewRequestOut(BaseModel):
    position: int
    recorded_at: datetime
    requested_by: str
    reason: str


class AgentActionOut(BaseModel):
    position: int
    recorded_at: datetime
    agent_id: str
    model_name: str
    action: str
    prompt: str | None
    prompt_sha256: str
    prompt_ref: str | None
    output: str
    rationale: str


class WithdrawalOut(BaseModel):
    position: int
    recorded_at: datetime
    withdrawn_by: str
    channel: str
    reason: str


class ChainCheck(BaseModel):
    ok: bool
    position: int | None = Field(description="the first broken event; null when ok")
    stream_version: int | None
    reason: str | None


class SealCheck(BaseModel):
    seal: SealOut | None = Field(description="the latest seal; null when nothing is sealed")
    signature_valid: bool | None = Field(
        description="the seal's signature verifies with the trusted public key; null when "
        "there is no seal"
    )
    public_key_id: str | None = Field(description="key id of the key it was checked with")
    detail: str


class RecordVerification(BaseModel):
    ok: bool = Field(
        description="chain ok, every score reproduces and every sealed event's proof is valid"
    )
    chain: ChainCheck
    scores_reproduce: bool
    scores: list[ScoreReconstruction]
    seal: SealCheck
    events_total: int
    events_sealed: int
    proofs_valid: int
    unreadable_events: list[int] = Field(description="positions of events that do not decode")


class DecisionRecord(BaseModel):
    """The full decision record of one application, from one consistent snapshot."""

    application_id: UUID
    applicant_id: str | None
    generated_at: datetime
    current: Application | None = Field(description="the read model's row")
    folded: FoldedState | None = Field(description="null when the events do not fold")
    events: list[RecordEvent] = Field(description="every event of the stream, in order")
    scores: list[ScoreOut]
    automatic_decisions: list[AutomaticDecisionOut]
    manual_review_requests: list[ManualReviewRequestOut]
    reviews: list[ReviewOut]
    agent_actions: list[AgentActionOut]
    withdrawal: WithdrawalOut | None
    verification: RecordVerification


RecordEvent.model_rebuild()


# --- Reading one snapshot ---


async def read_decision_record(
    connection: Connection,
    application_id: UUID,
    public_keys: Sequence[Ed25519PublicKey],
    models: Mapping[str, ScoringModel] = MODELS,
) -> DecisionRecord | None:
    """The record of the application; None when it has no events."""
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        events = await read_stream(connection, stream_id_for(application_id))
        if not events:
            return None
        row = await get_application(connection, application_id)
        seal = await latest_seal(connection)
        proofs = {
            event.position: await inclusion_proof(connection, event.position)
            for event in events
            if seal is not None and event.seq is not None and event.seq <= seal.tree_size
        }
    return assemble_record(
        application_id, events, row, seal, proofs, public_keys, models, datetime.now(UTC)
    )


# --- Assembly (pure) ---


def assemble_record(
    application_id: UUID,
    events: Sequence[RecordedEvent],
    row: ApplicationRow | None,
    seal: Seal | None,
    proofs: Mapping[int, InclusionProof],
    public_keys: Sequence[Ed25519PublicKey],
    models: Mapping[str, ScoringModel],
    generated_at: datetime,
) -> DecisionRecord:
    seal_check = _check_seal(seal, public_keys)
    decoded, unreadable = _decode_all(events)
    folded = _fold(decoded)
    record_events = [
        _record_event(event, proofs.get(event.position), seal_check.signature_valid is True)
        for event in events
    ]
    checks = reconstruct_stream(events, models)
    chain = _chain_check(verify_stream(events))
    sealed = [e for e in record_events if e.inclusion.status != "not_yet_sealed"]
    valid = sum(1 for e in sealed if e.inclusion.status == "verified")
    scores_reproduce = all(check.reconstruction.match for check in checks)
    sections = _Sections(events, decoded, models)
    applicant = row.state.applicant_id if row is not None else None
    return DecisionRecord(
        application_id=application_id,
        applicant_id=applicant or (folded.applicant_id if folded is not None else None),
        generated_at=generated_at,
        current=Application.from_row(row) if row is not None else None,
        folded=_folded_out(folded),
        events=record_events,
        scores=sections.scores,
        automatic_decisions=sections.automatic,
        manual_review_requests=sections.manual,
        reviews=sections.reviews,
        agent_actions=sections.agents,
        withdrawal=sections.withdrawal,
        verification=RecordVerification(
            ok=chain.ok and scores_reproduce and valid == len(sealed) and not unreadable,
            chain=chain,
            scores_reproduce=scores_reproduce,
            scores=[ScoreReconstruction.from_check(check) for check in checks],
            seal=seal_check,
            events_total=len(events),
            events_sealed=len(sealed),
            proofs_valid=valid,
            unreadable_events=unreadable,
        ),
    )


def _decode_all(
    events: Sequence[RecordedEvent],
) -> tuple[dict[int, DomainEvent], list[int]]:
    decoded: dict[int, DomainEvent] = {}
    unreadable: list[int] = []
    for event in events:
        try:
            decoded[event.position] = event.decode(REGISTRY)
        except _DECODE_ERRORS:
            unreadable.append(event.position)
    return decoded, unreadable


def _fold(decoded: Mapping[int, DomainEvent]) -> ApplicationState | None:
    state: ApplicationState | None = None
    try:
        for position in sorted(decoded):
            state = evolve(state, decoded[position])
    except _DECODE_ERRORS:
        return None
    return state


def _folded_out(state: ApplicationState | None) -> FoldedState | None:
    if state is None:
        return None
    return FoldedState(
        status=state.status,
        stream_version=state.version,
        risk_score=state.risk_score,
        decision=state.decision,
        decided_by=state.decided_by,
        scoring_model=state.model_key,
        reason_codes=list(state.reason_codes),
    )


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _check_seal(seal: Seal | None, public_keys: Sequence[Ed25519PublicKey]) -> SealCheck:
    if seal is None:
        return SealCheck(
            seal=None, signature_valid=None, public_key_id=None, detail="nothing is sealed yet"
        )
    keys = {key_id(key): key for key in public_keys}
    key = keys.get(seal.key_id)
    if key is None:
        valid, detail = False, f"signed by key {seal.key_id}, which is not trusted here"
    else:
        valid = signature_is_valid(key, seal.signature, statement_bytes(seal))
        detail = "the signature verifies" if valid else "the signature does not verify"
    return SealCheck(
        seal=SealOut.from_seal(seal),
        signature_valid=valid,
        public_key_id=seal.key_id if key is not None else None,
        detail=detail,
    )


def _inclusion(
    event: RecordedEvent, proof: InclusionProof | None, signature_valid: bool
) -> InclusionOut:
    if proof is None:
        detail = "no seq yet" if event.seq is None else f"seq {event.seq} is after the latest seal"
        return InclusionOut(
            status="not_yet_sealed",
            leaf_index=None,
            tree_size=None,
            leaf_hash=None,
            audit_path=[],
            detail=f"not yet sealed: {detail}",
        )
    seal = proof.seal
    leaf = leaf_hash(event.hash)
    problems = []
    # The proof is of the stored hash; the content must still give that hash, or the
    # proof vouches for an event that is no longer the one shown.
    if hash_of_event(event) != event.hash:
        problems.append("the event's content no longer matches its hash")
    if not verify_inclusion(
        leaf, proof.leaf_index, seal.tree_size, proof.audit_path, seal.root_hash
    ):
        problems.append("the audit path does not lead to the seal's root")
    if not signature_valid:
        problems.append("the seal's signature is not valid with a trusted key")
    return InclusionOut(
        status="invalid" if problems else "verified",
        leaf_index=proof.leaf_index,
        tree_size=seal.tree_size,
        leaf_hash=leaf.hex(),
        audit_path=[node.hex() for node in proof.audit_path],
        detail="; ".join(problems) or f"included in the seal of tree size {seal.tree_size}",
    )


def _record_event(
    event: RecordedEvent, proof: InclusionProof | None, signature_valid: bool
) -> RecordEvent:
    metadata = event.metadata if isinstance(event.metadata, dict) else {}
    return RecordEvent(
        **Event.from_recorded(event).model_dump(),
        actor=_text_or_none(metadata.get("actor")),
        correlation_id=_text_or_none(metadata.get("correlation_id")),
        causation_id=_text_or_none(metadata.get("causation_id")),
        inclusion=_inclusion(event, proof, signature_valid),
    )


def _chain_check(found: ChainBreak | None) -> ChainCheck:
    if found is None:
        return ChainCheck(ok=True, position=None, stream_version=None, reason=None)
    return ChainCheck(
        ok=False,
        position=found.position,
        stream_version=found.stream_version,
        reason=found.reason,
    )


def _reasons(codes: Sequence[str], catalogue: Mapping[str, str]) -> list[ReasonOut]:
    return [ReasonOut(code=code, text=catalogue.get(code)) for code in codes]


class _Sections:
    """The decoded events sorted into the record's sections."""

    def __init__(
        self,
        events: Sequence[RecordedEvent],
        decoded: Mapping[int, DomainEvent],
        models: Mapping[str, ScoringModel],
    ) -> None:
        self.scores: list[ScoreOut] = []
        self.automatic: list[AutomaticDecisionOut] = []
        self.manual: list[ManualReviewRequestOut] = []
        self.reviews: list[ReviewOut] = []
        self.agents: list[AgentActionOut] = []
        self.withdrawal: WithdrawalOut | None = None
        for event in events:
            domain = decoded.get(event.position)
            position, recorded_at = event.position, event.recorded_at
            match domain:
                case ApplicationScored():
                    key = f"{domain.model_name}-{domain.model_version}"
                    model = models.get(key)
                    catalogue = model.reason_catalogue if model is not None else {}
                    self.scores.append(
                        ScoreOut(
                            stream_version=event.stream_version,
                            model=key,
                            model_name=domain.model_name,
                            model_version=domain.model_version,
                            model_fingerprint=domain.model_fingerprint,
                            inputs=ScoringInputsOut(
                                amount=domain.inputs.amount,
                                income=domain.inputs.income,
                                employment_years=domain.inputs.employment_years,
                            ),
                            risk_score=domain.risk_score,
                            reasons=_reasons(domain.reason_codes, catalogue),
                            position=position,
                            recorded_at=recorded_at,
                        )
                    )
                case ApplicationDecided():
                    self.automatic.append(
                        AutomaticDecisionOut(
                            decision=domain.decision,
                            decided_by=domain.decided_by,
                            rule=domain.rule,
                            recommended_outcome=domain.recommended_outcome,
                            position=position,
                            recorded_at=recorded_at,
                        )
                    )
                case ManualReviewRequested():
                    self.manual.append(
                        ManualReviewRequestOut(
                            requested_by=domain.requested_by,
                            reason=domain.reason,
                            position=position,
                            recorded_at=recorded_at,
                        )
                    )
                case ApplicationReviewed():
                    self.reviews.append(
                        ReviewOut(
                            outcome=domain.outcome,
                            reviewer=domain.reviewer,
                            reasons=[
                                ReasonOut(code=r.code, text=r.text) for r in domain.reason_codes
                            ],
                            justification=domain.justification,
                            catalogue=domain.catalogue,
                            position=position,
                            recorded_at=recorded_at,
                        )
                    )
                case AgentActionRecorded():
                    self.agents.append(
                        AgentActionOut(
                            agent_id=domain.agent_id,
                            model_name=domain.model_name,
                            action=domain.action,
                            prompt=domain.prompt,
                            prompt_sha256=domain.prompt_sha256,
                            prompt_ref=domain.prompt_ref,
                            output=domain.output,
                            rationale=domain.rationale,
                            position=position,
                            recorded_at=recorded_at,
                        )
                    )
                case ApplicationWithdrawn():
                    self.withdrawal = WithdrawalOut(
                        withdrawn_by=domain.withdrawn_by,
                        channel=domain.channel,
                        reason=domain.reason,
                        position=position,
                        recorded_at=recorded_at,
                    )


# --- HTML: one page for a person (templates/decision_record.html) ---


def _text(value: object) -> str:
    """A value as text on the page (the template escapes it): None as an em dash, decimals
    exactly, times in RFC 3339."""
    if value is None:
        return "—"
    if isinstance(value, Decimal):
        return decimal_to_json(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _describe(event: RecordEvent) -> str:
    """What happened, with its key figures, from the stored data (decoded or not)."""
    data = event.data
    get = data.get
    match event.type:
        case "ApplicationSubmitted":
            text = (
                f"Applied for {get('amount')} (income {get('income')}, "
                f"{get('employment_years')} years employed)"
            )
        case "ApplicationScored":
            codes = get("reason_codes")
            reasons = ", ".join(map(str, codes)) if isinstance(codes, list) else codes
            text = (
                f"Scored {get('risk_score')} by {get('model_name')}-{get('model_version')}; "
                f"reasons: {reasons or 'none'}"
            )
        case "ApplicationDecided":
            text = f"Automatic decision: {get('decision')} ({get('rule')})"
        case "ManualReviewRequested":
            text = f"Manual review requested: {get('reason')}"
        case "ApplicationReviewed":
            codes = get("reason_codes")
            cited = (
                ", ".join(str(r.get("code")) for r in codes if isinstance(r, dict))
                if isinstance(codes, list)
                else codes
            )
            text = f"Review: {get('outcome')} ({cited}): {get('justification')}"
        case "AgentActionRecorded":
            text = (
                f"Agent {get('agent_id')} ({get('model_name')}): {get('action')}: "
                f"{get('rationale')}"
            )
        case "ApplicationWithdrawn":
            text = f"Withdrawn via {get('channel')}: {get('reason')}"
        case _:
            text = event.type
    return text


_TEMPLATES = Environment(
    loader=PackageLoader("api.service", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)
_TEMPLATES.filters["text"] = _text
_TEMPLATES.filters["describe"] = _describe


def render_html(record: DecisionRecord) -> str:
    status = (
        record.current.status
        if record.current is not None
        else (record.folded.status if record.folded is not None else None)
    )
    return _TEMPLATES.get_template("decision_record.html").render(record=record, status=status)


def render(record: DecisionRecord, output_format: Format) -> bytes:
    if output_format == "html":
        return render_html(record).encode("utf-8")
    return dumps(to_plain(record)) + b"\n"
