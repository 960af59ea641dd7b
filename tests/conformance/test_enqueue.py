"""Producing: enqueue, enqueue_many, unique keys, get and counts."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

import lmq
from lmq.backends import Backend
from lmq.models import NewTask

from .helpers import EMPTY, burial, claim, complete


def test_enqueue_then_get(queue: lmq.Queue) -> None:
    before = datetime.now(UTC)
    task_id = queue.enqueue("sync_product", {"product_id": 1, "sku": "A-1"})
    task = queue.get(task_id)
    assert task is not None
    assert task.id == task_id
    assert task.task_name == "sync_product"
    assert task.payload == {"product_id": 1, "sku": "A-1"}
    assert (task.queue, task.priority, task.status, task.attempts) == ("default", 0, "pending", 0)
    assert task.max_attempts is None
    assert task.last_error is None
    assert task.errors == ()
    assert task.next_run is not None and task.next_run.tzinfo is not None
    assert before - timedelta(seconds=1) <= task.next_run <= datetime.now(UTC)
    assert isinstance(task.created, str) and task.created


def test_enqueue_options_are_stored(queue: lmq.Queue) -> None:
    task_id = queue.enqueue(
        "t", {"a": [1, {"b": None}]}, queue="q2", priority=5, unique_key="k", max_attempts=3
    )
    task = queue.get(task_id)
    assert task is not None
    assert (task.queue, task.priority, task.unique_key, task.max_attempts) == ("q2", 5, "k", 3)
    assert task.payload == {"a": [1, {"b": None}]}


def test_unicode_and_big_payloads_round_trip(queue: lmq.Queue) -> None:
    payload = {"name": "Zoë ✓ 漢字", "blob": "x" * 200_000, "n": 2**53, "f": 0.1}
    task = queue.get(queue.enqueue("t", payload))
    assert task is not None and task.payload == payload


def test_get_unknown_id_is_none(queue: lmq.Queue) -> None:
    queue.enqueue("t")
    assert queue.get(queue.backend.parse_id("987654")) is None


def test_parse_id_round_trips(backend: Backend, queue: lmq.Queue) -> None:
    task_id = queue.enqueue("t")
    assert backend.parse_id(str(task_id)) == task_id
    with pytest.raises(ValueError):
        backend.parse_id("not-an-id!")


def test_ids_are_distinct(queue: lmq.Queue) -> None:
    got = [queue.enqueue("t") for _ in range(20)]
    assert len(set(got)) == 20


def test_counts_and_stats(queue: lmq.Queue, backend: Backend) -> None:
    assert queue.counts() == EMPTY
    a = queue.enqueue("t", queue="a")
    queue.enqueue("t", queue="a", delay=3600)
    queue.enqueue("t", queue="b")
    queue.enqueue("t", queue="b")
    queue.enqueue("t", queue="b")
    (first,) = claim(backend, queues=("a",), limit=1)
    assert first.id == a
    complete(backend, done=[a])
    b1, _ = claim(backend, queues=("b",), limit=2)
    complete(backend, burials=[burial(b1.id)])
    assert queue.counts() == {"pending": 2, "processing": 1, "done": 1, "dead": 1}
    stats = queue.stats()
    assert stats.as_dict() == queue.counts()
    assert four(stats.by_queue["a"]) == {"pending": 1, "processing": 0, "done": 1, "dead": 0}
    assert four(stats.by_queue["b"]) == {"pending": 1, "processing": 1, "done": 0, "dead": 1}
    assert (stats.ready, stats.scheduled) == (1, 1)
    # per queue too (lmq status's table): a's pending one is not yet due, b's is
    assert (stats.by_queue["a"]["ready"], stats.by_queue["a"]["scheduled"]) == (0, 1)
    assert (stats.by_queue["b"]["ready"], stats.by_queue["b"]["scheduled"]) == (1, 0)
    assert stats.oldest_ready_age is not None and 0 <= stats.oldest_ready_age < 60


def four(per_queue: dict[str, int]) -> dict[str, int]:
    return {k: per_queue[k] for k in ("pending", "processing", "done", "dead")}


def test_counts_per_queue_ready_and_scheduled(queue: lmq.Queue, backend: Backend) -> None:
    queue.enqueue_many([("t", {}) for _ in range(3)], queue="now")
    queue.enqueue_many([("t", {}) for _ in range(2)], queue="later", delay=3600)
    queue.enqueue("t", queue="mixed")
    queue.enqueue("t", queue="mixed", delay=3600)
    done = queue.enqueue("t", queue="finished")
    (c,) = claim(backend, queues=("finished",), limit=1)
    assert c.id == done
    complete(backend, done=[done])
    stats = queue.stats()
    got = {q: (v["ready"], v["scheduled"], v["pending"]) for q, v in stats.by_queue.items()}
    assert got == {
        "now": (3, 0, 3),
        "later": (0, 2, 2),
        "mixed": (1, 1, 2),
        "finished": (0, 0, 0),
    }
    assert sum(v["ready"] for v in stats.by_queue.values()) == stats.ready == 4
    assert sum(v["scheduled"] for v in stats.by_queue.values()) == stats.scheduled == 3


@pytest.mark.parametrize(
    "bad", [{"x": {1, 2}}, {"x": math.nan}, {"x": datetime.now()}, {3: "x"}, ["not", "a dict"]]
)
def test_bad_payload_stores_nothing(queue: lmq.Queue, bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        queue.enqueue("t", bad)  # type: ignore[arg-type]
    assert queue.counts() == EMPTY
    assert queue.tasks() == []


# --- enqueue_many ---------------------------------------------------------------------------


def test_enqueue_many_returns_ids_in_order(queue: lmq.Queue) -> None:
    ids = queue.enqueue_many([("t", {"i": i}) for i in range(1000)])
    assert len(ids) == len(set(ids)) == 1000
    for i in (0, 1, 499, 998, 999):
        task = queue.get(ids[i])
        assert task is not None and task.payload == {"i": i}
    assert queue.counts()["pending"] == 1000


def test_enqueue_many_with_a_bad_payload_stores_none(queue: lmq.Queue) -> None:
    items = [("t", {"i": i}) for i in range(999)] + [("t", {"i": {999}})]
    with pytest.raises(TypeError, match="'i'"):
        queue.enqueue_many(items)
    assert queue.counts() == EMPTY


def test_enqueue_many_with_a_bad_name_stores_none(queue: lmq.Queue) -> None:
    with pytest.raises(TypeError):
        queue.enqueue_many([("t", {}), ("", {}), ("t", {})])
    assert queue.counts() == EMPTY


def test_enqueue_many_accepts_a_generator_and_options(queue: lmq.Queue) -> None:
    ids = queue.enqueue_many(((f"t{i}", None) for i in range(3)), queue="bulk", priority=2)
    tasks = [queue.get(i) for i in ids]
    assert [(t.task_name, t.queue, t.priority, t.payload) for t in tasks if t] == [
        (f"t{i}", "bulk", 2, {}) for i in range(3)
    ]


def test_enqueue_many_of_nothing(queue: lmq.Queue) -> None:
    assert queue.enqueue_many([]) == []


# --- unique keys ----------------------------------------------------------------------------


def test_unique_key_while_pending_returns_the_first_id(queue: lmq.Queue) -> None:
    first = queue.enqueue("t", {"v": 1}, unique_key="order-17")
    again = queue.enqueue("t", {"v": 2}, unique_key="order-17")
    other = queue.enqueue("t", {"v": 3}, unique_key="order-18")
    assert again == first
    assert other != first
    task = queue.get(first)
    assert task is not None and task.payload == {"v": 1}
    assert queue.counts()["pending"] == 2


def test_unique_key_while_processing_returns_the_first_id(
    queue: lmq.Queue, backend: Backend
) -> None:
    first = queue.enqueue("t", unique_key="k")
    assert [c.id for c in claim(backend)] == [first]
    assert queue.enqueue("t", unique_key="k") == first
    assert queue.counts() == {**EMPTY, "processing": 1}


def test_unique_key_after_done_makes_a_new_task(queue: lmq.Queue, backend: Backend) -> None:
    first = queue.enqueue("t", unique_key="k")
    claim(backend)
    complete(backend, done=[first])
    second = queue.enqueue("t", unique_key="k")
    assert second != first
    assert queue.enqueue("t", unique_key="k") == second
    assert queue.counts() == {**EMPTY, "pending": 1, "done": 1}


def test_unique_key_after_dead_makes_a_new_task(queue: lmq.Queue, backend: Backend) -> None:
    first = queue.enqueue("t", unique_key="k")
    claim(backend)
    complete(backend, burials=[burial(first)])
    assert queue.enqueue("t", unique_key="k") != first


def test_unique_key_twice_in_one_batch(backend: Backend) -> None:
    a, b, c = backend.enqueue(
        [NewTask("t", "{}", unique_key="k"), NewTask("t", "{}"), NewTask("t", "{}", unique_key="k")]
    )
    assert a == c != b
    assert backend.counts().pending == 2


def test_unique_key_is_shared_across_queue_objects(backend_url: str) -> None:
    with lmq.Queue(backend_url) as one, lmq.Queue(backend_url) as two:
        assert one.enqueue("t", unique_key="k") == two.enqueue("t", unique_key="k")


# --- scheduling -----------------------------------------------------------------------------


def test_delay_and_run_at_set_next_run(queue: lmq.Queue) -> None:
    now = time.time()
    delayed = queue.get(queue.enqueue("t", delay=120))
    at = datetime.now(UTC) + timedelta(hours=2)
    planned = queue.get(queue.enqueue("t", run_at=at))
    past = queue.get(queue.enqueue("t", run_at=datetime.now(UTC) - timedelta(hours=1)))
    assert delayed is not None and planned is not None and past is not None
    assert delayed.next_run is not None
    assert now + 119 <= delayed.next_run.timestamp() <= time.time() + 121
    assert planned.next_run is not None
    assert abs(planned.next_run.timestamp() - at.timestamp()) < 0.01
    assert past.next_run is not None and past.next_run < datetime.now(UTC)
    assert queue.counts()["pending"] == 3


def test_run_at_in_another_timezone(queue: lmq.Queue) -> None:
    at = datetime.now(timezone(timedelta(hours=5))) + timedelta(minutes=30)
    task = queue.get(queue.enqueue("t", run_at=at))
    assert task is not None and task.next_run is not None
    assert abs(task.next_run.timestamp() - at.timestamp()) < 0.01
    assert task.next_run.utcoffset() == timedelta(0)
