"""Scoring models: versioned code with a fingerprint of their parameters.

A model is identified by name and version; its fingerprint is the SHA-256 of the canonical
bytes of its parameters, so a changed threshold or weight under an unchanged version number
shows up as a different fingerprint. Every figure is a Decimal computed in an explicit local
context, so the global decimal context of the process can never change a score: the same
model version on the same inputs reproduces the same score, byte for byte.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)
from types import MappingProxyType
from typing import Any, Protocol

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


def fingerprint_of(name: str, version: str, parameters: Mapping[str, Any]) -> str:
    """`parameters` is a JSON value of dicts, lists, str and int (decimals as strings)."""
    document = {"name": name, "version": version, "parameters": parameters}
    return "sha256:" + hashlib.sha256(canonical_bytes(document)).hexdigest()


@functools.lru_cache(maxsize=64)
def _fingerprint(model: RatioModel | ScorecardModel) -> str:
    """A model's fingerprint, once per model: models are frozen and hashable, and every
    score names it (so every apply asked for it)."""
    return fingerprint_of(model.name, model.version, model.parameters)


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
        return _fingerprint(self)

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


# --- scorecard-v2: a points-based scorecard ---

ONE = Decimal(1)
ZERO = Decimal(0)

Measure = Callable[[ScoringInputs], tuple[Decimal, Decimal]]
"""A characteristic's value as (numerator, denominator), so a ratio is never divided."""

MEASURES: Mapping[str, Measure] = MappingProxyType(
    {
        "debt_to_income": lambda inputs: (inputs.amount, inputs.income),
        "employment_years": lambda inputs: (Decimal(inputs.employment_years), ONE),
        "amount": lambda inputs: (inputs.amount, ONE),
    }
)


@dataclass(frozen=True, slots=True)
class Band:
    """Values v with lower <= v < upper earn `points`; `upper` None means no upper bound."""

    lower: Decimal
    upper: Decimal | None
    points: int

    def to_data(self) -> dict[str, Any]:
        upper = None if self.upper is None else str(self.upper)
        return {"lower": str(self.lower), "upper": upper, "points": self.points}


@dataclass(frozen=True, slots=True)
class Characteristic:
    """One row group of the points table: what is measured, its bands, and the reason code
    cited when an applicant earns less than the characteristic's best band."""

    name: str  # a key of MEASURES
    reason_code: str
    bands: tuple[Band, ...]

    def __post_init__(self) -> None:
        if self.name not in MEASURES:
            raise ValueError(f"unknown characteristic {self.name!r}")
        if not self.bands or self.bands[0].lower != ZERO or self.bands[-1].upper is not None:
            raise ValueError(f"{self.name}: bands must run from 0 to an open last band")
        for band, following in itertools.pairwise(self.bands):
            if band.upper is None or band.upper != following.lower:
                raise ValueError(f"{self.name}: band {band} does not meet {following}")
        for band in self.bands:
            if band.upper is not None and not band.lower < band.upper:
                raise ValueError(f"{self.name}: empty band {band}")

    @property
    def max_points(self) -> int:
        return max(band.points for band in self.bands)

    def band_for(self, inputs: ScoringInputs, context: Context) -> Band:
        # lower <= numerator / denominator < upper, tested as lower x denominator <=
        # numerator < upper x denominator: exact products, so no rounding of the ratio can
        # move a value across a band boundary.
        numerator, denominator = MEASURES[self.name](inputs)
        if numerator < context.multiply(self.bands[0].lower, denominator):
            raise ValueError(f"{self.name}: {numerator}/{denominator} is below every band")
        for band in self.bands:
            if band.upper is None or numerator < context.multiply(band.upper, denominator):
                return band
        raise AssertionError("unreachable: the last band has no upper bound")

    def to_data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reason_code": self.reason_code,
            "bands": [band.to_data() for band in self.bands],
        }


def _bands(*rows: tuple[str, str | None, int]) -> tuple[Band, ...]:
    return tuple(
        Band(Decimal(lower), None if upper is None else Decimal(upper), points)
        for lower, upper, points in rows
    )


SCORECARD_V2_POINTS: tuple[Characteristic, ...] = (
    Characteristic(
        "debt_to_income",  # amount / income
        "DEBT_TO_INCOME_HIGH",
        _bands(
            ("0", "0.10", 250),
            ("0.10", "0.20", 215),
            ("0.20", "0.35", 170),
            ("0.35", "0.50", 120),
            ("0.50", "0.75", 70),
            ("0.75", "1.00", 30),
            ("1.00", None, 0),
        ),
    ),
    Characteristic(
        "employment_years",
        "EMPLOYMENT_HISTORY_SHORT",
        _bands(
            ("0", "1", 0),
            ("1", "2", 40),
            ("2", "4", 70),
            ("4", "7", 100),
            ("7", "10", 130),
            ("10", None, 160),
        ),
    ),
    Characteristic(
        "amount",
        "AMOUNT_TOO_HIGH",
        _bands(
            ("0", "5000", 140),
            ("5000", "25000", 115),
            ("25000", "100000", 80),
            ("100000", "500000", 40),
            ("500000", None, 0),
        ),
    ),
)
"""The points table. The order of the characteristics breaks ties between reasons."""

SCORECARD_V2_REASONS: tuple[tuple[str, str], ...] = (
    # cited by the scorecard, one per characteristic
    ("DEBT_TO_INCOME_HIGH", "Amount of credit requested is excessive in relation to income"),
    ("EMPLOYMENT_HISTORY_SHORT", "Length of employment is too short"),
    ("AMOUNT_TOO_HIGH", "Amount of credit requested is too high"),
    # cited only by an analyst deciding a review
    ("UNABLE_TO_VERIFY", "Unable to verify the information provided"),
    ("UNABLE_TO_VERIFY_INCOME", "Unable to verify income"),
    ("UNABLE_TO_VERIFY_EMPLOYMENT", "Unable to verify employment"),
    ("INCOMPLETE_APPLICATION", "Incomplete application"),
)


@dataclass(frozen=True, slots=True)
class Assessment:
    """How one characteristic scored: its band, the points earned and the points lost
    against the characteristic's best band."""

    characteristic: str
    reason_code: str
    band: Band
    points: int
    max_points: int

    @property
    def points_lost(self) -> int:
        return self.max_points - self.points


@dataclass(frozen=True, slots=True)
class ScorecardModel:
    """`scorecard-v2`: base score plus the points of each characteristic's band.

    Score range: base (300) + the sum of each characteristic's lowest points (0) up to base +
    the sum of its highest points (250 + 160 + 140), i.e. 300 to 850; both ends reachable.
    Policy: approved at or above `approve_at_or_above` (660); below it, review, with the
    recommendation "approved" at or above `recommend_approve_at_or_above` (620, the grey
    zone) and "declined" under it. Only an analyst may decline.
    Reasons, for every score: each characteristic that lost points against its best band,
    ranked by points lost, ties in table order, at most `max_reasons`; an approved score lists
    its weak characteristics too, and a score that lost nothing lists none.
    Every operation is exact: the context traps Inexact, so a rounding would raise.
    """

    name: str = "scorecard"
    version: str = "v2"
    base_score: Decimal = Decimal(300)
    characteristics: tuple[Characteristic, ...] = SCORECARD_V2_POINTS
    approve_at_or_above: Decimal = Decimal(660)
    recommend_approve_at_or_above: Decimal = Decimal(620)
    max_reasons: int = 4
    reasons: tuple[tuple[str, str], ...] = SCORECARD_V2_REASONS
    precision: int = 28

    def __post_init__(self) -> None:
        codes = [c.reason_code for c in self.characteristics]
        if len(set(codes)) != len(codes) or not set(codes) <= dict(self.reasons).keys():
            raise ValueError("each characteristic needs its own catalogued reason code")
        if not self.recommend_approve_at_or_above <= self.approve_at_or_above:
            raise ValueError("the grey zone must lie below the cut-off")

    @property
    def parameters(self) -> dict[str, Any]:
        return {
            "base_score": str(self.base_score),
            "characteristics": [c.to_data() for c in self.characteristics],
            "approve_at_or_above": str(self.approve_at_or_above),
            "recommend_approve_at_or_above": str(self.recommend_approve_at_or_above),
            "max_reasons": self.max_reasons,
            "reasons": [[code, text] for code, text in self.reasons],
            "precision": self.precision,
            "rounding": ROUND_HALF_EVEN,
            "traps": ["InvalidOperation", "DivisionByZero", "Overflow", "Inexact"],
        }

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self)

    @property
    def reason_catalogue(self) -> Mapping[str, str]:
        return MappingProxyType(dict(self.reasons))

    @property
    def min_score(self) -> Decimal:
        lowest = sum(min(band.points for band in c.bands) for c in self.characteristics)
        return self._context().add(self.base_score, Decimal(lowest))

    @property
    def max_score(self) -> Decimal:
        highest = sum(c.max_points for c in self.characteristics)
        return self._context().add(self.base_score, Decimal(highest))

    def _context(self) -> Context:
        return Context(
            prec=self.precision,
            rounding=ROUND_HALF_EVEN,
            traps=[InvalidOperation, DivisionByZero, Overflow, Inexact],
        )

    def assess(self, inputs: ScoringInputs) -> tuple[Assessment, ...]:
        context = self._context()
        assessments = []
        for characteristic in self.characteristics:
            band = characteristic.band_for(inputs, context)
            assessments.append(
                Assessment(
                    characteristic.name,
                    characteristic.reason_code,
                    band,
                    band.points,
                    characteristic.max_points,
                )
            )
        return tuple(assessments)

    def score(self, inputs: ScoringInputs) -> Score:
        context = self._context()
        assessments = self.assess(inputs)
        risk_score = self.base_score
        for assessment in assessments:
            risk_score = context.add(risk_score, Decimal(assessment.points))
        ranked = sorted(
            (a for a in assessments if a.points_lost > 0),
            key=lambda a: -a.points_lost,  # sorted() is stable: ties keep table order
        )
        reason_codes = tuple(a.reason_code for a in ranked[: self.max_reasons])
        cut_off, grey_floor = self.approve_at_or_above, self.recommend_approve_at_or_above
        if risk_score >= cut_off:
            rule = f"score {risk_score} >= cut-off {cut_off}"
            return Score(risk_score, "approved", reason_codes, rule)
        if risk_score >= grey_floor:
            rule = f"score {risk_score} < cut-off {cut_off}, >= {grey_floor}: recommend approve"
            return Score(risk_score, "review", reason_codes, rule, "approved")
        rule = f"score {risk_score} < {grey_floor}: recommend decline"
        return Score(risk_score, "review", reason_codes, rule, "declined")


SCORECARD_V2 = ScorecardModel()

MODELS: dict[str, ScoringModel] = {"ratio-v1": RATIO_V1, "scorecard-v2": SCORECARD_V2}
"""Every model version the service has ever scored with, by `<name>-<version>`. Never remove
or change an entry: past scores are reconstructed with the version they recorded."""

DEFAULT_MODEL = "ratio-v1"
"""New applications use LEDGER_SCORING_MODEL, or this when it is unset."""


def get_model(key: str) -> ScoringModel:
    try:
        return MODELS[key]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown scoring model {key!r}; known: {known}") from None
