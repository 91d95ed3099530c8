"""The pure part of the benchmark: percentiles, figures, ratios, targets, the memory trend
and the shape of the result file. No I/O, no clock reads: tests/unit/test_bench_units.py."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

RESULT_SCHEMA = "lending-ledger-bench/1"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with at least `fraction` of the values at
    or below it (p99 of 100 values is the 99th smallest). `values` need not be sorted."""
    if not values:
        raise ValueError("no values")
    if not 0 < fraction <= 1:
        raise ValueError("fraction must be in (0, 1]")
    ordered = sorted(values)
    rank = math.ceil(fraction * len(ordered))
    return ordered[max(rank, 1) - 1]


@dataclass(frozen=True, slots=True)
class LoadFigure:
    """One measured load phase: throughput and latency at a fixed number of clients."""

    name: str
    clients: int
    seconds: float
    requests: int
    errors: int
    per_second: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    statuses: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float | None] = field(default_factory=dict)
    """CPU used during the window, in cores (CPU seconds / wall seconds), by component."""


def load_figure(
    name: str,
    clients: int,
    seconds: float,
    latencies: Sequence[float],
    errors: int,
    statuses: Mapping[str, int] | None = None,
    cpu: Mapping[str, float | None] | None = None,
) -> LoadFigure:
    """`latencies` in seconds, of the requests that completed inside the window (errors
    included: a fast error must not look like a fast success, so errors are counted apart
    and make the figure fail, see `Target`)."""
    count = len(latencies)
    return LoadFigure(
        name=name,
        clients=clients,
        seconds=seconds,
        requests=count,
        errors=errors,
        per_second=count / seconds if seconds > 0 else 0.0,
        p50_ms=percentile(latencies, 0.50) * 1000 if count else None,
        p99_ms=percentile(latencies, 0.99) * 1000 if count else None,
        max_ms=max(latencies) * 1000 if count else None,
        statuses=dict(statuses or {}),
        cpu=dict(cpu or {}),
    )


@dataclass(frozen=True, slots=True)
class RateFigure:
    """An offline phase: so many events in so many seconds."""

    name: str
    events: int
    seconds: float
    per_second: float
    implementation: str
    detail: dict[str, Any] = field(default_factory=dict)


def rate_figure(
    name: str,
    events: int,
    seconds: float,
    implementation: str,
    detail: Mapping[str, Any] | None = None,
) -> RateFigure:
    return RateFigure(
        name=name,
        events=events,
        seconds=seconds,
        per_second=events / seconds if seconds > 0 else 0.0,
        implementation=implementation,
        detail=dict(detail or {}),
    )


@dataclass(frozen=True, slots=True)
class LagFigure:
    """Sequencer lag: how long committed events waited for their ledger `seq` (bench/lag.py),
    over every event numbered inside the measured windows of the apply phase."""

    events: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    poll_interval_ms: float
    """Each lag is an upper bound, too long by at most about this much."""


def lag_figure(lags: Sequence[float], poll_interval: float) -> LagFigure:
    """`lags` in seconds."""
    count = len(lags)
    return LagFigure(
        events=count,
        p50_ms=percentile(lags, 0.50) * 1000 if count else None,
        p99_ms=percentile(lags, 0.99) * 1000 if count else None,
        max_ms=max(lags) * 1000 if count else None,
        poll_interval_ms=poll_interval * 1000,
    )


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


# --- Memory ---


@dataclass(frozen=True, slots=True)
class MemoryTrend:
    samples: int
    seconds: float
    start_bytes: int
    end_bytes: int
    max_bytes: int
    slope_bytes_per_minute: float
    fitted_growth_bytes: float
    """The least-squares line's rise over the judged window (after the warm-up share)."""
    allowed_growth_bytes: float
    flat: bool


def least_squares_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    if len(xs) < 2:
        return 0.0
    mean_x = sum(xs) / len(xs)
    mean_y = sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


MEMORY_WARMUP_SHARE = 0.1
"""The first tenth of the soak is warm-up (pools filling, caches, allocator arenas)."""

MEMORY_ALLOWED_GROWTH_SHARE = 0.02
MEMORY_ALLOWED_GROWTH_FLOOR = 4 * 1024 * 1024


def memory_trend(samples: Sequence[tuple[float, int]]) -> MemoryTrend:
    """`samples`: (seconds since the soak began, RSS bytes of all service processes).

    Flat means no growth trend: a least-squares line through the samples after the
    warm-up rises by at most max(2% of the starting RSS, 4 MiB) over that window. A leak
    rises steadily and fails this; allocator noise moves up and down and does not.
    """
    if not samples:
        raise ValueError("no memory samples")
    first_judged = int(len(samples) * MEMORY_WARMUP_SHARE)
    judged = samples[first_judged:] if len(samples) - first_judged >= 2 else samples
    xs = [t for t, _ in judged]
    ys = [float(rss) for _, rss in judged]
    slope = least_squares_slope(xs, ys)  # bytes per second
    window = xs[-1] - xs[0]
    growth = slope * window
    start = judged[0][1]
    allowed = max(MEMORY_ALLOWED_GROWTH_SHARE * start, MEMORY_ALLOWED_GROWTH_FLOOR)
    return MemoryTrend(
        samples=len(samples),
        seconds=samples[-1][0] - samples[0][0],
        start_bytes=samples[0][1],
        end_bytes=samples[-1][1],
        max_bytes=max(rss for _, rss in samples),
        slope_bytes_per_minute=slope * 60,
        fitted_growth_bytes=growth,
        allowed_growth_bytes=allowed,
        flat=growth <= allowed,
    )


# --- Targets ---


@dataclass(frozen=True, slots=True)
class Target:
    key: str
    description: str
    measured: float | None
    threshold: float
    at_least: bool  # True: measured >= threshold; False: measured <= threshold
    unit: str
    aim: float | None = None
    """Where the issue would like the figure to be (reported; pass/fail is the threshold)."""

    @property
    def passed(self) -> bool | None:
        """None when the figure was not measured (or its phase had errors)."""
        if self.measured is None:
            return None
        if self.at_least:
            return self.measured >= self.threshold
        return self.measured <= self.threshold

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "MISS", None: "not measured"}[self.passed]


def _clean(figure: LoadFigure | None) -> LoadFigure | None:
    """A load figure counts only if no request failed."""
    return figure if figure is not None and figure.errors == 0 and figure.requests else None


def _p99(figure: LoadFigure | None) -> float | None:
    clean = _clean(figure)
    return clean.p99_ms if clean else None


def _rate(figure: LoadFigure | None) -> float | None:
    clean = _clean(figure)
    return clean.per_second if clean else None


@dataclass(frozen=True, slots=True)
class Figures:
    """Everything the targets are judged on."""

    noop: LoadFigure | None = None
    naive: LoadFigure | None = None
    apply: LoadFigure | None = None
    history: LoadFigure | None = None
    db_ceiling: LoadFigure | None = None
    rebuild: RateFigure | None = None
    verify: RateFigure | None = None
    bulk_import: RateFigure | None = None
    memory: MemoryTrend | None = None
    # The tutorial references (bench/reference_app.py) and the sequencer's lag.
    bare_noop: LoadFigure | None = None
    reference_apply: LoadFigure | None = None
    reference_history: LoadFigure | None = None
    sequencer_lag: LagFigure | None = None

    def ratios(self) -> dict[str, float | None]:
        return {
            "apply_vs_naive": ratio(_rate(self.apply), _rate(self.naive)),
            "apply_vs_db_ceiling": ratio(_rate(self.apply), _rate(self.db_ceiling)),
            "naive_vs_noop": ratio(_rate(self.naive), _rate(self.noop)),
            "history_vs_noop": ratio(_rate(self.history), _rate(self.noop)),
            "apply_vs_reference": ratio(_rate(self.apply), _rate(self.reference_apply)),
            "apply_p99_vs_reference": ratio(_p99(self.apply), _p99(self.reference_apply)),
            "history_vs_reference": ratio(_rate(self.history), _rate(self.reference_history)),
            "history_p99_vs_reference": ratio(_p99(self.history), _p99(self.reference_history)),
            "noop_vs_bare_noop": ratio(_rate(self.noop), _rate(self.bare_noop)),
        }


def targets(figures: Figures) -> list[Target]:
    """The issue's targets (2 cores, 32 clients, as many workers as cores)."""
    ratios = figures.ratios()

    def per_second(figure: RateFigure | None) -> float | None:
        return figure.per_second if figure is not None else None

    memory = figures.memory
    lag = figures.sequencer_lag
    return [
        Target(
            "apply_vs_naive",
            "apply throughput / naive single-INSERT throughput",
            ratios["apply_vs_naive"],
            1.0,
            True,
            "x",
        ),
        Target("apply_p99", "apply p99 latency", _p99(figures.apply), 30.0, False, "ms"),
        Target(
            "history_vs_noop",
            "history throughput / no-op HTTP ceiling",
            ratios["history_vs_noop"],
            0.5,
            True,
            "x",
        ),
        Target("history_p99", "history p99 latency", _p99(figures.history), 15.0, False, "ms"),
        # Issue 12 part 4: every projection rebuilt, swap included; verify in full (chains,
        # log, read models, seals); a bulk import of applications.
        Target(
            "rebuild",
            "rebuild of every projection, swap included",
            per_second(figures.rebuild),
            100_000,
            True,
            "events/s",
            aim=200_000,
        ),
        Target(
            "verify",
            "verify in full (chains, log, read models, seals)",
            per_second(figures.verify),
            300_000,
            True,
            "events/s",
            aim=500_000,
        ),
        Target(
            "bulk_import",
            "bulk import",
            per_second(figures.bulk_import),
            100_000,
            True,
            "events/s",
            aim=200_000,
        ),
        Target(
            "memory_growth",
            "service RSS growth trend over the soak (flat: at most the allowance)",
            memory.fitted_growth_bytes / 2**20 if memory else None,
            memory.allowed_growth_bytes / 2**20 if memory else 0.0,
            False,
            "MiB",
        ),
        # Issue 12: against the tutorial references measured in the same run.
        Target(
            "apply_vs_reference",
            "apply throughput / tutorial reference apply throughput",
            ratios["apply_vs_reference"],
            1.0,
            True,
            "x",
            aim=1.5,
        ),
        Target(
            "apply_p99_vs_reference",
            "apply p99 / tutorial reference apply p99",
            ratios["apply_p99_vs_reference"],
            1.0,
            False,
            "x",
        ),
        Target(
            "history_vs_reference",
            "history throughput / tutorial reference history throughput",
            ratios["history_vs_reference"],
            1.5,
            True,
            "x",
            aim=2.0,
        ),
        Target(
            "noop_vs_bare_noop",
            "product no-op throughput / bare FastAPI no-op throughput",
            ratios["noop_vs_bare_noop"],
            0.8,
            True,
            "x",
            aim=0.9,
        ),
        Target(
            "sequencer_lag_p99",
            "sequencer lag under the apply load, p99 (commit to ledger_log)",
            lag.p99_ms if lag is not None else None,
            50.0,
            False,
            "ms",
            aim=10.0,
        ),
    ]


def _plain(value: Any) -> Any:
    if value is None:
        return None
    return asdict(value)


def result_document(
    *,
    started_at: str,
    finished_at: str,
    environment: Mapping[str, Any],
    config: Mapping[str, Any],
    figures: Figures,
    references: Mapping[str, Any],
    generator: Mapping[str, Any],
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON result file. `schema` names this shape; add fields, never repurpose one."""
    return {
        "schema": RESULT_SCHEMA,
        "started_at": started_at,
        "finished_at": finished_at,
        "environment": dict(environment),
        "config": dict(config),
        "http": {
            "noop": _plain(figures.noop),
            "naive": _plain(figures.naive),
            "apply": _plain(figures.apply),
            "history": _plain(figures.history),
            "bare_noop": _plain(figures.bare_noop),
            "reference_apply": _plain(figures.reference_apply),
            "reference_history": _plain(figures.reference_history),
        },
        "sequencer_lag": _plain(figures.sequencer_lag),
        "db_ceiling": _plain(figures.db_ceiling),
        "offline": {
            "rebuild": _plain(figures.rebuild),
            "verify": _plain(figures.verify),
            "bulk_import": _plain(figures.bulk_import),
        },
        "memory": _plain(figures.memory),
        "ratios": figures.ratios(),
        "targets": [
            {
                "key": t.key,
                "description": t.description,
                "measured": t.measured,
                "threshold": t.threshold,
                "comparison": ">=" if t.at_least else "<=",
                "unit": t.unit,
                "passed": t.passed,
                "aim": t.aim,
            }
            for t in targets(figures)
        ],
        "references": dict(references),
        "generator": dict(generator),
        "notes": list(notes),
    }
