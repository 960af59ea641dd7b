"""The dead-letter review API (``Queue.dead_groups``, ``review_dead``, ``requeue_dead``
with a group, a payload edit, delay and spread, ``discard_dead`` with a group) on SQLite
and in memory, with burst workers run in this process."""

from __future__ import annotations

import getpass
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import lmq
from lmq.models import DeadLetter
from lmq.worker import Worker, WorkerSettings

ran: list[tuple[str, Any]] = []
outage = {"on": True}


@pytest.fixture(params=["sqlite", "memory"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[lmq.Queue]:
    url = f"sqlite:///{tmp_path}/dead.db" if request.param == "sqlite" else "memory://"
    q = lmq.Queue(url)

    @q.task(max_attempts=1)
    def import_product(n: int, sku: str = "ok") -> None:
        if sku == "BAD":
            raise lmq.Discard(f"product {n} has a bad sku {sku!r}")
        if outage["on"]:
            raise ConnectionError(f"HTTP 503 from the API for product {n} (request 0x{n:04x})")
        ran.append(("import_product", (n, sku)))

    @q.task(max_attempts=1)
    def notify(user: int) -> None:
        raise KeyError(f"no user {user}")

    ran.clear()
    outage["on"] = True
    try:
        yield q
    finally:
        q.close()


def burst(queue: lmq.Queue) -> int:
    w = Worker(queue, WorkerSettings(burst=True, install_signal_handlers=False, concurrency=4))
    return w.run()


def outage_dead(queue: lmq.Queue, imports: int = 10, notifies: int = 2) -> tuple[str, str]:
    """``imports`` import_product and ``notifies`` notify tasks, all dead; their groups."""
    before = queue.counts()["dead"]
    queue.enqueue_many([("import_product", {"n": n}) for n in range(imports)])
    queue.enqueue_many([("notify", {"user": u}) for u in range(notifies)])
    assert burst(queue) == 0
    assert queue.counts()["dead"] == before + imports + notifies
    fp: dict[str, str] = {}
    for g in queue.dead_groups():  # the largest group of each task
        fp.setdefault(g.task_name, g.fingerprint)
    return fp.get("import_product", ""), fp.get("notify", "")


def letters(queue: lmq.Queue, group: str) -> list[DeadLetter]:
    """The group's letters, whatever their status, oldest death first."""
    found = queue.dead_letters(group=group, include_all=True, limit=None)
    return sorted(found, key=lambda d: (d.died_at, str(d.id)))


def task(queue: lmq.Queue, task_id: Any) -> lmq.Task:
    t = queue.get(task_id)
    assert t is not None, f"no task {task_id}"
    return t


# --- groups -------------------------------------------------------------------------------


def test_one_outage_is_one_group_largest_first(queue: lmq.Queue) -> None:
    imp, note = outage_dead(queue, imports=12, notifies=3)
    groups = queue.dead_groups()
    assert [(g.task_name, g.count) for g in groups] == [("import_product", 12), ("notify", 3)]
    g = groups[0]
    assert g.fingerprint == imp and "HTTP 503" in g.example
    assert g.first_seen <= g.last_seen
    members = queue.dead_letters(group=imp, limit=None)
    assert len(members) == 12 and {d.fingerprint for d in members} == {imp}
    assert str(g.example_id) in {str(d.id) for d in members}
    assert g.first_seen == min(d.died_at for d in members)
    assert g.last_seen == max(d.died_at for d in members)
    died = [d.died_at for d in members]
    assert died == sorted(died, reverse=True), "dead_letters lists the newest first"
    # the filters
    assert [x.count for x in queue.dead_groups(limit=1)] == [12]
    assert [x.fingerprint for x in queue.dead_groups(task_name="notify")] == [note]
    assert [x.fingerprint for x in queue.dead_groups(error_contains="503")] == [imp]
    assert [x.fingerprint for x in queue.dead_groups(group=note)] == [note]
    assert queue.dead_groups(queue="elsewhere") == []
    assert queue.dead_groups(group="000000000000") == []
    json_keys = set(g.to_json())
    assert {"fingerprint", "count", "task_name", "example", "first_seen", "last_seen"} <= json_keys


# --- requeue ------------------------------------------------------------------------------


def test_requeue_a_group_resets_attempts_and_links_back(queue: lmq.Queue) -> None:
    imp, note = outage_dead(queue)
    before = letters(queue, imp)
    ids = queue.requeue_dead(group=imp)
    assert sorted(map(str, ids)) == sorted(str(d.task_id) for d in before)
    assert queue.counts() == {"pending": 10, "processing": 0, "done": 0, "dead": 2}
    assert queue.dead_groups() == queue.dead_groups(group=note)
    for d in letters(queue, imp):
        assert d.status == "requeued" and d.requeued_at is not None
        t = task(queue, d.task_id)
        assert (t.status, t.attempts) == ("pending", 0)
        assert str(t.dead_letter_id) == str(d.id)
    outage["on"] = False
    assert burst(queue) == 0
    assert sorted(n for name, (n, _) in ran if name == "import_product") == list(range(10))
    t = task(queue, before[0].task_id)
    assert t.status == "done" and t.attempts == 1
    assert any("HTTP 503" in e.message for e in t.errors), "the earlier error is kept"
    # already re-queued: no longer waiting
    with pytest.raises(lmq.NotFound):
        queue.requeue_dead([before[0].id])
    assert queue.requeue_dead(group=imp) == []


def test_requeue_with_delay_and_spread_is_gradual_oldest_first(queue: lmq.Queue) -> None:
    imp, _ = outage_dead(queue)
    t0 = time.time()
    ids = queue.requeue_dead(group=imp, delay=100, spread=50)
    t1 = time.time()
    assert len(ids) == 10
    due = []
    for d in letters(queue, imp):
        next_run = task(queue, d.task_id).next_run
        assert next_run is not None
        due.append((next_run.timestamp(), d.died_at))
    due.sort()
    at = [x for x, _ in due]
    assert t0 + 100 - 1 <= at[0] <= t1 + 100 + 1
    for i, x in enumerate(at):  # evenly over the spread...
        assert abs((x - at[0]) - 5.0 * i) < 0.5, (i, x - at[0])
    died = [d for _, d in due]
    assert died == sorted(died), "...the oldest death first"
    assert queue.stats().scheduled == 10
    with pytest.raises(ValueError):
        queue.requeue_dead(group=imp, delay=-1)


def test_payload_edit_for_one_letter(queue: lmq.Queue) -> None:
    bad = queue.enqueue("import_product", {"n": 7, "sku": "BAD"})
    assert burst(queue) == 0
    d = queue.dead_letters(task_name="import_product")[0]
    assert d.task_id == bad and "bad sku" in d.reason
    outage_dead(queue, imports=2, notifies=0)
    other = next(x for x in queue.dead_letters() if x.id != d.id)
    # refused: nothing changes
    with pytest.raises(ValueError):
        queue.requeue_dead([d.id, other.id], payload={"n": 7, "sku": "GOOD"})
    with pytest.raises(ValueError):
        queue.requeue_dead(group=d.fingerprint, payload={"n": 7, "sku": "GOOD"})
    with pytest.raises(TypeError):
        queue.requeue_dead([d.id], payload={"n": {1, 2}})
    with pytest.raises(ValueError):
        queue.requeue_dead([d.id], payload={"n": float("nan")})
    with pytest.raises(TypeError):
        queue.requeue_dead([d.id], payload=[1, 2])  # type: ignore[arg-type]
    assert queue.dead_letter(d.id).status == "dead"
    outage["on"] = False
    assert queue.requeue_dead(d.id, payload={"n": 7, "sku": "GOOD"}) == [bad]
    assert task(queue, bad).payload == {"n": 7, "sku": "GOOD"}
    assert burst(queue) == 0
    assert ("import_product", (7, "GOOD")) in ran
    assert task(queue, bad).status == "done"


def test_unknown_ids_change_nothing_and_a_selector_is_required(queue: lmq.Queue) -> None:
    imp, _ = outage_dead(queue, imports=2, notifies=1)
    good = letters(queue, imp)[0]
    with pytest.raises(lmq.NotFound):
        queue.requeue_dead([good.id, 987654])
    with pytest.raises(lmq.NotFound):
        queue.discard_dead([good.id, 987654])
    with pytest.raises(lmq.NotFound):
        queue.review_dead([good.id, 987654], approve=True)
    d = queue.dead_letter(good.id)
    assert d.status == "dead" and d.review is None
    with pytest.raises(lmq.NotFound):
        queue.dead_letter(987654)
    for call in (
        queue.requeue_dead,
        queue.discard_dead,
        lambda: queue.review_dead(approve=True),
        lambda: queue.requeue_dead([good.id], group=imp),
    ):
        with pytest.raises(ValueError):
            call()
    assert queue.counts()["dead"] == 3


def test_discard_a_group(queue: lmq.Queue) -> None:
    imp, note = outage_dead(queue, imports=4, notifies=2)
    assert queue.discard_dead(group=note) == 2
    assert queue.counts()["dead"] == 4
    assert {d.status for d in letters(queue, note)} == {"discarded"}
    assert all(d.discarded_at is not None for d in letters(queue, note))
    assert [g.fingerprint for g in queue.dead_groups()] == [imp]
    assert queue.discard_dead(all=True, task_name="import_product") == 4
    assert queue.counts()["dead"] == 0


# --- review -------------------------------------------------------------------------------


def test_approve_records_who_when_why_and_spaces_requeues_by_rate(queue: lmq.Queue) -> None:
    imp, _ = outage_dead(queue)
    t0 = time.time()
    n = queue.review_dead(group=imp, approve=True, note="API is back", by="alice", rate=2)
    assert n == 10
    found = sorted(letters(queue, imp), key=lambda d: d.requeue_at or datetime.max)
    died = [d.died_at for d in found]
    assert died == sorted(died), "the oldest death is re-queued first"
    for i, d in enumerate(found):
        assert (d.status, d.review, d.reviewed_by, d.review_note) == (
            "dead",
            "approved",
            "alice",
            "API is back",
        )
        assert d.reviewed_at is not None and abs(d.reviewed_at.timestamp() - t0) < 5
        assert d.requeue_at is not None
        assert abs(d.requeue_at.timestamp() - found[0].requeue_at.timestamp() - i / 2) < 0.05  # type: ignore[union-attr]
    assert abs(found[0].requeue_at.timestamp() - t0) < 5  # type: ignore[union-attr]
    # approved but not yet re-queued: still dead letters
    assert queue.counts()["dead"] == 12
    # the workers' verb: only what is due, oldest requeue_at first
    got = queue.backend.requeue_approved()
    assert [str(x) for x in got] == [str(found[0].task_id)]
    assert queue.dead_letter(found[0].id).status == "requeued"


def test_approved_in_the_past_are_requeued_in_order_up_to_the_limit(queue: lmq.Queue) -> None:
    imp, _ = outage_dead(queue)
    past = datetime.now(UTC) - timedelta(seconds=100)
    assert queue.review_dead(group=imp, approve=True, after=past, rate=1) == 10
    by_due = sorted(letters(queue, imp), key=lambda d: d.requeue_at or datetime.max)
    order = [str(d.task_id) for d in by_due]
    first = queue.backend.requeue_approved(limit=3)
    assert [str(x) for x in first] == order[:3]
    rest = queue.backend.requeue_approved()
    assert [str(x) for x in rest] == order[3:]
    assert queue.backend.requeue_approved() == []
    for d in letters(queue, imp):
        assert d.status == "requeued"
        assert str(task(queue, d.task_id).dead_letter_id) == str(d.id)


def test_a_burst_worker_requeues_approved_letters(queue: lmq.Queue) -> None:
    imp, note = outage_dead(queue)
    outage["on"] = False
    assert queue.review_dead(group=imp, approve=True) == 10
    assert queue.review_dead(group=note, approve=False, note="users gone") == 2
    assert burst(queue) == 0
    assert sorted(n for name, (n, _) in ran if name == "import_product") == list(range(10))
    assert queue.counts() == {"pending": 0, "processing": 0, "done": 10, "dead": 2}
    for d in letters(queue, note):
        assert (d.status, d.review, d.review_note, d.requeue_at) == (
            "dead",
            "rejected",
            "users gone",
            None,
        )


def test_reject_keeps_them_and_a_later_review_replaces_it(queue: lmq.Queue) -> None:
    _, note = outage_dead(queue)
    ids = [d.id for d in letters(queue, note)]
    assert queue.review_dead(ids, approve=True, after=3600) == 2
    d = queue.dead_letter(ids[0])
    assert d.requeue_at is not None and d.requeue_at.timestamp() > time.time() + 3500
    assert queue.backend.requeue_approved() == []  # not due for an hour
    assert queue.review_dead(ids[0], approve=False, note="no such user") == 1
    d = queue.dead_letter(ids[0])
    assert (d.review, d.review_note, d.requeue_at) == ("rejected", "no such user", None)
    assert d.reviewed_by == getpass.getuser()
    assert queue.backend.requeue_approved() == []
    assert queue.counts()["dead"] == 12
    assert queue.dead_letter(ids[1]).review == "approved"


def test_review_refuses_bad_arguments(queue: lmq.Queue) -> None:
    imp, _ = outage_dead(queue, imports=1, notifies=0)
    for kwargs in (
        {"approve": True, "rate": 0},
        {"approve": True, "rate": -1},
        {"approve": False, "rate": 5},
        {"approve": False, "after": 10},
        {"approve": True, "after": datetime(2030, 1, 1)},  # naive
        {"approve": True, "after": -5},
    ):
        with pytest.raises(ValueError):
            queue.review_dead(group=imp, **kwargs)
    assert letters(queue, imp)[0].review is None
