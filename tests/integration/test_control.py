"""Control and visibility through the CLI, with real worker processes, on every backend.

``lmq tasks cancel`` (a running task finishes), ``lmq queues pause|resume`` (a paused
queue is not claimed within about 2 s and ``status`` says so; a burst worker still
exits), batches with an ``on_complete`` follow-up that runs exactly once after the last
member finishes or dies (``lmq batches show|list``, ``--json``), ``lmq status --watch``
on a terminal and on a pipe (Ctrl-C exits 0), and bad input for every new command.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

from .conftest import Harness, stderr_lines


def run(h: Harness, *args: str) -> subprocess.CompletedProcess[str]:
    """``lmq ARGS`` with stdin that is not a terminal (so nothing can be confirmed)."""
    return subprocess.run(
        [sys.executable, "-m", "lmq", *args],
        env=h.env,
        cwd=h.dir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, (res.args, res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stdout + res.stderr
    return res.stdout


def one_error_line(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2 with exactly one ``lmq: error:`` line, no traceback, nothing on stdout."""
    assert res.returncode == 2, (res.args, res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = stderr_lines(res.stderr)
    assert len(lines) == 1, f"expected one line on stderr, got:\n{res.stderr}"
    assert lines[0].startswith("lmq: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert res.stdout == ""
    return lines[0]


def usage_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2 with click's usage message: no traceback."""
    assert res.returncode == 2, (res.args, res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    for needle in needles:
        assert needle in res.stderr, f"{needle!r} not in {res.stderr!r}"


def ran(h: Harness) -> set[str]:
    return set(h.keys("ran"))


# --- cancel -------------------------------------------------------------------------------


def test_cancel_pending_tasks_while_the_running_one_finishes(hb: Harness) -> None:
    h = hb
    busy = h.queue.enqueue("sleep", {"n": 0, "seconds": 2.5}, priority=10)
    waiting = h.queue.enqueue_many([("record", {"n": n}) for n in (1, 2, 3)])
    keep = h.queue.enqueue("record", {"n": 4})
    w = h.worker("-c", "1")
    h.wait_record("start", 0, timeout=30)
    out = ok(run(h, "tasks", "cancel", str(busy), *map(str, waiting)))
    assert out.startswith("cancelled 3 task(s)"), out
    assert "left alone" in out and str(busy) in out.split("left alone")[1], out
    h.wait_record("end", 0, timeout=30)  # the running one finished
    h.wait_record("ran", 4, timeout=30)  # and the worker went on to the one not cancelled
    time.sleep(0.5)
    assert ran(h) == {"4"}
    assert h.run_json("show", str(busy), "--json")["status"] == "done"
    for tid in waiting:
        assert h.run_json("show", str(tid), "--json")["status"] == "cancelled"
    listed = h.run_json("tasks", "--status", "cancelled", "--json")
    assert sorted(str(t["id"]) for t in listed) == sorted(map(str, waiting))
    status = h.run_json("status", "--json")
    assert status["counts"] == {"pending": 0, "processing": 0, "done": 2, "dead": 0}
    assert status["cancelled"] == 3
    assert status["queues"]["default"]["cancelled"] == 3
    # the plain listing still works as before, and lists the cancelled ones too
    done = h.run_json("tasks", "--status", "done", "--json")
    assert sorted(str(t["id"]) for t in done) == sorted(map(str, [keep, busy]))
    assert "cancelled" in ok(run(h, "tasks", "--status", "cancelled"))
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.stderr()[-3000:]
    w.assert_clean()


def test_cancel_by_task_queue_and_batch_asks_unless_yes(h: Harness) -> None:
    h.queue.enqueue_many([("hello", {"name": f"h{i}"}) for i in range(3)], delay=3600)
    in_q = h.queue.enqueue_many([("record", {"n": n}) for n in range(2)], queue="bulk")
    batch = h.queue.enqueue_many([("record", {"n": n}) for n in range(10, 15)], batch="imp")
    other = h.queue.enqueue("record", {"n": 99})

    # no terminal to ask and no --yes: refused in one line, nothing changes
    one_error_line(run(h, "tasks", "cancel", "--task", "hello"), "--yes")
    assert h.counts()["pending"] == 11
    out = ok(run(h, "tasks", "cancel", "--task", "hello", "--yes"))
    assert out.startswith("cancelled 3 task(s)"), out
    one_error_line(run(h, "tasks", "cancel", "--queue", "bulk"), "--yes", "2 pending")
    assert ok(run(h, "tasks", "cancel", "--queue", "bulk", "-y")).startswith("cancelled 2")
    assert all(h.run_json("show", str(i), "--json")["status"] == "cancelled" for i in in_q)
    one_error_line(run(h, "tasks", "cancel", "--batch", "imp"), "--yes", "5 pending")
    assert ok(run(h, "tasks", "cancel", "--batch", "imp", "--yes")).startswith("cancelled 5")
    assert all(h.run_json("show", str(i), "--json")["status"] == "cancelled" for i in batch)
    shown = h.run_json("batches", "show", "imp", "--json")
    assert (shown["cancelled"], shown["pending"]) == (5, 0)
    # nothing left to match: says so, no question
    assert "nothing cancelled" in ok(run(h, "tasks", "cancel", "--queue", "bulk"))
    assert h.counts()["pending"] == 1
    assert h.run_json("show", str(other), "--json")["status"] == "pending"


# --- pause / resume -----------------------------------------------------------------------


def test_pause_stops_claiming_status_shows_it_and_resume_restarts(hb: Harness) -> None:
    h = hb
    h.counts()  # SQLite: the file exists before `lmq status` looks
    w = h.worker("-c", "4")
    h.wait_for(lambda: h.run_json("status", "--json")["workers"], "the worker's heartbeat", 30)
    out = ok(run(h, "queues", "pause", "imports"))
    assert "paused queue 'imports'" in out and "no tasks yet" in out, out
    assert "already paused" in ok(run(h, "queues", "pause", "imports"))
    time.sleep(2.0)  # the worker notices within about a second
    t0 = time.monotonic()
    h.queue.enqueue_many([("record", {"n": n}) for n in range(100, 110)], queue="imports")
    h.queue.enqueue("record", {"n": 1})
    h.wait_record("ran", 1, timeout=30)
    time.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))
    assert ran(h) == {"1"}, "a paused queue's task ran"

    status = h.run_json("status", "--json")
    assert status["paused"] == ["imports"]
    assert status["queues"]["imports"]["paused"] is True
    assert status["queues"]["imports"]["pending"] == 10
    assert status["queues"]["default"]["paused"] is False
    text = ok(run(h, "status"))
    assert "paused" in text and "imports" in text
    check = run(h, "status", "--check")
    assert check.returncode == 0, (check.stdout, check.stderr)
    assert check.stdout.startswith("OK") and "paused: imports (10 pending)" in check.stdout
    listed = {q["name"]: q for q in h.run_json("queues", "list", "--json")}
    assert listed["imports"]["paused"] is True and listed["imports"]["paused_at"]
    assert listed["default"]["paused"] is False
    assert "yes" in ok(run(h, "queues", "list"))

    out = ok(run(h, "queues", "resume", "imports"))
    assert "resumed queue 'imports'" in out, out
    h.wait_for(lambda: ran(h) >= {str(n) for n in range(100, 110)}, "the resumed queue to run", 10)
    assert h.run_json("status", "--json")["paused"] == []
    assert "was not paused" in ok(run(h, "queues", "resume", "imports"))
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.stderr()[-3000:]
    w.assert_clean()
    assert "queue 'imports' is paused" in w.stderr() and "resumed" in w.stderr()


def test_burst_worker_exits_when_only_paused_tasks_are_left(h: Harness) -> None:
    ok(run(h, "queues", "pause", "imports"))
    held = h.queue.enqueue_many([("record", {"n": n}) for n in range(3)], queue="imports")
    h.queue.enqueue("record", {"n": 7})
    w = h.worker("--burst", "-c", "4")
    assert w.wait(30) == 0, w.stderr()[-3000:]
    w.assert_clean()
    assert ran(h) == {"7"}
    assert all(h.run_json("show", str(i), "--json")["status"] == "pending" for i in held)
    # no live worker and ready tasks only in a paused queue: not unhealthy, but said
    check = run(h, "status", "--check")
    assert check.returncode == 0, (check.stdout, check.stderr)
    assert "paused" in check.stdout
    ok(run(h, "queues", "resume", "imports"))
    check = run(h, "status", "--check")
    assert check.returncode == 1 and "no live worker" in check.stdout, check.stdout
    w = h.worker("--burst", "-c", "4")
    assert w.wait(30) == 0, w.stderr()[-3000:]
    assert ran(h) == {"0", "1", "2", "7"}


# --- batches ------------------------------------------------------------------------------


def test_batch_follow_up_runs_once_after_the_last_member(hb: Harness) -> None:
    h = hb
    name = "import-2026-11-28"
    good = [("record", {"n": n}) for n in range(190)]
    bad = [("fail", {"n": n}) for n in range(1000, 1010)]  # retried once, then dead
    items = good[:95] + bad + good[95:]
    ids = h.queue.enqueue_many(items, batch=name, on_complete=("hello", {"name": "followup"}))
    assert len(ids) == 200

    before = h.run_json("batches", "show", name, "--json")
    assert (before["total"], before["pending"], before["done"]) == (200, 200, 0)
    assert before["completed"] is None and before["followup_id"] is None
    assert before["on_complete"] == "hello" and before["rate"] is None
    text = ok(run(h, "batches", "show", name))
    assert "0/200" in text and "not yet enqueued" in text, text
    assert [b["name"] for b in h.run_json("batches", "list", "--json")] == [name]
    assert h.run_json("show", str(ids[0]), "--json")["batch"] == name

    workers = [h.worker("-c", "8") for _ in range(2)]
    h.wait_record("hello", "followup", timeout=60)
    assert len(ran(h)) == 190, "the follow-up ran before every member finished"
    assert len(h.keys("start")) == 10 and set(h.keys("start").values()) == {2}
    time.sleep(2.5)  # a few more housekeeping rounds in both workers: still once
    assert len(h.records("hello")) == 1

    done = h.run_json("batches", "show", name, "--json")
    assert (done["pending"], done["running"], done["done"], done["dead"]) == (0, 0, 190, 10)
    assert done["completed"] is not None and done["eta_seconds"] == 0
    assert done["rate"] is not None and done["rate"] > 0
    follow = h.run_json("show", str(done["followup_id"]), "--json")
    assert (follow["task_name"], follow["status"], follow["payload"]) == (
        "hello",
        "done",
        {"name": "followup"},
    )
    text = ok(run(h, "batches", "show", name))
    for needle in ("200/200", "190", "complete", str(done["followup_id"]), "task(s)/s"):
        assert needle in text, f"{needle!r} not in:\n{text}"
    assert "complete" in ok(run(h, "batches", "list"))
    for w in workers:
        w.signal(signal.SIGTERM)
    for w in workers:
        assert w.wait(30) == 0, w.stderr()[-3000:]
        w.assert_clean()
    logged = "".join(w.stderr() for w in workers)
    assert logged.count(f"batch '{name}' complete") == 1, logged[-3000:]


def test_batches_show_reports_progress_while_running(h: Harness) -> None:
    items = [("stamped", {"n": n, "seconds": 0.1}) for n in range(80)]  # ~4 s on 2 slots
    h.queue.enqueue_many(items, batch="slow")
    w = h.worker("-c", "2")

    def midway() -> dict[str, object] | None:
        b = h.run_json("batches", "show", "slow", "--json")
        return b if 10 <= int(b["done"]) < 60 else None

    b = h.wait_for(midway, "the batch to be part done", 60, interval=0.2)
    assert b["completed"] is None and b["rate"] and b["rate"] > 0
    assert b["eta_seconds"] is not None and b["eta_seconds"] > 0
    assert b["pending"] + b["running"] + b["done"] == 80

    def estimated() -> str | None:
        text = ok(run(h, "batches", "show", "slow"))
        return text if "left  ~" in text else None

    text = h.wait_for(
        estimated,
        "`batches show` to estimate the time left",
        30,
        interval=0.2,
    )
    assert "/80 finished" in text and "task(s)/s" in text, text
    h.wait_for(
        lambda: h.run_json("batches", "show", "slow", "--json")["completed"],
        "the batch to complete",
        60,
    )
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0


# --- status --watch -------------------------------------------------------------------------


def _read_pty(fd: int, until: float) -> bytes:
    data = b""
    while time.monotonic() < until:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            data += chunk
    return data


def test_status_watch_refreshes_on_a_terminal_and_ctrl_c_exits_0(h: Harness) -> None:
    h.queue.enqueue("record", {"n": 1})
    master, slave = pty.openpty()
    env = dict(h.env, TERM="xterm-256color", COLUMNS="160", LINES="60")
    p = subprocess.Popen(
        [sys.executable, "-m", "lmq", "status", "--watch", "0.3"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=h.dir,
        start_new_session=True,
    )
    os.close(slave)
    try:
        seen = _read_pty(master, time.monotonic() + 3.0)
        h.queue.enqueue("record", {"n": 2}, queue="watched")
        seen += _read_pty(master, time.monotonic() + 2.0)
        text = seen.decode(errors="replace")
        assert text.count("Ctrl-C to quit") >= 3, f"not refreshed:\n{text[-2000:]}"
        assert "queues" in text and "watched" in text, text[-2000:]
        assert "\x1b[" in text  # drawn in place with terminal control sequences
        os.kill(p.pid, signal.SIGINT)
        rest = _read_pty(master, time.monotonic() + 5.0)
        assert p.wait(10) == 0
        assert b"Traceback" not in seen + rest
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        os.close(master)


def test_status_watch_on_a_pipe_prints_each_refresh(h: Harness) -> None:
    h.queue.enqueue("record", {"n": 1})
    p = h.start([sys.executable, "-m", "lmq", "status", "--watch", "0.3"], "watch")
    h.wait_for(lambda: p.stdout().count("Ctrl-C to quit") >= 3, "three refreshes", 20)
    p.signal(signal.SIGINT)
    assert p.wait(10) == 0, p.stderr()
    p.assert_clean()
    assert "queues" in p.stdout() and "\x1b[" not in p.stdout()


# --- bad input ----------------------------------------------------------------------------


def test_bad_input_for_the_new_commands(h: Harness) -> None:
    tid = h.queue.enqueue("record", {"n": 1})
    # unknown ids: one line naming the id, and nothing changes (the known one stays)
    one_error_line(run(h, "tasks", "cancel", "987654321"), "987654321")
    one_error_line(run(h, "tasks", "cancel", str(tid), "987654321"), "987654321")
    assert h.run_json("show", str(tid), "--json")["status"] == "pending"
    # unknown batch
    one_error_line(run(h, "batches", "show", "no-such-batch"), "no-such-batch")
    one_error_line(run(h, "batches", "show", "no-such-batch", "--json"), "no-such-batch")
    one_error_line(run(h, "tasks", "cancel", "--batch", "no-such-batch", "--yes"), "no-such")
    # an unknown queue: pausing ahead is fine; resuming says it was not paused
    out = ok(run(h, "queues", "resume", "no-such-queue"))
    assert "was not paused" in out and "check the name" in out, out
    # usage errors
    usage_error(run(h, "tasks", "cancel"), "say which tasks")
    usage_error(run(h, "tasks", "cancel", str(tid), "--task", "record"), "not both")
    usage_error(run(h, "queues", "pause"), "NAME")
    usage_error(run(h, "queues", "frobnicate", "x"))
    usage_error(run(h, "batches", "show"), "NAME")
    usage_error(run(h, "status", "--watch", "abc"))
    usage_error(run(h, "status", "--watch", "1", "--json"), "--watch")
    usage_error(run(h, "tasks", "--status", "bogus"))
    if h.backend != "redis":  # SQL ids are integers
        usage_error(run(h, "tasks", "cancel", "abc"))
    # the empty listings say so
    assert "no batches" in ok(run(h, "batches", "list"))
    assert json.loads(ok(run(h, "batches", "list", "--json"))) == []
    assert h.run_json("show", str(tid), "--json")["status"] == "pending"


@pytest.mark.parametrize(
    "argv", [["tasks", "cancel", "1"], ["queues", "list"], ["batches", "list"]]
)
def test_new_commands_on_a_missing_database_say_so(h: Harness, argv: list[str]) -> None:
    res = run(h, *argv, "--url", f"sqlite:///{h.dir}/missing.db")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(stderr_lines(res.stderr)) == 1, res.stderr
