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


# --- server backends (bench --backend postgresql|redis|mysql) -------------------------------

SERVER_METRICS = [
    Metric("drain", "no-op drain, 1 worker process", "tasks/s", True),
    Metric("drain_run", "  same, first task to last", "tasks/s", True),
    Metric("drain_cpu", "  worker CPU time per task", "µs", False),
    Metric("drain_server_cpu", "  server CPU time per task (all its clients)", "µs", False),
    Metric("pickup_p50", "pickup latency p50 (idle worker, trickle)", "ms", False, digits=2),
    Metric("pickup_p99", "pickup latency p99 (idle worker, trickle)", "ms", False, digits=2),
    Metric("bulk", "bulk enqueue (batch API)", "tasks/s", True),
    Metric("enqueue_loop", "enqueue, one call per task", "tasks/s", True),
    Metric("claim_1k", "claim(250), 1,000 pending", "ms", False, digits=2),
    Metric("claim_1m", "claim(250), 1,000,000 pending", "ms", False, digits=2),
    Metric("claim_ratio", "  claim cost at 1,000,000 / at 1,000", "x", False, digits=2),
    Metric("claim_done_0", "claim(250), 1,000 pending, 0 done rows", "ms", False, digits=2),
    Metric("claim_done_1m", "claim(250), 1,000 pending, 1,000,000 done", "ms", False, digits=2),
    Metric("claim_done_ratio", "  claim cost with 1,000,000 done / none", "x", False, digits=2),
]
SERVER_METRIC = {m.key: m for m in SERVER_METRICS}


@dataclass(frozen=True)
class Target:
    """lmq's figure ``key`` >= / <= ``value`` (by the metric's direction), or, with
    ``peers``, at least ``value`` times better than the best of those peers."""

    key: str
    value: float
    peers: tuple[str, ...] = ()

    def text(self) -> str:
        m = SERVER_METRIC[self.key]
        if self.peers:
            who = self.peers[0] if len(self.peers) == 1 else "the fastest of " + ", ".join(
                self.peers
            )
            return f">= {self.value:g}x {who}"
        return f"{'>=' if m.higher_is_better else '<='} {self.value:,g}"

    def judge(self, values: dict[str, dict[str, float]]) -> tuple[str, str]:
        """('met'|'MISSED'|'not measured', detail)."""
        m = SERVER_METRIC[self.key]
        mine = values.get("lmq", {}).get(self.key)
        if mine is None or math.isnan(mine):
            return "not measured", ""
        if not self.peers:
            ok = mine >= self.value if m.higher_is_better else mine <= self.value
            return ("met" if ok else "MISSED"), _fmt(mine, m.digits)
        theirs = {p: values.get(p, {}).get(self.key) for p in self.peers}
        known = {p: v for p, v in theirs.items() if v}
        if not known:
            return "not measured", "no peer figure"
        best = max(known, key=lambda p: known[p]) if m.higher_is_better else min(
            known, key=lambda p: known[p]
        )
        ratio = mine / known[best] if m.higher_is_better else known[best] / mine
        return ("met" if ratio >= self.value else "MISSED"), f"{ratio:.2f}x {best}"


SERVER_TARGETS: dict[str, list[Target]] = {
    "postgresql": [
        Target("drain", 15_000),
        Target("drain", 3, ("pgqueuer",)),
        Target("pickup_p50", 3),
        Target("bulk", 100_000),
        Target("claim_ratio", 1.5),
        Target("claim_done_ratio", 1.5),
    ],
    "redis": [
        Target("drain", 20_000),
        Target("drain", 5, ("saq", "huey", "dramatiq")),
        Target("pickup_p50", 3),
        Target("claim_ratio", 1.5),
        Target("claim_done_ratio", 1.5),
    ],
    "mysql": [
        Target("drain", 10_000),
        Target("claim_ratio", 1.5),
        Target("claim_done_ratio", 1.5),
    ],
}


def server_table(backend: str, values: dict[str, dict[str, float]], systems: list[str]) -> str:
    """One backend's figures, a column per system, and lmq's targets per row."""
    targets = SERVER_TARGETS.get(backend, [])
    head = "| figure | unit | " + " | ".join(systems) + " | target for lmq |"
    rows = [head, "| --- | --- | " + " | ".join("---:" for _ in systems) + " | --- |"]
    for m in SERVER_METRICS:
        cells = [values.get(s, {}).get(m.key) for s in systems]
        if all(c is None for c in cells):
            continue
        verdicts = []
        for t in (t for t in targets if t.key == m.key):
            verdict, detail = t.judge(values)
            verdicts.append(f"{verdict} ({t.text()}{': ' + detail if detail else ''})")
        label = "↳ " + m.label.strip() if m.label.startswith("  ") else m.label
        rows.append(
            f"| {label} | {m.unit} | " + " | ".join(_fmt(c, m.digits) for c in cells)
            + f" | {'; '.join(verdicts)} |"
        )
    return "\n".join(rows)


def server_targets(backend: str, values: dict[str, dict[str, float]]) -> str:
    """The issue's targets for this backend, one row each: met, MISSED or not measured."""
    rows = ["| target (issues 3, 4) | lmq | verdict |", "| --- | ---: | --- |"]
    for t in SERVER_TARGETS.get(backend, []):
        m = SERVER_METRIC[t.key]
        verdict, detail = t.judge(values)
        mine = values.get("lmq", {}).get(t.key)
        shown = detail if t.peers else _fmt(mine, m.digits)
        what = " ".join([m.label.strip(), t.text()] + ([] if t.peers else [m.unit]))
        rows.append(f"| {what} | {shown or '—'} | {verdict} |")
    return "\n".join(rows)


def render_backend(doc: dict, backend: str) -> str:  # type: ignore[type-arg]
    """Markdown for one backend of a results JSON written by ``bench --backend ...``."""
    data = doc["backends"][backend]
    lines = [
        f"### {data['title']}",
        "",
        f"Produced on {doc['started']} UTC by:",
        "",
        "```",
        doc["command"],
        "```",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in doc["machine"].items())
        + f"; load average at start {doc['load'][0]}, at end {doc['load'][1]}.",
        "",
        data["server"],
        "",
        server_table(backend, data["values"], data["systems"]),
        "",
        server_targets(backend, data["values"]),
        "",
    ]
    for system in data["systems"]:
        notes = data["notes"].get(system, {})
        items = [
            (SERVER_METRIC[k].label.strip().replace("same, ", ""), n)
            for k, n in notes.items()
            if k in SERVER_METRIC
        ]
        if items or notes.get("about"):
            lines += [f"{system}:", ""]
            if notes.get("about"):
                lines.append(f"- {notes['about']}")
            lines += [f"- {label}: {note}" for label, note in items]
            lines.append("")
    for e in data.get("errors", []):
        lines.append(f"- FAILED: {e}")
    return "\n".join(lines).rstrip() + "\n"


def render_servers(doc: dict) -> str:  # type: ignore[type-arg]
    return "\n".join(render_backend(doc, b) for b in doc["backends"])


def render_runs(docs: list[dict], backend: str) -> str:  # type: ignore[type-arg]
    """One row per results JSON that measured ``backend``: how the figures move between
    runs on a shared machine (lmq's drain and pickup, the best peer's drain, CPU a task)."""
    rows = [
        "| run (UTC) | load at start | lmq drain/s (start to exit / first to last) "
        "| best peer drain/s | lmq/peer | lmq CPU µs/task | lmq pickup p50 ms |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for doc in docs:
        data = doc["backends"].get(backend)
        if not data or "drain" not in data["values"].get("lmq", {}):
            continue
        if doc.get("sizes", {}).get("drain", 0) < 20_000:  # --quick runs
            continue
        v = data["values"]
        mine = v["lmq"]
        peer_rates = {
            s: v[s]["drain"] for s in data["systems"]
            if s not in {"lmq", "bare loop"} and v.get(s, {}).get("drain")
        }  # fmt: skip
        best = max(peer_rates, key=lambda k: peer_rates[k]) if peer_rates else None
        peer = f"{peer_rates[best]:,.0f} ({best})" if best else "—"
        ratio = f"{mine['drain'] / peer_rates[best]:.2f}x" if best else "—"
        rows.append(
            f"| {doc['started']} | {doc['load'][0].split(',')[0]} "
            f"| {mine['drain']:,.0f} / {mine.get('drain_run', math.nan):,.0f} | {peer} "
            f"| {ratio} | {_fmt(mine.get('drain_cpu'), 0)} "
            f"| {_fmt(mine.get('pickup_p50'), 2)} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    import json
    import sys

    if sys.argv[1] == "--runs":  # report.py --runs BACKEND FILE...
        docs = []
        for name in sys.argv[3:]:
            with open(name) as f:
                docs.append(json.load(f))
        print(render_runs(sorted(docs, key=lambda d: d["started"]), sys.argv[2]))
    else:
        with open(sys.argv[1]) as f:
            print(render_servers(json.load(f)), end="")
