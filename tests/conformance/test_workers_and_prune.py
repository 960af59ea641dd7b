"""Heartbeats, the workers list, removal on exit, and pruning."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import lmq
from lmq.backends import Backend
from lmq.models import Heartbeat, PruneRequest

from .helpers import EMPTY, claim, complete, kill


def beat(worker: str, running: int = 0, done: int = 0) -> Heartbeat:
    return Heartbeat(worker, "host-1", 4242, lmq.__version__, "a,b", 8, running, done, 1.7e9)


def test_heartbeat_and_workers(backend: Backend) -> None:
    assert backend.workers() == []
    backend.heartbeat(beat("w1"))
    (w,) = backend.workers()
    assert (w.id, w.host, w.pid, w.version, w.queues, w.concurrency) == (
        "w1",
        "host-1",
        4242,
        lmq.__version__,
        "a,b",
        8,
    )
    assert (w.running, w.done) == (0, 0)
    assert w.started == datetime.fromtimestamp(1.7e9, UTC)
    assert 0 <= w.heartbeat_age < 5
    assert abs((datetime.now(UTC) - w.last_beat).total_seconds()) < 5
    assert w.to_json()["heartbeat_age"] >= 0

    backend.heartbeat(beat("w1", running=3, done=17))
    (w,) = backend.workers()
    assert (w.running, w.done) == (3, 17)

    backend.heartbeat(beat("w2"))
    assert {x.id for x in backend.workers()} == {"w1", "w2"}
    backend.remove_worker("w1")
    assert [x.id for x in backend.workers()] == ["w2"]
    backend.remove_worker("never-there")
    assert [x.id for x in backend.workers()] == ["w2"]


def test_workers_are_shared_across_queue_objects(backend_url: str) -> None:
    with lmq.Queue(backend_url) as one, lmq.Queue(backend_url) as two:
        one.backend.heartbeat(beat("w1"))
        assert [w.id for w in two.workers()] == ["w1"]


def test_prune_removes_old_done_rows_and_stale_workers_only(
    queue: lmq.Queue, backend: Backend
) -> None:
    old_done = queue.enqueue("t")
    claim(backend)
    complete(backend, done=[old_done])
    backend.heartbeat(beat("old-worker"))
    time.sleep(0.6)  # the only way to make rows "old" through the public API
    mark = time.time()  # old rows are >= 0.6 s older than this, new ones younger
    new_done = queue.enqueue("t")
    pending = queue.enqueue("t")
    processing = queue.enqueue("t", queue="busy")
    claim(backend, queues=("default",), limit=1)
    complete(backend, done=[new_done])
    claim(backend, queues=("busy",))
    kill(queue, "dead")
    backend.heartbeat(beat("new-worker"))

    assert backend.prune(PruneRequest(done_older_than=3600, workers_stale_after=3600)) == 0
    # a window that keeps everything made since `mark` however slow the machine was
    window = time.time() - mark + 0.3
    removed = backend.prune(PruneRequest(done_older_than=window, workers_stale_after=window))
    assert removed == 2
    assert queue.get(old_done) is None
    for kept in (new_done, pending, processing):
        assert queue.get(kept) is not None
    assert [w.id for w in backend.workers()] == ["new-worker"]
    assert queue.counts() == {"pending": 1, "processing": 1, "done": 1, "dead": 1}


def test_prune_in_small_batches(queue: lmq.Queue, backend: Backend) -> None:
    made = queue.enqueue_many([("t", {}) for _ in range(25)])
    claim(backend)
    complete(backend, done=made)
    # every done row but the newest: the pruner never deletes the newest task row, so an
    # id is never handed out twice (SQLite's rowid is max(id) + 1)
    assert backend.prune(PruneRequest(done_older_than=-1, workers_stale_after=3600, batch=7)) == 24
    assert queue.counts() == {**EMPTY, "done": 1}
    assert queue.get(made[-1]) is not None and queue.get(made[0]) is None
