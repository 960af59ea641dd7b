"""The same workloads on huey's SqliteHuey (see hueyapp.py for its set-up)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from common import (
    Ctx,
    copy_db,
    latency_figures,
    read_latencies,
    say,
    template,
    trickle,
    wait_until,
)
from procs import (
    BENCH_DIR,
    BenchError,
    RssSampler,
    child_env,
    cpu_seconds,
    python_cmd,
    spawn,
    stop,
    wait,
    wait_for_file,
)

SYSTEM = "huey"
MB = 1e6
TUNED_POLL = ("0.005", "1.0", "0.005")  # -d -b -m: poll every 5 ms, no back-off
DEFAULT_POLL = ("0.1", "1.15", "10")  # huey_consumer's defaults


def _app(ctx: Ctx) -> ModuleType:
    """hueyapp, imported with its import-time database inside the temp dir."""
    os.environ.setdefault("BENCH_HUEY_DB", str(ctx.tmp / "huey-import.db"))
    import hueyapp

    return hueyapp


def _fill(ctx: Ctx, path: Path, n: int) -> float:
    """Enqueue n no-op tasks the fastest way huey offers; the seconds it took."""
    app = _app(ctx)
    app.use_db(str(path))
    noop = app.noop
    t = time.perf_counter()
    for i in range(n):
        noop(i)
    elapsed = time.perf_counter() - t
    if app.huey.pending_count() != n:
        raise BenchError(f"huey stored {app.huey.pending_count()} tasks instead of {n}")
    app.huey.storage.close()
    return elapsed


def _noop_template(ctx: Ctx) -> Path:
    def build(path: Path) -> None:
        _fill(ctx, path, ctx.sizes.drain)

    return template(ctx, "huey-noop", build)


def _runner(d: Path, db: Path, *args: str) -> Any:
    cmd = python_cmd(str(BENCH_DIR / "huey_runner.py"), *args)
    env = child_env(BENCH_HUEY_DB=str(db), BENCH_STATS_DIR=str(d))
    return spawn(cmd, log=d / "consumer.log", env=env, cwd=d)


def _poll_args(poll: tuple[str, str, str]) -> list[str]:
    return ["--delay", poll[0], "--backoff", poll[1], "--max-delay", poll[2]]


# --- enqueue --------------------------------------------------------------------------------


def bulk(ctx: Ctx) -> None:
    n = ctx.sizes.bulk
    d = ctx.workdir("huey-bulk")
    elapsed = _fill(ctx, d / "huey.db", n)
    if n == ctx.sizes.drain:  # the same database serves as the drains' template
        ctx.templates.setdefault("huey-noop", d / "huey.db")
    ctx.results.put(
        SYSTEM, "bulk_rate", n / elapsed,
        f"a loop of {n:,} `noop(i)` calls: huey has no batch enqueue and its storage "
        "commits each insert in its own `BEGIN EXCLUSIVE` transaction "
        f"({elapsed:.2f} s)",
    )  # fmt: skip
    say(f"  huey bulk enqueue: {n / elapsed:,.0f} tasks/s")


def _time_enqueues(app: ModuleType, n: int) -> list[float]:
    noop = app.noop
    for i in range(20):
        noop(-i)
    out = []
    perf = time.perf_counter
    for i in range(n):
        t = perf()
        noop(i)
        out.append(perf() - t)
    return out


def single(ctx: Ctx) -> None:
    s = ctx.sizes
    app = _app(ctx)
    d = ctx.workdir("huey-single")
    app.use_db(str(d / "huey.db"))
    p50, p99 = latency_figures(_time_enqueues(app, s.single))
    app.huey.storage.close()
    ctx.results.put(SYSTEM, "single_p50", p50, f"{s.single:,} `noop(i)` calls")
    ctx.results.put(SYSTEM, "single_p99", p99)
    say(f"  huey single enqueue, idle: p50 {p50:.3f} ms, p99 {p99:.3f} ms")

    n = s.drain
    src = _noop_template(ctx)
    d = ctx.workdir("huey-single-busy")
    db = d / "huey.db"
    copy_db(src, db)
    proc = _runner(d, db, "--workers", "4")
    try:
        app.use_db(str(db))
        wait_until(lambda: app.huey.pending_count() < n, 60, "the consumer's first task", proc)
        lat = _time_enqueues(app, s.single)
        left = app.huey.pending_count()
        app.huey.storage.close()
    finally:
        rc = stop(proc, signal.SIGINT)
    if rc != 0:
        raise BenchError(f"huey consumer exited {rc}; see {d / 'consumer.log'}")
    p50, p99 = latency_figures(lat)
    busy = "still draining" if left else "BACKLOG RAN OUT during the measurement"
    ctx.results.put(
        SYSTEM, "single_busy_p50", p50,
        f"while a consumer (4 threads) drains a {n:,}-task backlog "
        f"({left:,} pending when the enqueues ended: {busy})",
    )  # fmt: skip
    ctx.results.put(SYSTEM, "single_busy_p99", p99)
    say(f"  huey single enqueue, consumer draining: p50 {p50:.3f} ms, p99 {p99:.3f} ms")


# --- drains ---------------------------------------------------------------------------------


def _drain_once(ctx: Ctx, workers: int, worker_type: str) -> dict[str, float]:
    n = ctx.sizes.drain
    src = _noop_template(ctx)
    d = ctx.workdir(f"huey-drain-{worker_type}-w{workers}")
    db, out = d / "huey.db", d / "result.json"
    copy_db(src, db)
    t0 = time.time()
    proc = _runner(
        d, db, "--workers", str(workers), "--worker-type", worker_type,
        "--target", str(n), "--out", str(out),
    )  # fmt: skip
    sampler = RssSampler(proc.pid) if worker_type == "thread" else None
    try:
        result = json.loads(wait_for_file(out, 1800, proc, d / "consumer.log"))
    finally:
        if sampler:
            sampler.stop()
    rc = wait(proc, 60, "huey consumer shutdown", d / "consumer.log")
    if rc != 0 or result["count"] != n:
        raise BenchError(f"huey consumer: exit {rc}, {result}; see {d / 'consumer.log'}")
    wall = result["done_at"] - t0
    run = result["last"] - result["first"]
    res = {"wall": wall, "rate": n / wall, "run_rate": n / run if run > 0 else 0.0}
    res["startup"] = result["first"] - t0
    if sampler:
        res["rss"] = sampler.last / MB
        res["rss_peak"] = sampler.peak / MB
    say(
        f"  huey drain {worker_type} x{workers}: {res['rate']:,.0f} tasks/s start to all done "
        f"({wall:.2f} s), {res['run_rate']:,.0f}/s first to last task"
        + (f", RSS {res['rss']:.1f} MB" if sampler else "")
    )
    return res


def drains(ctx: Ctx) -> None:
    r, n = ctx.results, ctx.sizes.drain
    tried = {w: _drain_once(ctx, w, "thread") for w in ctx.huey_drain_threads}
    best = max(tried, key=lambda w: tried[w]["rate"])
    t = tried[best]
    summary = ", ".join(f"{w} thread(s): {v['rate']:,.0f}/s" for w, v in tried.items())
    note = (
        f"consumer (`huey.create_consumer`) with {best} thread worker(s) on {n:,} no-op "
        f"tasks, timed from process start until all ran; {summary}; huey has only `def` tasks"
    )
    for key in ("drain_async_1", "drain_sync_1"):
        r.put(SYSTEM, key, t["rate"], note if key == "drain_async_1" else "as above")
        r.put(SYSTEM, key + "_run", t["run_rate"])
    r.put(SYSTEM, "rss_async", t["rss"], f"consumer process; peak {t['rss_peak']:.1f}")
    r.put(SYSTEM, "rss_sync", t["rss"])
    r.put(SYSTEM, "startup", t["startup"], "spawn of that consumer to its first task")
    p = _drain_once(ctx, 2, "process")
    for key in ("drain_async_2", "drain_sync_2"):
        r.put(SYSTEM, key, p["rate"], "2 process workers (`-k process -w 2`)")
        r.put(SYSTEM, key + "_run", p["run_rate"])


# --- pickup latency -------------------------------------------------------------------------


def _pickup_once(ctx: Ctx, poll: tuple[str, str, str]) -> tuple[list[float], float]:
    s = ctx.sizes
    app = _app(ctx)
    d = ctx.workdir(f"huey-pickup-d{poll[0]}")
    db = d / "huey.db"
    app.use_db(str(db))
    proc = _runner(d, db, "--workers", "1", *_poll_args(poll))
    try:
        time.sleep(1.5)  # interpreter start and imports; huey has no readiness signal
        if proc.poll() is not None:
            raise BenchError(f"huey consumer exited early; see {d / 'consumer.log'}")
        c0 = cpu_seconds(proc.pid)
        time.sleep(s.idle_seconds)
        idle_cpu = (cpu_seconds(proc.pid) - c0) / s.idle_seconds * 100
        trickle(s.trickle, s.trickle_interval, app.pickup)
        wait_until(lambda: len(read_latencies(d)) >= s.trickle, 60, "the trickle's tasks", proc)
    finally:
        rc = stop(proc, signal.SIGINT)
        app.huey.storage.close()
    if rc != 0:
        raise BenchError(f"huey consumer exited {rc}; see {d / 'consumer.log'}")
    return read_latencies(d), idle_cpu


def pickup(ctx: Ctx) -> None:
    s = ctx.sizes
    r = ctx.results
    lat, idle_cpu = _pickup_once(ctx, TUNED_POLL)
    p50, p99 = latency_figures(lat)
    r.put(
        SYSTEM, "pickup_p50", p50,
        f"consumer with 1 thread polling every 5 ms without back-off (`-d {TUNED_POLL[0]} "
        f"-b {TUNED_POLL[1]} -m {TUNED_POLL[2]}`), the same {s.trickle}-task trickle",
    )  # fmt: skip
    r.put(SYSTEM, "pickup_p99", p99)
    r.put(SYSTEM, "idle_cpu", idle_cpu, "with that 5 ms polling")
    say(f"  huey pickup (5 ms polling): p50 {p50:.2f} ms, p99 {p99:.2f} ms; idle CPU "
        f"{idle_cpu:.2f}%")  # fmt: skip
    lat, _ = _pickup_once(ctx, DEFAULT_POLL)
    p50, p99 = latency_figures(lat)
    r.put(SYSTEM, "pickup_default_p50", p50, "huey_consumer's defaults `-d 0.1 -b 1.15 -m 10`")
    r.put(SYSTEM, "pickup_default_p99", p99)
    say(f"  huey pickup (default polling): p50 {p50:.2f} ms, p99 {p99:.2f} ms")


# --- HTTP -----------------------------------------------------------------------------------


def _http_once(ctx: Ctx, url: str, threads: int) -> tuple[float, float]:
    n, poll = ctx.sizes.http, TUNED_POLL
    app = _app(ctx)
    d = ctx.workdir(f"huey-http-w{threads}")
    db, out = d / "huey.db", d / "result.json"
    app.use_db(str(db))
    for _ in range(n):
        app.http_get(url)
    app.huey.storage.close()
    t0 = time.time()
    proc = _runner(
        d, db, "--workers", str(threads), "--target", str(n), "--out", str(out),
        *_poll_args(poll),
    )  # fmt: skip
    result = json.loads(wait_for_file(out, 600, proc, d / "consumer.log"))
    rc = wait(proc, 120, "huey consumer shutdown", d / "consumer.log")
    if rc != 0 or result["errors"]:
        raise BenchError(f"huey consumer: exit {rc}, {result}; see {d / 'consumer.log'}")
    wall, run = result["done_at"] - t0, result["last"] - result["first"]
    say(f"  huey HTTP ({threads} threads): {wall:.2f} s start to all done, "
        f"{run:.2f} s first to last task")  # fmt: skip
    return wall, run


def http(ctx: Ctx) -> None:
    url = ctx.http_server().url
    tried = {w: _http_once(ctx, url, w) for w in ctx.huey_http_threads}
    best = min(tried, key=lambda w: tried[w][0])
    wall, run = tried[best]
    summary = ", ".join(f"{w} threads: {t:.2f} s" for w, (t, _) in tried.items())
    ctx.results.put(
        SYSTEM, "http_wall", wall,
        f"consumer with {best} thread workers polling every 5 ms, each thread one keep-alive "
        f"`http.client` connection; timed from process start until all ran; {summary}",
    )  # fmt: skip
    ctx.results.put(SYSTEM, "http_run", run)
