"""Workers that die: SIGKILL mid-task, tasks that kill their worker, a killed child.

Every test runs once per backend (the ``hb`` fixture): SQLite, and each configured server.
"""

from __future__ import annotations

import collections
import signal

import psutil
import pytest

from .conftest import Harness, Proc


@pytest.fixture
def h(hb: Harness) -> Harness:
    """Here ``h`` is the per-backend harness (these tests use no raw SQLite)."""
    return hb


def test_sigkill_mid_task_is_rescued_after_the_lease(h: Harness) -> None:
    task_id = h.queue.enqueue("block_once", {"n": 1, "seconds": 30})
    w1 = h.worker("--lease", "2")
    [(_, _, pid)] = h.wait_record("start", 1)
    assert pid == w1.pid
    w1.signal(signal.SIGKILL)
    assert w1.wait(10) == -signal.SIGKILL
    w1.assert_clean()
    task = h.queue.get(task_id)
    assert (task.status, task.attempts) == ("processing", 1)

    w2 = h.worker("--lease", "2")
    h.wait_for(
        lambda: h.queue.get(task_id).status == "done", "the rescued task to finish", 30, procs=[w2]
    )
    shown = h.run_json("show", str(task_id), "--json")
    assert shown["status"] == "done"
    assert shown["attempts"] == 2
    assert [e["type"] for e in shown["errors"]] == ["LeaseExpired"], shown["errors"]
    assert "lease expired" in shown["errors"][0]["message"]
    assert [p for _, _, p in h.records("start")] == [w1.pid, w2.pid]
    assert [p for _, _, p in h.records("end")] == [w2.pid]
    w2.signal(signal.SIGTERM)
    assert w2.wait(20) == 0, w2.stderr()[-3000:]
    w2.assert_clean()


def _check_suicide_outcome(h: Harness, suicide_id: int | str, normal: range) -> None:
    starts = h.keys("start")
    assert starts["1"] == 2, f"the suicide task ran {starts['1']} times, max_attempts is 2"
    ran = h.keys("ran")
    assert sorted(ran) == sorted(str(k) for k in normal)
    assert set(ran.values()) == {1}, f"normal tasks ran more than once: {ran}"
    dead = h.run_json("dead", "list", "--json")
    assert [d["task_id"] for d in dead] == [suicide_id]
    assert dead[0]["task_name"] == "suicide"
    assert "attempts used up" in dead[0]["reason"]
    task = h.queue.get(suicide_id)
    assert task.status == "dead"
    types = [e.type for e in task.errors]
    assert len(types) >= 2 and set(types) == {"LeaseExpired"}, types


def test_task_killing_its_worker_ends_dead_with_restarts_by_hand(h: Harness) -> None:
    suicide_id = h.queue.enqueue("suicide", {"n": 1}, priority=10)  # max_attempts=2
    normal = range(10, 20)
    h.queue.enqueue_many([("record", {"n": k}) for k in normal])
    deaths: list[Proc] = []
    for _ in range(5):
        # -c 1: the dying worker holds nothing but the suicide task
        w = h.worker("--lease", "1", "-c", "1")
        h.wait_for(
            lambda w=w: w.poll() is not None or h.counts()["dead"] == 1,
            "the worker to die or the task to be dead-lettered",
            timeout=30,
        )
        if w.poll() is None:
            break
        assert w.poll() == -signal.SIGKILL, w.stderr()[-3000:]
        deaths.append(w)
    else:
        pytest.fail("the task kept killing its workers: a crash loop")
    assert len(deaths) == 2
    h.wait_counts(done=len(normal), dead=1, timeout=30, procs=[w])
    assert h.counts()["pending"] == 0
    _check_suicide_outcome(h, suicide_id, normal)
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0, w.stderr()[-3000:]
    for p in [*deaths, w]:
        p.assert_clean()


def test_task_killing_its_worker_ends_dead_under_processes(h: Harness) -> None:
    suicide_id = h.queue.enqueue("suicide", {"n": 1}, priority=10)
    normal = range(10, 20)
    h.queue.enqueue_many([("record", {"n": k}) for k in normal])
    parent = h.worker("--processes", "2", "-c", "1", "--lease", "1")
    h.wait_counts(done=len(normal), dead=1, pending=0, processing=0, timeout=60, procs=[parent])
    _check_suicide_outcome(h, suicide_id, normal)
    parent.signal(signal.SIGTERM)
    assert parent.wait(30) == 0, parent.stderr()[-3000:]
    assert parent.stderr().count("exited with signal SIGKILL; restarting") == 2
    parent.assert_clean()


def test_processes_parent_restarts_a_killed_child(h: Harness) -> None:
    h.queue.migrate()
    parent = h.worker("--processes", "2", "-c", "2", "--lease", "1")
    first = h.wait_for(
        lambda: (pids := h.worker_pids()) and len(pids) == 2 and pids,
        "two worker heartbeat rows",
        timeout=30,
        procs=[parent],
    )
    children = {c.pid for c in psutil.Process(parent.pid).children()}
    assert set(first) == children, "the heartbeat rows are not the parent's children"

    n = 200
    h.queue.enqueue_many([("sleep", {"n": i, "seconds": 0.05}) for i in range(n)])
    victim = first[0]
    h.wait_for(
        lambda: any(pid == victim for _, _, pid in h.records("start")),
        "the victim child to start a task",
        timeout=30,
    )
    psutil.Process(victim).send_signal(signal.SIGKILL)
    new = h.wait_for(
        lambda: set(h.worker_pids()) - set(first),
        "a restarted child's heartbeat row",
        timeout=30,
        procs=[parent],
    )
    assert len(new) == 1
    h.wait_counts(done=n, pending=0, processing=0, dead=0, timeout=60, procs=[parent])

    ends = h.keys("end")
    assert all(ends[str(i)] >= 1 for i in range(n)), "a task never finished"
    by_key = collections.defaultdict(list)
    for _, key, pid in h.records("start"):
        by_key[key].append(pid)
    for key, pids in by_key.items():
        if len(pids) > 1:  # at-least-once: only what the killed child held may run again
            assert victim in pids[:-1], f"task {key} ran twice without a crash: {pids}"
    assert set().union(*map(set, by_key.values())) <= set(first) | new

    parent.signal(signal.SIGTERM)
    assert parent.wait(30) == 0, parent.stderr()[-3000:]
    parent.assert_clean()
    assert "exited with signal SIGKILL; restarting" in parent.stderr()
    for pid in set(first) | new:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    # the stopped children removed their rows; only the killed one's stale row is left
    assert set(h.worker_pids()) <= {victim}
