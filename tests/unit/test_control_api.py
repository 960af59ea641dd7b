"""The control API on SQLite and in memory: ``cancel``, ``pause``/``resume``, batches
with a follow-up, and a burst worker honouring them (in this process)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import lmq
from lmq.models import ClaimRequest
from lmq.worker import Worker, WorkerSettings

ran: list[tuple[str, Any]] = []


@pytest.fixture(params=["sqlite", "memory"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[lmq.Queue]:
    url = f"sqlite:///{tmp_path}/control.db" if request.param == "sqlite" else "memory://"
    q = lmq.Queue(url)

    @q.task
    def work(n: int) -> None:
        ran.append(("work", n))

    @q.task(max_attempts=1)
    def fail(n: int) -> None:
        ran.append(("fail", n))
        raise ValueError(f"record {n} is bad")

    @q.task(queue="reports")
    def report(batch: str) -> None:
        ran.append(("report", batch))

    ran.clear()
    try:
        yield q
    finally:
        q.close()


def get(queue: lmq.Queue, task_id: Any) -> lmq.Task:
    task = queue.get(task_id)
    assert task is not None, f"no task {task_id}"
    return task


def burst(queue: lmq.Queue, **settings: Any) -> int:
    settings.setdefault("concurrency", 4)
    w = Worker(queue, WorkerSettings(burst=True, install_signal_handlers=False, **settings))
    return w.run()


# --- cancel -------------------------------------------------------------------------------


def test_cancel_one_id_and_a_list(queue: lmq.Queue) -> None:
    a, b, c = queue.enqueue_many([("work", {"n": i}) for i in range(3)])
    assert queue.cancel(a) == [a]
    assert sorted(queue.cancel([b, c]), key=str) == sorted([b, c], key=str)
    for tid in (a, b, c):
        task = queue.get(tid)
        assert task is not None and task.status == "cancelled"
    assert queue.stats().cancelled == 3
    assert queue.counts() == {"pending": 0, "processing": 0, "done": 0, "dead": 0}
    # already cancelled: skipped, not an error
    assert queue.cancel(a) == []
    assert burst(queue) == 0
    assert ran == []


def test_cancel_an_unknown_id_changes_nothing(queue: lmq.Queue) -> None:
    a = queue.enqueue("work", {"n": 1})
    with pytest.raises(lmq.NotFound):
        queue.cancel([a, 987654])
    task = queue.get(a)
    assert task is not None and task.status == "pending"


def test_cancel_by_task_queue_and_batch(queue: lmq.Queue) -> None:
    queue.enqueue_many([("work", {"n": i}) for i in range(3)], queue="q1")
    queue.enqueue_many([("work", {"n": i}) for i in range(3, 5)], queue="q2")
    in_batch = queue.enqueue_many([("fail", {"n": i}) for i in range(4)], batch="b1")
    report = queue.enqueue("report", {"batch": "x"})
    assert len(queue.cancel(task_name="work", queue="q1")) == 3
    assert len(queue.cancel(batch="b1")) == 4
    assert all(get(queue, i).status == "cancelled" for i in in_batch)
    assert queue.batch("b1").cancelled == 4
    assert len(queue.cancel(queue="q2")) == 2
    assert queue.cancel(task_name="work") == []
    assert get(queue, report).status == "pending"


def test_cancel_leaves_a_running_task_alone(queue: lmq.Queue) -> None:
    a, b = queue.enqueue_many([("work", {"n": 1}), ("work", {"n": 2})])
    claimed = queue.backend.claim(ClaimRequest("w1", 1, 30.0)).tasks
    assert [c.id for c in claimed] == [a]
    assert queue.cancel([a, b]) == [b]
    assert get(queue, a).status == "processing"


def test_cancel_needs_a_selection(queue: lmq.Queue) -> None:
    queue.enqueue("work", {"n": 1})
    with pytest.raises(ValueError, match="say which"):
        queue.cancel()
    with pytest.raises(ValueError, match="not both"):
        queue.cancel([1], task_name="work")
    assert queue.counts()["pending"] == 1


# --- pause / resume -----------------------------------------------------------------------


def test_pause_resume_and_paused_queues(queue: lmq.Queue) -> None:
    assert queue.paused_queues() == {}
    before = datetime.now(UTC)
    assert queue.pause("imports") is True
    assert queue.pause("imports") is False  # already paused
    paused = queue.paused_queues()
    assert list(paused) == ["imports"]
    assert paused["imports"].tzinfo is not None
    assert abs((paused["imports"] - before).total_seconds()) < 5
    assert queue.resume("imports") is True
    assert queue.resume("imports") is False  # was not paused
    assert queue.resume("never-heard-of") is False
    assert queue.paused_queues() == {}
    with pytest.raises(TypeError):
        queue.pause("")


def test_a_burst_worker_skips_paused_queues_and_exits(queue: lmq.Queue) -> None:
    queue.pause("imports")
    held = queue.enqueue_many([("work", {"n": i}) for i in range(5)], queue="imports")
    queue.enqueue_many([("work", {"n": i}) for i in range(10, 13)])
    assert burst(queue) == 0
    assert sorted(n for _, n in ran) == [10, 11, 12]
    assert all(get(queue, i).status == "pending" for i in held)
    # only paused tasks are left: a burst worker still exits at once
    assert burst(queue) == 0
    queue.resume("imports")
    assert burst(queue) == 0
    assert sorted(n for _, n in ran) == [0, 1, 2, 3, 4, 10, 11, 12]


def test_a_worker_for_other_queues_ignores_their_pauses(queue: lmq.Queue) -> None:
    queue.pause("imports")
    queue.enqueue("work", {"n": 1}, queue="q1")
    assert burst(queue, queues=("q1",)) == 0
    assert ran == [("work", 1)]


# --- batches ------------------------------------------------------------------------------


def test_enqueue_many_with_a_batch_names_every_task(queue: lmq.Queue) -> None:
    ids = queue.enqueue_many([("work", {"n": i}) for i in range(5)], batch="import-1")
    assert all(get(queue, i).batch == "import-1" for i in ids)
    info = queue.batch("import-1")
    assert (info.name, info.total, info.pending, info.done) == ("import-1", 5, 5, 0)
    assert info.completed is None and info.followup_id is None and info.on_complete is None
    # more under the same name: the batch grows
    queue.enqueue_many([("work", {"n": 9})], batch="import-1")
    assert queue.batch("import-1").total == 6
    queue.enqueue_many([("work", {"n": 10})], batch="import-2")
    assert [b.name for b in queue.batches()] == ["import-2", "import-1"]
    plain = queue.enqueue("work", {"n": 0})
    assert get(queue, plain).batch is None


def test_unknown_batch_is_not_found(queue: lmq.Queue) -> None:
    with pytest.raises(lmq.NotFound, match="no-such"):
        queue.batch("no-such")


def test_bad_batch_arguments_store_nothing(queue: lmq.Queue) -> None:
    items = [("work", {"n": 1})]
    with pytest.raises(TypeError, match="on_complete"):
        queue.enqueue_many(items, batch="b", on_complete=("report", {"batch": {1, 2}}))
    with pytest.raises(ValueError, match="batch"):
        queue.enqueue_many(items, on_complete=("report", {}))
    with pytest.raises(TypeError):
        queue.enqueue_many(items, batch="")
    with pytest.raises(TypeError):
        queue.enqueue_many(items, batch="b", on_complete="report")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        queue.enqueue_many(items, batch="b", on_complete=("report", {"x": float("nan")}))
    assert queue.counts()["pending"] == 0
    assert queue.batches() == []


def test_the_follow_up_runs_once_after_the_last_member(
    queue: lmq.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    items = [("work", {"n": i}) for i in range(20)] + [("fail", {"n": i}) for i in range(3)]
    queue.enqueue_many(items, batch="import-7", on_complete=("report", {"batch": "import-7"}))
    info = queue.batch("import-7")
    assert info.on_complete == "report" and info.total == 23
    with caplog.at_level(logging.INFO, logger="lmq"):
        assert burst(queue) == 0
    assert ran.count(("report", "import-7")) == 1
    assert ran.index(("report", "import-7")) == len(ran) - 1  # after every member
    info = queue.batch("import-7")
    assert (info.pending, info.processing, info.done, info.dead) == (0, 0, 20, 3)
    assert info.completed is not None and info.followup_id is not None
    follow = queue.get(info.followup_id)
    assert follow is not None and follow.status == "done" and follow.queue == "reports"
    assert follow.batch is None
    events = [r for r in caplog.records if getattr(r, "event", None) == "batch_complete"]
    assert [(r.batch, r.followup_id) for r in events] == [("import-7", info.followup_id)]  # type: ignore[attr-defined]
    assert info.eta() == 0.0
    data = info.to_json()
    assert data["followup_id"] == info.followup_id and data["running"] == 0
    # a later worker does not run it again
    assert burst(queue) == 0
    assert ran.count(("report", "import-7")) == 1


def test_a_batch_without_follow_up_completes_too(queue: lmq.Queue) -> None:
    queue.enqueue_many([("work", {"n": i}) for i in range(3)], batch="plain")
    assert burst(queue) == 0
    info = queue.batch("plain")
    assert info.completed is not None and info.followup_id is None and info.done == 3


def test_a_cancelled_batch_completes(queue: lmq.Queue) -> None:
    queue.enqueue_many(
        [("work", {"n": i}) for i in range(3)],
        batch="oops",
        on_complete=("report", {"batch": "oops"}),
    )
    queue.cancel(batch="oops")
    assert burst(queue) == 0
    info = queue.batch("oops")
    assert info.cancelled == 3 and info.completed is not None
    assert ran == [("report", "oops")]
