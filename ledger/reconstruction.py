"""Score reconstruction: re-run a recorded score with the model version it names, and compare.

Pure: no I/O. The HTTP endpoint and `lending-ledger rescore` read the events and call this.

A recorded score is the `ApplicationScored` event (inputs, model name, version and
fingerprint, risk score, reason codes) plus the policy decision recorded by the same command
(the `ApplicationDecided` event caused by it: decision, rule and recommended outcome). The
model version the score names is looked up in the registry and run on the recorded inputs;
the result matches when the risk score (digit for digit, as recorded), the ranked reason
codes and every recorded decision output are equal.

Statuses, in order of precedence:

- `model_unknown`: the registry has no such model version; nothing is recomputed.
- `fingerprint_mismatch`: the registry's version has other parameters than the one that
  scored; it is still run, and its result shown, but it cannot match.
- `recompute_failed`: the model refused the recorded inputs (they are outside its domain).
- `mismatch`: recomputed, and some output differs (`differences` names which).
- `match`: recomputed, and everything recorded is reproduced.
- `unreadable`: the stored event does not decode at all (only from `check_recorded_score`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from ledger.errors import LedgerError
from ledger.events import (
    REGISTRY,
    ApplicationDecided,
    ApplicationScored,
    DomainEvent,
    EventRegistry,
    RecordedEvent,
    decimal_to_json,
)
from ledger.scoring import MODELS, Score, ScoringModel

Status = Literal[
    "match",
    "mismatch",
    "model_unknown",
    "fingerprint_mismatch",
    "recompute_failed",
    "unreadable",
]

MATCH: Final = "match"
MISMATCH: Final = "mismatch"
MODEL_UNKNOWN: Final = "model_unknown"
FINGERPRINT_MISMATCH: Final = "fingerprint_mismatch"
RECOMPUTE_FAILED: Final = "recompute_failed"
UNREADABLE: Final = "unreadable"
STATUSES: Final[tuple[Status, ...]] = (
    MATCH,
    MISMATCH,
    MODEL_UNKNOWN,
    FINGERPRINT_MISMATCH,
    RECOMPUTE_FAILED,
    UNREADABLE,
)

# What a corrupted payload can raise while it is decoded: a missing key, a wrong type, a
# malformed uuid or decimal (decimal.InvalidOperation is an ArithmeticError).
_DECODE_ERRORS = (LedgerError, KeyError, TypeError, ValueError, ArithmeticError, AttributeError)


@dataclass(frozen=True, slots=True)
class RecordedDecision:
    """The policy decision recorded by the same command as the score."""

    decision: str
    rule: str
    recommended_outcome: str | None  # None also for decisions recorded before the field


@dataclass(frozen=True, slots=True)
class ScoreReconstruction:
    status: Status
    scored: ApplicationScored | None  # None only when the event is unreadable
    decision: RecordedDecision | None  # None when no policy decision was found
    registry_fingerprint: str | None  # None when the model is unknown
    recomputed: Score | None  # None when unknown, unreadable, or the model refused
    differences: tuple[str, ...]  # which recorded outputs the recomputation differs in
    detail: str

    @property
    def match(self) -> bool:
        return self.status == MATCH

    @property
    def model_key(self) -> str | None:
        if self.scored is None:
            return None
        return model_key(self.scored)


@dataclass(frozen=True, slots=True)
class ScoreCheck:
    """A reconstruction and the stored event it reconstructs."""

    event: RecordedEvent
    reconstruction: ScoreReconstruction


def model_key(scored: ApplicationScored) -> str:
    return f"{scored.model_name}-{scored.model_version}"


def recorded_decision(event: DomainEvent) -> RecordedDecision | None:
    if not isinstance(event, ApplicationDecided):
        return None
    return RecordedDecision(event.decision, event.rule, event.recommended_outcome)


def differences(
    scored: ApplicationScored, decision: RecordedDecision | None, recomputed: Score
) -> tuple[str, ...]:
    """The names of the recorded outputs that the recomputed score does not reproduce."""
    found = []
    # Digit for digit: "765.0" and "765" are equal numbers but not the same record.
    if decimal_to_json(scored.risk_score) != decimal_to_json(recomputed.risk_score):
        found.append("risk_score")
    if scored.reason_codes != recomputed.reason_codes:
        found.append("reason_codes")
    if decision is not None:
        if decision.decision != recomputed.decision:
            found.append("decision")
        if decision.rule != recomputed.rule:
            found.append("rule")
        if decision.recommended_outcome != recomputed.recommended_outcome:
            found.append("recommended_outcome")
    return tuple(found)


def reconstruct(
    scored: ApplicationScored,
    models: Mapping[str, ScoringModel] = MODELS,
    decision: RecordedDecision | None = None,
) -> ScoreReconstruction:
    """Recompute one recorded score with the registry's version of its model. Never raises
    for an unknown model, a changed model or inputs the model refuses: it reports them."""
    key = model_key(scored)
    model = models.get(key)
    if model is None:
        known = ", ".join(sorted(models)) or "none"
        return ScoreReconstruction(
            MODEL_UNKNOWN,
            scored,
            decision,
            None,
            None,
            (),
            f"model {key} is not in the registry (known: {known}); nothing recomputed",
        )
    registry_fingerprint = model.fingerprint
    recomputed: Score | None = None
    failure: str | None = None
    try:
        recomputed = model.score(scored.inputs)
    except (ArithmeticError, ValueError) as error:
        failure = f"{key} refused the recorded inputs: {error}"
    found = () if recomputed is None else differences(scored, decision, recomputed)
    status: Status

    if registry_fingerprint != scored.model_fingerprint:
        status = FINGERPRINT_MISMATCH
        detail = (
            f"the registry's {key} has fingerprint {registry_fingerprint}, the score recorded "
            f"{scored.model_fingerprint}: recomputed with the registry's version, "
            + (failure or _outcome_summary(scored, decision, recomputed, found))
        )
    elif failure is not None:
        status, detail = RECOMPUTE_FAILED, failure
    elif found:
        assert recomputed is not None
        status, detail = MISMATCH, _outcome_summary(scored, decision, recomputed, found)
    else:
        status, detail = MATCH, f"{key} reproduces the recorded score and reasons"
    return ScoreReconstruction(
        status, scored, decision, registry_fingerprint, recomputed, found, detail
    )


def _outcome_summary(
    scored: ApplicationScored,
    decision: RecordedDecision | None,
    recomputed: Score | None,
    found: tuple[str, ...],
) -> str:
    if recomputed is None or not found:
        return "which reproduces the recorded outputs"
    recorded: dict[str, object] = {
        "risk_score": decimal_to_json(scored.risk_score),
        "reason_codes": list(scored.reason_codes),
    }
    again: dict[str, object] = {
        "risk_score": decimal_to_json(recomputed.risk_score),
        "reason_codes": list(recomputed.reason_codes),
        "decision": recomputed.decision,
        "rule": recomputed.rule,
        "recommended_outcome": recomputed.recommended_outcome,
    }
    if decision is not None:
        recorded |= {
            "decision": decision.decision,
            "rule": decision.rule,
            "recommended_outcome": decision.recommended_outcome,
        }
    parts = [f"{name} recorded {recorded[name]!r}, recomputed {again[name]!r}" for name in found]
    return "differs: " + "; ".join(parts)


def check_recorded_score(
    scored: RecordedEvent,
    decided: RecordedEvent | None,
    models: Mapping[str, ScoringModel] = MODELS,
    registry: EventRegistry = REGISTRY,
) -> ScoreCheck:
    """Reconstruct a stored `ApplicationScored` event with its policy decision (if found).
    A payload that does not decode is reported as `unreadable`, not raised."""
    try:
        event = scored.decode(registry)
        if not isinstance(event, ApplicationScored):
            raise TypeError(f"{scored.event_type} is not a score event")
        decision = None if decided is None else recorded_decision(decided.decode(registry))
    except _DECODE_ERRORS as error:
        detail = f"the stored event does not decode: {type(error).__name__}: {error}"
        unreadable = ScoreReconstruction(UNREADABLE, None, None, None, None, (), detail)
        return ScoreCheck(scored, unreadable)
    return ScoreCheck(scored, reconstruct(event, models, decision))


def reconstruct_stream(
    events: Sequence[RecordedEvent],
    models: Mapping[str, ScoringModel] = MODELS,
    registry: EventRegistry = REGISTRY,
) -> list[ScoreCheck]:
    """Every recorded score of one stream, in stream order, each with the policy decision
    of its own command: the `ApplicationDecided` event whose causation is the score."""
    decisions: dict[str, RecordedEvent] = {}
    for event in events:
        if event.event_type == ApplicationDecided.event_type and isinstance(event.metadata, dict):
            cause = event.metadata.get("causation_id")
            if isinstance(cause, str):
                decisions.setdefault(cause, event)
    return [
        check_recorded_score(event, decisions.get(str(event.event_id)), models, registry)
        for event in events
        if event.event_type == ApplicationScored.event_type
    ]
