"""Leases: expiry makes a task claimable again; renewal; outcomes from lost leases."""

from __future__ import annotations

from datetime import UTC, datetime

import lmq
from lmq.backends import Backend
from lmq.models import RenewRequest

from .helpers import burial, claim, complete, ids, retry, wait_for


def test_expired_lease_is_claimable_again(queue: lmq.Queue, backend: Backend) -> None:
    task_id = queue.enqueue("t")
    assert ids(claim(backend, worker="w1", lease=1)) == [task_id]
    assert claim(backend, worker="w2") == []
    assert wait_for(lambda: backend.has_ready(None), timeout=5)
    # a lease that ran out is ready like any pending task: every claim can take it
    (again,) = wait_for(lambda: claim(backend, worker="w2"), timeout=5)
    assert (again.id, again.attempts) == (task_id, 2)
    task = queue.get(task_id)
    assert task is not None
    assert (task.status, task.attempts, task.locked_by) == ("processing", 2, "w2")
    assert [(e.type, e.attempt) for e in task.errors] == [("LeaseExpired", 1)]
    assert "w1" in task.errors[0].message
    assert task.last_error is not None and "lease expired" in task.last_error

    # w1 comes back late: its outcomes are ignored, w2's stand
    complete(backend, "w1", done=[task_id])
    complete(backend, "w1", retries=[retry(task_id, 0)])
    complete(backend, "w1", burials=[burial(task_id)])
    complete(backend, "w1", released=[task_id])
    assert backend.renew(RenewRequest("w1", [task_id], 60)) == []
    task = queue.get(task_id)
    assert task is not None and (task.status, task.locked_by) == ("processing", "w2")
    assert queue.counts()["dead"] == 0
    complete(backend, "w2", done=[task_id])
    task = queue.get(task_id)
    assert task is not None and task.status == "done"


def test_renew_extends_only_the_workers_own_leases(queue: lmq.Queue, backend: Backend) -> None:
    a, b, c, d = queue.enqueue_many([("t", {}) for _ in range(4)])
    assert set(ids(claim(backend, "w1", limit=3, lease=10))) == {a, b, c}
    assert ids(claim(backend, "w2", limit=1, lease=10)) == [d]
    complete(backend, "w1", done=[c])
    before = {t: queue.get(t).locked_until for t in (a, b, d)}  # type: ignore[union-attr]

    held = backend.renew(RenewRequest("w1", [a, b, c, d], 300))
    assert sorted(held, key=str) == sorted([a, b], key=str)
    after = {t: queue.get(t).locked_until for t in (a, b, d)}  # type: ignore[union-attr]
    for t in (a, b):
        assert after[t] is not None and before[t] is not None
        assert (after[t] - datetime.now(UTC)).total_seconds() > 250
    assert after[d] == before[d]
    done = queue.get(c)
    assert done is not None and done.status == "done" and done.locked_until is None


def test_renew_nothing(backend: Backend) -> None:
    assert backend.renew(RenewRequest("w1", [], 30)) == []


def test_renewed_lease_does_not_expire(queue: lmq.Queue, backend: Backend) -> None:
    task_id = queue.enqueue("t")
    claim(backend, "w1", lease=1)
    assert backend.renew(RenewRequest("w1", [task_id], 60)) == [task_id]
    assert not backend.has_ready(None)
    next_due = backend.next_due(None)
    assert next_due is not None and next_due > 30
