"""Operations (issue 4) through the backend API: batches and their settling, cancel,
paused queues (ClaimRequest.exclude), dead-letter groups, requeue with a payload edit,
delay and spread, review and requeue_approved, and what prune removes now."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import lmq
from lmq.backends import Backend
from lmq.models import (
    BatchSpec,
    CancelSelector,
    ClaimRequest,
    DeadFilter,
    DeadSelector,
    NewTask,
    PruneRequest,
    Review,
    TaskFilter,
    TaskId,
)

from .helpers import EMPTY, burial, claim, complete, ids, kill

# --- helpers -----------------------------------------------------------------------------


def members(
    backend: Backend,
    name: str,
    n: int,
    *,
    queues: list[str] | None = None,
    on_complete: str | None = None,
    payload: str = '{"report": true}',
    on_complete_queue: str = "default",
    delay: float = 0.0,
) -> list[TaskId]:
    """Enqueue ``n`` members of batch ``name`` (member i in ``queues[i]`` if given)."""
    tasks = [
        NewTask(
            "member",
            json.dumps({"i": i}),
            queue=queues[i] if queues else "default",
            batch=name,
            delay=delay,
        )
        for i in range(n)
    ]
    spec = BatchSpec(name, n, on_complete, payload, on_complete_queue)
    return backend.enqueue(tasks, batch=spec)


def finish(backend: Backend, task_id: TaskId, queue: str, *, die: bool = False) -> None:
    """Claim the one task in ``queue`` (it must be ``task_id``) and complete or bury it."""
    got = ids(claim(backend, "fin", queues=(queue,)))
    assert got == [task_id]
    if die:
        complete(backend, "fin", burials=[burial(task_id, task_name="member")])
    else:
        complete(backend, "fin", done=[task_id])


def exclude_claim(
    backend: Backend,
    exclude: tuple[str, ...],
    queues: tuple[str, ...] | None = None,
    lease: float = 60.0,
) -> list[TaskId]:
    return ids(backend.claim(ClaimRequest("wx", 100, lease, queues, exclude)).tasks)


def in_threads(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``n`` threads released at once; return the results (or raise)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


def kill_many(q: lmq.Queue, messages: list[str], task_name: str = "t", **kw: Any) -> list[Any]:
    """Kill one task per message, oldest first, a little apart so died_at orders them."""
    out = []
    for m in messages:
        out.append(kill(q, task_name, m, **kw)[1])
        time.sleep(0.01)
    return out


def close_to(a: float, b: float, tolerance: float = 3.0) -> bool:
    return abs(a - b) <= tolerance


# --- batches -----------------------------------------------------------------------------


def test_enqueue_with_a_batch(queue: lmq.Queue, backend: Backend) -> None:
    first = members(backend, "import-1", 3, on_complete="report")
    (plain,) = backend.enqueue([NewTask("t", "{}")])
    assert len(set(first)) == 3
    for tid in first:
        task = backend.get(tid)
        assert task is not None and task.batch == "import-1"
    task = backend.get(plain)
    assert task is not None and task.batch is None
    assert {t.batch for t in backend.list_tasks(TaskFilter(task_name="member"))} == {"import-1"}

    info = backend.batch("import-1")
    assert info is not None
    assert (info.name, info.total, info.pending, info.processing) == ("import-1", 3, 3, 0)
    assert (info.done, info.dead, info.cancelled) == (0, 0, 0)
    assert info.completed is None and info.followup_id is None
    assert info.on_complete == "report"
    assert close_to(info.created.timestamp(), time.time())

    # a second call adds to the batch and keeps its follow-up
    more = members(backend, "import-1", 2, on_complete="other")
    info = backend.batch("import-1")
    assert info is not None and (info.total, info.pending) == (5, 5)
    assert info.on_complete == "report"
    assert not set(more) & set(first)
    assert backend.batch("nothing-like-it") is None


def test_a_batch_without_follow_up_takes_the_next_one(backend: Backend) -> None:
    members(backend, "b", 1)
    info = backend.batch("b")
    assert info is not None and info.on_complete is None
    members(backend, "b", 1, on_complete="report")
    info = backend.batch("b")
    assert info is not None and (info.total, info.on_complete) == (2, "report")


def test_batch_counts_by_status(queue: lmq.Queue, backend: Backend) -> None:
    qs = ["q-done", "q-dead", "q-run", "q-cancel", "q-wait", "q-later"]
    tids = members(backend, "mixed", 6, queues=qs)
    done, dead, running, cancelled, waiting, _later = tids
    finish(backend, done, "q-done")
    finish(backend, dead, "q-dead", die=True)
    assert ids(claim(backend, "runner", queues=("q-run",))) == [running]
    assert backend.cancel(CancelSelector(ids=[cancelled])) == [cancelled]
    # a member not yet due still counts as pending
    (late,) = backend.enqueue(
        [NewTask("member", "{}", queue="q-later", batch="mixed", delay=3600)],
        batch=BatchSpec("mixed", 1),
    )

    info = backend.batch("mixed")
    assert info is not None
    assert info.total == 7
    assert (info.pending, info.processing, info.done, info.dead, info.cancelled) == (3, 1, 1, 1, 1)
    assert info.finished == 3
    assert info.last_finished is not None
    assert close_to(info.last_finished.timestamp(), time.time())
    assert info.completed is None
    assert backend.settle_batches() == []  # members pending and processing
    task = backend.get(waiting)
    assert task is not None and task.batch == "mixed"
    assert late not in tids


def test_batches_newest_first(backend: Backend) -> None:
    for name in ("b1", "b2", "b3"):
        members(backend, name, 1)
        time.sleep(0.02)
    assert [b.name for b in backend.batches()] == ["b3", "b2", "b1"]
    assert [b.name for b in backend.batches(limit=2)] == ["b3", "b2"]
    assert all(b.total == 1 and b.pending == 1 for b in backend.batches())


def test_settle_completes_once_and_enqueues_the_follow_up_once(
    queue: lmq.Queue, backend: Backend
) -> None:
    a, b = members(
        backend, "imp", 2, queues=["qa", "qb"], on_complete="report", on_complete_queue="reports"
    )
    assert backend.settle_batches() == []  # both pending
    assert ids(claim(backend, "w1", queues=("qa",))) == [a]
    assert backend.settle_batches() == []  # one processing, one pending
    complete(backend, "w1", done=[a])
    assert backend.settle_batches() == []  # b still pending
    finish(backend, b, "qb", die=True)  # the last one dies: complete all the same

    (settled,) = backend.settle_batches()
    name, followup = settled
    assert name == "imp" and followup is not None
    assert backend.settle_batches() == []
    info = backend.batch("imp")
    assert info is not None
    assert info.completed is not None and info.followup_id == followup
    assert (info.done, info.dead, info.pending, info.processing) == (1, 1, 0, 0)
    assert info.eta() == 0.0

    task = backend.get(followup)
    assert task is not None
    assert (task.task_name, task.payload, task.queue, task.status) == (
        "report",
        {"report": True},
        "reports",
        "pending",
    )
    assert task.batch is None
    assert len(backend.list_tasks(TaskFilter(task_name="report"))) == 1


def test_settle_without_follow_up_and_when_all_cancelled(backend: Backend) -> None:
    (a,) = members(backend, "plain", 1, queues=["qp"])
    tids = members(backend, "gone", 3, on_complete="report")
    finish(backend, a, "qp")
    assert sorted(backend.cancel(CancelSelector(batch="gone")), key=str) == sorted(tids, key=str)
    got = dict(backend.settle_batches())
    assert got.keys() == {"plain", "gone"}
    assert got["plain"] is None
    assert got["gone"] is not None
    info = backend.batch("gone")
    assert info is not None and info.cancelled == 3 and info.completed is not None
    assert backend.settle_batches() == []


def test_settle_with_nothing_open(backend: Backend) -> None:
    assert backend.settle_batches() == []
    backend.enqueue([NewTask("t", "{}")])
    assert backend.settle_batches() == []


def test_settle_from_many_threads_completes_each_batch_once(
    backend_url: str, backend: Backend
) -> None:
    names = [f"race-{i}" for i in range(4)]
    for name in names:
        (tid,) = members(backend, name, 1, queues=[name], on_complete="report")
        finish(backend, tid, name)

    queues = [lmq.Queue(backend_url) for _ in range(4)]
    try:

        def work(i: int) -> list[tuple[str, TaskId | None]]:
            got: list[tuple[str, TaskId | None]] = []
            for _ in range(3):
                got += queues[i].backend.settle_batches()
            return got

        results = in_threads(4, work)
    finally:
        for q in queues:
            q.close()
    settled = [s for r in results for s in r]
    assert sorted(name for name, _ in settled) == sorted(names)
    followups = backend.list_tasks(TaskFilter(task_name="report", limit=100))
    assert len(followups) == 4
    assert {t.id for t in followups} == {f for _, f in settled}
    for name, f in settled:
        info = backend.batch(name)
        assert info is not None and info.followup_id == f


# --- cancel ------------------------------------------------------------------------------


def test_cancel_ids(queue: lmq.Queue, backend: Backend) -> None:
    a = queue.enqueue("t", queue="qa")
    b = queue.enqueue("t", queue="qb")
    running = queue.enqueue("t", queue="qr")
    assert ids(claim(backend, queues=("qr",))) == [running]

    assert backend.cancel(CancelSelector(ids=[a, running])) == [a]
    task = backend.get(a)
    assert task is not None and task.status == "cancelled"
    task = backend.get(running)
    assert task is not None and task.status == "processing"  # running ones finish
    assert backend.cancel(CancelSelector(ids=[a])) == []  # already cancelled: skipped

    c = backend.counts()
    assert (c.pending, c.processing, c.cancelled) == (1, 1, 1)
    assert c.by_queue["qa"]["cancelled"] == 1
    assert c.by_queue["qa"]["pending"] == 0
    assert queue.counts() == {**EMPTY, "pending": 1, "processing": 1}
    assert ids(claim(backend, "w2")) == [b]  # a cancelled task is never claimed
    assert backend.has_ready(None) is False
    complete(backend, "w1", done=[running])
    task = backend.get(running)
    assert task is not None and task.status == "done"
    assert backend.cancel(CancelSelector(ids=[running])) == []  # finished: left alone


def test_cancel_an_unknown_id_cancels_nothing(queue: lmq.Queue, backend: Backend) -> None:
    a = queue.enqueue("t")
    with pytest.raises(lmq.NotFound):
        backend.cancel(CancelSelector(ids=[a, backend.parse_id("999999")]))
    task = backend.get(a)
    assert task is not None and task.status == "pending"
    assert backend.counts().cancelled == 0
    assert ids(claim(backend)) == [a]


def test_cancel_by_task_name_queue_and_batch(queue: lmq.Queue, backend: Backend) -> None:
    a1 = queue.enqueue("a", queue="bulk")
    a2 = queue.enqueue("a", queue="default")
    b1 = queue.enqueue("b", queue="bulk")
    m1, m2 = members(backend, "imp", 2)
    running = queue.enqueue("a", queue="run")
    assert ids(claim(backend, queues=("run",))) == [running]

    assert backend.cancel(CancelSelector(task_name="a", queue="bulk")) == [a1]
    assert sorted(backend.cancel(CancelSelector(task_name="a")), key=str) == [a2]
    assert backend.cancel(CancelSelector(queue="bulk")) == [b1]
    assert backend.cancel(CancelSelector(task_name="nobody")) == []
    assert sorted(backend.cancel(CancelSelector(batch="imp")), key=str) == sorted([m1, m2], key=str)
    assert backend.counts().cancelled == 5
    task = backend.get(running)
    assert task is not None and task.status == "processing"
    info = backend.batch("imp")
    assert info is not None and (info.cancelled, info.pending) == (2, 0)


def test_prune_removes_cancelled_like_done(queue: lmq.Queue, backend: Backend) -> None:
    cancelled = queue.enqueue("t")
    fresh = queue.enqueue("t")
    backend.cancel(CancelSelector(ids=[cancelled]))
    keep = PruneRequest(done_older_than=3600, workers_stale_after=3600)
    assert backend.prune(keep) == 0
    assert backend.get(cancelled) is not None
    queue.enqueue("t")  # the newest row may be kept by a backend (ids never reused)
    gone = PruneRequest(done_older_than=-1, workers_stale_after=3600)
    assert backend.prune(gone) >= 1
    assert backend.get(cancelled) is None
    assert backend.counts().cancelled == 0
    task = backend.get(fresh)
    assert task is not None and task.status == "pending"


# --- paused queues -----------------------------------------------------------------------


def test_pause_and_resume(backend: Backend) -> None:
    assert backend.paused_queues() == {}
    backend.pause_queue("bulk", True)
    backend.pause_queue("other", True)
    paused = backend.paused_queues()
    assert paused.keys() == {"bulk", "other"}
    assert close_to(paused["bulk"], time.time())
    backend.pause_queue("other", False)
    assert backend.paused_queues().keys() == {"bulk"}
    backend.pause_queue("never-paused", False)
    backend.pause_queue("bulk", False)
    assert backend.paused_queues() == {}


def test_claim_excludes_queues(queue: lmq.Queue, backend: Backend) -> None:
    bulk = queue.enqueue("t", queue="bulk", priority=10)
    assert backend.has_ready(None, ("bulk",)) is False
    assert backend.has_ready(("bulk",), ("bulk",)) is False
    assert backend.has_ready(None) is True
    assert backend.next_due(None, ("bulk",)) is None
    assert backend.next_due(None) == 0
    default = queue.enqueue("t", queue="default")
    assert backend.has_ready(None, ("bulk",)) is True
    assert exclude_claim(backend, ("bulk",)) == [default]
    assert exclude_claim(backend, ("bulk",)) == []
    assert exclude_claim(backend, ("bulk",), queues=("bulk", "default")) == []
    assert exclude_claim(backend, ("other",)) == [bulk]


def test_claim_order_across_queues_with_some_excluded(queue: lmq.Queue, backend: Backend) -> None:
    for i in range(5):
        queue.enqueue("t", queue="paused", priority=10, payload={"i": i})
    low = queue.enqueue("t", queue="x", priority=1)
    high = queue.enqueue("t", queue="y", priority=5)
    mid = queue.enqueue("t", queue="z", priority=3)
    mid2 = queue.enqueue("t", queue="z", priority=3)
    got = backend.claim(ClaimRequest("w", 3, 60, None, ("paused",))).tasks
    assert [c.id for c in got] == [high, mid, mid2]
    assert exclude_claim(backend, ("paused",)) == [low]
    assert exclude_claim(backend, ("paused",)) == []
    assert len(exclude_claim(backend, ())) == 5


def test_next_due_with_exclude(queue: lmq.Queue, backend: Backend) -> None:
    queue.enqueue("t", queue="bulk")
    queue.enqueue("t", queue="default", delay=100)
    due = backend.next_due(None, ("bulk",))
    assert due is not None and 90 < due <= 100
    assert backend.next_due(None) == 0
    assert backend.has_ready(None, ("bulk",)) is False


def test_an_excluded_queue_is_not_claimed_after_its_lease_expires(
    queue: lmq.Queue, backend: Backend
) -> None:
    tid = queue.enqueue("t", queue="bulk")
    assert ids(claim(backend, "w1", lease=1)) == [tid]
    time.sleep(1.3)
    assert exclude_claim(backend, ("bulk",)) == []
    assert backend.has_ready(None, ("bulk",)) is False
    assert exclude_claim(backend, ("bulk",), queues=("bulk",)) == []
    task = backend.get(tid)
    assert task is not None and task.status in ("pending", "processing")
    assert task.locked_by in (None, "w1")
    assert backend.has_ready(None) is True
    assert exclude_claim(backend, ()) == [tid]


# --- dead-letter groups --------------------------------------------------------------------


def test_dead_groups(queue: lmq.Queue, backend: Backend) -> None:
    orders = kill_many(
        queue, ["order 17 failed", "order 4203 failed", "order 5 failed"], "import_row"
    )
    timeout = kill_many(queue, ["timed out"], "import_row", queue="slow")
    mails = kill_many(queue, ["SMTP 421 'mx1'", "SMTP 421 'mx2'"], "send_mail")
    assert len({d.fingerprint for d in orders}) == 1

    groups = backend.dead_groups(DeadFilter())
    assert [g.count for g in groups] == [3, 2, 1]
    g = groups[0]
    assert (g.fingerprint, g.task_name) == (orders[0].fingerprint, "import_row")
    assert g.example in {d.error for d in orders}
    assert g.example_id in {d.id for d in orders}
    assert close_to(g.first_seen.timestamp(), min(d.died_at for d in orders).timestamp(), 0.002)
    assert close_to(g.last_seen.timestamp(), max(d.died_at for d in orders).timestamp(), 0.002)
    assert (groups[1].fingerprint, groups[1].task_name) == (mails[0].fingerprint, "send_mail")
    assert groups[2].fingerprint == timeout[0].fingerprint
    assert groups[2].first_seen == groups[2].last_seen
    assert close_to(groups[2].last_seen.timestamp(), timeout[0].died_at.timestamp(), 0.002)

    assert [g.count for g in backend.dead_groups(DeadFilter(task_name="import_row"))] == [3, 1]
    assert [g.count for g in backend.dead_groups(DeadFilter(queue="slow"))] == [1]
    assert [g.task_name for g in backend.dead_groups(DeadFilter(error_contains="smtp"))] == [
        "send_mail"
    ]
    assert [g.count for g in backend.dead_groups(DeadFilter(limit=2))] == [3, 2]
    assert backend.dead_groups(DeadFilter(task_name="nobody")) == []

    # only letters still waiting are grouped
    backend.discard_dead(DeadSelector(ids=[orders[0].id]))
    backend.requeue_dead(DeadSelector(ids=[orders[1].id]))
    assert [g.count for g in backend.dead_groups(DeadFilter())] == [2, 1, 1]


def test_dead_groups_ties_newest_first(queue: lmq.Queue, backend: Backend) -> None:
    old, new = kill_many(queue, ["first kind"], "a") + kill_many(queue, ["second kind"], "b")
    assert [g.fingerprint for g in backend.dead_groups(DeadFilter())] == [
        new.fingerprint,
        old.fingerprint,
    ]


def test_dead_letters_by_fingerprint(queue: lmq.Queue, backend: Backend) -> None:
    a = kill_many(queue, ["order 1 failed", "order 2 failed"], "import_row")
    kill_many(queue, ["something else"], "import_row")
    got = backend.dead_letters(DeadFilter(fingerprint=a[0].fingerprint))
    assert sorted(d.id for d in got) == sorted(d.id for d in a)


def test_requeue_and_discard_a_group(queue: lmq.Queue, backend: Backend) -> None:
    outage = kill_many(queue, ["HTTP 503 at 10:01", "HTTP 503 at 10:02", "HTTP 503 at 10:07"])
    (bad,) = kill_many(queue, ["bad SKU 'x-1'"])
    (other,) = kill_many(queue, ["bad SKU 'x-1'"], "other_task")  # another task name

    got = backend.requeue_dead(DeadSelector(fingerprint=outage[0].fingerprint))
    assert sorted(got, key=str) == sorted((d.task_id for d in outage), key=str)
    assert {d.id for d in backend.dead_letters(DeadFilter())} == {bad.id, other.id}
    assert backend.discard_dead(DeadSelector(fingerprint=bad.fingerprint)) == 1
    assert backend.get_dead(bad.id).status == "discarded"  # type: ignore[union-attr]
    assert backend.discard_dead(DeadSelector(fingerprint=bad.fingerprint, task_name="x")) == 0
    assert [d.id for d in backend.dead_letters(DeadFilter())] == [other.id]


def test_an_empty_selector_is_refused(queue: lmq.Queue, backend: Backend) -> None:
    kill(queue)
    with pytest.raises(ValueError):
        backend.requeue_dead(DeadSelector())
    with pytest.raises(ValueError):
        backend.discard_dead(DeadSelector())
    with pytest.raises(ValueError):
        backend.review_dead(Review(DeadSelector(), approve=True, by="ann"))
    assert backend.counts().dead == 1


# --- requeue with a payload edit, delay and spread ----------------------------------------


def test_requeue_with_a_new_payload(queue: lmq.Queue, backend: Backend) -> None:
    task_id, dead = kill(queue, payload={"sku": "A"})
    _, other = kill(queue, payload={"sku": "B"})
    with pytest.raises(ValueError):
        backend.requeue_dead(DeadSelector(ids=[dead.id, other.id]), payload_json='{"sku": "C"}')
    with pytest.raises(ValueError):
        backend.requeue_dead(DeadSelector(all=True), payload_json='{"sku": "C"}')
    assert backend.counts().dead == 2

    assert backend.requeue_dead(DeadSelector(ids=[dead.id]), payload_json='{"sku": "A2"}') == [
        task_id
    ]
    task = backend.get(task_id)
    assert task is not None
    assert (task.payload, task.status, task.attempts) == ({"sku": "A2"}, "pending", 0)
    assert task.dead_letter_id == dead.id
    (c,) = claim(backend)
    assert json.loads(c.payload) == {"sku": "A2"}


def test_requeue_with_delay_and_spread(queue: lmq.Queue, backend: Backend) -> None:
    made = kill_many(queue, [f"failure {i}" for i in range(4)])
    started = time.time()
    got = backend.requeue_dead(DeadSelector(all=True), delay=100, spread=40)
    assert sorted(got, key=str) == sorted((d.task_id for d in made), key=str)
    for i, dead in enumerate(made):  # oldest death first
        task = backend.get(dead.task_id)
        assert task is not None and task.next_run is not None
        assert (task.status, task.attempts, task.dead_letter_id) == ("pending", 0, dead.id)
        assert [e.message for e in task.errors] == [f"failure {i}"]
        assert close_to(task.next_run.timestamp(), started + 100 + 10 * i)
        assert backend.get_dead(dead.id).status == "requeued"  # type: ignore[union-attr]
    assert claim(backend) == []
    assert backend.counts().pending == 4


def test_requeue_with_delay_only(queue: lmq.Queue, backend: Backend) -> None:
    task_id, dead = kill(queue)
    started = time.time()
    assert backend.requeue_dead(DeadSelector(ids=[dead.id]), delay=50) == [task_id]
    task = backend.get(task_id)
    assert task is not None and task.next_run is not None
    assert close_to(task.next_run.timestamp(), started + 50)


# --- review and requeue_approved -----------------------------------------------------------


def test_review_approve(queue: lmq.Queue, backend: Backend) -> None:
    made = kill_many(queue, ["a 1", "a 2", "a 3"])
    (untouched,) = kill_many(queue, ["other"], "other_task")
    after = time.time() + 1000
    review = Review(
        DeadSelector(task_name="t"), approve=True, by="ann", note="fixed", after=after, rate=2
    )
    assert backend.review_dead(review) == 3
    for i, dead in enumerate(made):
        got = backend.get_dead(dead.id)
        assert got is not None
        assert (got.status, got.review, got.reviewed_by, got.review_note) == (
            "dead",
            "approved",
            "ann",
            "fixed",
        )
        assert got.reviewed_at is not None and close_to(got.reviewed_at.timestamp(), time.time())
        assert got.requeue_at is not None
        assert got.requeue_at.timestamp() == pytest.approx(after + i / 2, abs=0.01)
    other = backend.get_dead(untouched.id)
    assert other is not None and (other.review, other.requeue_at) == (None, None)
    assert backend.counts().dead == 4
    assert backend.requeue_approved() == []  # not due yet


def test_review_approve_now_without_rate(queue: lmq.Queue, backend: Backend) -> None:
    made = kill_many(queue, ["a 1", "a 2"])
    now = time.time()
    assert backend.review_dead(Review(DeadSelector(all=True), approve=True, by="bob")) == 2
    for dead in made:
        got = backend.get_dead(dead.id)
        assert got is not None and got.requeue_at is not None
        assert close_to(got.requeue_at.timestamp(), now)
        assert (got.review, got.reviewed_by, got.review_note) == ("approved", "bob", None)


def test_review_reject(queue: lmq.Queue, backend: Backend) -> None:
    _, dead = kill(queue)
    backend.review_dead(
        Review(DeadSelector(ids=[dead.id]), approve=True, by="ann", after=time.time() + 100)
    )
    assert (
        backend.review_dead(
            Review(DeadSelector(ids=[dead.id]), approve=False, by="bob", note="bad data")
        )
        == 1
    )
    got = backend.get_dead(dead.id)
    assert got is not None
    assert (got.status, got.review, got.reviewed_by, got.review_note, got.requeue_at) == (
        "dead",
        "rejected",
        "bob",
        "bad data",
        None,
    )
    assert backend.counts().dead == 1
    assert [d.id for d in backend.dead_letters(DeadFilter())] == [dead.id]
    assert backend.requeue_approved() == []


def test_review_unknown_or_not_waiting_ids(queue: lmq.Queue, backend: Backend) -> None:
    _, good = kill(queue)
    _, requeued = kill(queue)
    backend.requeue_dead(DeadSelector(ids=[requeued.id]))
    for bad in (backend.parse_id("999999"), requeued.id):
        with pytest.raises(lmq.NotFound):
            backend.review_dead(Review(DeadSelector(ids=[good.id, bad]), approve=True, by="a"))
    got = backend.get_dead(good.id)
    assert got is not None and got.review is None and got.requeue_at is None


def test_review_a_group(queue: lmq.Queue, backend: Backend) -> None:
    outage = kill_many(queue, ["HTTP 503 id 1", "HTTP 503 id 2"])
    (bad,) = kill_many(queue, ["bad record"])
    sel = DeadSelector(fingerprint=outage[0].fingerprint)
    assert backend.review_dead(Review(sel, approve=False, by="ann")) == 2
    assert {d.id for d in backend.dead_letters(DeadFilter()) if d.review == "rejected"} == {
        d.id for d in outage
    }
    got = backend.get_dead(bad.id)
    assert got is not None and got.review is None


def test_requeue_approved_takes_due_ones_oldest_first_at_most_limit(
    queue: lmq.Queue, backend: Backend
) -> None:
    due = kill_many(queue, ["due 1", "due 2", "due 3"], "due")
    (later,) = kill_many(queue, ["later"], "later")
    (rejected,) = kill_many(queue, ["rejected"], "rejected")
    (waiting,) = kill_many(queue, ["waiting"], "waiting")
    now = time.time()
    backend.review_dead(
        Review(DeadSelector(task_name="due"), approve=True, by="a", after=now - 100, rate=1)
    )
    backend.review_dead(
        Review(DeadSelector(task_name="later"), approve=True, by="a", after=now + 1000)
    )
    backend.review_dead(Review(DeadSelector(task_name="rejected"), approve=False, by="a"))

    assert backend.requeue_approved(limit=2) == [due[0].task_id, due[1].task_id]
    assert backend.requeue_approved() == [due[2].task_id]
    assert backend.requeue_approved() == []
    for dead in due:
        letter = backend.get_dead(dead.id)
        assert letter is not None and letter.status == "requeued"
        task = backend.get(dead.task_id)
        assert task is not None
        assert (task.status, task.attempts, task.dead_letter_id) == ("pending", 0, dead.id)
    for dead in (later, rejected, waiting):
        letter = backend.get_dead(dead.id)
        assert letter is not None and letter.status == "dead"
    assert backend.counts().dead == 3
    assert sorted(ids(claim(backend)), key=str) == sorted((d.task_id for d in due), key=str)


def test_requeue_approved_from_many_threads_requeues_each_once(
    backend_url: str, queue: lmq.Queue, backend: Backend
) -> None:
    made = kill_many(queue, [f"outage {i}" for i in range(20)])
    backend.review_dead(
        Review(DeadSelector(all=True), approve=True, by="a", after=time.time() - 10)
    )
    queues = [lmq.Queue(backend_url) for _ in range(4)]
    try:

        def work(i: int) -> list[TaskId]:
            got: list[TaskId] = []
            for _ in range(10):
                got += queues[i].backend.requeue_approved(limit=3)
            return got

        results = in_threads(4, work)
    finally:
        for q in queues:
            q.close()
    taken = [t for r in results for t in r]
    assert sorted(taken, key=str) == sorted((d.task_id for d in made), key=str)
    assert backend.counts().pending == 20
    assert backend.counts().dead == 0


# --- prune -------------------------------------------------------------------------------


def test_prune_resolved_dead_letters(queue: lmq.Queue, backend: Backend) -> None:
    _, requeued = kill(queue)
    _, discarded = kill(queue)
    _, rejected = kill(queue)
    _, waiting = kill(queue)
    _, approved = kill(queue)
    backend.requeue_dead(DeadSelector(ids=[requeued.id]))
    backend.discard_dead(DeadSelector(ids=[discarded.id]))
    backend.review_dead(Review(DeadSelector(ids=[rejected.id]), approve=False, by="a"))
    backend.review_dead(
        Review(DeadSelector(ids=[approved.id]), approve=True, by="a", after=time.time() + 99)
    )
    everything = {requeued.id, discarded.id, rejected.id, waiting.id, approved.id}

    def letters() -> set[TaskId]:
        return {d.id for d in backend.dead_letters(DeadFilter(include_all=True, limit=None))}

    backend.prune(PruneRequest(done_older_than=-1, workers_stale_after=3600))
    assert letters() == everything  # dead_older_than None: every letter kept
    backend.prune(PruneRequest(3600, 3600, dead_older_than=3600))
    assert letters() == everything  # not old enough
    assert backend.prune(PruneRequest(3600, 3600, dead_older_than=-1)) >= 3
    assert letters() == {waiting.id, approved.id}
    assert backend.get_dead(rejected.id) is None
    assert backend.counts().dead == 2
    task = backend.get(requeued.task_id)  # the re-queued task itself stays
    assert task is not None and task.status == "pending"


def test_prune_completed_batches_whose_members_are_gone(queue: lmq.Queue, backend: Backend) -> None:
    (done,) = members(backend, "old", 1, queues=["qo"])
    members(backend, "open", 1, queues=["qopen"])
    finish(backend, done, "qo")
    assert [name for name, _ in backend.settle_batches()] == ["old"]
    queue.enqueue("t")  # the newest row may be kept by a backend

    backend.prune(PruneRequest(done_older_than=3600, workers_stale_after=3600))
    assert {b.name for b in backend.batches()} == {"old", "open"}
    for _ in range(2):  # members first, then the empty batch (in one call or the next)
        backend.prune(PruneRequest(done_older_than=-1, workers_stale_after=3600))
    assert backend.get(done) is None
    assert backend.batch("old") is None
    assert backend.batch("open") is not None


def test_prune_keeps_a_completed_batch_with_members(queue: lmq.Queue, backend: Backend) -> None:
    (tid,) = members(backend, "b", 1, queues=["qb"])
    (dead,) = members(backend, "d", 1, queues=["qd"])
    finish(backend, tid, "qb")
    finish(backend, dead, "qd", die=True)
    backend.settle_batches()
    queue.enqueue("t")
    for _ in range(2):
        backend.prune(PruneRequest(done_older_than=3600, workers_stale_after=3600))
    assert backend.batch("b") is not None  # its done member is not old enough yet
    info = backend.batch("d")
    assert info is not None and info.dead == 1  # a waiting dead member is kept
