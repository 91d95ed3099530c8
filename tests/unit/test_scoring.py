"""The scoring models: scorecard-v2's points table, range, cut-offs, reasons and fingerprint,
and the registry. Pure: no database."""

from __future__ import annotations

import decimal
import itertools
from collections.abc import Callable
from dataclasses import fields, replace
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.service.settings import Settings
from ledger.application import MAX_EMPLOYMENT_YEARS, MONEY_LIMIT
from ledger.events import ScoringInputs
from ledger.scoring import (
    DEFAULT_MODEL,
    MODELS,
    RATIO_V1,
    SCORECARD_V2,
    Band,
    Characteristic,
    ScorecardModel,
    get_model,
)
from tests.support.strategies import any_money, years

inputs = st.builds(ScoringInputs, any_money, any_money, years)


def scorecard(amount: str, income: str, employment_years: int) -> Any:
    return SCORECARD_V2.score(ScoringInputs(Decimal(amount), Decimal(income), employment_years))


# --- Worked examples (the ones docs/architecture.md shows) ---


def test_the_readme_application_is_approved_with_its_weakest_characteristics() -> None:
    # DTI 5000/90000 = 0.056 -> 250, 6 years -> 100, amount 5000 -> 115: 300 + 465.
    score = scorecard("5000", "90000", 6)
    assert str(score.risk_score) == "765"
    assert score.decision == "approved"
    assert score.recommended_outcome is None
    # lost: years 60, amount 25, debt-to-income 0
    assert score.reason_codes == ("EMPLOYMENT_HISTORY_SHORT", "AMOUNT_TOO_HIGH")
    assert score.rule == "score 765 >= cut-off 660"


def test_both_ends_of_the_range_are_reachable() -> None:
    best = scorecard("1000", "20000", 10)
    assert (str(best.risk_score), best.decision, best.reason_codes) == ("850", "approved", ())
    worst = scorecard("600000", "500000", 0)
    assert str(worst.risk_score) == "300"
    assert (worst.decision, worst.recommended_outcome) == ("review", "declined")
    assert worst.reason_codes == (
        "DEBT_TO_INCOME_HIGH",
        "EMPLOYMENT_HISTORY_SHORT",
        "AMOUNT_TOO_HIGH",
    )
    assert (SCORECARD_V2.min_score, SCORECARD_V2.max_score) == (Decimal(300), Decimal(850))


def test_grey_zone_recommends_approval_and_ties_keep_table_order() -> None:
    # DTI 0.30 -> 170 (lost 80), 5 years -> 100 (lost 60), amount 30000 -> 80 (lost 60)
    score = scorecard("30000", "100000", 5)
    assert str(score.risk_score) == "650"
    assert (score.decision, score.recommended_outcome) == ("review", "approved")
    assert score.reason_codes == (
        "DEBT_TO_INCOME_HIGH",
        "EMPLOYMENT_HISTORY_SHORT",
        "AMOUNT_TOO_HIGH",
    )
    assert score.rule == "score 650 < cut-off 660, >= 620: recommend approve"


def test_below_the_grey_zone_recommends_decline() -> None:
    # DTI 0.5 -> 70, 3 years -> 70, amount 25000 -> 80: 520
    score = scorecard("25000", "50000", 3)
    assert str(score.risk_score) == "520"
    assert (score.decision, score.recommended_outcome) == ("review", "declined")
    assert score.rule == "score 520 < 620: recommend decline"


@pytest.mark.parametrize(
    ("amount", "income", "employment_years", "expected"),
    [
        ("1000", "10000", 0, 300 + 215 + 0 + 140),  # DTI exactly 0.10: the upper band
        ("999.99", "10000", 0, 300 + 250 + 0 + 140),  # just below 0.10
        ("5000", "1000000", 1, 300 + 250 + 40 + 115),  # amount exactly 5000
        ("4999.99", "1000000", 10, 850),
        ("100", "100", 4, 300 + 0 + 100 + 140),  # DTI exactly 1.00
        ("99.99", "100", 7, 300 + 30 + 130 + 140),
        ("500000", "9999999999.99", 80, 300 + 250 + 160 + 0),
    ],
)
def test_band_boundaries_belong_to_the_upper_band(
    amount: str, income: str, employment_years: int, expected: int
) -> None:
    assert scorecard(amount, income, employment_years).risk_score == expected


def test_the_closest_ratio_below_a_boundary_stays_in_the_lower_band() -> None:
    # 999999999.99 / 9999999999.99 is a hair under 0.10 and one cent more a hair over; bands
    # are compared exactly (lower x income <= amount < upper x income), never via a quotient.
    income = Decimal("9999999999.99")
    below, above = Decimal("999999999.99"), Decimal("1000000000.00")
    assert Fraction(below) / Fraction(income) < Fraction(1, 10) < Fraction(above) / Fraction(income)
    assert SCORECARD_V2.assess(ScoringInputs(below, income, 0))[0].points == 250
    assert SCORECARD_V2.assess(ScoringInputs(above, income, 0))[0].points == 215
    assert SCORECARD_V2.assess(ScoringInputs(Decimal("1000"), Decimal("10000"), 0))[0].points == 215


# --- Properties ---


def exact_band(characteristic: Characteristic, value: Fraction) -> Band:
    """The band holding `value`, found with exact rationals, independently of the model."""
    matches = [
        band
        for band in characteristic.bands
        if Fraction(band.lower) <= value and (band.upper is None or value < Fraction(band.upper))
    ]
    assert len(matches) == 1, f"{characteristic.name}: {value} is in {len(matches)} bands"
    return matches[0]


def measured(name: str, scoring_inputs: ScoringInputs) -> Fraction:
    return {
        "debt_to_income": Fraction(scoring_inputs.amount) / Fraction(scoring_inputs.income),
        "employment_years": Fraction(scoring_inputs.employment_years),
        "amount": Fraction(scoring_inputs.amount),
    }[name]


@settings(max_examples=400)
@given(inputs)
def test_score_is_base_plus_points_within_range_with_ranked_catalogued_reasons(
    scoring_inputs: ScoringInputs,
) -> None:
    score = SCORECARD_V2.score(scoring_inputs)
    assessments = SCORECARD_V2.assess(scoring_inputs)
    for characteristic, assessment in zip(SCORECARD_V2.characteristics, assessments, strict=True):
        band = exact_band(characteristic, measured(characteristic.name, scoring_inputs))
        assert assessment.band == band
        assert assessment.points == band.points
        assert assessment.points_lost == characteristic.max_points - band.points >= 0
    assert score.risk_score == SCORECARD_V2.base_score + sum(a.points for a in assessments)
    assert SCORECARD_V2.min_score <= score.risk_score <= SCORECARD_V2.max_score
    assert score.risk_score.as_tuple().exponent == 0  # a whole number of points

    # Reasons: every characteristic that lost points, most lost first, ties in table order.
    assert set(score.reason_codes) <= SCORECARD_V2.reason_catalogue.keys()
    assert len(score.reason_codes) <= SCORECARD_V2.max_reasons
    assert len(set(score.reason_codes)) == len(score.reason_codes)
    order = {a.reason_code: index for index, a in enumerate(assessments)}
    lost = {a.reason_code: a.points_lost for a in assessments}
    expected = sorted((code for code in lost if lost[code] > 0), key=lambda c: (-lost[c], order[c]))
    assert list(score.reason_codes) == expected[: SCORECARD_V2.max_reasons]
    assert (score.reason_codes == ()) == (score.risk_score == SCORECARD_V2.max_score)

    # Cut-off policy: approve at or above the cut-off; below it review, never decline.
    if score.risk_score >= SCORECARD_V2.approve_at_or_above:
        assert (score.decision, score.recommended_outcome) == ("approved", None)
    elif score.risk_score >= SCORECARD_V2.recommend_approve_at_or_above:
        assert (score.decision, score.recommended_outcome) == ("review", "approved")
    else:
        assert (score.decision, score.recommended_outcome) == ("review", "declined")


def ordered(a: Any, b: Any) -> tuple[Any, Any]:
    return (a, b) if a <= b else (b, a)


@settings(max_examples=300)
@given(inputs, any_money, years)
def test_score_is_monotone(
    scoring_inputs: ScoringInputs, other_money: Decimal, other_years: int
) -> None:
    def score(**changes: Any) -> Decimal:
        return SCORECARD_V2.score(replace(scoring_inputs, **changes)).risk_score

    low, high = ordered(scoring_inputs.income, other_money)
    assert score(income=low) <= score(income=high), "more income lowered the score"
    low_years, high_years = ordered(scoring_inputs.employment_years, other_years)
    assert score(employment_years=low_years) <= score(employment_years=high_years)
    low, high = ordered(scoring_inputs.amount, other_money)
    assert score(amount=low) >= score(amount=high), "a larger amount raised the score"


@given(inputs)
def test_scores_ignore_the_process_decimal_context(scoring_inputs: ScoringInputs) -> None:
    expected = SCORECARD_V2.score(scoring_inputs)
    with decimal.localcontext() as context:
        context.prec = 2
        context.rounding = decimal.ROUND_UP
        context.traps[decimal.Inexact] = True
        again = SCORECARD_V2.score(scoring_inputs)
        bounds = (SCORECARD_V2.min_score, SCORECARD_V2.max_score)
    assert again == expected
    assert str(again.risk_score) == str(expected.risk_score)
    assert bounds == (Decimal(300), Decimal(850))
    # Same model version, same recorded inputs: the same score, byte for byte.
    replay = SCORECARD_V2.score(ScoringInputs.from_data(scoring_inputs.to_data()))
    assert (str(replay.risk_score), replay.reason_codes) == (
        str(expected.risk_score),
        expected.reason_codes,
    )


# --- The points table ---


@pytest.mark.parametrize("characteristic", SCORECARD_V2.characteristics, ids=lambda c: c.name)
def test_bands_are_contiguous_and_cover_every_valid_input(characteristic: Characteristic) -> None:
    bands = characteristic.bands
    assert bands[0].lower == 0
    assert bands[-1].upper is None
    for band, following in itertools.pairwise(bands):
        assert band.upper == following.lower
        assert band.lower < band.upper
    # the smallest and largest valid values land in exactly one band each
    smallest = {"debt_to_income": Fraction(1, 10**12), "amount": Fraction(1, 100)}
    largest = {"debt_to_income": Fraction(10**12), "amount": Fraction(MONEY_LIMIT)}
    exact_band(characteristic, smallest.get(characteristic.name, Fraction(0)))
    exact_band(characteristic, largest.get(characteristic.name, Fraction(MAX_EMPLOYMENT_YEARS)))


def test_points_follow_risk_in_the_documented_direction() -> None:
    by_name = {c.name: [band.points for band in c.bands] for c in SCORECARD_V2.characteristics}
    assert by_name["debt_to_income"] == sorted(by_name["debt_to_income"], reverse=True)
    assert by_name["amount"] == sorted(by_name["amount"], reverse=True)
    assert by_name["employment_years"] == sorted(by_name["employment_years"])


def _table_with(name: str, bands: tuple[Band, ...]) -> tuple[Characteristic, ...]:
    return tuple(
        replace(c, bands=bands) if c.name == name else c for c in SCORECARD_V2.characteristics
    )


@pytest.mark.parametrize(
    "bands",
    [
        (Band(Decimal(0), Decimal(2), 10), Band(Decimal(3), None, 20)),  # a gap
        (Band(Decimal(0), Decimal(3), 10), Band(Decimal(2), None, 20)),  # an overlap
        (Band(Decimal(1), Decimal(2), 10), Band(Decimal(2), None, 20)),  # 0 not covered
        (Band(Decimal(0), Decimal(2), 10), Band(Decimal(2), Decimal(9), 20)),  # closed end
        (Band(Decimal(0), Decimal(0), 10), Band(Decimal(0), None, 20)),  # an empty band
        (),
    ],
)
def test_a_table_with_holes_or_overlaps_is_refused(bands: tuple[Band, ...]) -> None:
    with pytest.raises(ValueError, match="employment_years"):
        _table_with("employment_years", bands)


def test_inconsistent_models_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown characteristic"):
        Characteristic("credit_history", "X", SCORECARD_V2.characteristics[0].bands)
    first, second, third = SCORECARD_V2.characteristics
    with pytest.raises(ValueError, match="reason code"):
        replace(
            SCORECARD_V2,
            characteristics=(first, replace(second, reason_code=first.reason_code), third),
        )
    with pytest.raises(ValueError, match="reason code"):
        replace(SCORECARD_V2, characteristics=(first, second, replace(third, reason_code="NOPE")))
    with pytest.raises(ValueError, match="grey zone"):
        replace(SCORECARD_V2, recommend_approve_at_or_above=Decimal(700))


def test_inputs_outside_every_band_are_refused_not_scored() -> None:
    with pytest.raises(ValueError, match="below every band"):
        SCORECARD_V2.score(ScoringInputs(Decimal("-5"), Decimal("100"), 3))


# --- Fingerprints ---

# Pinned: a change to scorecard-v2's or ratio-v1's parameters is a new model version, never
# an edit (every score recorded under the old fingerprint would stop reproducing).
PINNED_FINGERPRINTS = {
    "ratio-v1": "sha256:3a8d5fab7d99aa3ed3b96eb62706cd537679bc4ddcebc1f60d53a003cc7de29c",
    "scorecard-v2": "sha256:eb65681a4feaae934bbd2f87961d2d810f75cdae6220dc5a8a9a97ca36eea326",
}


def test_registered_fingerprints_are_pinned() -> None:
    assert {key: model.fingerprint for key, model in MODELS.items()} == PINNED_FINGERPRINTS
    assert ScorecardModel().fingerprint == SCORECARD_V2.fingerprint


def _changed_band_points(model: ScorecardModel) -> tuple[Characteristic, ...]:
    first, *rest = model.characteristics
    bands = (replace(first.bands[0], points=first.bands[0].points - 1), *first.bands[1:])
    return (replace(first, bands=bands), *rest)


def _moved_boundary(model: ScorecardModel) -> tuple[Characteristic, ...]:
    first, *rest = model.characteristics
    a, b, *others = first.bands
    moved = Decimal("0.11")
    return (
        replace(first, bands=(replace(a, upper=moved), replace(b, lower=moved), *others)),
        *rest,
    )


def _changed_reason_text(model: ScorecardModel) -> tuple[tuple[str, str], ...]:
    (code, text), *rest = model.reasons
    return ((code, text + "."), *rest)


CHANGES: dict[str, Callable[[ScorecardModel], Any]] = {
    "name": lambda m: "scorecard-x",
    "version": lambda m: "v3",
    "base_score": lambda m: m.base_score + 1,
    "characteristics": _changed_band_points,
    "approve_at_or_above": lambda m: m.approve_at_or_above + 1,
    "recommend_approve_at_or_above": lambda m: m.recommend_approve_at_or_above - 1,
    "max_reasons": lambda m: m.max_reasons - 1,
    "reasons": _changed_reason_text,
    "precision": lambda m: m.precision + 1,
}


def test_every_parameter_is_in_the_fingerprint() -> None:
    assert set(CHANGES) == {field.name for field in fields(ScorecardModel)}
    seen = {SCORECARD_V2.fingerprint}
    for name, change in CHANGES.items():
        changed = replace(SCORECARD_V2, **{name: change(SCORECARD_V2)})
        assert changed.fingerprint not in seen, f"changing {name} kept the fingerprint"
        seen.add(changed.fingerprint)
    boundary = replace(SCORECARD_V2, characteristics=_moved_boundary(SCORECARD_V2))
    assert boundary.fingerprint not in seen
    # the same parameters in a new instance: the same fingerprint
    assert replace(SCORECARD_V2).fingerprint == SCORECARD_V2.fingerprint


# --- The registry ---


def test_registry_keys_name_each_model_and_version() -> None:
    assert set(MODELS) == {"ratio-v1", "scorecard-v2"}
    for key, model in MODELS.items():
        assert key == f"{model.name}-{model.version}"
        assert get_model(key) is model
        assert "UNABLE_TO_VERIFY" in model.reason_catalogue
        assert all(text for text in model.reason_catalogue.values())
    assert get_model("scorecard-v2") is SCORECARD_V2
    assert get_model("ratio-v1") is RATIO_V1
    # docs and README examples are computed with ratio-v1
    assert DEFAULT_MODEL == "ratio-v1"


@given(inputs)
def test_every_model_cites_only_its_own_catalogue(scoring_inputs: ScoringInputs) -> None:
    for model in MODELS.values():
        score = model.score(scoring_inputs)
        assert set(score.reason_codes) <= model.reason_catalogue.keys()
        assert score.decision in {"approved", "review"}
        assert score.recommended_outcome in {None, "approved", "declined"}
        if score.decision == "approved":
            assert score.recommended_outcome is None


def test_the_scoring_model_is_configuration() -> None:
    assert Settings.from_env({}).scoring_model == "ratio-v1"
    chosen = Settings.from_env({"LEDGER_SCORING_MODEL": "scorecard-v2"})
    assert get_model(chosen.scoring_model) is SCORECARD_V2
