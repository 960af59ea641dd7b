"""A circuit breaker shared by three ``lmq worker`` processes through an outage, per backend.

2,000 ``call_flaky`` tasks (tests/integration/lmq_gates_app.py) go through the breaker
``flaky-api`` (5 consecutive failures open it, cool-down 1 s doubling to at most 2 s) to
the local flaky server (tests/integration/flaky_server.py): healthy for the first 400
requests, then 503 for 3 s, then healthy.  One in ten tasks is enqueued without the
breaker key (as a PHP producer or a bare INSERT would): the worker sends each back with the
key written in, unstarted, so a claim that checks the stored breaker is what runs it.

What the workers' JSON logs and the server's request record must show:

* one ``breaker_opened``, and fewer failed calls before it than the threshold plus what
  three workers can have in flight (``failures + 3 * concurrency``);
* from 0.5 s after the open (calls already in flight aside) until ``breaker_closed``, the
  server sees no more calls than there were ``breaker_half_open`` transitions (probes);
* no task in the dead letters, every payload answered 200 exactly once and recorded done
  exactly once, the breaker closed at the end.
"""

from __future__ import annotations

import collections
import dataclasses
import time

import pytest

from . import lmq_gates_app
from .conftest import Harness
from .flaky_server import (
    events,
    flaky_server,
    gates_env,
    report,
    start_workers,
    stop_all,
)

GRACE = 0.5  # seconds after the open in which calls already under way may still arrive


@dataclasses.dataclass(frozen=True)
class Outage:
    tasks: int = 2_000
    keyless: int = 200  # of them enqueued without the breaker key
    workers: int = 3
    concurrency: int = 10
    failures: int = 5
    cooldown: float = 1.0
    max_cooldown: float = 2.0
    fail_after: int = 400  # healthy requests before the outage
    outage: float = 3.0
    service_time: float = 0.01
    timeout: float = 90.0  # for all tasks to be done


def run_outage(h: Harness, cfg: Outage, test: str) -> None:
    with flaky_server(cfg.fail_after, cfg.outage, cfg.service_time) as server:
        env = gates_env(
            h,
            LMQ_TEST_FLAKY_URL=server.url,
            LMQ_GATES_FAILURES=str(cfg.failures),
            LMQ_GATES_COOLDOWN=str(cfg.cooldown),
            LMQ_GATES_MAX_COOLDOWN=str(cfg.max_cooldown),
        )
        app = lmq_gates_app.build(h.url)
        keyed = [("call_flaky", {"n": n}) for n in range(cfg.keyless, cfg.tasks)]
        try:
            for i in range(0, len(keyed), 1000):
                app.enqueue_many(keyed[i : i + 1000])
        finally:
            app.close()
        # without the key: the queue in this process does not know the handler
        h.queue.enqueue_many([("call_flaky", {"n": n}) for n in range(cfg.keyless)])
        sample = h.queue.tasks(name="call_flaky", limit=cfg.tasks)
        with_key = collections.Counter(t.breaker for t in sample)
        assert with_key == {
            lmq_gates_app.BREAKER: cfg.tasks - cfg.keyless,
            None: cfg.keyless,
        }, f"the enqueued tasks' breaker column: {with_key}"

        started = time.time()
        workers, logs = start_workers(h, cfg.workers, env, "-c", str(cfg.concurrency))
        h.wait_counts(done=cfg.tasks, timeout=cfg.timeout, procs=workers)
        drained = time.time() - started
        stop_all(workers)
        calls = server.calls
        fail_started, fail_ended = server.fail_started, server.fail_ended

    assert fail_started is not None, "the server never started failing"
    counts = h.counts()
    assert counts == {"pending": 0, "processing": 0, "done": cfg.tasks, "dead": 0}, counts
    assert h.queue.dead_letters() == []

    evs = events(logs)
    by = collections.defaultdict(list)
    for e in evs:
        by[e["event"]].append(e)
    opened, closed = by["breaker_opened"], by["breaker_closed"]
    half_open, reopened = by["breaker_half_open"], by["breaker_reopened"]
    assert len(opened) == 1, f"one outage, one open: {opened}"
    assert len(closed) == 1, f"one outage, one close: {closed}"
    assert all(e.get("breaker") == lmq_gates_app.BREAKER for e in opened + closed + half_open)
    # a log line's time is truncated to the millisecond
    t_open, t_close = opened[0]["t"], closed[0]["t"] + 0.001
    assert t_open < t_close
    assert half_open, "the breaker closed without a probe"
    assert all(t_open <= e["t"] <= t_close for e in half_open + reopened)
    assert len(half_open) >= len(reopened) + 1, (half_open, reopened)
    assert not by["dead"], by["dead"][:3]

    failed_calls = [c for c in calls if c.status != 200]
    before_open = [c for c in failed_calls if c.at < t_open + 0.001]
    in_grace = [c for c in calls if t_open + 0.001 <= c.at < t_open + GRACE]
    while_open = [c for c in calls if t_open + GRACE <= c.at < t_close]
    limit = cfg.failures + cfg.workers * cfg.concurrency
    # calls that reached the server after the threshold's failure had been answered: not
    # "in flight" when the breaker had enough to open (the opening lagged behind)
    answered = failed_calls[cfg.failures - 1].at + cfg.service_time if failed_calls else 0.0
    late_starts = [c for c in before_open if c.at > answered]
    assert cfg.failures <= len(before_open) <= limit, (
        f"{len(before_open)} failed calls before the breaker opened: at most "
        f"{cfg.failures} + {cfg.workers} x {cfg.concurrency} in flight; "
        f"{len(late_starts)} of them arrived after the {cfg.failures}th failure was answered "
        f"(the open came {t_open - answered:.3f}s after it); by worker pid: "
        f"{dict(collections.Counter(c.worker for c in before_open))}, the late ones: "
        f"{dict(collections.Counter(c.worker for c in late_starts))}; opened by "
        f"{opened[0]['file']}"
    )
    assert len(while_open) <= len(half_open), (
        f"{len(while_open)} calls while the breaker was open (from {GRACE}s after the open "
        f"to the close) but only {len(half_open)} probes: "
        + ", ".join(f"{c.path}@{c.at - t_open:+.3f}s pid {c.worker}" for c in while_open[:10])
    )

    ok = collections.Counter(c.key for c in calls if c.status == 200)
    assert ok == {str(n): 1 for n in range(cfg.tasks)}, (
        f"payloads answered other than once: {[(k, v) for k, v in ok.items() if v != 1][:10]}"
        f", missing: {sorted(set(map(str, range(cfg.tasks))) - set(ok))[:10]}"
    )
    done = h.keys("done")
    assert done == {str(n): 1 for n in range(cfg.tasks)}, "a payload recorded done twice"

    [state] = h.queue.breakers()
    assert (state.name, state.state, state.forced) == (lmq_gates_app.BREAKER, "closed", False)

    report(
        test,
        h.backend,
        {
            "tasks": cfg.tasks,
            "drain_s": round(drained, 2),
            "failed_before_open": len(before_open),
            "open_limit": limit,
            "time_to_open_s": round(t_open - fail_started, 3),
            "open_lag_s": round(t_open - answered, 3),
            "started_after_threshold": len(late_starts),
            "calls_in_grace": len(in_grace),
            "grace_keyless": sum(1 for c in in_grace if int(c.key) < cfg.keyless),
            "calls_while_open": len(while_open),
            "probes": len(half_open),
            "reopened": len(reopened),
            "open_s": round(t_close - t_open, 3),
            "close_after_recovery_s": round(t_close - (fail_ended or t_close), 3),
            "last_call_after_recovery_s": round(
                max(c.at for c in calls) - (fail_ended or t_close), 3
            ),
            "failed_calls": len(failed_calls),
            "failed_events": len(by["failed"]),
            "trips_stored": state.trips,
        },
    )


def test_breaker_outage_three_workers(hb: Harness) -> None:
    run_outage(hb, Outage(), "breaker_outage")


@pytest.mark.soak
@pytest.mark.timeout(1200)
def test_breaker_outage_soak(hb: Harness) -> None:
    cfg = Outage(
        tasks=30_000,
        keyless=3_000,
        concurrency=20,
        failures=10,
        cooldown=2.0,
        max_cooldown=8.0,
        fail_after=10_000,
        outage=30.0,
        timeout=900.0,
    )
    run_outage(hb, cfg, "breaker_outage_soak")
