"""Medians over runs, spreads, ratios podling/containerd, as a markdown table."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

Metrics = dict[str, float]
Run = dict[str, Metrics]  # runtime name -> metrics of one run

# (substring of the metric name, highest ratio podling/containerd the issue asks for)
TARGETS = (
    ("full pod start", 0.6),
    ("concurrent pod starts", 0.6),
    ("helper PSS per pod", 0.2),
    ("daemon RSS", 1.0),
    ("pods, p50", 1.0),
    ("pods, p99", 1.0),
    ("cold pull", 0.8),
)


def target(metric: str) -> float | None:
    if "daemon CPU" in metric:
        return None
    return next((t for key, t in TARGETS if key in metric), None)


def summary(values: Sequence[float]) -> tuple[float, float, float]:
    """median, min, max"""
    return statistics.median(values), min(values), max(values)


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _cell(values: Sequence[float]) -> str:
    med, lo, hi = summary(values)
    return _fmt(med) if len(values) == 1 else f"{_fmt(med)} ({_fmt(lo)}-{_fmt(hi)})"


def ratios(runs: Sequence[Run]) -> dict[str, float]:
    """Per metric: median podling / median containerd (metrics both runtimes have)."""
    out = {}
    for metric in runs[0]["podling"]:
        p = statistics.median(r["podling"][metric] for r in runs)
        c = statistics.median(r["containerd"][metric] for r in runs)
        if c > 0:
            out[metric] = p / c
    return out


def table(runs: Sequence[Run]) -> str:
    """Markdown: workload | podling | containerd | ratio | target (met?)."""
    rows = [
        "| workload | podling | containerd | ratio p/c | target |",
        "|---|---:|---:|---:|---|",
    ]
    rat = ratios(runs)
    for metric in runs[0]["podling"]:
        p = [r["podling"][metric] for r in runs]
        c = [r["containerd"][metric] for r in runs]
        ratio = f"{rat[metric]:.2f}" if metric in rat else "-"
        goal = target(metric)
        mark = ""
        if goal is not None and metric in rat:
            mark = f"≤ {goal} {'met' if rat[metric] <= goal else 'missed'}"
        rows.append(f"| {metric} | {_cell(p)} | {_cell(c)} | {ratio} | {mark} |")
    return "\n".join(rows) + "\n"
