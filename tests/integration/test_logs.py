"""``lmq worker --log-file``: one JSON object a line for every task and worker event.

Real worker processes (``python -m lmq worker``); the event test on every backend:

* every event type is in the file with its fields: the worker's start, the signal, its stop;
  a task claimed and succeeded (with its duration), failed (with the error and the next
  attempt's time), dead, rescued from a SIGKILLed worker, and an approved dead letter
  re-queued by the worker;
* the file is reopened when logrotate moves it (no line lost, the new lines in the new file);
* a password in a URL is masked on the console and in the file (a handler's error that
  quotes a URL, and the worker's own URL on a server backend);
* the lost backend and its return, on a private Redis server that is stopped and started.
"""

from __future__ import annotations

import json
import signal
import sys
import textwrap
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from lmq.models import DeadSelector, Review

from .conftest import (
    Harness,
    Proc,
    drop_and_check,
    not_here,
    shared_server_url,
    with_prefix,
)

SECRET = "hunter2"

APP = textwrap.dedent(
    '''
    """The app of tests/integration/test_logs.py (written next to the worker's cwd)."""
    import os
    import time

    import lmq

    queue = lmq.Queue()


    def flag(name: str) -> bool:
        """True the first time ``name`` is flagged (across processes)."""
        path = os.path.join(os.environ["LMQ_TEST_FLAGS"], name)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return False
        return True


    def flagged(name: str) -> bool:
        return os.path.exists(os.path.join(os.environ["LMQ_TEST_FLAGS"], name))


    @queue.task
    def ok(n: int) -> None:
        pass


    @queue.task(max_attempts=2, backoff=lmq.Backoff(base=0.5, jitter=False))
    def flaky(n: int) -> None:
        """Fails (quoting a URL with a password) until the flag 'fixed' is set."""
        if not flagged("fixed"):
            raise ValueError(f"cannot reach postgresql://app:hunter2@db.internal/app ({n})")


    @queue.task(timeout=120)
    def hang_once(n: int) -> None:
        """Hangs on its first run (the test SIGKILLs that worker); later runs return."""
        if flag(f"hang-{n}"):
            time.sleep(120)
    '''
)


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def of(evs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in evs if e["event"] == name]


def write_app(h: Harness) -> str:
    (h.dir / "logs_app.py").write_text(APP)
    return "logs_app"


def _start(h: Harness, args: tuple[str, ...], name: str) -> Proc:
    """``lmq worker --app logs_app ARGS`` (its cwd is ``h.dir``, where logs_app.py lives)."""
    return h.start([sys.executable, "-m", "lmq", "worker", "--app", write_app(h), *args], name)


def stop(h: Harness, w: Proc) -> None:
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.stderr()[-3000:]


def wait_event(h: Harness, path: Path, name: str, procs: list[Proc], n: int = 1) -> None:
    h.wait_for(
        lambda: len(of(events(path), name)) >= n, f"{n}x {name!r} in {path.name}", 60, procs=procs
    )


def test_every_event_with_its_fields(hb: Harness) -> None:
    h = hb
    log = h.dir / "events.jsonl"
    # worker A runs hang_once and is SIGKILLed: its task is rescued by worker B
    a = _start(h, ("--lease", "1", "-c", "2"), "killed")
    hung = h.queue.enqueue("hang_once", {"n": 1})
    h.wait_for((h.flags / "hang-1").exists, "hang_once to start", 30, procs=[a])
    a.kill_group()

    ok_id = h.queue.enqueue("ok", {"n": 1})
    flaky_id = h.queue.enqueue("flaky", {"n": 2})
    b = _start(h, ("--lease", "1", "-c", "4", "--log-file", str(log)), "worker")
    h.wait_counts(done=2, dead=1, procs=[b])

    # an approved dead letter is re-queued by the worker (and now succeeds)
    (h.flags / "fixed").touch()
    [letter] = h.queue.dead_letters()
    reviewed = h.queue.backend.review_dead(
        Review(DeadSelector(ids=[letter.id]), approve=True, by="test", note="fixed the URL")
    )
    assert reviewed == 1
    h.wait_counts(done=3, dead=0, procs=[b])
    wait_event(h, log, "requeued", [b])
    stop(h, b)

    evs = events(log)
    for e in evs:  # the common fields
        assert set(e) >= {"ts", "level", "logger", "event", "message"}, e
        datetime.fromisoformat(e["ts"])
    names = [e["event"] for e in evs]
    for name in (
        "worker_started",
        "claimed",
        "succeeded",
        "failed",
        "dead",
        "rescued",
        "requeued",
        "signal",
        "worker_stopping",
        "worker_stopped",
    ):
        assert name in names, f"no {name!r} event in {names}"
    assert names[0] == "worker_started" and names[-1] == "worker_stopped", names

    [started] = of(evs, "worker_started")
    assert started["pid"] == b.pid and started["concurrency"] == 4 and started["lease"] == 1
    assert started["worker"] and started["url"]

    def task_events(name: str, task_id: object) -> list[dict[str, Any]]:
        return [e for e in of(evs, name) if str(e["task_id"]) == str(task_id)]

    [claimed] = task_events("claimed", ok_id)
    assert claimed["task_name"] == "ok" and claimed["queue"] == "default"
    assert claimed["attempt"] == 1
    [done] = task_events("succeeded", ok_id)
    assert done["task_name"] == "ok" and 0 <= done["duration"] < 5

    # the SIGKILLed worker's task: rescued, claimed again (attempt 2), succeeded
    [rescued] = of(evs, "rescued")
    assert rescued["rescued"] >= 1 and rescued["level"] == "warning"
    assert [e["attempt"] for e in task_events("claimed", hung)] == [2]
    assert task_events("succeeded", hung)

    [failed] = task_events("failed", flaky_id)
    assert failed["level"] == "warning" and failed["attempt"] == 1
    assert failed["error"].startswith("ValueError: cannot reach postgresql://app:***@")
    assert failed["retry_in"] == 0.5
    next_run = datetime.fromisoformat(failed["next_run"])
    assert timedelta(0) < next_run - datetime.fromisoformat(failed["ts"]) < timedelta(seconds=2)
    assert failed["duration"] >= 0
    [dead] = task_events("dead", flaky_id)
    assert dead["level"] == "error" and dead["attempt"] == 2
    assert "ValueError" in dead["error"] and "***" in dead["error"]
    assert "attempts used up" in dead["reason"]

    [requeued] = of(evs, "requeued")
    assert requeued["count"] == 1 and len(requeued["task_ids"]) == 1
    [again] = requeued["task_ids"]
    assert task_events("succeeded", again)

    [sig] = of(evs, "signal")
    assert sig["signal"] == "SIGTERM"
    [stopped] = of(evs, "worker_stopped")
    assert stopped["succeeded"] == 3 and stopped["dead"] == 1

    # the password is masked everywhere: the file, and the console lines
    assert SECRET not in log.read_text()
    assert SECRET not in b.stderr()
    assert "postgresql://app:***@db.internal/app" in b.stderr()
    # and in what the worker stored: the task's error history, the dead letter
    for args in (["show", str(flaky_id), "--json"], ["dead", "show", str(letter.id)]):
        res = h.run(*args)
        assert res.returncode == 0, res.stderr
        assert SECRET not in res.stdout and ":***@db.internal" in res.stdout, res.stdout
    b.assert_clean()


def test_console_levels(h: Harness) -> None:
    """Default: worker events only; -v: every task event; the file gets them regardless."""
    log = h.dir / "events.jsonl"
    h.queue.enqueue_many([("ok", {"n": i}) for i in range(3)])
    quiet = _start(h, ("--burst", "--log-file", str(log)), "default")
    assert quiet.wait(60) == 0, quiet.stderr()
    assert "claimed ok" not in quiet.stderr() and "succeeded ok" not in quiet.stderr()
    assert "started" in quiet.stderr() and "stopped" in quiet.stderr()
    assert len(of(events(log), "succeeded")) == 3  # the file has them without -v

    h.queue.enqueue_many([("ok", {"n": i}) for i in range(3)])
    loud = _start(h, ("--burst", "-v"), "verbose")
    assert loud.wait(60) == 0, loud.stderr()
    assert loud.stderr().count("succeeded ok") == 3 and loud.stderr().count("claimed ok") == 3

    h.queue.enqueue("ok", {"n": 9})
    louder = _start(h, ("--burst", "-vv"), "very-verbose")
    assert louder.wait(60) == 0, louder.stderr()
    assert "lmq.worker: succeeded ok" in louder.stderr()  # -vv names each line's logger

    h.queue.enqueue("ok", {"n": 10})
    silent = _start(h, ("--burst", "-q"), "quiet")
    assert silent.wait(60) == 0
    assert silent.stderr().strip() == ""
    for p in (quiet, loud, louder, silent):
        p.assert_clean()


def test_logrotate_move_reopens_the_file(h: Harness) -> None:
    log = h.dir / "worker.jsonl"
    w = _start(h, ("--log-file", str(log)), "worker")
    first = h.queue.enqueue_many([("ok", {"n": i}) for i in range(50)])
    h.wait_counts(done=50, procs=[w])
    wait_event(h, log, "succeeded", [w], n=50)

    moved = h.dir / "worker.jsonl.1"
    log.rename(moved)  # what logrotate does (then it would signal nobody: no postrotate)
    second = h.queue.enqueue_many([("ok", {"n": i}) for i in range(50, 100)])
    h.wait_counts(done=100, procs=[w])
    wait_event(h, log, "succeeded", [w], n=50)
    stop(h, w)

    old, new = events(moved), events(log)
    assert {str(e["task_id"]) for e in of(old, "succeeded")} == set(map(str, first))
    assert {str(e["task_id"]) for e in of(new, "succeeded")} == set(map(str, second))
    assert of(new, "worker_stopped") and of(old, "worker_started")
    assert not of(old, "worker_stopped")
    w.assert_clean()


def test_server_url_password_masked(tmp_path: Path) -> None:
    """The worker's own URL, with a password (the shared Redis ignores it), on the console,
    in the file and in `lmq status`; an unreachable URL's error line too."""
    base = shared_server_url("redis")
    scheme, rest = base.split("://", 1)
    prefix = f"m{uuid.uuid4().hex[:8]}_"
    url = with_prefix(f"{scheme}://:{SECRET}@{rest}", prefix)
    h = Harness(tmp_path, "redis", url)
    h.on_close(lambda: drop_and_check(base, prefix))
    try:
        h.migrate()
        log = h.dir / "events.jsonl"
        w = _start(h, ("-v", "--log-file", str(log)), "worker")
        h.queue.enqueue("ok", {"n": 1})
        h.wait_counts(done=1, procs=[w])
        status = h.run("status", "--json")
        stop(h, w)
        for text in (w.stderr(), log.read_text(), status.stdout + status.stderr):
            assert SECRET not in text
        assert ":***@" in w.stderr() and ":***@" in log.read_text()
    finally:
        h.close()

    (tmp_path / "bad").mkdir()
    bad = Harness(tmp_path / "bad", "postgresql", f"postgresql://app:{SECRET}@127.0.0.1:1/db")
    try:
        res = bad.run("worker", "--app", "lmq_itest_app", "--burst", timeout=60)
        assert res.returncode == 2, res.stderr
        assert SECRET not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    finally:
        bad.close()


def test_lost_backend_and_reconnect_logged(tmp_path: Path) -> None:
    """A private Redis server stops and starts again: backend_lost, then backend_back."""
    from lmq_private_servers import private_server, unavailable

    why = unavailable("redis")
    if why:
        not_here(why)
    with private_server("redis", tmp_path) as server:
        work = tmp_path / "work"
        work.mkdir()
        h = Harness(work, "redis", server.url)
        try:
            h.migrate()
            log = h.dir / "events.jsonl"
            w = _start(h, ("--log-file", str(log)), "worker")
            wait_event(h, log, "worker_started", [w])
            server.stop()
            wait_event(h, log, "backend_lost", [w])
            time.sleep(0.5)
            server.start()
            wait_event(h, log, "backend_back", [w])
            h.queue.enqueue("ok", {"n": 1})
            h.wait_counts(done=1, procs=[w])
            stop(h, w)
            evs = events(log)
            lost = of(evs, "backend_lost")[0]
            back = of(evs, "backend_back")[0]
            assert lost["level"] == "warning" and lost["step"] and lost["error"]
            assert back["level"] == "info" and back["down"] > 0
            assert evs.index(lost) < evs.index(back)
        finally:
            h.close()
