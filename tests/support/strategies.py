"""Hypothesis strategies for valid application inputs."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import strategies as st

from ledger.application import MAX_EMPLOYMENT_YEARS

money = st.integers(min_value=1, max_value=999_999_999_999).map(
    lambda cents: Decimal(cents).scaleb(-2)
)
# Realistic amounts too: uniform cents rarely hit round numbers or small loans.
everyday_money = st.integers(min_value=1, max_value=2_000_000).map(Decimal)
any_money = st.one_of(money, everyday_money)
years = st.integers(min_value=0, max_value=MAX_EMPLOYMENT_YEARS)
applicant_ids = st.from_regex(r"[A-Za-z0-9_.:\-]{3,64}", fullmatch=True)
