"""Claiming: order, readiness, limits, queue filters, atomicity under concurrency."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

import lmq
from lmq.backends import Backend
from lmq.models import ClaimRequest, TaskId

from .helpers import claim, ids, wait_for


def test_claim_marks_processing_and_counts_an_attempt(queue: lmq.Queue, backend: Backend) -> None:
    task_id = queue.enqueue("sync", {"sku": "A"}, queue="q1", max_attempts=3)
    (c,) = claim(backend, worker="w1", lease=60)
    assert (c.id, c.task_name, c.queue, c.attempts, c.max_attempts) == (task_id, "sync", "q1", 1, 3)
    assert json.loads(c.payload) == {"sku": "A"}
    task = queue.get(task_id)
    assert task is not None
    assert (task.status, task.attempts, task.locked_by) == ("processing", 1, "w1")
    assert task.locked_until is not None
    assert 50 < (task.locked_until - datetime.now(UTC)).total_seconds() <= 60
    assert claim(backend, worker="w2") == []


def test_claim_max_attempts_none_when_not_given(queue: lmq.Queue, backend: Backend) -> None:
    queue.enqueue("t")
    (c,) = claim(backend)
    assert c.max_attempts is None


def test_claim_on_empty_queue(backend: Backend) -> None:
    result = backend.claim(ClaimRequest("w1", 10, 30.0))
    assert result.tasks == []


def test_priority_then_next_run_then_id(queue: lmq.Queue, backend: Backend) -> None:
    now = datetime.now(UTC)
    made: dict[str, TaskId] = {}

    def add(label: str, priority: int, ago: float) -> None:
        made[label] = queue.enqueue(
            "t", {"label": label}, priority=priority, run_at=now - timedelta(seconds=ago)
        )

    add("low-old", 0, 100)
    add("high-new", 5, 1)
    add("mid-b", 1, 50)
    add("high-old", 5, 10)
    add("mid-a", 1, 50)  # same priority and next_run as mid-b: the lower id goes first
    add("negative", -3, 500)
    add("low-new", 0, 2)
    order = []
    while got := claim(backend, limit=1):
        order.append(json.loads(got[0].payload)["label"])
    assert order == ["high-old", "high-new", "mid-b", "mid-a", "low-old", "low-new", "negative"]


def test_one_claim_takes_the_best_ones(queue: lmq.Queue, backend: Backend) -> None:
    low = queue.enqueue_many([("t", {}) for _ in range(5)])
    high = queue.enqueue_many([("t", {}) for _ in range(3)], priority=10)
    # which tasks one claim takes follows the order; the order of the returned list may not
    assert set(ids(claim(backend, limit=4))) == {*high, low[0]}
    assert set(ids(claim(backend))) == set(low) - {low[0]}


def test_claim_limit_is_respected(queue: lmq.Queue, backend: Backend) -> None:
    queue.enqueue_many([("t", {}) for _ in range(10)])
    assert len(claim(backend, limit=3)) == 3
    assert len(claim(backend, limit=1)) == 1
    assert len(claim(backend, limit=100)) == 6
    assert claim(backend, limit=100) == []


def test_delayed_and_planned_tasks_are_not_claimable_early(
    queue: lmq.Queue, backend: Backend
) -> None:
    queue.enqueue("t", delay=60)
    queue.enqueue("t", run_at=datetime.now(UTC) + timedelta(minutes=5))
    assert claim(backend) == []
    assert not backend.has_ready(None)
    ready = queue.enqueue("t")
    assert ids(claim(backend)) == [ready]
    assert queue.counts()["pending"] == 2


def test_a_short_delay_becomes_claimable(queue: lmq.Queue, backend: Backend) -> None:
    task_id = queue.enqueue("t", delay=0.3)
    assert claim(backend) == []
    assert ids(wait_for(lambda: claim(backend), timeout=5)) == [task_id]


def test_queue_filter(queue: lmq.Queue, backend: Backend) -> None:
    a = queue.enqueue("t", queue="a")
    b = queue.enqueue("t", queue="b")
    c = queue.enqueue("t", queue="c")
    assert ids(claim(backend, queues=("x",))) == []
    assert ids(claim(backend, queues=("b",))) == [b]
    assert set(ids(claim(backend, queues=("a", "c", "zz")))) == {a, c}


def test_every_queue_when_no_filter(queue: lmq.Queue, backend: Backend) -> None:
    made = {queue.enqueue("t", queue=q) for q in ("a", "b", "default")}
    assert set(ids(claim(backend))) == made


@pytest.mark.parametrize("layout", ["one_queue_object", "two_queue_objects"])
def test_concurrent_claims_never_share_a_task(backend_url: str, layout: str) -> None:
    threads_n, tasks_n = 8, 300
    queues = [lmq.Queue(backend_url)]
    if layout == "two_queue_objects":
        queues.append(lmq.Queue(backend_url))
    all_ids = set(queues[0].enqueue_many([("t", {"i": i}) for i in range(tasks_n)]))
    barrier = threading.Barrier(threads_n)
    got: dict[str, list[TaskId]] = {f"w{n}": [] for n in range(threads_n)}
    errors: list[BaseException] = []

    def claimer(n: int) -> None:
        worker = f"w{n}"
        backend = queues[n % len(queues)].backend
        try:
            barrier.wait()
            while tasks := claim(backend, worker=worker, limit=1 + n % 4):
                got[worker].extend(ids(tasks))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == []
        claimed = [i for mine in got.values() for i in mine]
        assert len(claimed) == len(set(claimed)) == tasks_n
        assert set(claimed) == all_ids
        # each task is leased to exactly the worker whose claim returned it, once
        owner = {i: w for w, mine in got.items() for i in mine}
        for task in queues[0].tasks(status="processing", limit=tasks_n + 10):
            assert (task.locked_by, task.attempts) == (owner[task.id], 1)
    finally:
        for q in queues:
            q.close()
