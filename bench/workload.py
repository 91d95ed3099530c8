"""The data a run sends and loads, generated from a seed (the same run, the same data)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

APPLY_APPLICANTS = 100_000
HISTORY_PREFIX = "bench-hist-"


def _application(rng: random.Random, applicant_id: str) -> dict[str, object]:
    """One application as clients send it: JSON numbers, some amounts with cents, written
    as exact decimal tokens (never a float's repr). The mix gives approvals and reviews."""
    whole = rng.randrange(1_000, 60_000, 100)
    cents = rng.choice((0, 0, 0, 50, 99))
    amount = f"{whole}.{cents:02d}" if cents else str(whole)
    return {
        "applicant_id": applicant_id,
        "amount": orjson.Fragment(amount.encode()),
        "income": rng.randrange(15_000, 250_000, 500),
        "employment_years": rng.randrange(0, 41),
    }


def apply_bodies(count: int, seed: int) -> list[bytes]:
    """Distinct POST /lending/apply bodies (the naive endpoint gets the same ones)."""
    rng = random.Random(seed)  # noqa: S311 (benchmark data, not secrets)
    return [
        orjson.dumps(_application(rng, f"bench-apply-{rng.randrange(APPLY_APPLICANTS):06d}"))
        for _ in range(count)
    ]


def history_applicant(number: int) -> str:
    return f"{HISTORY_PREFIX}{number:06d}"


def history_paths(applicants: int, seed: int) -> list[str]:
    """GET paths over every seeded applicant, in a shuffled order."""
    paths = [f"/lending/applicants/{history_applicant(n)}/history" for n in range(applicants)]
    random.Random(seed).shuffle(paths)  # noqa: S311
    return paths


def write_import_file(
    path: Path,
    applications: int,
    *,
    applicants: int,
    applicant_prefix: str,
    seed: int,
    now: datetime,
) -> None:
    """An import file: `applications` lines over `applicants` applicants (in turn), half of
    them with a historical `submitted_at` within the last three years."""
    rng = random.Random(seed)  # noqa: S311
    with path.open("wb") as file:
        for number in range(applications):
            line = _application(rng, f"{applicant_prefix}{number % applicants:06d}")
            if number % 2:
                moment = now - timedelta(seconds=rng.randrange(1, 3 * 365 * 86_400))
                line["submitted_at"] = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            file.write(orjson.dumps(line) + b"\n")
