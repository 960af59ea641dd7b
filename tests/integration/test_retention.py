"""Retention with a real worker process, on every backend: ``--keep-done 0`` prunes
finished and cancelled tasks within about a second, ``--keep-dead`` prunes resolved dead
letters (re-queued, discarded, rejected) and never ones nobody has looked at, and the
default keeps finished tasks (24 h)."""

from __future__ import annotations

import signal
import time

from .conftest import Harness


def _wait(pred, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_keep_done_zero_prunes_within_seconds_and_keeps_unreviewed_dead(hb: Harness) -> None:
    h = hb
    q = h.queue
    done = q.enqueue_many([("record", {"n": n}) for n in range(20)])
    cancelled = q.enqueue("record", {"n": 99}, delay=3600)
    assert q.cancel(cancelled) == [cancelled]
    # SQLite's pruner never deletes the newest row (ids are never reused): a pending one
    q.enqueue("record", {"n": 100}, delay=3600)
    w = h.worker("-c", "5", "--keep-done", "0", "--keep-dead", "0")
    h.wait_record("ran", 19, timeout=30)
    # finished and cancelled rows are gone within a few seconds (the pruner runs each second)
    try:
        _wait(lambda: all(q.get(t) is None for t in [*done, cancelled]), timeout=30)
    except AssertionError:
        left = [(t, q.get(t).status) for t in [*done, cancelled] if q.get(t) is not None]
        raise AssertionError(f"left: {left}") from None
    assert q.counts()["done"] == 0
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.stderr()[-3000:]


def test_keep_dead_prunes_resolved_letters_only(hb: Harness) -> None:
    h = hb
    q = h.queue
    # three tasks that die at once (no handler registered), then three verdicts
    ids = q.enqueue_many([("nobody_handles_this", {"n": n}) for n in range(4)])
    w = h.worker("-c", "5", "--burst")
    assert w.wait(60) == 0, w.stderr()[-3000:]
    letters = {d.task_id: d.id for d in q.dead_letters()}
    assert sorted(map(str, letters)) == sorted(map(str, ids))
    discard, reject, keep, requeue = (letters[t] for t in ids)
    assert q.discard_dead([discard]) == 1
    assert q.review_dead([reject], approve=False, note="bad data", by="test") == 1
    assert q.requeue_dead([requeue]) == [ids[3]]
    w = h.worker("-c", "5", "--keep-done", "0", "--keep-dead", "0")

    def gone(dead_id: object) -> bool:
        return not any(str(d.id) == str(dead_id) for d in q.dead_letters(include_all=True))

    _wait(lambda: gone(discard) and gone(reject), timeout=30)
    # the one nobody has looked at stays, and still counts
    assert not gone(keep)
    assert q.dead_letter(keep).status == "dead"
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.stderr()[-3000:]


def test_default_keeps_finished_tasks(hb: Harness) -> None:
    h = hb
    q = h.queue
    ids = q.enqueue_many([("record", {"n": n}) for n in range(5)])
    w = h.worker("-c", "5", "--burst")
    assert w.wait(60) == 0, w.stderr()[-3000:]
    assert all(t is not None and t.status == "done" for t in map(q.get, ids))
