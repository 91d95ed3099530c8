"""Scoring models: versioned code with a fingerprint of their parameters.

A model is identified by name and version; its fingerprint is the SHA-256 of the canonical
bytes of its parameters, so a changed threshold or weight under an unchanged version number
shows up as a different fingerprint. Every figure is a Decimal computed in an explicit local
context, so the global decimal context of the process can never change a score: the same
model version on the same inputs reproduces the same score, byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Protocol

from ledger.canonical import canonical_bytes
from ledger.events import ScoringInputs


@dataclass(frozen=True, slots=True)
class Score:
    risk_score: Decimal
    decision: str  # "approved" | "review"
    reason_codes: tuple[str, ...]  # ranked: the principal reason first
    rule: str
    # For "review": the outcome the model recommends to the analyst ("approved" or
    # "declined"), or None when it makes no recommendation. A model never declines itself.
    recommended_outcome: str | None = None


class ScoringModel(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def reason_catalogue(self) -> Mapping[str, str]:
        """Every reason code the model (or an analyst deciding on its score) may cite,
        with the text an adverse-action notice would show."""
        ...

    def score(self, inputs: ScoringInputs) -> Score: ...


def fingerprint_of(name: str, version: str, parameters: dict[str, str | int]) -> str:
    document = {"name": name, "version": version, "parameters": parameters}
    return "sha256:" + hashlib.sha256(canonical_bytes(document)).hexdigest()


@dataclass(frozen=True, slots=True)
class RatioModel:
    """`ratio-v1`, the product's original rule.

    risk score = income / amount x 100 + employment years x 5, rounded half-even to 2
    places; approved when the score is at least the threshold (80), else review.
    Computed as (income x 100) / amount in a 28-digit context (one rounding, exact for
    every valid input's integer part), then the years term is added and the sum quantized.
    """

    name: str = "ratio"
    version: str = "v1"
    ratio_multiplier: Decimal = Decimal(100)
    years_weight: Decimal = Decimal(5)
    approve_at_or_above: Decimal = Decimal(80)
    places: int = 2
    precision: int = 28

    @property
    def parameters(self) -> dict[str, str | int]:
        return {
            "ratio_multiplier": str(self.ratio_multiplier),
            "years_weight": str(self.years_weight),
            "approve_at_or_above": str(self.approve_at_or_above),
            "places": self.places,
            "precision": self.precision,
            "rounding": ROUND_HALF_EVEN,
        }

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.name, self.version, self.parameters)

    @property
    def reason_catalogue(self) -> Mapping[str, str]:
        # ratio-v1 scores cite no reasons (its recorded scores must reproduce as they are);
        # this catalogue is what an analyst may cite when declining one of its reviews.
        return RATIO_V1_REASONS

    def score(self, inputs: ScoringInputs) -> Score:
        context = Context(prec=self.precision, rounding=ROUND_HALF_EVEN)
        ratio_points = context.divide(
            context.multiply(inputs.income, self.ratio_multiplier), inputs.amount
        )
        years_points = context.multiply(Decimal(inputs.employment_years), self.years_weight)
        quantum = Decimal(1).scaleb(-self.places)
        risk_score = context.add(ratio_points, years_points).quantize(quantum, context=context)
        if risk_score >= self.approve_at_or_above:
            return Score(
                risk_score, "approved", (), f"score {risk_score} >= {self.approve_at_or_above}"
            )
        return Score(risk_score, "review", (), f"score {risk_score} < {self.approve_at_or_above}")


RATIO_V1_REASONS: Mapping[str, str] = {
    "INCOME_LOW_FOR_AMOUNT": "Income is too low for the amount requested",
    "EMPLOYMENT_HISTORY_SHORT": "Length of employment is too short",
    "AMOUNT_TOO_HIGH": "The amount requested is too high",
    "UNABLE_TO_VERIFY": "Unable to verify the information provided",
}

RATIO_V1 = RatioModel()

MODELS: dict[str, ScoringModel] = {"ratio-v1": RATIO_V1}
"""Every model version the service has ever scored with, by `<name>-<version>`."""

DEFAULT_MODEL = "ratio-v1"


def get_model(key: str) -> ScoringModel:
    try:
        return MODELS[key]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown scoring model {key!r}; known: {known}") from None
