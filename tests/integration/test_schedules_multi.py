"""Recurring schedules with three ``lmq worker`` processes, per backend.

* An every-second schedule (``queue.schedule("tick", every=timedelta(seconds=1))`` in
  tests/integration/lmq_gates_app.py) and three workers for about 10 s: every tick is
  enqueued exactly once (one task per tick by its unique key, one ``schedule_fired`` log
  line per tick across the three logs, consecutive seconds with no gap between the first
  and the last), every task runs once, within 0.5 s of its tick.
* Three workers started at the same instant, all declaring the same hourly schedule: one
  stored row, stored by one of them, its next tick the next full hour, nothing enqueued
  (a new schedule has nothing to catch up); then three with its interval changed to 30
  minutes: updated by one, the next tick recomputed.
"""

from __future__ import annotations

import collections
import itertools
import math
import sys
import time
from datetime import datetime

import pytest

from .conftest import Harness, Proc
from .flaky_server import GATES_APP, events, gates_env, pct, report, start_workers, stop_all

LATE = 0.5  # seconds a tick's task may start after its tick
PREFIX = "lmq:schedule:"


def tick_of(unique_key: str | None, name: str) -> float:
    """The tick (epoch seconds) in a schedule task's unique key ``lmq:schedule:NAME:TICK``."""
    assert unique_key and unique_key.startswith(f"{PREFIX}{name}:"), unique_key
    text = unique_key[len(PREFIX) + len(name) + 1 :]
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text).timestamp()


def wait_started(h: Harness, logs: list, procs: list[Proc]) -> float:
    """Wait until every worker logged worker_started; the last one's time."""
    h.wait_for(
        lambda: len(events(logs, "worker_started")) == len(procs),
        "every worker to start",
        timeout=60,
        procs=procs,
    )
    return max(e["t"] for e in events(logs, "worker_started"))


def run_ticks(h: Harness, seconds: float, test: str) -> None:
    env = gates_env(h, LMQ_GATES_SCHEDULE="tick")
    workers, logs = start_workers(h, 3, env, "-c", "4")
    up = wait_started(h, logs, workers)
    first_up = min(e["t"] for e in events(logs, "worker_started"))
    deadline = up + seconds
    while time.time() < deadline:
        for w in workers:
            assert w.poll() is None, f"{w.name} exited {w.poll()}:\n{w.stderr()[-3000:]}"
        time.sleep(0.1)
    stopped = time.time()
    stop_all(workers)

    [row] = h.queue.schedules()
    assert (row.name, row.task_name, row.every, row.paused) == ("tick", "tick", 1.0, False)

    tasks = h.queue.tasks(name="tick", limit=10_000)
    ticks = sorted(tick_of(t.unique_key, "tick") for t in tasks)
    dupes = [t for t, n in collections.Counter(ticks).items() if n > 1]
    assert not dupes, f"ticks enqueued more than once: {dupes}"
    assert all(t == math.floor(t) for t in ticks), f"every=1s ticks are whole seconds: {ticks}"
    gaps = [b - a for a, b in itertools.pairwise(ticks) if b - a != 1.0]
    assert not gaps, f"missed ticks between the first and the last: gaps {gaps} in {ticks}"
    assert len(ticks) >= seconds - 1, f"{len(ticks)} ticks in {seconds:g}s of three workers"
    # the edges: the first tick comes within a second or so of the first worker's start;
    # the last within a second of the stop
    assert ticks[0] <= first_up + 2.5, (ticks[0] - first_up, ticks)
    assert ticks[-1] >= stopped - 2.0, (stopped - ticks[-1], ticks)

    fired = events(logs, "schedule_fired")
    fired_ticks = collections.Counter(epoch_of(e["tick"]) for e in fired)
    assert fired_ticks == collections.Counter(ticks), (
        f"schedule_fired lines {sorted(fired_ticks.items())} vs tasks {ticks}"
    )
    assert {str(e["task_id"]) for e in fired} == {str(t.id) for t in tasks}
    fire_late = [e["t"] - epoch_of(e["tick"]) for e in fired]

    by_status = collections.Counter(t.status for t in tasks)
    # the tick fired just before the stop may still be pending (no worker left to run it)
    assert by_status["done"] >= len(ticks) - 1 and by_status["dead"] == 0, by_status
    pending = [t for t in tasks if t.status != "done"]
    assert all(tick_of(t.unique_key, "tick") == ticks[-1] for t in pending), pending

    runs = sorted(float(line.split(" ")[3]) for line in _lines(h, "tick"))
    done_ticks = sorted(tick_of(t.unique_key, "tick") for t in tasks if t.status == "done")
    assert len(runs) == len(done_ticks), f"{len(runs)} runs of {len(done_ticks)} done ticks"
    late = [r - t for r, t in zip(runs, done_ticks, strict=True)]
    report(
        test,
        h.backend,
        {
            "seconds": round(stopped - up, 1),
            "ticks": len(ticks),
            "runs": len(runs),
            "duplicates": len(dupes),
            "gaps": len(gaps),
            "fired_by_workers": len({e["file"] for e in fired}),
            "fire_late_p50_ms": round(pct(fire_late, 50) * 1000, 1),
            "fire_late_max_ms": round(max(fire_late) * 1000, 1),
            "run_late_p50_ms": round(pct(late, 50) * 1000, 1),
            "run_late_max_ms": round(max(late) * 1000, 1),
        },
    )
    assert all(-0.05 <= x <= LATE for x in late), (
        f"runs not within {LATE}s of their ticks: "
        + ", ".join(f"{t:.0f}:{x:+.3f}s" for t, x in zip(done_ticks, late, strict=True))
    )


def epoch_of(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value)).timestamp()


def _lines(h: Harness, event: str) -> list[str]:
    if not h.record_path.exists():
        return []
    return [ln for ln in h.record_path.read_text().splitlines() if ln.split(" ")[0] == event]


def test_every_second_schedule_three_workers(hb: Harness) -> None:
    run_ticks(hb, 10.0, "schedule_ticks")


# Three workers that start at the same instant: each imports everything first, then waits
# for the same wall-clock moment and only then runs ``lmq worker`` (connect, sync, claim),
# so their schedule syncs race within milliseconds rather than a process start apart.
AT_ONCE = (
    "import sys, time\n"
    "import lmq.cli, lmq.worker, lmq_gates_app\n"
    "time.sleep(max(0.0, float(sys.argv[1]) - time.time()))\n"
    "lmq.cli.main(sys.argv[2:])\n"
)


def start_at_once(h: Harness, env: dict[str, str], name: str) -> tuple[list[Proc], list]:
    at = time.time() + 3.0  # time for three interpreters to import lmq and the app
    procs, logs = [], []
    for i in range(3):
        log = h.dir / f"{name}-{i + 1}.jsonl"
        argv = [sys.executable, "-c", AT_ONCE, f"{at:.6f}", "worker", "--app", GATES_APP]
        procs.append(h.start([*argv, "-c", "2", "--log-file", str(log)], name, env=env))
        logs.append(log)
    return procs, logs


def _declare_round(h: Harness, which: str, every: float) -> None:
    workers, logs = start_at_once(h, gates_env(h, LMQ_GATES_SCHEDULE=which), which)
    up = wait_started(h, logs, workers)
    # a worker syncs its schedules as it starts; give the slowest a moment
    h.wait_for(lambda: time.time() > up + 1.0, "a second after the last start")
    rows = h.queue.schedules()
    stop_all(workers)
    started = [e["t"] for e in events(logs, "worker_started")]
    synced = events(logs, "schedule_synced")
    assert [r.name for r in rows] == ["hourly"], rows
    [row] = rows
    assert (row.task_name, row.every, row.cron, row.missed) == ("hourly", every, None, "once")
    assert row.next_tick is not None
    # the first tick after the sync: a multiple of the interval since the epoch
    after = math.floor(synced[0]["t"] / every) + 1 if synced else None
    assert after is not None and row.next_tick == after * every, (row.next_tick, synced)
    assert row.last_tick is None and row.last_task_id is None
    assert h.queue.tasks(name="hourly") == []
    assert not events(logs, "schedule_fired")
    # one store (or one update) by compare-and-set: the other two lost the race and
    # re-read, or found the row already as declared
    assert len(synced) == 1, f"{len(synced)} workers stored the schedule: {synced}"
    report(
        f"schedule_declare_{which}",
        h.backend,
        {
            "start_spread_ms": round((max(started) - min(started)) * 1000, 1),
            "synced": len(synced),
            "rows": len(rows),
        },
    )


def test_schedule_declared_by_three_workers_is_one_row(hb: Harness) -> None:
    """Three workers declare the same new schedule at once: one row, stored once; then
    three workers with its interval changed: updated once, the next tick recomputed."""
    _declare_round(hb, "hourly", 3600.0)
    _declare_round(hb, "half-hourly", 1800.0)


@pytest.mark.soak
@pytest.mark.timeout(1200)
def test_every_second_schedule_soak(hb: Harness) -> None:
    run_ticks(hb, 300.0, "schedule_ticks_soak")
