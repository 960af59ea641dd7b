"""Completing a batch of outcomes: done, retry, bury, release; only the holder's count."""

from __future__ import annotations

import time

import lmq
from lmq.backends import Backend

from .helpers import EMPTY, burial, claim, complete, ids, retry


def test_done(queue: lmq.Queue, backend: Backend) -> None:
    task_id = queue.enqueue("t")
    claim(backend)
    complete(backend, done=[task_id])
    task = queue.get(task_id)
    assert task is not None
    assert (task.status, task.attempts, task.locked_by, task.locked_until) == (
        "done",
        1,
        None,
        None,
    )
    assert queue.counts() == {**EMPTY, "done": 1}
    assert claim(backend) == []


def test_empty_batch_is_fine(backend: Backend) -> None:
    complete(backend)
    assert backend.counts().as_dict() == EMPTY


def test_retry_goes_back_to_pending_later_with_the_error(
    queue: lmq.Queue, backend: Backend
) -> None:
    task_id = queue.enqueue("t")
    claim(backend)
    before = time.time()
    complete(backend, retries=[retry(task_id, delay=120, message="shop API said 503")])
    task = queue.get(task_id)
    assert task is not None
    assert (task.status, task.attempts, task.locked_by) == ("pending", 1, None)
    assert task.next_run is not None
    assert before + 119 <= task.next_run.timestamp() <= time.time() + 121
    assert task.last_error == "ValueError: shop API said 503"
    assert [(e.attempt, e.type, e.message) for e in task.errors] == [
        (1, "ValueError", "shop API said 503")
    ]
    assert task.errors[0].traceback == "Traceback: shop API said 503"
    assert claim(backend) == []
    assert not backend.has_ready(None)
    assert queue.counts() == {**EMPTY, "pending": 1}


def test_retry_with_no_delay_is_claimable_at_once_and_keeps_counting(
    queue: lmq.Queue, backend: Backend
) -> None:
    task_id = queue.enqueue("t")
    claim(backend)
    complete(backend, retries=[retry(task_id, 0, "first")])
    (again,) = claim(backend)
    assert again.attempts == 2
    complete(backend, retries=[retry(task_id, 0, "second", attempt=2)])
    task = queue.get(task_id)
    assert task is not None
    assert [(e.attempt, e.message) for e in task.errors] == [(1, "first"), (2, "second")]
    assert task.last_error == "ValueError: second"


def test_bury_moves_the_task_to_the_dead_letters_with_its_history(
    queue: lmq.Queue, backend: Backend
) -> None:
    task_id = queue.enqueue("sync", {"sku": "A"}, queue="q1", priority=2)
    claim(backend)
    complete(backend, retries=[retry(task_id, 0, "first try")])
    claim(backend)
    complete(backend, burials=[burial(task_id, "order 17 failed", task_name="sync", attempt=2)])

    task = queue.get(task_id)
    assert task is not None
    assert task.status == "dead"
    assert (task.id, task.task_name, task.payload, task.attempts) == (
        task_id,
        "sync",
        {"sku": "A"},
        2,
    )
    assert task.dead_letter_id is not None
    assert [e.message for e in task.errors] == ["first try", "order 17 failed"]
    assert queue.counts() == {**EMPTY, "dead": 1}
    assert claim(backend) == []

    (dead,) = queue.dead_letters()
    assert dead.id == task.dead_letter_id
    assert (dead.task_id, dead.task_name, dead.queue, dead.priority) == (task_id, "sync", "q1", 2)
    assert dead.payload == {"sku": "A"}
    assert (dead.attempts, dead.max_attempts, dead.status) == (2, 5, "dead")
    assert dead.error == "ValueError: order 17 failed"
    assert dead.reason == "attempts used up (2/5)"
    assert dead.fingerprint == burial(task_id, "order 4203 failed", task_name="sync").fingerprint
    assert [(e.attempt, e.type, e.message) for e in dead.errors] == [
        (1, "ValueError", "first try"),
        (2, "ValueError", "order 17 failed"),
    ]
    assert dead.errors[1].traceback == "Traceback: order 17 failed"


def test_bury_keeps_the_rows_own_max_attempts(queue: lmq.Queue, backend: Backend) -> None:
    task_id = queue.enqueue("t", max_attempts=2)
    claim(backend)
    complete(backend, burials=[burial(task_id, max_attempts=7)])
    (dead,) = queue.dead_letters()
    assert dead.max_attempts == 2


def test_release_refunds_the_attempt(queue: lmq.Queue, backend: Backend) -> None:
    task_id = queue.enqueue("t")
    claim(backend)
    complete(backend, released=[task_id])
    task = queue.get(task_id)
    assert task is not None
    assert (task.status, task.attempts, task.locked_by) == ("pending", 0, None)
    assert task.errors == ()
    (again,) = claim(backend)
    assert (again.id, again.attempts) == (task_id, 1)


def test_one_batch_of_every_kind(queue: lmq.Queue, backend: Backend) -> None:
    done, retried, buried, released = queue.enqueue_many([("t", {}) for _ in range(4)])
    claim(backend)
    complete(
        backend,
        done=[done],
        retries=[retry(retried, 600)],
        burials=[burial(buried)],
        released=[released],
    )
    status = {t: queue.get(t).status for t in (done, retried, buried, released)}  # type: ignore[union-attr]
    assert status == {done: "done", retried: "pending", buried: "dead", released: "pending"}
    assert queue.counts() == {"pending": 2, "processing": 0, "done": 1, "dead": 1}
    assert ids(claim(backend)) == [released]


def test_outcomes_from_another_worker_are_ignored(queue: lmq.Queue, backend: Backend) -> None:
    a, b, c, d = queue.enqueue_many([("t", {}) for _ in range(4)])
    claim(backend, worker="w1")
    complete(
        backend,
        "intruder",
        done=[a],
        retries=[retry(b, 0)],
        burials=[burial(c)],
        released=[d],
    )
    for task_id in (a, b, c, d):
        task = queue.get(task_id)
        assert task is not None
        assert (task.status, task.locked_by, task.attempts, task.errors) == (
            "processing",
            "w1",
            1,
            (),
        )
    assert queue.dead_letters() == []


def test_outcomes_for_tasks_not_processing_are_ignored(queue: lmq.Queue, backend: Backend) -> None:
    pending = queue.enqueue("t")
    finished = queue.enqueue("t", queue="other")
    claim(backend, queues=("other",))
    complete(backend, done=[finished])
    complete(backend, retries=[retry(finished, 0)], burials=[burial(pending)], released=[finished])
    complete(backend, done=[pending])
    p, f = queue.get(pending), queue.get(finished)
    assert p is not None and f is not None
    assert (p.status, p.attempts, f.status, f.attempts) == ("pending", 0, "done", 1)
    assert queue.counts() == {**EMPTY, "pending": 1, "done": 1}


def test_outcomes_for_unknown_ids_are_ignored(queue: lmq.Queue, backend: Backend) -> None:
    ghost = backend.parse_id("424242")
    complete(backend, done=[ghost], retries=[retry(ghost)], burials=[burial(ghost)])
    assert backend.counts().as_dict() == EMPTY
