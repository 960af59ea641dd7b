"""Leases: a long task keeps its claim; renewals under load raise no false alarms."""

from __future__ import annotations

import signal

from .conftest import Harness


def test_long_task_keeps_its_lease(h: Harness) -> None:
    h.queue.migrate()
    workers = [h.worker("--lease", "1") for _ in range(2)]  # renewed every ~0.33 s
    h.wait_for(
        lambda: len(h.worker_pids()) == 2, "both workers' heartbeats", timeout=30, procs=workers
    )
    task_id = h.queue.enqueue("sleep", {"n": 1, "seconds": 5})
    h.wait_for(
        lambda: h.queue.get(task_id).status == "done",
        "the long task to finish",
        timeout=60,
        procs=workers,
    )
    task = h.queue.get(task_id)
    assert task.attempts == 1
    assert task.errors == (), task.errors
    assert len(h.records("start")) == 1, h.records()
    assert len(h.records("end")) == 1, h.records()
    for w in workers:
        w.signal(signal.SIGTERM)
    for w in workers:
        assert w.wait(20) == 0, w.stderr()[-3000:]
        w.assert_clean()
        assert "rescued" not in w.stderr(), w.stderr()


def test_no_false_lost_lease_warnings_under_load(h: Harness) -> None:
    """Tasks acknowledged while a renewal is under way are not reported as lost leases."""
    n = 15000
    h.queue.enqueue_many([("record", {"n": i}) for i in range(n)])
    workers = [h.worker("--burst", "--lease", "1", "-c", "20") for _ in range(3)]
    for w in workers:
        assert w.wait(120) == 0, w.stderr()[-3000:]
    ran = h.keys("ran")
    assert len(ran) == n and set(ran.values()) == {1}
    for w in workers:
        w.assert_clean()
        assert "lost the lease" not in w.stderr(), (
            "false alarm: no task was rescued or ran twice, yet the worker warned\n"
            + w.stderr()[-2000:]
        )
