"""Dead letters: listing, filters, requeue (one, all, by task name) and discard."""

from __future__ import annotations

import pytest

import lmq
from lmq.backends import Backend
from lmq.models import DeadFilter, PruneRequest

from .helpers import EMPTY, claim, complete, ids, kill


def test_list_newest_first(queue: lmq.Queue) -> None:
    made = [kill(queue, message=f"failure {i}")[1] for i in range(4)]
    listed = queue.dead_letters()
    assert [d.id for d in listed] == [d.id for d in reversed(made)]
    assert [d.error for d in listed] == [f"ValueError: failure {i}" for i in (3, 2, 1, 0)]
    assert [d.id for d in queue.dead_letters(limit=2)] == [made[3].id, made[2].id]


def test_filters(queue: lmq.Queue) -> None:
    _, a = kill(queue, "import_row", "Shop API timed out", queue="bulk")
    _, b = kill(queue, "import_row", "bad SKU 'x'", queue="default")
    _, c = kill(queue, "send_mail", "SMTP TIMED OUT", etype="OSError", queue="bulk")

    def listed(**flt: str) -> set[object]:
        return {d.id for d in queue.dead_letters(**flt)}  # type: ignore[arg-type]

    assert listed(task_name="import_row") == {a.id, b.id}
    assert listed(queue="bulk") == {a.id, c.id}
    assert listed(error_contains="timed out") == {a.id, c.id}  # case-insensitive
    assert listed(error_contains="OSError") == {c.id}
    assert listed(task_name="import_row", queue="bulk") == {a.id}
    assert listed(task_name="nothing") == set()


def test_dead_letter_by_id(queue: lmq.Queue, backend: Backend) -> None:
    task_id, dead = kill(queue, payload={"sku": "A"})
    assert queue.dead_letter(dead.id) == dead
    assert dead.task_id == task_id
    assert backend.parse_id(str(dead.id)) == dead.id
    with pytest.raises(lmq.NotFound):
        queue.dead_letter(backend.parse_id("999999"))


def test_requeue_by_id(queue: lmq.Queue, backend: Backend) -> None:
    task_id, dead = kill(queue, payload={"sku": "A"}, queue="q1", priority=3, max_attempts=4)
    _, other = kill(queue)
    assert queue.counts()["dead"] == 2

    assert queue.requeue_dead([dead.id]) == [task_id]
    task = queue.get(task_id)
    assert task is not None
    assert (task.id, task.status, task.attempts, task.locked_by) == (task_id, "pending", 0, None)
    assert (task.payload, task.queue, task.priority, task.max_attempts) == (
        {"sku": "A"},
        "q1",
        3,
        4,
    )
    assert task.dead_letter_id == dead.id
    assert [e.message for e in task.errors] == ["boom"]  # the history comes back with it

    record = queue.dead_letter(dead.id)
    assert record.status == "requeued"
    assert record.requeued_at is not None
    assert [d.id for d in queue.dead_letters()] == [other.id]
    assert queue.counts() == {**EMPTY, "pending": 1, "dead": 1}
    everything = backend.dead_letters(DeadFilter(include_all=True))
    assert {d.id: d.status for d in everything} == {dead.id: "requeued", other.id: "dead"}

    (c,) = claim(backend)
    assert (c.id, c.attempts) == (task_id, 1)


def test_requeued_task_that_dies_again_shows_its_new_dead_letter(
    queue: lmq.Queue, backend: Backend
) -> None:
    task_id, first = kill(queue, message="first death")
    queue.requeue_dead([first.id])
    from .helpers import burial

    claim(backend, "w1")
    complete(backend, "w1", burials=[burial(task_id, "second death")])
    task = queue.get(task_id)
    assert task is not None and task.status == "dead"
    assert task.dead_letter_id not in (None, first.id)
    assert task.last_error == "ValueError: second death"
    assert queue.counts()["dead"] == 1
    (again,) = queue.dead_letters()
    assert [e.message for e in again.errors] == ["first death", "second death"]


def test_requeue_twice_or_unknown_is_not_found(queue: lmq.Queue, backend: Backend) -> None:
    _, dead = kill(queue)
    queue.requeue_dead([dead.id])
    with pytest.raises(lmq.NotFound):
        queue.requeue_dead([dead.id])
    with pytest.raises(lmq.NotFound):
        queue.requeue_dead([backend.parse_id("999999")])
    assert queue.counts() == {**EMPTY, "pending": 1}


def test_requeue_with_a_bad_id_requeues_none(queue: lmq.Queue, backend: Backend) -> None:
    _, good = kill(queue)
    with pytest.raises(lmq.NotFound):
        queue.requeue_dead([good.id, backend.parse_id("999999")])
    assert queue.dead_letter(good.id).status == "dead"
    assert queue.counts() == {**EMPTY, "dead": 1}


def test_requeue_all(queue: lmq.Queue) -> None:
    made = [kill(queue, name)[0] for name in ("a", "b", "c")]
    _, discarded = kill(queue, "d")
    queue.discard_dead([discarded.id])
    assert sorted(queue.requeue_dead(all=True), key=str) == sorted(made, key=str)
    assert queue.dead_letters() == []
    assert queue.counts() == {**EMPTY, "pending": 3}
    assert queue.requeue_dead(all=True) == []


def test_requeue_by_task_name(queue: lmq.Queue) -> None:
    a1, _ = kill(queue, "a")
    kill(queue, "b")
    a2, _ = kill(queue, "a")
    assert sorted(queue.requeue_dead(task_name="a"), key=str) == sorted([a1, a2], key=str)
    assert [d.task_name for d in queue.dead_letters()] == ["b"]


def test_requeue_nothing_selected(queue: lmq.Queue) -> None:
    """No ids and no --all/--task/--group: a mistake, refused, and nothing changes."""
    kill(queue)
    with pytest.raises(ValueError):
        queue.requeue_dead()
    with pytest.raises(ValueError):
        queue.discard_dead()
    assert queue.counts()["dead"] == 1


def test_discard(queue: lmq.Queue, backend: Backend) -> None:
    task_id, dead = kill(queue)
    _, keep = kill(queue)
    assert queue.discard_dead([dead.id]) == 1
    assert queue.dead_letter(dead.id).status == "discarded"
    assert [d.id for d in queue.dead_letters()] == [keep.id]
    assert queue.counts()["dead"] == 1
    with pytest.raises(lmq.NotFound):
        queue.discard_dead([dead.id])
    with pytest.raises(lmq.NotFound):
        queue.requeue_dead([dead.id])
    assert claim(backend) == []
    task = queue.get(task_id)  # still answers, as a record
    assert task is not None and task.status != "pending"


def test_discard_with_a_bad_id_discards_none(queue: lmq.Queue, backend: Backend) -> None:
    _, good = kill(queue)
    with pytest.raises(lmq.NotFound):
        queue.discard_dead([good.id, backend.parse_id("999999")])
    assert queue.dead_letter(good.id).status == "dead"


def test_discard_all_and_by_task_name(queue: lmq.Queue) -> None:
    for name in ("a", "a", "b", "c"):
        kill(queue, name)
    assert queue.discard_dead(task_name="a") == 2
    assert sorted(d.task_name for d in queue.dead_letters()) == ["b", "c"]
    assert queue.discard_dead(all=True) == 2
    assert queue.counts()["dead"] == 0
    assert queue.discard_dead(all=True) == 0


def test_requeue_by_queue(queue: lmq.Queue) -> None:
    a, _ = kill(queue, queue="bulk")
    kill(queue, queue="default")
    assert queue.requeue_dead(queue="bulk") == [a]
    assert ids(claim(queue.backend)) == [a]


def test_ids_are_never_reused(queue: lmq.Queue, backend: Backend) -> None:
    """The newest task dies, or is pruned: the next task still gets a fresh id."""
    task_id, _ = kill(queue)
    new_id = queue.enqueue("t")
    assert new_id != task_id
    dead = queue.get(task_id)
    assert dead is not None and dead.status == "dead"
    (claimed,) = claim(backend)
    complete(backend, done=[claimed.id])
    assert backend.prune(PruneRequest(done_older_than=-1, workers_stale_after=3600)) == 0
    assert queue.enqueue("t") not in (task_id, new_id)
