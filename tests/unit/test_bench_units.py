"""The benchmark tool's pure parts: percentiles, figures, ratios, targets, the memory trend,
the result document and its report, response framing and the command line. No benchmark
runs here (that would be a timed test); `python -m bench --quick` is the smoke run."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.cli import build_parser, config_from
from bench.config import PHASES, BenchConfig
from bench.dbcost import Measurement, Options, captured_arguments, fresh_call, report
from bench.lag import LagObservations, sequencer_lags
from bench.loadgen import http_request, read_response, split_clients
from bench.reference_app import ratio_score
from bench.report import format_report
from bench.stats import (
    RESULT_SCHEMA,
    Figures,
    LoadFigure,
    MemoryTrend,
    lag_figure,
    load_figure,
    memory_trend,
    percentile,
    rate_figure,
    ratio,
    result_document,
    targets,
)
from bench.workload import apply_bodies
from ledger.idempotency import lock_key
from ledger.scoring import get_model
from projections.inline import CLAIM_PARAMETERS, WRITE_PARAMETERS


def test_percentile_is_nearest_rank() -> None:
    values = [float(n) for n in range(100, 0, -1)]  # 100 .. 1, unsorted
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([1.0, 2.0], 0.5) == 1.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match="fraction"):
        percentile([1.0], 0.0)


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=300), st.floats(0.01, 1.0))
def test_a_percentile_is_a_sample_with_enough_values_at_or_below_it(
    values: list[float], fraction: float
) -> None:
    result = percentile(values, fraction)
    assert result in values
    at_or_below = sum(1 for v in values if v <= result)
    below = sum(1 for v in values if v < result)
    assert at_or_below >= fraction * len(values) - 1e-9
    assert below < fraction * len(values) + 1e-9


def test_load_figure_in_milliseconds_and_requests_per_second() -> None:
    figure = load_figure("apply", 32, 2.0, [0.001 * n for n in range(1, 101)], errors=0)
    assert figure.requests == 100
    assert figure.per_second == 50.0
    assert figure.p50_ms == pytest.approx(50.0)
    assert figure.p99_ms == pytest.approx(99.0)
    assert figure.max_ms == pytest.approx(100.0)
    empty = load_figure("apply", 32, 2.0, [], errors=3)
    assert (empty.per_second, empty.p50_ms, empty.p99_ms) == (0.0, None, None)


def test_ratio_handles_missing_and_zero() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(3.0, None) is None
    assert ratio(3.0, 0.0) is None


def _load(name: str, per_second: float, p99_ms: float, errors: int = 0) -> LoadFigure:
    return LoadFigure(name, 32, 10.0, int(per_second * 10), errors, per_second, 1.0, p99_ms, p99_ms)


def _memory(growth_mib: float) -> MemoryTrend:
    return MemoryTrend(
        10,
        600.0,
        100 * 2**20,
        100 * 2**20,
        101 * 2**20,
        0.0,
        growth_mib * 2**20,
        4 * 2**20,
        growth_mib <= 4,
    )


def _figures(**overrides: Any) -> Figures:
    base: dict[str, Any] = {
        "noop": _load("noop", 4000, 5),
        "naive": _load("naive", 1500, 20),
        "apply": _load("apply", 1600, 25),
        "history": _load("history", 2500, 10),
        "db_ceiling": _load("db_ceiling", 2000, 15),
        "rebuild": rate_figure("rebuild", 1_000_000, 8.0, "x"),
        "verify": rate_figure("verify", 1_000_000, 4.0, "x"),
        "bulk_import": rate_figure("bulk_import", 3_000_000, 50.0, "x"),
        "memory": _memory(1.0),
    }
    return Figures(**{**base, **overrides})


def _verdicts(figures: Figures) -> dict[str, bool | None]:
    return {target.key: target.passed for target in targets(figures)}


def test_targets_pass_and_miss_on_the_issues_thresholds() -> None:
    assert _verdicts(_figures()) == {
        "apply_vs_naive": True,  # 1600 / 1500
        "apply_p99": True,
        "history_vs_noop": True,  # 2500 / 4000 = 0.625
        "history_p99": True,
        "rebuild": True,  # 125,000 events/s
        "verify": False,  # 250,000 < 300,000
        "bulk_import": False,  # 60,000 < 100,000
        "memory_growth": True,
        "apply_vs_reference": None,  # the references were not measured
        "apply_p99_vs_reference": None,
        "history_vs_reference": None,
        "noop_vs_bare_noop": None,
        "sequencer_lag_p99": None,
    }
    missed = _verdicts(
        _figures(
            apply=_load("apply", 1400, 31),
            history=_load("history", 1999, 15),
            memory=_memory(5.0),
        )
    )
    assert missed["apply_vs_naive"] is False
    assert missed["apply_p99"] is False
    assert missed["history_vs_noop"] is False  # 1999 / 4000 < 0.5
    assert missed["history_p99"] is True  # exactly the limit passes
    assert missed["memory_growth"] is False


def test_a_figure_with_errors_or_missing_is_not_measured() -> None:
    verdicts = _verdicts(_figures(apply=_load("apply", 9999, 1, errors=1), rebuild=None))
    assert verdicts["apply_vs_naive"] is None
    assert verdicts["apply_p99"] is None
    assert verdicts["rebuild"] is None
    ratios = _figures(naive=_load("naive", 1500, 20, errors=2)).ratios()
    assert ratios["apply_vs_naive"] is None
    assert ratios["history_vs_noop"] == pytest.approx(0.625)


def test_memory_trend_is_flat_for_noise_and_not_for_a_leak() -> None:
    mib = 2**20
    noise = [(float(t), 200 * mib + (mib if t % 2 else -mib)) for t in range(600)]
    flat = memory_trend(noise)
    assert flat.flat
    assert flat.max_bytes == 201 * mib
    assert abs(flat.slope_bytes_per_minute) < 0.1 * mib
    leak = [(float(t), 200 * mib + t * mib // 60) for t in range(600)]  # 1 MiB a minute
    growing = memory_trend(leak)
    assert not growing.flat
    assert growing.slope_bytes_per_minute == pytest.approx(mib, rel=0.01)
    assert growing.fitted_growth_bytes > growing.allowed_growth_bytes
    # A warm-up rise in the first tenth is not a trend.
    warm = [(float(t), (150 if t < 50 else 200) * mib) for t in range(600)]
    assert memory_trend(warm).flat
    with pytest.raises(ValueError, match="no memory samples"):
        memory_trend([])


def _document(figures: Figures) -> dict[str, Any]:
    return result_document(
        started_at="2026-01-01T00:00:00+00:00",
        finished_at="2026-01-01T00:30:00+00:00",
        environment={"cpus": 2},
        config={"clients": 32},
        figures=figures,
        references={
            "sequence": {
                "name": "sequence",
                "events": 3,
                "seconds": 1.0,
                "per_second": 3.0,
                "implementation": "x",
                "detail": {},
            }
        },
        generator={"calibration": asdict(_load("calibration", 9000, 4))},
        notes=["a note"],
    )


def test_the_result_document_has_a_stable_shape_and_is_json() -> None:
    document = _document(_figures())
    assert document["schema"] == RESULT_SCHEMA
    assert set(document) >= {
        "started_at",
        "finished_at",
        "environment",
        "config",
        "http",
        "db_ceiling",
        "offline",
        "memory",
        "ratios",
        "targets",
        "references",
        "generator",
        "notes",
    }
    assert set(document["http"]) == {
        "noop",
        "naive",
        "apply",
        "history",
        "bare_noop",
        "reference_apply",
        "reference_history",
    }
    assert set(document["offline"]) == {"rebuild", "verify", "bulk_import"}
    assert document["http"]["apply"]["p99_ms"] == 25
    assert [t["key"] for t in document["targets"]] == [t.key for t in targets(_figures())]
    verify = next(t for t in document["targets"] if t["key"] == "verify")
    assert verify == {
        "key": "verify",
        "description": "verify in full (chains, log, read models, seals)",
        "measured": 250_000.0,
        "threshold": 300_000,
        "comparison": ">=",
        "unit": "events/s",
        "passed": False,
        "aim": 500_000,
    }
    assert orjson.loads(orjson.dumps(document))["ratios"] == document["ratios"]


def test_the_report_shows_every_figure_and_verdict() -> None:
    text = format_report(_document(_figures(memory=None, verify=None)))
    for expected in (
        "noop",
        "vs naive 1.07",
        "history",
        "db_ceiling",
        "rebuild",
        "sequence",
        "9,000 req/s",
        "pass",
        "not measured",
        "a note",
    ):
        assert expected in text
    assert "MISS" in format_report(_document(_figures(apply=_load("apply", 10, 99))))
    assert "not measured" in format_report(_document(Figures()))


async def _parse(raw: bytes) -> tuple[int, bool, bytes]:
    reader = asyncio.StreamReader()
    reader.feed_data(raw + b"NEXT")
    status, closing = await read_response(reader)
    return status, closing, await reader.read(4)


async def test_responses_are_framed_by_content_length_or_chunks() -> None:
    assert await _parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}") == (200, False, b"NEXT")
    assert await _parse(
        b"HTTP/1.1 422 Unprocessable\r\ncontent-length: 3\r\nConnection: close\r\n\r\nabc"
    ) == (422, True, b"NEXT")
    assert await _parse(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ) == (200, False, b"NEXT")
    assert await _parse(b"HTTP/1.1 204 No Content\r\n\r\n") == (204, False, b"NEXT")


def test_requests_are_encoded_once_with_their_length() -> None:
    assert http_request("GET", "/bench/noop") == (
        b"GET /bench/noop HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    post = http_request("POST", "/lending/apply", b'{"a":1}')
    assert post.endswith(b'Content-Length: 7\r\n\r\n{"a":1}')


def test_clients_are_spread_evenly_over_processes() -> None:
    assert split_clients(32, 1) == [32]
    assert split_clients(32, 3) == [11, 11, 10]
    assert split_clients(2, 4) == [1, 1]
    assert sum(split_clients(33, 5)) == 33


def test_the_command_line_defaults_are_the_issues_sizes_and_quick_is_small() -> None:
    parser = build_parser()
    full = config_from(parser.parse_args([]))
    assert (full.clients, full.events, full.import_applications) == (32, 1_000_000, 1_000_000)
    assert (full.history_applicants, full.soak_seconds, full.duration) == (10_000, 600.0, 20.0)
    assert full.phases == PHASES
    assert full.output is not None
    assert full.output.parent == Path(__file__).parents[2] / "bench" / "results"
    quick = config_from(parser.parse_args(["--quick", "--events", "3000", "--skip", "soak"]))
    assert quick.quick
    assert quick.events == 3000
    assert quick.duration < full.duration
    assert "soak" not in quick.phases
    only = config_from(parser.parse_args(["--only", "noop,apply", "--output", "/tmp/x.json"]))
    assert only.phases == ("noop", "apply")
    assert only.output == Path("/tmp/x.json")
    with pytest.raises(ValueError, match="unknown phase"):
        config_from(parser.parse_args(["--only", "everything"]))
    with pytest.raises(ValueError, match="--clients"):
        config_from(parser.parse_args(["--clients", "0"]))
    assert BenchConfig().with_quick_sizes().quick


def _with_references(**overrides: Any) -> Figures:
    base: dict[str, Any] = {
        "bare_noop": _load("bare_noop", 5000, 4),
        "reference_apply": _load("reference_apply", 1000, 30),
        "reference_history": _load("reference_history", 1250, 12),
        "sequencer_lag": lag_figure([0.001 * n for n in range(1, 101)], 0.005),
    }
    return _figures(**{**base, **overrides})


def test_the_reference_ratios_divide_the_product_by_its_tutorial_reference() -> None:
    ratios = _with_references().ratios()
    assert ratios["apply_vs_reference"] == pytest.approx(1.6)  # 1600 / 1000
    assert ratios["apply_p99_vs_reference"] == pytest.approx(25 / 30)
    assert ratios["history_vs_reference"] == pytest.approx(2.0)  # 2500 / 1250
    assert ratios["history_p99_vs_reference"] == pytest.approx(10 / 12)
    assert ratios["noop_vs_bare_noop"] == pytest.approx(0.8)  # 4000 / 5000
    failed = _with_references(reference_apply=_load("reference_apply", 1000, 30, errors=1))
    assert failed.ratios()["apply_vs_reference"] is None
    assert failed.ratios()["apply_p99_vs_reference"] is None


def test_the_reference_targets_use_the_issues_thresholds_and_aims() -> None:
    by_key = {t.key: t for t in targets(_with_references())}
    assert by_key["apply_vs_reference"].passed is True  # 1.6 >= 1.0
    assert (by_key["apply_vs_reference"].threshold, by_key["apply_vs_reference"].aim) == (1.0, 1.5)
    assert by_key["apply_p99_vs_reference"].passed is True  # 25 ms <= 30 ms
    assert by_key["history_vs_reference"].passed is True  # exactly 2.0
    assert by_key["history_vs_reference"].aim == 2.0
    assert by_key["noop_vs_bare_noop"].passed is True  # exactly the threshold 0.8
    assert by_key["sequencer_lag_p99"].measured == pytest.approx(99.0)
    assert by_key["sequencer_lag_p99"].passed is False  # 99 ms > 50 ms
    missed = {
        t.key: t.passed
        for t in targets(
            _with_references(
                reference_apply=_load("reference_apply", 1700, 24),
                reference_history=_load("reference_history", 1700, 5),
                bare_noop=_load("bare_noop", 5001, 4),
                sequencer_lag=lag_figure([0.002] * 100, 0.005),
            )
        )
    }
    assert missed["apply_vs_reference"] is False
    assert missed["apply_p99_vs_reference"] is False  # 25 ms > 24 ms
    assert missed["history_vs_reference"] is False  # 2500 / 1700 < 1.5
    assert missed["noop_vs_bare_noop"] is False
    assert missed["sequencer_lag_p99"] is True
    assert lag_figure([], 0.005).p99_ms is None


def test_the_report_shows_the_references_the_lag_and_the_aims() -> None:
    document = _document(_with_references())
    assert document["sequencer_lag"]["events"] == 100
    assert next(t for t in document["targets"] if t["key"] == "noop_vs_bare_noop")["aim"] == 0.9
    text = format_report(document)
    for expected in (
        "bare_noop",
        "noop / this 0.80",
        "reference_apply",
        "apply / this 1.60, p99 0.83",
        "history / this 2.00",
        "sequencer lag under the apply load",
        "p99 99.00 ms",
        ">= 1.50 x (reached)",
        ">= 0.90 x (not yet)",
        "<= 10.00 ms (not yet)",
    ):
        assert expected in text, expected


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_sequencer_lag_runs_from_the_last_poll_that_missed_the_commit_to_the_notification() -> None:
    observations = LagObservations(
        polls=[100.0, 100.005, 100.010, 100.015, 100.020],
        first_seen={11: 0, 12: 2, 13: 2},
        sequenced=[(100.012, 10), (100.018, 12), (100.030, 14)],
        start_seq=9,
    )
    rows = [
        (10, 11, _at(99.9)),  # already committed when the window opened: left out
        (11, 12, _at(100.001)),  # first seen by poll 2: committed after poll 1 (100.005)
        (12, 13, _at(100.007)),  # recorded after poll 1: recorded_at is the later bound
        (13, 14, _at(100.0)),  # never seen, numbered at 100.030: after poll 3 (100.015)
        (15, 16, _at(100.0)),  # numbered after the window: no notification, left out
    ]
    lags = sequencer_lags(observations, rows)
    assert lags == pytest.approx([0.013, 0.011, 0.015])
    # Seqs at or below the start are not the window's; an empty window has no lags.
    assert sequencer_lags(observations, [(9, 99, _at(100.0))]) == []
    assert sequencer_lags(LagObservations(), rows) == []


def test_the_tutorial_score_is_the_ratio_score_in_decimal() -> None:
    assert ratio_score(Decimal(10000), Decimal(8000), 0) == (Decimal("80.00"), "approved")
    assert ratio_score(Decimal("30000.50"), Decimal(20000), 3) == (Decimal("81.67"), "approved")
    assert ratio_score(Decimal(50000), Decimal(30000), 2) == (Decimal("70.00"), "review")


# --- bench/dbcost.py: the database cost of one apply ---


async def test_dbcost_captures_the_services_arguments_and_renames_every_id() -> None:
    """The calls are the service's own (projections/inline.py's parameters, in order), and
    each fresh call is a new application: no id of the template survives anywhere, not in
    the JSON, the stream id or the canonical bytes in hex."""
    [body] = apply_bodies(1, seed=3)
    for keyed in (False, True):
        template = await captured_arguments(body, get_model("ratio-v1"), keyed=keyed)
        assert tuple(template) == WRITE_PARAMETERS + (CLAIM_PARAMETERS if keyed else ())
        events = orjson.loads(bytes(template["events"]))
        old_ids = [str(template["application_id"]), *(e["event_id"] for e in events)]
        assert old_ids[0].encode().hex() in events[0]["hashed"]
        call = fresh_call(template)
        rendered = repr(call).encode() + b"".join(
            bytes(v) for v in call.values() if isinstance(v, bytes)
        )
        for old in old_ids:
            assert old.encode() not in rendered
            assert old.encode().hex().encode() not in rendered
        assert call["stream_id"].endswith(str(call["application_id"]))
        if keyed:
            assert call["key"] != template["key"]
            assert call["lock"] == lock_key(call["scope"], call["key"])


def test_dbcost_reports_each_variant_against_its_reference_in_the_same_window() -> None:
    options = Options(clients=2, calls=1000, rounds=2)
    for round_number, (reference_cpu, variant_cpu) in enumerate(((0.9, 0.8), (0.7, 0.65)), 1):
        for name, cpu in (("no_sequencer", reference_cpu), ("no_history", variant_cpu)):
            options.results.append(
                Measurement(
                    name, "no_sequencer/no_history", round_number, 1000, cpu, 0.0, 0.01, 7000
                )
            )
    lines = report(options, 1.0, 2.0).splitlines()
    [line] = [line for line in lines if line.startswith("| no_history ")]
    # Medians over the rounds: 725 us per call; the differences were -100 and -50 us.
    assert "| 725 |" in line
    assert "-75 (-100, -50) against no_sequencer" in line
    assert "| 7000 |" in line
