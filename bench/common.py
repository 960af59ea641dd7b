"""What every workload shares: sizes, the run context, database copies, spans."""

from __future__ import annotations

import json
import shutil
import sqlite3
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

from procs import BenchError, HttpServer
from report import Results, percentile


@dataclass(frozen=True)
class Sizes:
    bulk: int = 100_000
    chunk: int = 10_000  # tasks per enqueue_many call
    single: int = 5_000
    busy_backlog: int = 200_000  # lmq's backlog while single enqueues are timed
    drain: int = 100_000
    trickle: int = 500
    trickle_interval: float = 0.02
    idle_seconds: float = 3.0
    http: int = 5_000
    claim_pending: int = 50_000
    claim_done: int = 1_000_000
    claims: int = 20


QUICK = Sizes(
    bulk=10_000,
    chunk=5_000,
    single=500,
    busy_backlog=20_000,
    drain=10_000,
    trickle=100,
    idle_seconds=1.0,
    http=1_000,
    claim_pending=5_000,
    claim_done=100_000,
    claims=5,
)


@dataclass
class Ctx:
    tmp: Path
    sizes: Sizes
    results: Results
    sync_concurrencies: tuple[int, ...] = (8, 32, 500)
    huey_drain_threads: tuple[int, ...] = (1, 4)
    huey_http_threads: tuple[int, ...] = (200, 500)
    templates: dict[str, Path] = field(default_factory=dict)
    _http: HttpServer | None = None
    _dirs: int = 0

    def workdir(self, name: str) -> Path:
        self._dirs += 1
        d = self.tmp / f"{self._dirs:02d}-{name}"
        d.mkdir()
        return d

    def http_server(self) -> HttpServer:
        if self._http is None:
            self._http = HttpServer(self.tmp)
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None


def say(msg: str) -> None:
    print(msg, flush=True)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"  # an absolute path gives the four-slash form


def copy_db(src: Path, dst: Path) -> None:
    """Copy a SQLite database (WAL included) with the backup API."""
    s, d = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        s.backup(d)
    finally:
        s.close()
        d.close()


def template(ctx: Ctx, key: str, build: Callable[[Path], None]) -> Path:
    """A database built once per run by ``build(path)`` and copied for each workload."""
    path = ctx.templates.get(key)
    if path is None:
        path = ctx.tmp / f"template-{key}.db"
        build(path)
        ctx.templates[key] = path
    return path


def read_spans(d: Path) -> tuple[float, float]:
    """(first task's start, last task's end) over the span files the workers wrote."""
    spans = [json.loads(p.read_text()) for p in d.glob("span-*.json")]
    if not spans:
        return 0.0, 0.0
    return min(s["first"] for s in spans), max(s["last"] for s in spans)


def read_latencies(d: Path) -> list[float]:
    out: list[float] = []
    for p in d.glob("pickup-*.txt"):
        out.extend(float(line) for line in p.read_text().split())
    return out


def latency_figures(seconds: list[float]) -> tuple[float, float]:
    ms = [s * 1000 for s in seconds]
    return percentile(ms, 50), percentile(ms, 99)


def median_ms(fn: Callable[[], object], times: int) -> float:
    samples = []
    for _ in range(times):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def trickle(n: int, interval: float, enqueue: Callable[[float], object]) -> None:
    """Call ``enqueue(time.time())`` n times, one every ``interval`` seconds (no drift)."""
    start = time.perf_counter()
    for i in range(n):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        enqueue(time.time())


def wait_until(
    cond: Callable[[], bool], timeout: float, what: str, proc: Popen[bytes] | None = None
) -> None:
    """Poll ``cond`` until true; fail after ``timeout`` or as soon as ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
