"""Listing tasks, readiness (has_ready) and the next due time (next_due)."""

from __future__ import annotations

import lmq
from lmq.backends import Backend

from .helpers import claim, complete, kill


def test_list_tasks_newest_first_with_filters(queue: lmq.Queue, backend: Backend) -> None:
    a = queue.enqueue("import_row", queue="bulk")
    b = queue.enqueue("send_mail")
    c = queue.enqueue("import_row")
    d = queue.enqueue("import_row", queue="bulk")
    claim(backend, queues=("default",))
    complete(backend, done=[b])
    dead_id, _ = kill(queue, "send_mail")

    def listed(**flt: object) -> list[object]:
        return [t.id for t in queue.tasks(**flt)]  # type: ignore[arg-type]

    assert listed() == [d, c, b, a]  # dead letters only with status="dead"
    assert listed(status="pending") == [d, a]
    assert listed(status="processing") == [c]
    assert listed(status="done") == [b]
    assert listed(status="dead") == [dead_id]
    assert queue.tasks(status="dead")[0].status == "dead"
    assert listed(queue="bulk") == [d, a]
    assert listed(name="import_row") == [d, c, a]
    assert listed(name="import_row", status="pending", queue="bulk") == [d, a]
    assert listed(name="import_row", limit=2) == [d, c]
    assert listed(status="dead", name="import_row") == []


def test_list_tasks_returns_full_tasks(queue: lmq.Queue) -> None:
    task_id = queue.enqueue("t", {"x": 1}, priority=4)
    (task,) = queue.tasks()
    assert task == queue.get(task_id)


def test_has_ready_and_next_due_when_empty(backend: Backend) -> None:
    assert backend.has_ready(None) is False
    assert backend.next_due(None) is None


def test_has_ready_and_next_due_with_delayed_work(queue: lmq.Queue, backend: Backend) -> None:
    queue.enqueue("t", delay=60)
    queue.enqueue("t", delay=600)
    assert not backend.has_ready(None)
    due = backend.next_due(None)
    assert due is not None and 55 < due <= 60


def test_has_ready_and_next_due_with_ready_work_and_queues(
    queue: lmq.Queue, backend: Backend
) -> None:
    queue.enqueue("t", queue="a")
    queue.enqueue("t", queue="b", delay=60)
    assert backend.has_ready(None)
    assert backend.has_ready(("a",))
    assert backend.has_ready(("x", "a"))
    assert not backend.has_ready(("b",))
    assert backend.next_due(None) == 0
    assert backend.next_due(("a",)) == 0
    due_b = backend.next_due(("b",))
    assert due_b is not None and 55 < due_b <= 60


def test_next_due_counts_lease_expiry(queue: lmq.Queue, backend: Backend) -> None:
    queue.enqueue("t")
    claim(backend, lease=30)
    assert not backend.has_ready(None)
    due = backend.next_due(None)
    assert due is not None and 25 < due <= 30


def test_nothing_ready_once_everything_is_finished(queue: lmq.Queue, backend: Backend) -> None:
    task_id = queue.enqueue("t")
    claim(backend)
    complete(backend, done=[task_id])
    assert not backend.has_ready(None)
    assert backend.next_due(None) is None


def test_migrate_is_idempotent_on_every_backend(queue: lmq.Queue, backend: Backend) -> None:
    queue.migrate()
    assert queue.migrate() == []
    assert backend.schema_version() is not None
    task_id = queue.enqueue("t")
    assert queue.migrate() == []
    assert queue.get(task_id) is not None
