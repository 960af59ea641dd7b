"""The CLI on each server backend (the shared servers ``$LMQ_TEST_…_URL`` name), for real.

``python -m lmq …`` processes only: ``lmq migrate`` (idempotent), the one-line exit-2
errors before migrating, for an unreachable or silent server, a wrong database and bad
credentials; ``lmq enqueue`` + ``lmq worker --burst``; ``tasks``, ``show`` and ``dead
…`` on the server's ids; ``lmq status --json`` with a live
worker.  Each test works under a fresh prefix that is dropped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from lmq_private_servers import free_port

from .conftest import (
    SERVER_ENVS,
    Harness,
    drop_and_check,
    shared_server_url,
    stderr_lines,
    with_prefix,
)

SERVERS = list(SERVER_ENVS)

# one-shot commands give up within 5 s; the rest is the interpreter starting and importing
GIVE_UP = 5.0
STARTUP_ALLOWANCE = 3.0


@pytest.fixture(params=SERVERS)
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """A harness on a server backend under a fresh prefix, NOT migrated."""
    backend: str = request.param
    base = shared_server_url(backend)
    prefix = f"c{uuid.uuid4().hex[:8]}_"
    harness = Harness(tmp_path, backend, with_prefix(base, prefix))
    harness.on_close(lambda: drop_and_check(base, prefix))
    try:
        yield harness
    finally:
        harness.close()


def one_error_line(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The command exited 2 with exactly one ``lmq: error:`` line and no traceback."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = stderr_lines(res.stderr)
    assert len(lines) == 1, f"expected one line on stderr, got:\n{res.stderr}"
    assert lines[0].startswith("lmq: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert res.stdout == ""
    return lines[0]


def replace_url(url: str, *, netloc: str | None = None, path: str | None = None) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=netloc or parts.netloc, path=path or parts.path))


def at_port(url: str, port: int) -> str:
    """``url`` with its host and port replaced by 127.0.0.1:``port`` (user info kept)."""
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    return replace_url(url, netloc=f"{userinfo + '@' if userinfo else ''}127.0.0.1:{port}")


def timed(h: Harness, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    try:
        res = h.run(*args, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"lmq {' '.join(args)} was still waiting after 30 s (must give up in 5 s)")
    return res, time.monotonic() - t0


# --- migrate ------------------------------------------------------------------------------


def test_commands_before_migrate_name_lmq_migrate_then_migrate_is_idempotent(
    fresh: Harness,
) -> None:
    h = fresh
    for argv in (["status"], ["enqueue", "x"]):
        one_error_line(h.run(*argv, timeout=30), "lmq migrate")
    # several hosts may migrate at once: all succeed; and once more on a migrated database
    procs = [h.start([sys.executable, "-m", "lmq", "migrate"], "migrate") for _ in range(3)]
    for p in procs:
        assert p.wait(60) == 0, p.stderr()
        assert "Traceback" not in p.stderr() + p.stdout()
    res = h.run("migrate", timeout=60)
    assert res.returncode == 0, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    status = h.run_json("status", "--json")
    assert status["counts"] == {"pending": 0, "processing": 0, "done": 0, "dead": 0}
    assert status["workers"] == []


# --- unreachable, silent, wrong database, bad credentials ------------------------------------


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


def test_unreachable_and_silent_servers_exit_2_within_5s(fresh: Harness) -> None:
    # a closed port: refused at once
    for argv in (["status"], ["enqueue", "x"]):
        res, took = timed(fresh, *argv, "--url", at_port(fresh.url, free_port()))
        one_error_line(res)
        assert took < GIVE_UP + STARTUP_ALLOWANCE, f"gave up after {took:.1f}s"
    baseline = took  # what starting up and failing costs here
    # a server that accepts the connection and never answers: the connect timeout
    with silent_server() as port:
        res, took = timed(fresh, "enqueue", "x", "--url", at_port(fresh.url, port))
    one_error_line(res)
    waited = took - baseline
    assert waited < GIVE_UP + 0.75, f"waited {waited:.1f}s for a silent server, not within 5 s"


def _wrong_db(backend: str, url: str) -> tuple[str, str]:
    if backend == "redis":
        return replace_url(url, path="/9999"), ""
    return replace_url(url, path="/lmq_no_such_db"), "lmq_no_such_db"


def _bad_credentials(url: str) -> str:
    """A user the server does not know, with a password (which must not be echoed)."""
    host = urlsplit(url).netloc.rpartition("@")[2]
    return replace_url(url, netloc=f"lmq_no_such_user:sekrit-pw@{host}")


def test_wrong_database_and_bad_credentials_exit_2_with_one_line(fresh: Harness) -> None:
    url, name = _wrong_db(fresh.backend, fresh.url)
    for argv in (["status"], ["migrate"]):
        res, took = timed(fresh, *argv, "--url", url)
        one_error_line(res, *([name] if name else []))
        assert took < GIVE_UP + STARTUP_ALLOWANCE
    for argv in (["status"], ["migrate"]):
        res, took = timed(fresh, *argv, "--url", _bad_credentials(fresh.url))
        line = one_error_line(res)
        assert "sekrit-pw" not in line, f"the password is in the message: {line}"
        assert took < GIVE_UP + STARTUP_ALLOWANCE


# --- a worker through the CLI ------------------------------------------------------------


def test_burst_worker_drains_what_lmq_enqueue_stored(fresh: Harness) -> None:
    h = fresh
    h.migrate()
    keys = list(range(3))
    for k in keys:
        res = h.run("enqueue", "record", json.dumps({"n": k}))
        assert res.returncode == 0, res.stderr
    res = h.run("enqueue", "no_such_handler", "{}")
    assert res.returncode == 0, res.stderr
    assert h.counts()["pending"] == len(keys) + 1
    w = h.worker("--burst", "-c", "8")
    assert w.wait(60) == 0, w.stderr()[-3000:]
    w.assert_clean()
    ran = h.keys("ran")
    assert sorted(ran) == sorted(str(k) for k in keys)
    assert set(ran.values()) == {1}
    counts = h.run_json("status", "--json")["counts"]
    assert counts == {"pending": 0, "processing": 0, "done": len(keys), "dead": 1}
    [dead] = h.run_json("dead", "list", "--json")
    assert dead["task_name"] == "no_such_handler"
    assert "no handler registered" in dead["error"]


def test_status_json_shows_counts_and_the_live_worker(fresh: Harness) -> None:
    h = fresh
    h.migrate()
    h.queue.enqueue_many([("record", {"n": k}) for k in range(3)])
    w = h.worker("-c", "4")
    h.wait_for(lambda: len(h.records("ran")) == 3, "the worker to run 3 tasks", 30, procs=[w])

    def shows_worker() -> dict[str, object] | None:
        status = h.run_json("status", "--json")
        mine = [x for x in status["workers"] if x["pid"] == w.pid]
        done = status["counts"]["done"] == 3
        return status if mine and done else None

    status = h.wait_for(shows_worker, "status --json to show the worker and 3 done", 30)
    assert status["counts"] == {"pending": 0, "processing": 0, "done": 3, "dead": 0}
    [row] = [x for x in status["workers"] if x["pid"] == w.pid]
    assert {"id", "host", "pid", "heartbeat_age"} <= set(row)
    assert row["host"] == socket.gethostname()
    assert 0 <= row["heartbeat_age"] < 30
    check = h.run("status", "--check")
    assert check.returncode == 0, (check.stdout, check.stderr)

    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.stderr()[-3000:]
    w.assert_clean()
    assert [x for x in h.run_json("status", "--json")["workers"] if x["pid"] == w.pid] == []
    # ready work and nobody alive: --check says so and exits 1
    h.queue.enqueue("record", {"n": 99})
    check = h.run("status", "--check")
    assert check.returncode == 1, (check.stdout, check.stderr)


def test_inspection_and_dead_letter_commands(fresh: Harness) -> None:
    """`lmq tasks`, `show`, `dead list|show|requeue|discard` on the server's ids."""
    h = fresh
    h.migrate()
    ok_id = h.queue.enqueue("record", {"n": 1})
    lost = [h.queue.enqueue("no_such_handler", {"n": n}) for n in (2, 3)]
    w = h.worker("--burst", "-c", "4")
    assert w.wait(60) == 0, w.stderr()[-3000:]

    listed = h.run_json("tasks", "--json", "--status", "done")
    assert [t["id"] for t in listed] == [ok_id]
    shown = h.run_json("show", str(ok_id), "--json")
    assert (shown["status"], shown["payload"], shown["attempts"]) == ("done", {"n": 1}, 1)
    dead_task = h.run_json("show", str(lost[0]), "--json")
    assert dead_task["status"] == "dead" and "no handler registered" in dead_task["last_error"]

    letters = h.run_json("dead", "list", "--json")
    assert sorted(str(d["task_id"]) for d in letters) == sorted(map(str, lost))
    by_task = {str(d["task_id"]): d for d in letters}
    first, second = by_task[str(lost[0])], by_task[str(lost[1])]
    res = h.run("dead", "show", str(first["id"]))
    assert res.returncode == 0 and "no_such_handler" in res.stdout, res.stderr

    res = h.run("dead", "requeue", str(first["id"]))
    assert res.returncode == 0, res.stderr
    assert h.run_json("show", str(lost[0]), "--json")["status"] == "pending"
    res = h.run("dead", "discard", str(second["id"]))
    assert res.returncode == 0, res.stderr
    assert h.counts() == {"pending": 1, "processing": 0, "done": 1, "dead": 0}

    one_error_line(h.run("dead", "requeue", str(second["id"])), "no dead letter")
    one_error_line(h.run("show", "987654321"), "987654321")
