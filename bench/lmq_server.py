"""lmq's side of the server-backend benchmark (bench --backend postgresql|redis|mysql).

Every measurement gets a fresh place (see serverdb.py): on PostgreSQL and MariaDB the
database ``lmqbench_lmq`` dropped and created again plus a fresh ``?prefix=``; on Redis a
fresh key prefix in db 12, whose keys are deleted afterwards.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmq
import serverdb
from common import latency_figures, read_latencies, read_spans, say, trickle, wait_until
from lmq.models import ClaimRequest, CompleteBatch
from procs import (
    BenchError,
    child_env,
    children_cpu,
    python_cmd,
    server_cpu,
    spawn,
    stop,
    wait,
)

DB = "lmqbench_lmq"


@contextmanager
def place(backend: str, server_url: str) -> Iterator[str]:
    """A fresh, empty queue URL on ``server_url``'s server; removed afterwards."""
    prefix = serverdb.fresh_prefix()
    if backend == "postgresql":
        url = serverdb.pg_fresh_db(server_url, DB) + f"?prefix={prefix}"
    elif backend == "mysql":
        url = serverdb.my_fresh_db(server_url, DB) + f"?prefix={prefix}"
    elif backend == "redis":
        url = serverdb.redis_db_url(server_url, serverdb.LMQ_REDIS_DB) + f"?prefix={prefix}"
    else:
        raise ValueError(backend)
    try:
        yield url
    finally:
        if backend == "postgresql":
            serverdb.pg_drop_db(server_url, DB)
        elif backend == "mysql":
            serverdb.my_drop_db(server_url, DB)
        else:
            serverdb.redis_drop_prefix(url, prefix)


def _queue(url: str) -> lmq.Queue:
    q = lmq.Queue(url)
    q.migrate()
    return q


def _fill(q: lmq.Queue, n: int, chunk: int, task: str = "noop_async") -> float:
    t = time.perf_counter()
    for start in range(0, n, chunk):
        q.enqueue_many([(task, {"n": i}) for i in range(start, min(start + chunk, n))])
    return time.perf_counter() - t


def _worker(d: Path, url: str, concurrency: int, burst: bool) -> Any:
    cmd = python_cmd("-m", "lmq", "worker", "--app", "benchapp", "--url", url,
                     "-c", str(concurrency), "-p", "1", "-q")  # fmt: skip
    if burst:
        cmd.append("--burst")
    return spawn(cmd, log=d / "worker.log", env=child_env(BENCH_STATS_DIR=str(d)), cwd=d)


def drain(backend: str, server_url: str, d: Path, n: int, chunk: int, concurrency: int,
          timeout: float) -> dict[str, float]:  # fmt: skip
    with place(backend, server_url) as url:
        q = _queue(url)
        fill = _fill(q, n, chunk)
        if q.counts()["pending"] != n:
            raise BenchError(f"lmq stored {q.counts()} instead of {n} pending")
        cpu0, srv0, t0 = children_cpu(), server_cpu(backend), time.time()
        proc = _worker(d, url, concurrency, burst=True)
        try:
            rc = wait(proc, timeout, "lmq worker --burst", d / "worker.log")
        finally:
            stop(proc)
        wall = time.time() - t0
        cpu, srv1 = children_cpu() - cpu0, server_cpu(backend)
        counts = q.counts()
        q.close()
    if rc != 0:
        raise BenchError(f"lmq worker exited {rc}; see {d / 'worker.log'}")
    if counts["done"] != n:
        raise BenchError(f"after the drain: {counts}, expected {n} done; see {d}")
    first, last = read_spans(d)
    out = {
        "drain": n / wall,
        "drain_run": n / (last - first) if last > first else float("nan"),
        "fill": n / fill,
        "startup": first - t0,
        "exit": t0 + wall - last,
        "cpu": cpu / n * 1e6,
    }
    if srv0 is not None and srv1 is not None:
        out["server_cpu"] = (srv1 - srv0) / n * 1e6
    say(f"  lmq drain -c {concurrency}: {out['drain']:,.0f}/s spawn to exit ({wall:.2f} s), "
        f"{out['drain_run']:,.0f}/s first to last task")  # fmt: skip
    return out


def pickup(backend: str, server_url: str, d: Path, samples: int, interval: float,
           warm: int = 5) -> tuple[float, float, float]:  # fmt: skip
    with place(backend, server_url) as url:
        q = _queue(url)
        proc = _worker(d, url, 10, burst=False)
        try:
            wait_until(lambda: bool(q.workers()), 30, "the worker's heartbeat", proc)
            time.sleep(1.0)
            for _ in range(warm):
                q.enqueue("pickup", {"t": time.time()})
                time.sleep(0.1)
            wait_until(lambda: q.counts()["done"] >= warm, 30, "the warm-up tasks", proc)
            calls: list[float] = []

            def enqueue(t: float) -> None:
                q.enqueue("pickup", {"t": t})
                calls.append(time.time() - t)

            trickle(samples, interval, enqueue)
            wait_until(lambda: q.counts()["done"] >= warm + samples, 60, "the trickle", proc)
        finally:
            stop(proc)
            q.close()
    lat = read_latencies(d)
    if len(lat) != warm + samples:
        raise BenchError(f"{len(lat)} pickup latencies recorded, expected {warm + samples}")
    p50, p99 = latency_figures(lat[warm:])
    call_p50 = latency_figures(calls)[0]
    say(f"  lmq pickup: p50 {p50:.2f} ms, p99 {p99:.2f} ms; the enqueue call itself: p50 "
        f"{call_p50:.2f} ms")  # fmt: skip
    return p50, p99, call_p50


def bulk(backend: str, server_url: str, n: int, chunk: int) -> float:
    with place(backend, server_url) as url:
        q = _queue(url)
        secs = _fill(q, n, chunk)
        pending = q.counts()["pending"]
        q.close()
    if pending != n:
        raise BenchError(f"bulk enqueue stored {pending} pending instead of {n}")
    say(f"  lmq bulk enqueue: {n / secs:,.0f}/s ({n:,} in calls of {chunk:,})")
    return n / secs


def enqueue_loop(backend: str, server_url: str, n: int) -> float:
    with place(backend, server_url) as url:
        q = _queue(url)
        for i in range(20):
            q.enqueue("noop_async", {"n": -i})
        t = time.perf_counter()
        for i in range(n):
            q.enqueue("noop_async", {"n": i})
        secs = time.perf_counter() - t
        q.close()
    say(f"  lmq single enqueues: {n / secs:,.0f}/s")
    return n / secs


def _settle(backend: str, url: str) -> None:
    """After a bulk fill: let the server catch up as it would in a steady state (the same
    for every backlog size): PostgreSQL VACUUM ANALYZE of the task table (autovacuum's
    job), MariaDB ANALYZE TABLE, then a 2 s pause."""
    prefix = url.split("prefix=", 1)[1].split("&", 1)[0]
    if backend == "postgresql":
        import psycopg

        with psycopg.connect(serverdb.plain(url), autocommit=True) as conn:
            conn.execute(f"VACUUM ANALYZE {prefix}queue_tasks")
    elif backend == "mysql":
        conn = serverdb._my_admin(url)
        with conn.cursor() as cur:
            cur.execute(f"ANALYZE TABLE `{DB}`.`{prefix}queue_tasks`")
            cur.fetchall()
        conn.close()
    time.sleep(2)


def _finish(q: lmq.Queue, n: int, chunk: int) -> None:
    """Run ``n`` pending tasks through the state machine to ``done`` as a worker would
    (``claim`` then ``complete``, ``chunk`` at a time), so the table holds ``n`` finished
    rows written the way real ones are (indexes, dead tuples and counters included)."""
    b = q.backend
    req = ClaimRequest(worker_id="bench-finish", limit=chunk, lease=300.0)
    left = n
    while left:
        got = b.claim(req)
        if not got.tasks:
            raise BenchError(f"only {n - left:,} of {n:,} tasks could be claimed to finish")
        b.complete(CompleteBatch("bench-finish", done=[c.id for c in got.tasks]))
        left -= len(got.tasks)


def claim_cost(backend: str, server_url: str, pending: int, chunk: int, limit: int,
               repeats: int, done_rows: int = 0) -> float:  # fmt: skip
    """Median ms of ``claim(limit)`` with ``pending`` ready tasks (and, first, ``done_rows``
    tasks enqueued and finished); each claim's tasks are released straight away (not
    timed), so the backlog stays at ``pending``."""
    with place(backend, server_url) as url:
        q = _queue(url)
        if done_rows:
            t = time.perf_counter()
            _fill(q, done_rows, chunk)
            _finish(q, done_rows, chunk)
            done = q.counts()["done"]
            if done != done_rows:
                raise BenchError(f"{done:,} tasks done after finishing {done_rows:,}")
            say(f"  {done_rows:,} tasks enqueued and finished in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        _fill(q, pending, chunk)
        say(f"  filled {pending:,} in {time.perf_counter() - t:.1f} s")
        _settle(backend, url)
        b = q.backend
        req = ClaimRequest(worker_id="bench-claim", limit=limit, lease=60.0)
        samples = []
        for i in range(repeats + 2):
            t = time.perf_counter()
            got = b.claim(req)
            ms = (time.perf_counter() - t) * 1000
            if len(got.tasks) != min(limit, pending):
                raise BenchError(f"claim returned {len(got.tasks)} tasks, expected {limit}")
            b.complete(CompleteBatch("bench-claim", released=[c.id for c in got.tasks]))
            if i >= 2:  # two warm-ups
                samples.append(ms)
        q.close()
    med = statistics.median(samples)
    say(f"  lmq claim({limit}) with {pending:,} pending, {done_rows:,} done: {med:.2f} ms "
        f"(median of {repeats})")  # fmt: skip
    return med
