"""A rate limit of N calls a second shared by three ``lmq worker`` processes, per backend.

230 ``call_rated`` tasks (tests/integration/lmq_gates_app.py, rate limit ``rated-api``:
20 a second, burst 1), all ready at once, about 11.5 s of work at the limit; one in ten is
enqueued without its rate key (the worker defers it with the key written).  The local
server (tests/integration/flaky_server.py, never failing here) records each call with the
time the worker started it (its ``X-Sent`` header) and the time it arrived.  Over every
10 s sliding window the calls started must not exceed ``10 * N`` by more than one per
worker (the arrivals are reported too), and the throughput must come close to N a second
(so the bound is not met by being slow).  Tasks wait their turn: one attempt each,
nothing failed or dead.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import time

import pytest

from . import lmq_gates_app
from .conftest import Harness
from .flaky_server import (
    events,
    flaky_server,
    gates_env,
    max_in_window,
    pct,
    report,
    start_workers,
    stop_all,
)

WINDOW = 10.0


@dataclasses.dataclass(frozen=True)
class Limited:
    rate: int = 20  # calls a second (per=1, burst=1)
    tasks: int = 230
    keyless: int = 23
    workers: int = 3
    concurrency: int = 10
    service_time: float = 0.005


def run_limited(h: Harness, cfg: Limited, test: str) -> None:
    with flaky_server(None, delay=cfg.service_time) as server:
        env = gates_env(h, LMQ_TEST_FLAKY_URL=server.url, LMQ_GATES_RATE=str(cfg.rate))
        app = lmq_gates_app.build(h.url)
        try:
            ids = app.enqueue_many(
                [("call_rated", {"n": n}) for n in range(cfg.keyless, cfg.tasks)]
            )
        finally:
            app.close()
        ids += h.queue.enqueue_many([("call_rated", {"n": n}) for n in range(cfg.keyless)])
        keys = collections.Counter(t.rate_key for t in h.queue.tasks(limit=cfg.tasks))
        assert keys == {lmq_gates_app.RATE: cfg.tasks - cfg.keyless, None: cfg.keyless}, keys

        started = time.time()
        workers, logs = start_workers(h, cfg.workers, env, "-c", str(cfg.concurrency))
        expected = cfg.tasks / cfg.rate
        # a slow poll: this process also runs the server, whose arrival stamps a busy
        # thread would bunch
        h.wait_for(
            lambda: h.counts()["done"] == cfg.tasks,
            f"{cfg.tasks} tasks done",
            timeout=expected * 2 + 30,
            interval=0.5,
            procs=workers,
        )
        drained = time.time() - started
        stop_all(workers)
        calls = server.calls

    counts = h.counts()
    assert counts == {"pending": 0, "processing": 0, "done": cfg.tasks, "dead": 0}, counts
    assert h.keys("rated") == {str(n): 1 for n in range(cfg.tasks)}
    assert collections.Counter(c.key for c in calls) == {str(n): 1 for n in range(cfg.tasks)}
    # waiting is not failing: one attempt each, no error recorded, nothing logged as failed
    tries = collections.Counter((t.attempts, len(t.errors)) for t in map(h.queue.get, ids))
    assert tries == {(1, 0): cfg.tasks}, f"(attempts, errors) -> tasks: {dict(tries)}"
    failed = events(logs, "failed", "dead")
    assert not failed, failed[:3]

    # a call's start as the worker stamped it (X-Sent): what the limit governs
    assert all(c.sent is not None for c in calls)
    starts = sorted(c.sent for c in calls if c.sent is not None)
    arrivals = sorted(c.at for c in calls)
    span = starts[-1] - starts[0]
    in_10s = max_in_window(starts, WINDOW)
    in_1s = max_in_window(starts, 1.0)
    late = sorted(c.at - c.sent for c in calls if c.sent is not None)
    bound = int(WINDOW * cfg.rate) + cfg.workers
    throughput = (len(starts) - 1) / span
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    spacing = 1.0 / cfg.rate
    # calls started within a quarter of the spacing after another: slots that came up
    # together (a reservation's tasks started late, all at once)
    bunched = sum(1 for g in gaps if g < spacing / 4)
    report(
        test,
        h.backend,
        {
            "rate": cfg.rate,
            "tasks": cfg.tasks,
            "span_s": round(span, 3),
            "max_per_10s": in_10s,
            "bound_10s": bound,
            "max_per_1s": in_1s,
            "arrivals_max_per_10s": max_in_window(arrivals, WINDOW),
            "arrivals_max_per_1s": max_in_window(arrivals, 1.0),
            "transit_p50_ms": round(pct(late, 50) * 1000, 2),
            "transit_max_ms": round(late[-1] * 1000, 1),
            "throughput_per_s": round(throughput, 2),
            "gap_min_ms": round(min(gaps) * 1000, 1),
            "bunched": bunched,
            "gap_p50_ms": round(pct(gaps, 50) * 1000, 1),
            "drain_s": round(drained, 2),
        },
    )
    assert span >= WINDOW, f"the calls took {span:.1f}s: too short to judge a {WINDOW:g}s window"
    assert in_10s <= bound, (
        f"{in_10s} calls in a {WINDOW:g}s window: the limit allows {WINDOW * cfg.rate:g} "
        f"+ one per worker ({bound}); {bunched} calls started within {spacing / 4 * 1000:g} ms "
        f"of the one before (smallest gap {min(gaps) * 1000:.1f} ms, spacing "
        f"{spacing * 1000:g} ms); the most in 1 s: {in_1s}"
    )
    assert throughput >= 0.8 * cfg.rate, (
        f"{throughput:.1f} calls/s: far below the limit of {cfg.rate}/s"
    )
    assert in_10s >= 0.8 * WINDOW * cfg.rate, f"only {in_10s} calls in the busiest 10 s"


def test_rate_limit_three_workers(hb: Harness) -> None:
    run_limited(hb, Limited(), "rate_limit")


@pytest.mark.soak
@pytest.mark.timeout(1200)
def test_rate_limit_soak(hb: Harness) -> None:
    run_limited(hb, Limited(rate=50, tasks=15_000, keyless=1_500, concurrency=20), "rate_soak")
