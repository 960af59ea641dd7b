"""Rate limits: GCRA slot reservations (never more than W / T + burst starts in any window
W, whoever reserves), giving slots back, and the declarations."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

import lmq
from lmq import ratelimit as rl
from lmq.models import NewTask, RateState
from lmq.worker import Worker, WorkerSettings


def _max_in_window(starts: list[float], window: float) -> int:
    starts = sorted(starts)
    best, j = 0, 0
    for i, s in enumerate(starts):
        while starts[j] <= s - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_slots_are_spaced_by_per_over_calls() -> None:
    limit = rl.RateLimit(10, per=1.0)
    state = rl.fresh("api", limit)
    slots, new = rl.reserve(state, limit, 100.0, 20)
    assert slots == pytest.approx([100.0, 100.1, 100.2, 100.3, 100.4, 100.5])
    assert new is not None and new.tat == pytest.approx(100.6) and new.version == 1
    more, newer = rl.reserve(new, limit, 100.1, 3)
    assert more == pytest.approx([100.6])  # the rest lies past the horizon
    assert newer is not None and newer.version == 2
    none, unchanged = rl.reserve(newer, rl.RateLimit(1, per=60.0), 100.15, 3)
    assert (none, unchanged) == ([], None)


def test_burst_allows_back_to_back_slots_once() -> None:
    limit = rl.RateLimit(2, per=1.0, burst=3)
    slots, state = rl.reserve(rl.fresh("api", limit), limit, 50.0, 10, horizon=2.0)
    assert slots == pytest.approx([50.0, 50.0, 50.0, 50.5, 51.0, 51.5, 52.0])
    assert state is not None


def test_give_back_restores_the_unfilled_slots() -> None:
    limit = rl.RateLimit(10, per=1.0)
    state = rl.fresh("api", limit)
    slots, reserved = rl.reserve(state, limit, 100.0, 5)
    assert reserved is not None and len(slots) == 5
    back = rl.give_back(reserved, 3, 100.01)
    assert back is not None and back.tat == pytest.approx(100.2)
    assert back.version == reserved.version + 1
    again, _ = rl.reserve(back, limit, 100.02, 2)
    assert again == pytest.approx([100.2, 100.3])
    assert rl.give_back(reserved, 0, 100.0) is None


def test_many_workers_never_exceed_the_rate_in_any_window() -> None:
    """Three simulated workers reserving with compare-and-set at random moments: the
    starts never exceed W / T + burst in any window W."""
    rnd = random.Random(5)
    for calls, per, burst in ((20, 1.0, 1), (7, 2.0, 3), (100, 1.0, 5)):
        limit = rl.RateLimit(calls, per=per, burst=burst)
        stored = rl.fresh("api", limit)
        starts: list[float] = []
        now = 1000.0
        while now < 1030.0:
            now += rnd.uniform(0.0, 0.3)
            want = rnd.randint(1, 10)
            slots, new = rl.reserve(stored, limit, now, want)
            if new is None:
                continue
            stored = new
            used = rnd.randint(0, len(slots))  # the claim got fewer tasks than slots
            starts += slots[:used]
            back = rl.give_back(stored, len(slots) - used, now)
            if back is not None and rnd.random() < 0.7:  # sometimes another worker won
                stored = back
        t = per / calls
        for window in (1.0, 2.5, 10.0):
            assert _max_in_window(starts, window) <= window / t + burst + 1e-9


def test_next_free() -> None:
    limit = rl.RateLimit(4, per=1.0)
    state = RateState("api", 4, 1.0, 1, tat=10.5)
    assert rl.next_free(state, limit, 10.0) == pytest.approx(0.5)
    assert rl.next_free(state, limit, 11.0) == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0,), "calls must be an integer >= 1"),
        ((1.5,), "calls must be an integer >= 1"),
        ((5, 0), "per must be seconds > 0"),
        ((5, 1.0, 0), "burst must be an integer >= 1"),
    ],
)
def test_bad_rates_are_refused(args: tuple[object, ...], message: str) -> None:
    queue = lmq.Queue("memory://")
    with pytest.raises(lmq.ConfigError, match=message):
        queue.rate_limit("api", *args[:1], **dict(zip(("per", "burst"), args[1:], strict=False)))  # type: ignore[arg-type]
    with pytest.raises(lmq.ConfigError, match=message):
        lmq.RateLimit(*args)  # type: ignore[arg-type]


def test_tasks_carry_their_rate_key() -> None:
    queue = lmq.Queue("memory://")
    queue.rate_limit("crm-api", 10, per=1.0)

    @queue.task(rate_limit="crm-api")
    def push(n: int) -> None: ...

    @queue.task(rate_limit=lmq.RateLimit(5, key=lambda p: f"host:{p['host']}"))
    def fetch(host: str) -> None: ...

    @queue.task(rate_limit=lmq.RateLimit(5))
    def own(n: int) -> None: ...

    a = queue.get(push.enqueue(n=1))
    b = queue.get(fetch.enqueue(host="example.org"))
    c = queue.get(own.enqueue(n=1))
    assert a is not None and b is not None and c is not None
    assert (a.rate_key, b.rate_key, c.rate_key) == ("crm-api", "host:example.org", "own")
    assert queue.rate_policy("crm-api", queue.registry["push"]) == queue._rate_limits["crm-api"]
    assert queue.rate_policy("host:x", queue.registry["fetch"]).calls == 5  # type: ignore[union-attr]
    queue.check_gates()

    @queue.task(rate_limit="nobody-declared")
    def lost() -> None: ...

    with pytest.raises(lmq.ConfigError, match="not declared"):
        queue.check_gates()
    with pytest.raises(lmq.ConfigError, match="rate_limit= takes"):
        queue.task(rate_limit=5)  # type: ignore[call-overload]


# --- a worker in this process, on SQLite and in memory -------------------------------------


@pytest.fixture(params=["sqlite", "memory"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/rate.db" if request.param == "sqlite" else "memory://"


def test_burst_worker_runs_rate_limited_tasks_at_the_rate(url: str) -> None:
    queue = lmq.Queue(url)
    queue.rate_limit("api", 20, per=1.0)
    starts: list[float] = []

    @queue.task(rate_limit="api")
    async def call(n: int) -> None:
        starts.append(time.time())

    @queue.task
    async def plain(n: int) -> None:
        starts.append(0.0)

    queue.enqueue_many([("call", {"n": i}) for i in range(14)])
    queue.backend.enqueue([NewTask("call", '{"n": 99}')])  # no rate_key: deferred with it
    queue.enqueue_many([("plain", {"n": i}) for i in range(5)])
    t0 = time.time()
    assert Worker(queue, WorkerSettings(burst=True, install_signal_handlers=False)).run() == 0
    took = time.time() - t0
    assert queue.counts()["done"] == 20
    timed = sorted(s for s in starts if s)
    assert len(timed) == 15
    assert took >= 14 * 0.05 - 0.01
    # what the limit promises: no window holds more than its share plus the burst (a slot
    # the loop reached late, within one spacing, may start close to the next one: the
    # gaps themselves are not promised)
    for window in (0.1, 0.25, 0.5):
        assert _max_in_window(timed, window) <= round(window / 0.05) + 1, (window, timed)
    (stored,) = queue.rate_limits()
    assert (stored.name, stored.calls, stored.per) == ("api", 20, 1.0)


def test_stop_releases_tasks_waiting_for_their_slot(url: str) -> None:
    queue = lmq.Queue(url)
    queue.rate_limit("slow", 2, per=1.0)
    ran: list[int] = []

    @queue.task(rate_limit="slow")
    def call(n: int) -> None:
        ran.append(n)

    queue.enqueue_many([("call", {"n": i}) for i in range(4)])
    worker = Worker(queue, WorkerSettings(install_signal_handlers=False))
    threading.Timer(0.3, worker.stop).start()
    assert worker.run() == 0
    assert len(ran) == 1  # the first slot at once; the next is 0.5 s away
    left = queue.tasks(status="pending")
    assert len(left) == 3 and all(t.attempts == 0 and t.locked_by is None for t in left)
