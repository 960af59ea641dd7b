"""SIGTERM/SIGINT: finish running tasks, exit 0; a second signal exits at once; --grace."""

from __future__ import annotations

import signal
import time

import pytest

from .conftest import Harness


def test_sigterm_lets_the_running_task_finish(h: Harness) -> None:
    h.queue.migrate()
    w = h.worker("--lease", "2")
    h.wait_for(lambda: h.worker_pids() == [w.pid], "the heartbeat row", timeout=30, procs=[w])
    task_id = h.queue.enqueue("sleep", {"n": 1, "seconds": 2})
    h.wait_record("start", 1)
    w.signal(signal.SIGTERM)
    h.wait_stderr(w, "SIGTERM received")
    later_id = h.queue.enqueue("record", {"n": 2})  # the stopping worker must not claim it
    assert w.wait(30) == 0, w.stderr()[-3000:]
    w.assert_clean()
    assert [p for _, _, p in h.records("end")] == [w.pid]
    task = h.queue.get(task_id)
    assert (task.status, task.attempts) == ("done", 1)
    later = h.queue.get(later_id)
    assert (later.status, later.attempts) == ("pending", 0)
    assert h.records("ran") == []
    status = h.run_json("status", "--json")
    assert status["workers"] == []
    assert status["counts"] == {"pending": 1, "processing": 0, "done": 1, "dead": 0}


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_second_signal_exits_at_once(h: Harness, second: signal.Signals) -> None:
    task_id = h.queue.enqueue("block_once", {"n": 1, "seconds": 30})
    w1 = h.worker("--lease", "2", "--grace", "60")
    h.wait_record("start", 1)
    w1.signal(signal.SIGTERM)
    h.wait_stderr(w1, "SIGTERM received")
    w1.signal(second)
    rc = w1.wait(10)  # not after the 60 s grace period, nor after the 30 s task
    assert rc != 0
    w1.assert_clean()
    assert h.records("end") == []
    task = h.queue.get(task_id)
    assert (task.status, task.attempts) == ("processing", 1)

    # the unfinished task is claimable again once its lease has run out
    w2 = h.worker("--lease", "2")
    h.wait_for(
        lambda: h.queue.get(task_id).status == "done", "the task to run again", 30, procs=[w2]
    )
    task = h.queue.get(task_id)
    assert task.attempts == 2
    assert [e.type for e in task.errors] == ["LeaseExpired"]
    assert [p for _, _, p in h.records("start")] == [w1.pid, w2.pid]
    w2.signal(signal.SIGTERM)
    assert w2.wait(20) == 0, w2.stderr()[-3000:]
    w2.assert_clean()


@pytest.mark.parametrize("task_name", ["block_once", "ablock_once"], ids=["sync", "async"])
def test_grace_period_releases_the_unfinished_task(h: Harness, task_name: str) -> None:
    task_id = h.queue.enqueue(task_name, {"n": 1, "seconds": 10})
    w1 = h.worker("--lease", "2", "--grace", "1")
    h.wait_record("start", 1)
    w1.signal(signal.SIGTERM)
    t0 = time.monotonic()
    rc = w1.wait(8)  # well before the 10 s task could have finished
    waited = time.monotonic() - t0
    assert rc == 0, w1.stderr()[-3000:]
    assert waited >= 0.9, f"exited after {waited:.2f}s: the task did not get its grace period"
    w1.assert_clean()
    assert "grace period over" in w1.stderr()
    assert h.records("end") == []
    task = h.queue.get(task_id)
    assert (task.status, task.attempts) == ("pending", 0), "not released with its attempt back"
    assert task.locked_by is None

    w2 = h.worker("--burst")
    assert w2.wait(30) == 0, w2.stderr()[-3000:]
    w2.assert_clean()
    task = h.queue.get(task_id)
    assert (task.status, task.attempts) == ("done", 1)
    assert [p for _, _, p in h.records("start")] == [w1.pid, w2.pid]
    assert [p for _, _, p in h.records("end")] == [w2.pid]
