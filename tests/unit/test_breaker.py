"""Circuit breakers: the transitions (pure, with a fixed clock), which errors count, the
declarations and the Queue's open/close/reset verbs."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

import lmq
from lmq import breaker as bm
from lmq.breaker import Breaker
from lmq.models import BreakerState, NewTask
from lmq.worker import Worker, WorkerSettings

POLICY = Breaker("api", failures=3, cooldown=10.0, max_cooldown=25.0)


def run(state: BreakerState, outcomes: list[bool], now: float) -> BreakerState:
    new = bm.record(state, POLICY, outcomes, now, "boom")
    return state if new is None else new


def test_consecutive_failures_open_it_and_successes_reset_the_count() -> None:
    state = BreakerState("api")
    assert bm.record(state, POLICY, [False, False], 1.0) is None  # nothing to write
    state = run(state, [True, True], 1.0)
    assert (state.state, state.failures, state.version) == ("closed", 2, 1)
    state = run(state, [False], 2.0)
    assert state.failures == 0
    state = run(state, [True, True, True, False], 3.0)
    assert state.state == "open" and state.failures == 3
    assert (state.opened_at, state.retry_at, state.cooldown, state.trips) == (3.0, 13.0, 10.0, 1)
    assert state.last_error == "boom"
    assert bm.record(state, POLICY, [True, True], 4.0) is None  # open: ignored


def test_ratio_over_a_window() -> None:
    policy = Breaker("api", ratio=0.5, window=10.0, min_calls=4)
    state = BreakerState("api")
    state = bm.record(state, policy, [True, True, True], 100.0) or state
    assert state.state == "closed"  # 3 calls < min_calls (and failures= is not the rule)
    state = bm.record(state, policy, [False], 101.0) or state
    assert state.state == "open"  # 3/4 >= 0.5
    fresh = BreakerState("api")
    fresh = bm.record(fresh, policy, [True, True, False], 100.0) or fresh
    fresh = bm.record(fresh, policy, [False, False], 111.0) or fresh  # a new window
    assert fresh.state == "closed" and (fresh.window_calls, fresh.window_failures) == (2, 0)


def test_probe_cycle_doubles_the_cooldown_up_to_its_cap_then_closes() -> None:
    state = run(BreakerState("api"), [True] * 3, 0.0)
    assert bm.start_probe(state, "w1", 5.0, 30.0) is None  # cooling down
    half = bm.start_probe(state, "w1", 10.0, 30.0)
    assert half is not None and (half.state, half.probe_by, half.probe_until) == (
        "half_open",
        "w1",
        40.0,
    )
    assert bm.start_probe(half, "w2", 20.0, 30.0) is None  # w1 is probing
    again = bm.probe_result(half, POLICY, True, 12.0, "still down")
    assert again is not None and (again.state, again.cooldown, again.retry_at) == (
        "open",
        20.0,
        32.0,
    )
    assert bm.transition_event(half, again) == "breaker_reopened"
    half = bm.start_probe(again, "w2", 32.0, 30.0)
    assert half is not None
    again = bm.probe_result(half, POLICY, True, 33.0)
    assert again is not None and again.cooldown == 25.0  # capped at max_cooldown
    half = bm.start_probe(again, "w3", 60.0, 30.0)
    assert half is not None
    # the prober died: past probe_until anyone may probe
    taken = bm.start_probe(half, "w4", 91.0, 30.0)
    assert taken is not None and taken.probe_by == "w4"
    closed = bm.probe_result(taken, POLICY, False, 92.0)
    assert closed is not None and closed.state == "closed"
    assert (closed.failures, closed.cooldown, closed.retry_at, closed.trips) == (0, 10.0, None, 1)
    assert bm.transition_event(taken, closed) == "breaker_closed"
    assert bm.transition_event(BreakerState("api"), run(BreakerState("api"), [True] * 3, 0)) == (
        "breaker_opened"
    )


def test_no_probe_goes_back_to_open_and_tries_again_soon() -> None:
    state = run(BreakerState("api"), [True] * 3, 0.0)
    half = bm.start_probe(state, "w1", 10.0, 30.0)
    assert half is not None
    back = bm.no_probe(half, 10.1)
    assert back is not None and back.state == "open" and back.retry_at == pytest.approx(11.1)
    assert bm.no_probe(back, 10.2) is None


def test_forced_open_has_no_probes_until_closed_or_for_its_time() -> None:
    state = bm.forced_open(BreakerState("api"), 0.0, None, 10.0)
    assert state.state == "open" and state.forced and state.trips == 1
    assert not bm.probe_due(state, 1e9)
    timed = bm.forced_open(BreakerState("api"), 0.0, 60.0, 10.0)
    assert not timed.forced and not bm.probe_due(timed, 59.0) and bm.probe_due(timed, 60.0)
    closed = bm.closed(state, 5.0, 10.0)
    assert closed.state == "closed" and not closed.forced and closed.failures == 0


class HTTPError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status


class Response:
    def __init__(self, status: int) -> None:
        self.status_code = status


class ClientError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.response = Response(status)


class AioError(Exception):
    status = 404


def test_which_errors_count() -> None:
    assert bm.counts_as_failure(RuntimeError("down"))
    assert bm.counts_as_failure(TimeoutError())
    assert bm.counts_as_failure(HTTPError(503))
    assert bm.counts_as_failure(HTTPError(429))
    assert bm.counts_as_failure(HTTPError(408))
    assert not bm.counts_as_failure(HTTPError(404))
    assert not bm.counts_as_failure(ClientError(400))
    assert bm.counts_as_failure(ClientError(500))
    assert not bm.counts_as_failure(AioError())
    assert not bm.counts_as_failure(lmq.Discard("bad input"))
    only_timeouts = Breaker(counts=lambda e: isinstance(e, TimeoutError))
    assert only_timeouts.counted(TimeoutError()) and not only_timeouts.counted(HTTPError(503))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failures": 0}, "failures must be an integer >= 1"),
        ({"ratio": 1.5}, "ratio must be in"),
        ({"window": 0}, "window must be seconds > 0"),
        ({"min_calls": 0}, "min_calls must be an integer >= 1"),
        ({"cooldown": -1}, "cooldown must be seconds > 0"),
        ({"cooldown": 10, "max_cooldown": 5}, "max_cooldown must be seconds >= cooldown"),
        ({"counts": 3}, "counts must be a callable"),
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, object], message: str) -> None:
    queue = lmq.Queue("memory://")
    with pytest.raises(lmq.ConfigError, match=message):
        queue.breaker("api", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(lmq.ConfigError, match=message):
        lmq.Breaker(**kwargs)  # type: ignore[arg-type]


def test_tasks_carry_their_breaker_key_and_policy() -> None:
    queue = lmq.Queue("memory://")
    declared = queue.breaker("crm-api", failures=2, cooldown=5.0)

    @queue.task(breaker="crm-api")
    def push(n: int) -> None: ...

    @queue.task(breaker=lambda p: p.get("host"))
    def fetch(host: str | None = None) -> None: ...

    own = lmq.Breaker(key=lambda p: f"mail:{p['to'].split('@')[1]}", failures=3, cooldown=10)

    @queue.task(breaker=own)
    def mail(to: str) -> None: ...

    keys = [
        queue.get(push.enqueue(n=1)),
        queue.get(fetch.enqueue(host="example.org")),
        queue.get(fetch.enqueue()),
        queue.get(mail.enqueue(to="a@example.com")),
    ]
    assert [t.breaker if t else "?" for t in keys] == [
        "crm-api",
        "example.org",
        None,
        "mail:example.com",
    ]
    assert push.options.breaker == "crm-api"
    assert queue.breaker_policy("crm-api", push) is declared
    assert queue.breaker_policy("example.org", fetch) is bm.DEFAULT_POLICY
    assert queue.breaker_policy("mail:example.com", mail) is own
    assert queue.declares_breakers
    with pytest.raises(ValueError, match="could not be computed"):
        mail.enqueue(to="nobody")
    with pytest.raises(lmq.ConfigError, match="breaker= takes"):
        queue.task(breaker=42)  # type: ignore[call-overload]


def test_open_close_reset_through_the_backend() -> None:
    queue = lmq.Queue("memory://")
    queue.breaker("crm-api", cooldown=7.0)
    opened = queue.open_breaker("crm-api")
    assert (opened.state, opened.forced, opened.version, opened.cooldown) == ("open", True, 1, 7.0)
    assert [b.name for b in queue.breakers()] == ["crm-api"]
    timed = queue.open_breaker("crm-api", for_seconds=30)
    assert not timed.forced and timed.retry_at is not None and timed.version == 2
    closed = queue.close_breaker("crm-api")
    assert closed.state == "closed" and closed.version == 3
    reset = queue.reset_breaker("crm-api")
    assert reset.state == "closed" and reset.version == 0
    assert queue.breakers() == []
    with pytest.raises(ValueError, match="for_seconds"):
        queue.open_breaker("crm-api", for_seconds=0)


# --- a worker in this process, on SQLite and in memory -------------------------------------


@pytest.fixture(params=["sqlite", "memory"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/breaker.db" if request.param == "sqlite" else "memory://"


def test_worker_opens_probes_and_closes_the_breaker(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = lmq.Queue(url)
    queue.breaker("svc", failures=2, cooldown=0.3, max_cooldown=0.6)
    calls: list[tuple[float, str]] = []  # (time, breaker state seen then)
    service = {"up": False}

    @queue.task(breaker="svc", max_attempts=50, backoff=lmq.Backoff(base=0.02, cap=0.05))
    async def call(n: int) -> None:
        calls.append((time.time(), n))
        if not service["up"]:
            raise HTTPError(503)

    queue.enqueue_many([("call", {"n": i}) for i in range(20)])
    worker = Worker(queue, WorkerSettings(concurrency=2, install_signal_handlers=False))
    opened_at: list[float] = []

    def control() -> None:
        deadline = time.time() + 10
        while time.time() < deadline and not any(b.state == "open" for b in queue.breakers()):
            time.sleep(0.01)
        opened_at.append(time.time())
        time.sleep(1.0)  # two probes fail meanwhile (cool-downs 0.3 s, then 0.6 s)
        service["up"] = True
        while time.time() < deadline and queue.counts()["done"] < 20:
            time.sleep(0.02)
        worker.stop()

    caplog.set_level(logging.INFO, logger="lmq.worker")
    helper = threading.Thread(target=control)
    helper.start()
    assert worker.run() == 0
    helper.join()
    assert queue.counts() == {"pending": 0, "processing": 0, "done": 20, "dead": 0}
    (b,) = queue.breakers()
    assert (b.state, b.trips, b.cooldown) == ("closed", 1, 0.3)
    # while open only probes called the service (allowing 0.05 s for calls in flight)
    while_open = [t for t, _ in calls if opened_at[0] + 0.05 < t < opened_at[0] + 1.0]
    assert 1 <= len(while_open) <= 3, while_open
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("breaker_opened") == 1
    assert events.count("breaker_closed") == 1
    assert events.count("breaker_half_open") == events.count("breaker_reopened") + 1
    opened = next(r for r in caplog.records if getattr(r, "event", None) == "breaker_opened")
    assert opened.levelno == logging.WARNING
    assert (opened.breaker, opened.failures, opened.cooldown) == ("svc", 2, 0.3)  # type: ignore[attr-defined]


def test_rows_without_their_key_wait_behind_an_open_breaker(url: str) -> None:
    queue = lmq.Queue(url)
    ran: list[str] = []

    @queue.task(breaker=lambda p: p["host"])
    def fetch(host: str) -> None:
        ran.append(host)

    # enqueued by another program: no breaker column
    queue.backend.enqueue([NewTask("fetch", '{"host": "a"}'), NewTask("fetch", '{"host": "b"}')])
    queue.open_breaker("a")
    worker = Worker(queue, WorkerSettings(burst=True, install_signal_handlers=False))
    assert worker.run() == 0
    assert ran == ["b"]
    # even with its breaker closed, a keyless row runs only once a claim that checked the
    # stored breaker took it: first back with its key, one attempt in all
    (done,) = queue.tasks(status="done")
    assert (done.breaker, done.attempts, done.errors) == ("b", 1, ())
    (waiting,) = queue.tasks(status="pending")
    assert (waiting.breaker, waiting.attempts, waiting.errors) == ("a", 0, ())
    queue.close_breaker("a")
    assert Worker(queue, WorkerSettings(burst=True, install_signal_handlers=False)).run() == 0
    assert ran == ["b", "a"]
