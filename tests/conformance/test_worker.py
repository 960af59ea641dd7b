"""The worker, in-process: ``Worker(queue, WorkerSettings(burst=True, ...)).run()``."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import lmq
from lmq.models import NewTask

from .helpers import EMPTY, claim, run_burst, wait_for

pytestmark = pytest.mark.timeout(60)

NO_WAIT = lmq.Backoff(base=0.0)


def test_burst_on_an_empty_queue_exits_zero(queue: lmq.Queue) -> None:
    assert run_burst(queue) == 0
    assert queue.workers() == []


def test_drains_async_and_sync_handlers(queue: lmq.Queue) -> None:
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    @queue.task
    async def async_job(n: int) -> None:
        await asyncio.sleep(0)
        seen.append(("async", n))

    @queue.task
    def sync_job(n: int, label: str = "x") -> None:
        assert label == "y"
        with lock:
            seen.append(("sync", n))

    for n in range(15):
        async_job.enqueue(n=n)
        sync_job.enqueue(n=n, label="y")
    assert run_burst(queue) == 0
    assert sorted(seen) == sorted(
        [("async", n) for n in range(15)] + [("sync", n) for n in range(15)]
    )
    assert queue.counts() == {**EMPTY, "done": 30}
    assert {t.attempts for t in queue.tasks(status="done", limit=100)} == {1}
    assert queue.workers() == []  # the heartbeat row is removed on a clean exit


def test_heartbeat_is_written_before_the_first_claim(queue: lmq.Queue) -> None:
    workers_seen: list[list[str]] = []

    @queue.task
    def job() -> None:
        workers_seen.append([w.id for w in queue.workers()])

    job.enqueue()
    assert run_burst(queue, concurrency=1) == 0
    assert len(workers_seen) == 1 and len(workers_seen[0]) == 1


def test_retry_then_success(queue: lmq.Queue) -> None:
    calls: list[int] = []

    @queue.task
    def flaky(order: int) -> None:
        calls.append(order)
        if len(calls) < 3:
            raise lmq.Retry(0, reason=f"try {len(calls)} not yet")

    task_id = flaky.enqueue(order=17)
    assert run_burst(queue) == 0
    task = queue.get(task_id)
    assert task is not None
    assert (task.status, task.attempts) == ("done", 3)
    assert calls == [17, 17, 17]
    assert [(e.attempt, e.type, e.message) for e in task.errors] == [
        (1, "Retry", "try 1 not yet"),
        (2, "Retry", "try 2 not yet"),
    ]


def test_retry_with_a_delay_is_left_for_later(queue: lmq.Queue) -> None:
    @queue.task
    def later() -> None:
        raise lmq.Retry(300)

    task_id = later.enqueue()
    started = time.monotonic()
    assert run_burst(queue) == 0
    assert time.monotonic() - started < 10  # burst does not wait for it
    task = queue.get(task_id)
    assert task is not None and task.next_run is not None
    assert (task.status, task.attempts) == ("pending", 1)
    assert task.next_run.timestamp() > time.time() + 250


def test_discard_goes_straight_to_the_dead_letters(queue: lmq.Queue) -> None:
    @queue.task(max_attempts=5)
    def picky(sku: str) -> None:
        raise lmq.Discard(f"sku {sku} does not exist")

    task_id = picky.enqueue(sku="A-1")
    assert run_burst(queue) == 0
    task = queue.get(task_id)
    assert task is not None and (task.status, task.attempts) == ("dead", 1)
    (dead,) = queue.dead_letters()
    assert dead.task_id == task_id
    assert "sku A-1 does not exist" in dead.reason
    assert dead.error == "Discard: sku A-1 does not exist"
    assert dead.attempts == 1


def test_exhausting_max_attempts_keeps_every_error(queue: lmq.Queue) -> None:
    calls: list[int] = []

    @queue.task(max_attempts=3, backoff=NO_WAIT)
    def doomed(order: int) -> None:
        calls.append(order)
        raise ValueError(f"order {order} failed on try {len(calls)}")

    task_id = doomed.enqueue(order=17)
    assert run_burst(queue) == 0
    assert calls == [17, 17, 17]
    task = queue.get(task_id)
    assert task is not None and (task.status, task.attempts) == ("dead", 3)
    (dead,) = queue.dead_letters()
    assert (dead.task_id, dead.attempts, dead.max_attempts) == (task_id, 3, 3)
    assert dead.reason == "attempts used up (3/3)"
    assert dead.error.startswith("ValueError: order 17 failed")
    assert [(e.attempt, e.type) for e in dead.errors] == [(n, "ValueError") for n in (1, 2, 3)]
    assert [e.message for e in dead.errors] == [f"order 17 failed on try {n}" for n in (1, 2, 3)]
    for e in dead.errors:
        assert e.traceback is not None
        assert "Traceback (most recent call last)" in e.traceback
        assert "ValueError: order 17 failed" in e.traceback
        assert "doomed" in e.traceback
    assert queue.counts() == {**EMPTY, "dead": 1}


def test_declared_max_attempts_applies_when_enqueued_without(queue: lmq.Queue) -> None:
    runs: list[int] = []

    @queue.task(max_attempts=2, backoff=NO_WAIT)
    def twice() -> None:
        runs.append(1)
        raise RuntimeError("nope")

    task_id = queue.enqueue("twice")
    task = queue.get(task_id)
    assert task is not None and task.max_attempts is None
    assert run_burst(queue) == 0
    assert len(runs) == 2
    (dead,) = queue.dead_letters()
    assert (dead.attempts, dead.max_attempts) == (2, 2)


def test_max_attempts_given_at_enqueue_wins(queue: lmq.Queue) -> None:
    runs: list[int] = []

    @queue.task(max_attempts=5, backoff=NO_WAIT)
    def job() -> None:
        runs.append(1)
        raise RuntimeError("nope")

    queue.enqueue("job", max_attempts=1)
    assert run_burst(queue) == 0
    assert len(runs) == 1
    (dead,) = queue.dead_letters()
    assert dead.max_attempts == 1


def test_unknown_names_and_malformed_payloads_are_dead_lettered_others_complete(
    queue: lmq.Queue,
) -> None:
    ran: list[int] = []

    @queue.task
    def known(n: int) -> None:
        ran.append(n)

    good = [known.enqueue(n=n) for n in range(5)]
    nobody = queue.enqueue("nobody_handles_this", {"n": 1})
    bad_json, not_object, wrong_args = queue.backend.enqueue(
        [
            NewTask("known", "{not json"),
            NewTask("known", "[1, 2]"),
            NewTask("known", '{"n": 1, "surprise": true}'),
        ]
    )
    assert run_burst(queue) == 0
    assert sorted(ran) == list(range(5))
    for task_id in good:
        task = queue.get(task_id)
        assert task is not None and task.status == "done"
    dead = {d.task_id: d for d in queue.dead_letters()}
    assert set(dead) == {nobody, bad_json, not_object, wrong_args}
    assert dead[nobody].error == "UnknownTask: no handler registered for 'nobody_handles_this'"
    assert dead[bad_json].error.startswith("MalformedPayload: payload is not valid JSON")
    assert dead[not_object].error.startswith("MalformedPayload: payload must be a JSON object")
    assert dead[wrong_args].error.startswith("PayloadMismatch:")
    assert "surprise" in dead[wrong_args].error
    assert all(d.attempts == 1 for d in dead.values())
    assert queue.counts() == {**EMPTY, "done": 5, "dead": 4}


def test_async_timeout_cancels_the_handler(queue: lmq.Queue) -> None:
    cancelled = threading.Event()

    @queue.task(timeout=0.2, max_attempts=1)
    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task_id = slow.enqueue()
    started = time.monotonic()
    assert run_burst(queue) == 0
    assert time.monotonic() - started < 10
    assert cancelled.is_set()
    task = queue.get(task_id)
    assert task is not None and task.status == "dead"
    (dead,) = queue.dead_letters()
    assert dead.error.startswith("TaskTimeout: timed out after 0.2s")


def test_sync_timeout(queue: lmq.Queue) -> None:
    @queue.task(timeout=0.1, max_attempts=1)
    def slow_sync() -> None:
        time.sleep(0.4)

    task_id = slow_sync.enqueue()
    assert run_burst(queue) == 0
    task = queue.get(task_id)
    assert task is not None and task.status == "dead"
    (dead,) = queue.dead_letters()
    assert dead.error.startswith("TaskTimeout: timed out after 0.1s")


def test_timeout_then_retry_then_success(queue: lmq.Queue) -> None:
    calls: list[int] = []

    @queue.task(timeout=0.2, max_attempts=3, backoff=NO_WAIT)
    async def sometimes_slow() -> None:
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(30)

    task_id = sometimes_slow.enqueue()
    assert run_burst(queue) == 0
    task = queue.get(task_id)
    assert task is not None and (task.status, task.attempts) == ("done", 2)
    assert [e.type for e in task.errors] == ["TaskTimeout"]


def test_worker_only_takes_its_queues(queue: lmq.Queue) -> None:
    ran: list[str] = []

    @queue.task
    def job(where: str) -> None:
        ran.append(where)

    queue.enqueue("job", {"where": "a"}, queue="a")
    queue.enqueue("job", {"where": "b"}, queue="b")
    assert run_burst(queue, queues=("a",)) == 0
    assert ran == ["a"]
    assert queue.counts() == {**EMPTY, "pending": 1, "done": 1}


def test_a_task_whose_workers_keep_dying_ends_in_the_dead_letters(queue: lmq.Queue) -> None:
    ran: list[int] = []

    @queue.task(max_attempts=1)
    def crashy() -> None:
        ran.append(1)

    task_id = crashy.enqueue()
    claim(queue.backend, worker="dead-worker", lease=1)  # its only attempt; never finished
    wait_for(lambda: queue.backend.has_ready(None), timeout=5)
    assert run_burst(queue) == 0
    assert ran == []  # attempts used up: buried unrun
    task = queue.get(task_id)
    assert task is not None and task.status == "dead"
    (dead,) = queue.dead_letters()
    assert [e.type for e in dead.errors] == ["LeaseExpired", "LeaseExpired"]
    assert "dead-worker" in dead.errors[0].message


def test_worker_stop_from_another_thread(queue: lmq.Queue) -> None:
    started = threading.Event()

    @queue.task
    def job() -> None:
        started.set()

    worker = lmq.Worker(
        queue,
        lmq.WorkerSettings(install_signal_handlers=False, idle_poll=0.05, lease=5),
    )
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(worker.run()))
    thread.start()
    try:
        job.enqueue()
        assert started.wait(10)
        wait_for(lambda: queue.counts()["done"] == 1, timeout=10)
    finally:
        worker.stop()
        thread.join(15)
    assert result == [0]
    assert queue.workers() == []


def test_worker_runs_on_uvloop(queue: lmq.Queue) -> None:
    """``loop="uvloop"``: async and sync handlers, a retry and a timeout on uvloop."""
    import uvloop  # the test extra installs it; `lmq worker` uses it by default

    ran: list[str] = []

    @queue.task(max_attempts=2, backoff=lmq.Backoff(base=0, jitter=False))
    async def flaky(n: int) -> None:
        await asyncio.sleep(0.001)
        ran.append(f"a{n}")
        if ran.count(f"a{n}") == 1:
            raise RuntimeError("first call fails")

    @queue.task
    def plain(n: int) -> None:
        ran.append(f"s{n}")

    @queue.task(timeout=0.2, max_attempts=1)
    async def hangs() -> None:
        await asyncio.sleep(30)

    queue.enqueue("flaky", {"n": 1})
    queue.enqueue("plain", {"n": 2})
    hung = queue.enqueue("hangs")
    assert run_burst(queue, loop="uvloop") == 0
    assert sorted(ran) == ["a1", "a1", "s2"]
    task = queue.get(hung)
    assert task is not None and task.status == "dead"
    assert task.errors[-1].type == "TaskTimeout"
    assert uvloop.__version__
