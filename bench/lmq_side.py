"""The workloads on lmq (SQLite backend, a fresh database file per workload)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import lmq
from common import (
    Ctx,
    copy_db,
    latency_figures,
    median_ms,
    read_latencies,
    read_spans,
    say,
    sqlite_url,
    template,
    trickle,
    wait_until,
)
from lmq.models import ClaimRequest
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
)

SYSTEM = "lmq"
MB = 1e6


def _queue(path: Path) -> lmq.Queue:
    q = lmq.Queue(sqlite_url(path))
    q.migrate()
    return q


def _fill(path: Path, task_name: str, n: int, chunk: int, payload: Any = None) -> None:
    q = _queue(path)
    for start in range(0, n, chunk):
        q.enqueue_many(
            [(task_name, payload or {"n": i}) for i in range(start, min(start + chunk, n))]
        )
    q.close()


def _status_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as c:
        rows = c.execute("SELECT status, count(*) FROM queue_tasks GROUP BY status").fetchall()
        dead = c.execute("SELECT count(*) FROM queue_dead_letters").fetchone()[0]
    c.close()
    return {**dict(rows), "dead": dead}


def _worker(
    d: Path,
    db: Path,
    *,
    concurrency: int,
    processes: int = 1,
    burst: bool = True,
    workload: str = "",
) -> Any:
    cmd = python_cmd(
        "-m", "lmq", "worker", "--app", "benchapp", "--url", sqlite_url(db),
        "-c", str(concurrency), "-p", str(processes), "-q",
    )  # fmt: skip
    if burst:
        cmd.append("--burst")
    env = child_env(BENCH_STATS_DIR=str(d), BENCH_WORKLOAD=workload)
    return spawn(cmd, log=d / "worker.log", env=env, cwd=d)


# --- enqueue --------------------------------------------------------------------------------


def bulk(ctx: Ctx) -> None:
    s = ctx.sizes
    d = ctx.workdir("lmq-bulk")
    q = _queue(d / "q.db")
    batches = [
        [("noop_async", {"n": i}) for i in range(start, min(start + s.chunk, s.bulk))]
        for start in range(0, s.bulk, s.chunk)
    ]
    t = time.perf_counter()
    for batch in batches:
        q.enqueue_many(batch)
    elapsed = time.perf_counter() - t
    if q.counts()["pending"] != s.bulk:
        raise BenchError(f"bulk enqueue stored {q.counts()} instead of {s.bulk} pending")
    q.close()
    ctx.results.put(
        SYSTEM, "bulk_rate", s.bulk / elapsed,
        f"`queue.enqueue_many` of {s.bulk:,} tasks in calls of {s.chunk:,} "
        f"({elapsed:.2f} s)",
    )  # fmt: skip
    say(f"  lmq bulk enqueue: {s.bulk / elapsed:,.0f} tasks/s")


def _time_enqueues(q: lmq.Queue, n: int) -> list[float]:
    for i in range(20):  # warm-up: connection, statement cache
        q.enqueue("noop_async", {"n": -i})
    out = []
    perf = time.perf_counter
    for i in range(n):
        t = perf()
        q.enqueue("noop_async", {"n": i})
        out.append(perf() - t)
    return out


def single(ctx: Ctx) -> None:
    s = ctx.sizes
    d = ctx.workdir("lmq-single")
    q = _queue(d / "q.db")
    p50, p99 = latency_figures(_time_enqueues(q, s.single))
    q.close()
    note = f"{s.single:,} `queue.enqueue` calls, each its own transaction"
    ctx.results.put(SYSTEM, "single_p50", p50, note)
    ctx.results.put(SYSTEM, "single_p99", p99)
    say(f"  lmq single enqueue, idle: p50 {p50:.3f} ms, p99 {p99:.3f} ms")

    # the same while a worker drains a backlog
    d = ctx.workdir("lmq-single-busy")
    db = d / "q.db"
    _fill(db, "noop_async", s.busy_backlog, s.chunk)
    proc = _worker(d, db, concurrency=500, burst=False)
    try:
        q = lmq.Queue(sqlite_url(db))
        wait_until(
            lambda: _status_counts(db).get("done", 0) > 0, 60, "the worker's first ack", proc
        )
        lat = _time_enqueues(q, s.single)
        left = _status_counts(db).get("pending", 0)
        q.close()
    finally:
        rc = stop(proc, signal.SIGTERM)
    if rc != 0:
        raise BenchError(f"worker exited {rc}; see {d / 'worker.log'}")
    p50, p99 = latency_figures(lat)
    busy = "still draining" if left else "BACKLOG RAN OUT during the measurement"
    ctx.results.put(
        SYSTEM, "single_busy_p50", p50,
        f"while `lmq worker -c 500` drains a {s.busy_backlog:,}-task no-op backlog "
        f"({left:,} pending when the {s.single:,} enqueues ended: {busy})",
    )  # fmt: skip
    ctx.results.put(SYSTEM, "single_busy_p99", p99)
    say(f"  lmq single enqueue, worker draining: p50 {p50:.3f} ms, p99 {p99:.3f} ms")


# --- drains ---------------------------------------------------------------------------------


def _drain_once(ctx: Ctx, handler: str, concurrency: int, processes: int) -> dict[str, float]:
    n = ctx.sizes.drain
    src = template(ctx, f"lmq-{handler}", lambda p: _fill(p, handler, n, ctx.sizes.chunk))
    d = ctx.workdir(f"lmq-drain-{handler}-c{concurrency}-p{processes}")
    db = d / "q.db"
    copy_db(src, db)
    t0 = time.time()
    proc = _worker(d, db, concurrency=concurrency, processes=processes)
    sampler = RssSampler(proc.pid) if processes == 1 else None
    try:
        rc = wait(proc, 900, "lmq worker --burst", d / "worker.log")
    finally:
        if sampler:
            sampler.stop()
    wall = time.time() - t0
    if rc != 0:
        raise BenchError(f"worker exited {rc}; see {d / 'worker.log'}")
    counts = _status_counts(db)
    if counts.get("done") != n:
        raise BenchError(f"after the drain: {counts}, expected {n} done; see {d}")
    first, last = read_spans(d)
    out = {
        "wall": wall,
        "rate": n / wall,
        "run_rate": n / (last - first) if last > first else 0,
        "startup": first - t0,
        "exit": t0 + wall - last,
    }
    if sampler:
        out["rss"] = sampler.last / MB
        out["rss_peak"] = sampler.peak / MB
    say(
        f"  lmq drain {handler} -c {concurrency} -p {processes}: {out['rate']:,.0f} tasks/s "
        f"start to exit ({wall:.2f} s), {out['run_rate']:,.0f}/s first to last task"
        + (f", RSS {out['rss']:.1f} MB" if sampler else "")
    )
    return out


def drains(ctx: Ctx) -> None:
    r, n = ctx.results, ctx.sizes.drain
    cmd = f"`lmq worker --app benchapp -c {{c}} -p {{p}} --burst` on {n:,} no-op tasks"
    a1 = _drain_once(ctx, "noop_async", 500, 1)
    r.put(SYSTEM, "drain_async_1", a1["rate"], cmd.format(c=500, p=1) + ", `async def`")
    r.put(SYSTEM, "drain_async_1_run", a1["run_rate"])
    r.put(SYSTEM, "rss_async", a1["rss"], f"last sample before exit; peak {a1['rss_peak']:.1f}")
    r.put(
        SYSTEM, "startup", a1["startup"],
        f"spawn of the async `-p 1` drain's worker to its first task; from its last task to "
        f"its exit: {a1['exit']:.2f} s",
    )  # fmt: skip
    a2 = _drain_once(ctx, "noop_async", 500, 2)
    r.put(SYSTEM, "drain_async_2", a2["rate"], cmd.format(c=500, p=2))
    r.put(SYSTEM, "drain_async_2_run", a2["run_rate"])

    tried = {c: _drain_once(ctx, "noop_sync", c, 1) for c in ctx.sync_concurrencies}
    best = max(tried, key=lambda c: tried[c]["rate"])
    s1 = tried[best]
    summary = ", ".join(f"-c {c}: {v['rate']:,.0f}/s" for c, v in tried.items())
    r.put(SYSTEM, "drain_sync_1", s1["rate"], cmd.format(c=best, p=1) + f", `def`; {summary}")
    r.put(SYSTEM, "drain_sync_1_run", s1["run_rate"])
    r.put(SYSTEM, "rss_sync", s1["rss"], f"-c {best}; peak {s1['rss_peak']:.1f}")
    s2 = _drain_once(ctx, "noop_sync", best, 2)
    r.put(SYSTEM, "drain_sync_2", s2["rate"], cmd.format(c=best, p=2))
    r.put(SYSTEM, "drain_sync_2_run", s2["run_rate"])


# --- pickup latency -------------------------------------------------------------------------


def pickup(ctx: Ctx) -> None:
    s = ctx.sizes
    d = ctx.workdir("lmq-pickup")
    db = d / "q.db"
    q = _queue(db)
    proc = _worker(d, db, concurrency=10, burst=False)
    try:
        wait_until(lambda: bool(q.workers()), 30, "the worker's heartbeat", proc)
        time.sleep(0.5)
        c0 = cpu_seconds(proc.pid)
        time.sleep(s.idle_seconds)
        idle_cpu = (cpu_seconds(proc.pid) - c0) / s.idle_seconds * 100
        trickle(s.trickle, s.trickle_interval, lambda t: q.enqueue("pickup", {"t": t}))
        wait_until(lambda: q.counts()["done"] >= s.trickle, 30, "the trickle's tasks", proc)
    finally:
        rc = stop(proc, signal.SIGTERM)
        q.close()
    if rc != 0:
        raise BenchError(f"worker exited {rc}; see {d / 'worker.log'}")
    lat = read_latencies(d)
    if len(lat) != s.trickle:
        raise BenchError(f"{len(lat)} pickup latencies recorded, expected {s.trickle}")
    p50, p99 = latency_figures(lat)
    r = ctx.results
    r.put(
        SYSTEM, "pickup_p50", p50,
        f"`lmq worker -c 10` (idle) while {s.trickle} tasks are enqueued one every "
        f"{s.trickle_interval * 1000:g} ms; the `async def` handler records "
        "`time.time() - payload['t']`",
    )  # fmt: skip
    r.put(SYSTEM, "pickup_p99", p99)
    r.put(SYSTEM, "idle_cpu", idle_cpu, f"CPU time of the idle worker over {s.idle_seconds:g} s")
    say(f"  lmq pickup: p50 {p50:.2f} ms, p99 {p99:.2f} ms; idle CPU {idle_cpu:.2f}%")


# --- HTTP -----------------------------------------------------------------------------------


def _http_floor(url: str, n: int, concurrency: int) -> float:
    cmd = python_cmd(str(BENCH_DIR / "http_floor.py"), url, str(n), str(concurrency))
    env = child_env()
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    if done.returncode != 0:
        raise BenchError(f"http_floor.py failed: {done.stderr.strip()[-500:]}")
    return float(done.stdout)


def http(ctx: Ctx) -> None:
    n = ctx.sizes.http
    server = ctx.http_server()
    floor = _http_floor(server.url, n, 500)
    ctx.results.put(
        SYSTEM, "http_floor", floor,
        "`bench/http_floor.py`: one aiohttp session, 500 GETs at once, first request to last "
        "response (a reference for both columns)",
    )  # fmt: skip
    say(f"  HTTP floor without a queue: {floor:.2f} s")
    d = ctx.workdir("lmq-http")
    db = d / "q.db"
    _fill(db, "http_get", n, ctx.sizes.chunk, {"url": server.url})
    t0 = time.time()
    proc = _worker(d, db, concurrency=500, workload="http")
    rc = wait(proc, 300, "lmq worker --burst (http)", d / "worker.log")
    wall = time.time() - t0
    if rc != 0:
        raise BenchError(f"worker exited {rc}; see {d / 'worker.log'}")
    counts = _status_counts(db)
    if counts.get("done") != n or counts["dead"]:
        raise BenchError(f"after the HTTP drain: {counts}; see {d}")
    first, last = read_spans(d)
    ctx.results.put(
        SYSTEM, "http_wall", wall,
        f"{n:,} tasks, each one GET answered after 100 ms by a local aiohttp server; "
        "`async def` handler sharing one `aiohttp.ClientSession` (connector limit 1000), "
        f"`lmq worker -c 500 --burst`; spawn to first task {first - t0:.2f} s, last task to "
        f"exit {t0 + wall - last:.2f} s",
    )  # fmt: skip
    ctx.results.put(SYSTEM, "http_run", last - first)
    say(f"  lmq HTTP: {wall:.2f} s start to exit, {last - first:.2f} s first to last task")


# --- claim cost with finished rows ----------------------------------------------------------


def _insert_done(db: Path, n: int) -> None:
    now = time.time()
    with sqlite3.connect(db) as c:
        c.execute(
            "WITH RECURSIVE seq(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM seq WHERE x < ?) "
            "INSERT INTO queue_tasks (task_name, payload, status, attempts, next_run, "
            "created, updated) "
            "SELECT 'noop_async', '{\"n\": ' || x || '}', 'done', 1, ?, "
            "strftime('%Y-%m-%d %H:%M:%S', 'now'), ? - x * 0.001 FROM seq",
            (n, now, now),
        )
    c.close()


def _claim_figures(ctx: Ctx, done_rows: int) -> dict[str, float]:
    s = ctx.sizes
    d = ctx.workdir(f"lmq-claim-{done_rows}")
    db = d / "q.db"
    q = _queue(db)
    if done_rows:
        _insert_done(db, done_rows)
    _fill(db, "noop_async", s.claim_pending, s.chunk)
    b = q.backend
    req = ClaimRequest(worker_id="bench", limit=500, lease=30.0)
    out = {
        "has_ready": median_ms(lambda: b.has_ready(None), 50),
        "counts": median_ms(q.counts, 3),
        "claim": median_ms(lambda: b.claim(req), s.claims),
    }
    q.close()
    say(
        f"  lmq with {done_rows:,} done rows, {s.claim_pending:,} pending: claim(500) "
        f"{out['claim']:.2f} ms, has_ready {out['has_ready']:.3f} ms, "
        f"counts() {out['counts']:.1f} ms"
    )
    return out


def claim_cost(ctx: Ctx) -> None:
    s = ctx.sizes
    zero, many = _claim_figures(ctx, 0), _claim_figures(ctx, s.claim_done)
    r = ctx.results
    r.put(SYSTEM, "claim_0", zero["claim"], f"median of {s.claims} claims; {s.claim_pending:,} "
          "pending tasks; `backend.claim(ClaimRequest(limit=500))`")  # fmt: skip
    r.put(SYSTEM, "claim_1m", many["claim"], f"{s.claim_done:,} `done` rows inserted by SQL")
    r.put(SYSTEM, "has_ready_1m", many["has_ready"], f"{zero['has_ready']:.3f} ms with 0")
    r.put(SYSTEM, "counts_1m", many["counts"], f"{zero['counts']:.1f} ms with 0 done rows")
