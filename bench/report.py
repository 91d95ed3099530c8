"""The printed report: the result document as tables (pure: document in, text out)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _number(value: Any, places: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:,.{places}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _cpu(figure: Mapping[str, Any]) -> str:
    cpu = figure.get("cpu") or {}
    parts = [f"{name} {value:.2f}" for name, value in cpu.items() if value is not None]
    return ", ".join(parts) or "-"


def _aim(target: Mapping[str, Any]) -> str:
    """The issue's aim beside its threshold, and whether the figure reaches it."""
    aim = target.get("aim")
    if aim is None:
        return ""
    measured = target["measured"]
    text = f"{target['comparison']} {_number(aim, 2)} {target['unit']}"
    if measured is None:
        return text
    reached = measured >= aim if target["comparison"] == ">=" else measured <= aim
    return f"{text} ({'reached' if reached else 'not yet'})"


def format_report(document: Mapping[str, Any]) -> str:
    ratios = document["ratios"]
    http = document["http"]
    ratio_text = {
        "noop": "HTTP ceiling",
        "naive": f"vs noop {_number(ratios['naive_vs_noop'], 2)}",
        "apply": f"vs naive {_number(ratios['apply_vs_naive'], 2)}, "
        f"vs db ceiling {_number(ratios['apply_vs_db_ceiling'], 2)}",
        "history": f"vs noop {_number(ratios['history_vs_noop'], 2)}",
        "db_ceiling": "database ceiling (no HTTP)",
        "bare_noop": f"bare FastAPI; noop / this {_number(ratios.get('noop_vs_bare_noop'), 2)}",
        "reference_apply": f"tutorial; apply / this {_number(ratios.get('apply_vs_reference'), 2)}"
        f", p99 {_number(ratios.get('apply_p99_vs_reference'), 2)}",
        "reference_history": "tutorial; history / this "
        f"{_number(ratios.get('history_vs_reference'), 2)}, "
        f"p99 {_number(ratios.get('history_p99_vs_reference'), 2)}",
    }
    order = (
        "noop",
        "bare_noop",
        "naive",
        "apply",
        "reference_apply",
        "history",
        "reference_history",
    )
    figures = [(name, http.get(name)) for name in order]
    figures += [(name, f) for name, f in http.items() if name not in order]
    load_rows = []
    for name, figure in (*figures, ("db_ceiling", document["db_ceiling"])):
        if figure is None:
            continue
        load_rows.append(
            [
                name,
                _number(figure["per_second"]),
                _number(figure["p50_ms"], 2),
                _number(figure["p99_ms"], 2),
                _number(figure["requests"]),
                _number(figure["errors"]),
                ratio_text.get(name, ""),
                _cpu(figure),
            ]
        )
    sections = [
        f"lending-ledger benchmark ({document['started_at']} .. {document['finished_at']})",
        "",
        _table(
            ["load", "req/s", "p50 ms", "p99 ms", "requests", "errors", "ratios", "CPU cores"],
            load_rows,
        ),
    ]
    rate_rows = [
        [
            figure["name"],
            _number(figure["events"]),
            _number(figure["seconds"], 2),
            _number(figure["per_second"], 0),
            figure["implementation"],
        ]
        for figure in (*document["offline"].values(), *document.get("references", {}).values())
        if isinstance(figure, Mapping) and "per_second" in figure and "events" in figure
    ]
    if rate_rows:
        sections += ["", _table(["offline", "events", "seconds", "events/s", "how"], rate_rows)]
    memory = document.get("memory")
    if memory:
        mib = 2**20
        sections += [
            "",
            f"memory (RSS of every service process over {memory['seconds']:.0f} s, "
            f"{memory['samples']} samples): start {memory['start_bytes'] / mib:.1f} MiB, "
            f"end {memory['end_bytes'] / mib:.1f} MiB, max {memory['max_bytes'] / mib:.1f} MiB, "
            f"slope {memory['slope_bytes_per_minute'] / mib:+.3f} MiB/min, fitted growth "
            f"{memory['fitted_growth_bytes'] / mib:+.2f} MiB (allowed "
            f"{memory['allowed_growth_bytes'] / mib:.2f}): "
            f"{'flat' if memory['flat'] else 'GROWING'}",
        ]
    lag = document.get("sequencer_lag")
    if lag:
        sections += [
            "",
            f"sequencer lag under the apply load (commit to ledger_log, {lag['events']:,} "
            f"events, upper bounds within ~{lag['poll_interval_ms']:.0f} ms): p50 "
            f"{_number(lag['p50_ms'], 2)} ms, p99 {_number(lag['p99_ms'], 2)} ms, max "
            f"{_number(lag['max_ms'], 2)} ms",
        ]
    generator = document.get("generator") or {}
    calibration = generator.get("calibration")
    if calibration:
        sections += [
            "",
            f"load generator alone against a trivial responder: "
            f"{_number(calibration['per_second'])} req/s at {calibration['clients']} clients "
            f"(p99 {_number(calibration['p99_ms'], 2)} ms; CPU {_cpu(calibration)})",
        ]
    target_rows = [
        [
            t["key"],
            f"{_number(t['measured'], 2)} {t['unit']}",
            f"{t['comparison']} {_number(t['threshold'], 2)} {t['unit']}",
            {True: "pass", False: "MISS", None: "not measured"}[t["passed"]],
            _aim(t),
        ]
        for t in document["targets"]
    ]
    sections += ["", _table(["target", "measured", "target", "result", "aim"], target_rows)]
    if document.get("notes"):
        sections += ["", "notes:", *(f"- {note}" for note in document["notes"])]
    return "\n".join(sections) + "\n"
