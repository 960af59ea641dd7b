"""Figures, the project's targets, and the Markdown/console table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: float | None = None  # for lmq; compared with >= or <= by higher_is_better
    vs_huey: float | None = None  # lmq must be this many times better than huey
    digits: int = 0


METRICS = [
    Metric("bulk_rate", "bulk enqueue", "tasks/s", True, 100_000),
    Metric("single_p50", "single enqueue p50, idle", "ms", False, digits=3),
    Metric("single_p99", "single enqueue p99, idle", "ms", False, 1.0, digits=3),
    Metric("single_busy_p50", "single enqueue p50, worker draining", "ms", False, digits=3),
    Metric("single_busy_p99", "single enqueue p99, worker draining", "ms", False, digits=3),
    Metric("drain_async_1", "no-op drain, async, 1 process", "tasks/s", True, 30_000, 10),
    Metric("drain_async_1_run", "  same, first task to last", "tasks/s", True),
    Metric("drain_async_2", "no-op drain, async, 2 processes", "tasks/s", True),
    Metric("drain_async_2_run", "  same, first task to last", "tasks/s", True),
    Metric("drain_sync_1", "no-op drain, def, 1 process", "tasks/s", True, 15_000, 10),
    Metric("drain_sync_1_run", "  same, first task to last", "tasks/s", True),
    Metric("drain_sync_2", "no-op drain, def, 2 processes", "tasks/s", True),
    Metric("drain_sync_2_run", "  same, first task to last", "tasks/s", True),
    Metric("rss_async", "worker RSS after the async drain", "MB", False, 80, digits=1),
    Metric("rss_sync", "worker RSS after the def drain", "MB", False, 80, digits=1),
    Metric("startup", "worker start-up: spawn to first task", "s", False, digits=2),
    Metric("pickup_p50", "pickup latency p50 (trickle)", "ms", False, 10, digits=2),
    Metric("pickup_p99", "pickup latency p99 (trickle)", "ms", False, 50, digits=2),
    Metric("pickup_default_p50", "  huey's default polling: p50", "ms", False, digits=2),
    Metric("pickup_default_p99", "  huey's default polling: p99", "ms", False, digits=2),
    Metric("idle_cpu", "idle worker CPU", "% of a core", False, digits=2),
    Metric("http_wall", "HTTP drain (100 ms GETs), start to exit", "s", False, 1.5, digits=2),
    Metric("http_run", "  same, first task to last", "s", False, 1.5, digits=2),
    Metric("http_floor", "  floor: plain aiohttp client, no queue", "s", False, digits=2),
    Metric("claim_0", "claim(limit=500), 0 done rows", "ms", False, digits=2),
    Metric("claim_1m", "claim(limit=500), many done rows", "ms", False, digits=2),
    Metric("has_ready_1m", "has_ready(), many done rows", "ms", False, digits=3),
    Metric("counts_1m", "counts(), many done rows", "ms", False, digits=1),
]


@dataclass
class Results:
    values: dict[str, dict[str, float]] = field(default_factory=lambda: {"lmq": {}, "huey": {}})
    notes: dict[str, dict[str, str]] = field(default_factory=lambda: {"lmq": {}, "huey": {}})

    def put(self, system: str, key: str, value: float, note: str = "") -> None:
        self.values[system][key] = value
        if note:
            self.notes[system][key] = note

    def get(self, system: str, key: str) -> float | None:
        return self.values[system].get(key)


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def _verdict(m: Metric, lmq: float | None, huey: float | None) -> str:
    if lmq is None:
        return ""
    parts = []
    if m.target is not None:
        ok = lmq >= m.target if m.higher_is_better else lmq <= m.target
        sign = ">=" if m.higher_is_better else "<="
        parts.append(f"{'met' if ok else 'MISSED'} ({sign} {m.target:,g})")
    if m.vs_huey is not None and huey:
        better = lmq / huey if m.higher_is_better else huey / lmq
        ok = better >= m.vs_huey
        parts.append(f"{'met' if ok else 'MISSED'} (>= {m.vs_huey:g}x huey)")
    return "; ".join(parts)


def table(results: Results) -> str:
    rows = [
        "| figure | unit | lmq | huey | lmq/huey | target |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for m in METRICS:
        lmq, huey = results.get("lmq", m.key), results.get("huey", m.key)
        if lmq is None and huey is None:
            continue
        ratio = _fmt(lmq / huey, 2) + "x" if lmq is not None and huey else "—"
        label = "↳ " + m.label.strip() if m.label.startswith("  ") else m.label
        rows.append(
            f"| {label} | {m.unit} | {_fmt(lmq, m.digits)} | {_fmt(huey, m.digits)} "
            f"| {ratio} | {_verdict(m, lmq, huey)} |"
        )
    return "\n".join(rows)


def notes(results: Results) -> str:
    lines = []
    for system in ("lmq", "huey"):
        items = [(m, results.notes[system].get(m.key)) for m in METRICS]
        items = [(m, note) for m, note in items if note]
        if items:
            lines += [f"{system}:", ""]
            lines += [f"- {m.label.strip().replace('same, ', '')}: {note}" for m, note in items]
            lines.append("")
    return "\n".join(lines).rstrip()
