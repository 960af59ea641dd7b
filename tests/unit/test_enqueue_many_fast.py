"""``Queue._new_tasks`` (enqueue_many's per-name fast path) builds exactly what
``_new_task`` builds item by item, gated handlers and every option included."""

from __future__ import annotations

import pytest

import lmq
from lmq.models import NewTask


@pytest.fixture
def q() -> lmq.Queue:
    queue = lmq.Queue("memory://fast-path")

    @queue.task(queue="imports", priority=3)
    def plain(i: int) -> None: ...

    @queue.task(breaker=lambda p: f"host-{p['i'] % 2}", rate_limit=lmq.RateLimit(5))
    def gated(i: int) -> None: ...

    return queue


@pytest.mark.parametrize("queue_name,priority", [(None, None), ("other", 7), (None, 0)])
def test_same_tasks_as_one_by_one(
    q: lmq.Queue, queue_name: str | None, priority: int | None
) -> None:
    items = [(name, {"i": i}) for i in range(6) for name in ("plain", "gated", "unknown")]
    items.append(("plain", None))
    fast = q._new_tasks(items, queue_name, priority, 1.5e9, 2.0, 3, "b1")
    slow = [q._new_task(n, p, queue_name, priority, 1.5e9, 2.0, None, 3, "b1") for n, p in items]
    assert fast == slow
    assert all(type(t) is NewTask and len(t) == len(NewTask._fields) for t in fast)
    assert {t.breaker for t in fast if t.task_name == "gated"} == {"host-0", "host-1"}


def test_bad_items_store_nothing(q: lmq.Queue) -> None:
    with pytest.raises(TypeError, match="task_name must be a non-empty string"):
        q.enqueue_many([("plain", {"i": 1}), ("", {"i": 2})])
    with pytest.raises(TypeError, match="task_name"):
        q.enqueue_many([(["x"], {})])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        q.enqueue_many([("plain", {"i": {1, 2}})])
    assert q.counts()["pending"] == 0
