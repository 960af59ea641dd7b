"""Schedules: tick arithmetic (daylight saving with a fixed clock), missed-tick policies,
the sync on worker start, declaration errors, and the Queue's schedule verbs."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import lmq
from lmq import schedule as sm
from lmq.models import ScheduleState
from lmq.schedule import Schedule
from lmq.worker import Worker, WorkerSettings

BERLIN = sm.zone("Europe/Berlin")


def local(*args: int, fold: int = 0) -> float:
    return datetime(*args, tzinfo=BERLIN, fold=fold).timestamp()  # type: ignore[misc]


def walls(ticks: list[float]) -> list[str]:
    return [datetime.fromtimestamp(t, BERLIN).strftime("%m-%d %H:%M%z") for t in ticks]


def walk(s: Schedule, start: float, n: int) -> list[float]:
    out, t = [], start
    for _ in range(n):
        nxt = s.next_after(t)
        assert nxt is not None and nxt > t
        out.append(nxt)
        t = nxt
    return out


# --- daylight saving (Europe/Berlin 2025: 30 March 02:00 -> 03:00, 26 October 03:00 -> 02:00)


def test_fixed_time_cron_spring_forward_runs_once_right_after_the_jump() -> None:
    s = Schedule("nightly", "nightly", cron="30 2 * * *", timezone="Europe/Berlin")
    got = walk(s, local(2025, 3, 28, 12), 4)
    # 02:30 does not exist on 30 March: cron runs it as the clock jumps (03:00 CEST)
    assert walls(got) == [
        "03-29 02:30+0100",
        "03-30 03:00+0200",
        "03-31 02:30+0200",
        "04-01 02:30+0200",
    ]


def test_fixed_time_cron_fall_back_runs_only_the_first_0230() -> None:
    s = Schedule("nightly", "nightly", cron="30 2 * * *", timezone="Europe/Berlin")
    got = walk(s, local(2025, 10, 24, 12), 4)
    assert walls(got) == [
        "10-25 02:30+0200",
        "10-26 02:30+0200",  # the second 02:30 (CET) an hour later is not a tick
        "10-27 02:30+0100",
        "10-28 02:30+0100",
    ]
    # asked during the repeated hour (02:15 CET, after the first 02:30): the next tick is
    # the next day's, not the one already past
    nxt = s.next_after(local(2025, 10, 26, 2, 15, fold=1))
    assert walls([nxt]) == ["10-27 02:30+0100"]  # type: ignore[list-item]


def test_hourly_cron_follows_real_time_across_both_changes() -> None:
    s = Schedule("hourly", "hourly", cron="0 * * * *", timezone="Europe/Berlin")
    spring = walk(s, local(2025, 3, 30, 0, 30), 4)
    assert walls(spring) == [
        "03-30 01:00+0100",
        "03-30 03:00+0200",  # 02:00 never happens; one real hour after 01:00 CET
        "03-30 04:00+0200",
        "03-30 05:00+0200",
    ]
    autumn = walk(s, local(2025, 10, 26, 0, 30), 5)
    assert walls(autumn) == [
        "10-26 01:00+0200",
        "10-26 02:00+0200",
        "10-26 02:00+0100",  # both 02:00s: each real hour once
        "10-26 03:00+0100",
        "10-26 04:00+0100",
    ]
    for ticks in (spring, autumn):
        assert all(b - a == 3600 for a, b in itertools.pairwise(ticks))


def test_every_tick_once_through_a_dst_day_with_a_fixed_clock() -> None:
    """A worker firing by due() with a fixed clock stepping a minute at a time through
    both changes gives each cron occurrence exactly once, none early."""
    for cron, start, n in (
        ("30 2 * * *", local(2025, 3, 29, 0), 2),
        ("30 2 * * *", local(2025, 10, 25, 0), 2),
        ("0 * * * *", local(2025, 3, 30, 0, 10), 48),  # 48 real hours: 23 + 25 on the clock
        ("0 * * * *", local(2025, 10, 26, 0, 10), 48),
    ):
        decl = Schedule("s", "s", cron=cron, timezone="Europe/Berlin")
        state = sm.sync(decl, None, start)
        assert state is not None
        fired: list[float] = []
        now = start
        while now < start + 2 * 86400:
            now += 60
            step = sm.due(state, now)
            if step is None:
                continue
            ticks, state = step
            assert all(t <= now < t + 60 for t in ticks)
            fired += ticks
        assert fired == walk(decl, start, len(fired))
        assert len(fired) == n, (cron, walls(fired))
        assert len(set(fired)) == len(fired)
        hours = [w[:8] for w in walls(fired)]
        if cron.startswith("0 *"):
            assert hours.count("03-30 02") == 0 and hours.count("10-26 02") in (0, 2)
            assert hours.count("10-26 02") == 2 or hours[0].startswith("03")


# --- every= ---------------------------------------------------------------------------------


def test_every_ticks_are_multiples_of_the_interval() -> None:
    s = Schedule("tick", "tick", every=5)
    assert s.next_after(1000.0) == 1005.0
    assert s.next_after(1001.2) == 1005.0
    assert s.next_after(1004.999) == 1005.0
    assert s.ticks_between(1000.0, 1020.0, 100) == [1000.0, 1005.0, 1010.0, 1015.0, 1020.0]
    assert s.ticks_between(1000.0, 1020.0, 2) == [1015.0, 1020.0]
    tenth = Schedule("fast", "fast", every=0.1)
    t = 1_700_000_000.0
    ticks = walk(tenth, t, 50)
    assert ticks == tenth.ticks_between(ticks[0], ticks[-1], 1000)
    assert all(b > a for a, b in itertools.pairwise(ticks))


# --- sync on worker start and missed ticks ------------------------------------------------


def test_new_schedule_starts_after_now_with_nothing_to_catch_up() -> None:
    decl = Schedule("tick", "tick", every=60)
    state = sm.sync(decl, None, 1000.0)
    assert state is not None
    assert (state.next_tick, state.version, state.declared) == (1020.0, 1, 1000.0)
    assert sm.due(state, 1019.0) is None
    step = sm.due(state, 1020.1)
    assert step is not None
    ticks, new = step
    assert ticks == [1020.0]
    assert (new.next_tick, new.last_tick, new.version) == (1080.0, 1020.0, 2)


def test_sync_keeps_an_unchanged_schedule_and_recomputes_a_changed_one() -> None:
    decl = Schedule("tick", "tick", every=60)
    stored = sm.sync(decl, None, 1000.0)
    assert stored is not None
    assert sm.sync(decl, stored, 1030.0) is None  # unchanged, declared recently
    later = sm.sync(decl, stored, 5000.0)  # unchanged: the missed ticks stay visible
    assert later is not None and later.next_tick == 1020.0 and later.declared == 5000.0
    new_payload = dataclasses.replace(decl, payload_json='{"a":1}')
    changed = sm.sync(new_payload, stored, 1030.0)
    assert changed is not None and changed.next_tick == 1020.0
    assert changed.payload_json == '{"a":1}' and changed.version == stored.version + 1
    retimed = sm.sync(Schedule("tick", "tick", every=100), stored, 1030.0)
    assert retimed is not None and retimed.next_tick == 1100.0
    # a payload stored as equal JSON with other spacing is not a change
    spaced = dataclasses.replace(stored, payload_json=" { } ")
    assert sm.sync(decl, spaced, 1030.0) is None


def _missed(missed: str, every: float = 60) -> ScheduleState:
    state = sm.sync(Schedule("s", "s", every=every, missed=missed), None, 1000.0)
    assert state is not None
    return state  # next_tick 1020 (every 60)


def test_missed_once_fires_one_task_for_the_latest_tick() -> None:
    step = sm.due(_missed("once"), 1000.0 + 3600 + 5)
    assert step is not None
    ticks, new = step
    assert ticks == [4560.0]
    assert new.next_tick == 4620.0 and new.last_tick == 4560.0


def test_missed_all_fires_each_tick_at_most_1000() -> None:
    ticks, new = sm.due(_missed("all"), 1000.0 + 3600 + 5) or ([], None)
    assert ticks == [1020.0 + 60 * i for i in range(60)]
    assert new is not None and new.next_tick == 4620.0
    many, _ = sm.due(_missed("all", every=1), 1000.0 + 86400) or ([], None)
    assert len(many) == sm.MAX_CATCH_UP and many[-1] == 1000.0 + 86400
    cron = sm.sync(Schedule("c", "c", cron="*/5 * * * *", missed="all"), None, 0.0)
    assert cron is not None
    ticks, _ = sm.due(cron, 3600.0 + 10) or ([], None)
    assert ticks == [300.0 * i for i in range(1, 13)]


def test_missed_skip_fires_only_a_recent_tick() -> None:
    state = _missed("skip")
    ticks, new = sm.due(state, 1020.5) or ([None], None)
    assert ticks == [1020.0]
    ticks, new = sm.due(state, 4560.0 + 5) or ([None], None)
    assert ticks == [4560.0]  # 5 s old: within min(60 s, the interval)
    ticks, new = sm.due(state, 4560.0 + 59) or ([None], None)
    assert ticks == [4560.0]
    hourly = sm.sync(Schedule("h", "h", every=3600, missed="skip"), None, 0.0)
    assert hourly is not None
    ticks, new = sm.due(hourly, 3600 * 5 + 61.0) or ([None], None)
    assert ticks == []  # 61 s late: skipped, but the row still moves on
    assert new is not None and new.next_tick == 3600 * 6 and new.last_tick is None
    second = sm.sync(Schedule("t", "t", every=1, missed="skip"), None, 0.0)
    assert second is not None
    assert sm.due(second, 10.5) == (
        [10.0],
        dataclasses.replace(second, next_tick=11.0, last_tick=10.0, updated=10.5, version=2),
    )
    late = sm.due(second, 11.0 + 1.5)
    assert late is not None and late[0] == [12.0]


def test_paused_schedule_is_not_due_and_resume_skips_the_pause() -> None:
    state = sm.paused(_missed("all"), 1001.0)
    assert sm.due(state, 99_999.0) is None
    resumed = sm.resumed(state, 5000.0)
    assert not resumed.paused and resumed.next_tick == 5040.0


def test_tick_key_and_text() -> None:
    assert sm.tick_key("tick", 1_700_000_000.0) == "lmq:schedule:tick:1700000000"
    assert sm.tick_key("fast", 1_700_000_000.1) == "lmq:schedule:fast:1700000000.1"


# --- declaration errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "*/61 * * * *"}, "invalid cron expression '*/61 * * * *': Bad minute"),
        ({"cron": "* * *"}, "invalid cron expression '* * *'"),
        ({"cron": "0 0 30 2 *"}, "invalid cron expression '0 0 30 2 *'"),
        ({"cron": "* * * * *", "every": 5}, "exactly one of cron"),
        ({}, "exactly one of cron"),
        ({"every": 0}, "every must be positive"),
        ({"every": timedelta(seconds=-1)}, "every must be positive"),
        ({"every": "5m"}, "every must be a timedelta or seconds"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
        ({"every": 5, "missed": "later"}, "missed must be once, all or skip"),
        ({"every": 5, "payload": {"s": {1, 2}}}, "schedule 'job'"),
    ],
)
def test_declaration_errors_are_one_clear_line(kwargs: dict[str, object], message: str) -> None:
    queue = lmq.Queue("memory://")
    with pytest.raises(lmq.ConfigError) as err:
        queue.schedule("job", **kwargs)  # type: ignore[arg-type]
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_declaration_takes_timedelta_seconds_aliases_and_handler_defaults() -> None:
    queue = lmq.Queue("memory://")

    @queue.task(queue="maint", priority=3)
    def cleanup() -> None: ...

    a = queue.schedule("cleanup", every=timedelta(minutes=5))
    assert a.every == 300.0 and a.task_name == "cleanup"
    queue.schedule("other", every=2.5, task="cleanup", queue="q2", priority=1, payload={"x": 1})
    queue.schedule("daily", cron="@daily", timezone="Europe/Berlin", task="cleanup")
    got = {s.name: s for s in queue.declared_schedules()}
    assert (got["cleanup"].queue, got["cleanup"].priority) == ("maint", 3)
    assert (got["other"].queue, got["other"].priority, got["other"].payload_json) == (
        "q2",
        1,
        '{"x":1}',
    )
    assert got["daily"].cron == "0 0 * * *"
    queue.schedule("cleanup", every=timedelta(minutes=5))  # idempotent
    assert len(queue.declared_schedules()) == 3


# --- the Queue's verbs over a backend -----------------------------------------------------


def test_pause_resume_and_run_now_through_the_backend() -> None:
    queue = lmq.Queue("memory://")

    @queue.task
    def cleanup(days: int) -> None: ...

    with pytest.raises(lmq.NotFound):
        queue.pause_schedule("cleanup")
    decl = queue.schedule("cleanup", every=60, payload={"days": 7})
    state = sm.sync(queue.declared_schedules()[0], None, 1000.0)
    assert state is not None and decl.name == state.name
    assert queue.backend.put_schedule(state, 0)
    paused = queue.pause_schedule("cleanup")
    assert paused.paused and paused.version == 2
    assert queue.pause_schedule("cleanup").version == 2  # already paused: no write
    resumed = queue.resume_schedule("cleanup")
    assert not resumed.paused and resumed.next_tick is not None and resumed.next_tick > 1020
    task_id = queue.run_schedule_now("cleanup")
    task = queue.get(task_id)
    assert task is not None and (task.task_name, task.payload) == ("cleanup", {"days": 7})
    assert [s.name for s in queue.schedules()] == ["cleanup"]


# --- workers in this process, on SQLite and in memory ----------------------------------------


@pytest.fixture(params=["sqlite", "memory"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/sched.db" if request.param == "sqlite" else "memory://"


def test_two_workers_fire_each_tick_once_and_on_time(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = lmq.Queue(url)
    runs: list[tuple[float, int]] = []

    @queue.task
    def beat(n: int) -> None:
        runs.append((time.time(), n))

    queue.schedule("beat", every=0.2, payload={"n": 7})
    queue.schedule("later", every=3600, task="beat", payload={"n": 0})
    workers = [Worker(queue, WorkerSettings(install_signal_handlers=False)) for _ in range(2)]
    caplog.set_level(logging.INFO, logger="lmq.worker")
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    time.sleep(1.5)
    queue.pause_schedule("beat")
    paused_at = time.time()
    time.sleep(0.5)
    for w in workers:
        w.stop()
    for t in threads:
        t.join()
    fired = [r for r in caplog.records if getattr(r, "event", None) == "schedule_fired"]
    ticks = [datetime.fromisoformat(r.tick).timestamp() for r in fired]  # type: ignore[attr-defined]
    assert len(ticks) >= 5 and len(set(ticks)) == len(ticks)
    assert all(abs(b - a - 0.2) < 1e-6 for a, b in itertools.pairwise(sorted(ticks)))
    assert all(r.late < 0.2 for r in fired)  # type: ignore[attr-defined]
    assert all(t < paused_at + 0.01 for t in ticks)
    assert len(runs) == len(ticks) and {n for _, n in runs} == {7}
    tasks = queue.tasks(name="beat", limit=100)
    keys = {t.unique_key for t in tasks}
    assert keys == {sm.tick_key("beat", t) for t in ticks}
    rows = {s.name: s for s in queue.schedules()}
    assert set(rows) == {"beat", "later"} and rows["beat"].paused
    assert rows["beat"].last_tick == pytest.approx(max(ticks))
    assert rows["later"].last_tick is None  # new: nothing to catch up


def test_a_restarted_worker_catches_up_once(url: str) -> None:
    queue = lmq.Queue(url)

    @queue.task
    def beat() -> None: ...

    decl = queue.schedule("beat", every=60)
    old = sm.sync(decl, None, time.time() - 3600)  # stored an hour ago, no worker since
    assert old is not None and queue.backend.put_schedule(old, 0)
    worker = Worker(queue, WorkerSettings(burst=True, install_signal_handlers=False))
    assert worker.run() == 0
    (row,) = queue.schedules()
    assert row.next_tick is not None and row.next_tick > time.time()
    assert queue.counts()["done"] == 1  # missed="once": one task for the latest tick
