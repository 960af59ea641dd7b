"""Real `lmq worker` processes draining a SQLite queue: every task runs exactly once."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta

import pytest

from .conftest import Harness


def assert_each_ran_once(h: Harness, keys: range) -> None:
    ran = h.keys("ran")
    missing = [k for k in keys if str(k) not in ran]
    twice = {k: n for k, n in ran.items() if n != 1}
    extra = set(ran) - {str(k) for k in keys}
    assert not missing, f"{len(missing)} task(s) never ran, e.g. {missing[:10]}"
    assert not twice, f"{len(twice)} task(s) ran more than once, e.g. {list(twice.items())[:10]}"
    assert not extra, f"unexpected keys ran: {sorted(extra)[:10]}"


def test_bulk_round_trip_burst(h: Harness) -> None:
    n = 5000
    ids = h.queue.enqueue_many(
        [("record" if i % 2 else "arecord", {"n": i}) for i in range(n)]  # sync and async
    )
    assert len(set(ids)) == n
    w = h.worker("--burst", "-c", "50")
    assert w.wait(240) == 0, w.stderr()[-3000:]
    w.assert_clean()
    assert_each_ran_once(h, range(n))
    assert h.counts() == {"pending": 0, "processing": 0, "done": n, "dead": 0}
    assert {pid for _, _, pid in h.records("ran")} == {w.pid}
    assert h.worker_pids() == [], "the burst worker left its heartbeat row behind"


@pytest.mark.parametrize("mode", ["four_workers", "processes_4"])
def test_four_workers_share_a_queue_with_a_live_producer(h: Harness, mode: str) -> None:
    initial, produced = 1000, 3000
    h.queue.enqueue_many([("record", {"n": i}) for i in range(initial)])
    if mode == "four_workers":
        workers = [h.worker("-c", "10", "--lease", "5") for _ in range(4)]
    else:
        workers = [h.worker("--processes", "4", "-c", "10", "--lease", "5")]
    producer = h.producer(initial, produced)
    assert producer.wait(120) == 0, producer.stderr()[-3000:]
    total = initial + produced
    h.wait_counts(done=total, timeout=120, procs=workers)
    assert h.counts() == {"pending": 0, "processing": 0, "done": total, "dead": 0}
    for w in workers:
        w.signal(signal.SIGTERM)
    for w in workers:
        assert w.wait(30) == 0, f"{w.name} exit status; stderr:\n{w.stderr()[-3000:]}"
    assert_each_ran_once(h, range(total))
    for p in [*workers, producer]:
        p.assert_clean()
    assert producer.stderr().strip() == ""
    pids = {pid for _, _, pid in h.records("ran")}
    assert len(pids) >= 2, f"only {len(pids)} process(es) ran tasks: not shared"
    if mode == "four_workers":
        assert pids <= {w.pid for w in workers}
    else:
        assert workers[0].pid not in pids  # the parent only supervises
    assert h.worker_pids() == [], "stopped workers left heartbeat rows behind"


def test_seed_bare_insert_runs(h: Harness) -> None:
    h.queue.migrate()
    # another program writes `created` in its own (site-local) time: here 14 h ahead of
    # UTC, as on a site at UTC+14.  It must not delay the task.
    local = (datetime.now(UTC) + timedelta(hours=14)).strftime("%Y-%m-%d %H:%M:%S")
    h.sql(
        "INSERT INTO queue_tasks (task_name, payload, status, created) "
        "VALUES ('hello', '{\"name\":\"x\"}', 'pending', ?)",
        (local,),
    )
    h.sql(
        "INSERT INTO queue_tasks (task_name, payload, status, created) "
        "VALUES ('hello', '{\"name\":\"y\"}', 'pending', '2026-01-01 10:00:00')"
    )
    task_id = h.sql("SELECT min(id) FROM queue_tasks")[0][0]
    w = h.worker("--burst")
    assert w.wait(60) == 0, w.stderr()[-3000:]
    w.assert_clean()
    assert sorted(h.keys("hello").items()) == [("x", 1), ("y", 1)]
    assert h.counts() == {"pending": 0, "processing": 0, "done": 2, "dead": 0}
    shown = h.run_json("show", str(task_id), "--json")
    assert shown["status"] == "done"
    assert shown["payload"] == {"name": "x"}
    assert shown["created"] == local  # kept as the other program wrote it


def test_log_file_is_json_lines(h: Harness) -> None:
    log = h.dir / "worker.jsonl"
    ok_id = h.queue.enqueue("record", {"n": 1})
    bad_id = h.queue.enqueue("fail", {"n": 2})  # max_attempts=2: failed, then dead
    w = h.worker("--burst", "--log-file", str(log))
    assert w.wait(60) == 0, w.stderr()[-3000:]
    w.assert_clean()
    assert h.counts() == {"pending": 0, "processing": 0, "done": 1, "dead": 1}
    lines = log.read_text().splitlines()
    assert lines, "empty log file"
    events = []
    for line in lines:
        data = json.loads(line)  # every line is one JSON object
        assert isinstance(data, dict)
        assert {"ts", "level", "message", "event"} <= set(data), data
        datetime.fromisoformat(data["ts"])
        events.append(data)
    names = [e["event"] for e in events]
    for want in ("worker_started", "failed", "dead", "worker_stopped"):
        assert want in names, f"no {want!r} event in {names}"
    assert names.index("worker_started") < names.index("failed") < names.index("dead")
    assert names[-1] == "worker_stopped"
    failed = next(e for e in events if e["event"] == "failed")
    dead = next(e for e in events if e["event"] == "dead")
    assert failed["task_id"] == bad_id and dead["task_id"] == bad_id
    assert "boom 2" in failed["error"] and "boom 2" in dead["error"]
    assert ok_id not in {e.get("task_id") for e in events if e["event"] in ("failed", "dead")}
    stopped = events[-1]
    assert (stopped["succeeded"], stopped["retried"], stopped["dead"]) == (1, 1, 1)


def test_handler_timeouts(h: Harness) -> None:
    a_id = h.queue.enqueue("async_timeout", {"n": 1})  # timeout=1, max_attempts=2
    s_id = h.queue.enqueue("sync_timeout", {"n": 2})  # timeout=1, max_attempts=1, sleeps 3
    ok_id = h.queue.enqueue("record", {"n": 3})
    w = h.worker("--burst")
    assert w.wait(60) == 0, w.stderr()[-3000:]
    w.assert_clean()
    assert h.counts() == {"pending": 0, "processing": 0, "done": 1, "dead": 2}
    assert h.queue.get(ok_id).status == "done"

    a = h.queue.get(a_id)
    assert a.status == "dead" and a.attempts == 2
    assert [e.type for e in a.errors] == ["TaskTimeout", "TaskTimeout"], a.errors
    assert "timed out" in a.last_error
    assert h.keys("start")["1"] == 2
    assert h.keys("end")["1"] == 0, "the async handler was not cancelled"

    s = h.queue.get(s_id)
    assert s.status == "dead" and s.attempts == 1
    assert [e.type for e in s.errors] == ["TaskTimeout"], s.errors
    assert "timed out" in s.errors[0].message
    assert h.keys("start")["2"] == 1
