"""``lmq breakers``, ``lmq limits`` and ``lmq schedules`` through the real CLI, with real
workers, on every backend (SQLite always; PostgreSQL, MySQL and Redis when their
``LMQ_TEST_…_URL`` is set): open/close/reset a breaker and see the worker hold back and
release its tasks, a breaker opened by failures with its last error, ``lmq status`` (the
table, ``--json`` and ``--check``: an open breaker is a warning, not unhealthy), schedules
synced by a worker and listed in UTC and their own timezone, pause/resume/run-now, and
bad input (one line, exit 2) for every new command.

The app is written into the test's directory (the worker's cwd, which ``--app`` imports
from), so this file needs nothing beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from typing import Any

import pytest

from .conftest import Harness, Proc, stderr_lines

APP = "lmq_gates_cli_app"

APP_SOURCE = '''
"""The app of tests/integration/test_gates_cli.py."""

import os
from datetime import timedelta

import lmq

queue = lmq.Queue()
queue.breaker("crm", failures=2, cooldown=300, max_cooldown=600)


def _record(event, key):
    with open(os.environ["LMQ_TEST_RECORD"], "a") as f:
        f.write(f"{event} {key} {os.getpid()}\\n")


@queue.task(breaker="crm", max_attempts=20)
def call_crm(n: int) -> None:
    _record("crm", n)
    if os.path.exists(os.path.join(os.environ["LMQ_TEST_FLAGS"], "crm-down")):
        raise RuntimeError(f"crm answered 503 for {n}")


queue.rate_limit("crm-rate", 5, per=1.0, burst=2)


@queue.task(rate_limit="crm-rate")
def limited(n: int) -> None:
    _record("limited", n)


@queue.task
def tick(kind: str) -> None:
    _record("tick", kind)


if os.environ.get("LMQ_TEST_SCHEDULES"):  # only the schedule tests' workers fire them
    queue.schedule("hourly", every=timedelta(hours=1), task="tick", payload={"kind": "hourly"})
    queue.schedule(
        "nightly", cron="30 2 * * *", timezone="Europe/Berlin", task="tick",
        payload={"kind": "nightly"}, missed="skip",
    )
    queue.schedule("fast", every=1, task="tick", payload={"kind": "fast"})
'''


@pytest.fixture
def app(hb: Harness) -> Harness:
    (hb.dir / f"{APP}.py").write_text(textwrap.dedent(APP_SOURCE))
    if hb.backend == "sqlite":
        hb.queue.migrate()  # the server harnesses ran `lmq migrate` already
    return hb


def run(h: Harness, *args: str) -> subprocess.CompletedProcess[str]:
    """``lmq ARGS`` with stdin that is not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "lmq", *args],
        env={**h.env, "COLUMNS": "200"},
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


def js(h: Harness, *args: str) -> Any:
    return json.loads(ok(run(h, *args, "--json")))


def one_error_line(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert res.returncode == 2, (res.args, res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = stderr_lines(res.stderr)
    assert len(lines) == 1, f"expected one line on stderr, got:\n{res.stderr}"
    assert lines[0].startswith("lmq: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert res.stdout == ""
    return lines[0]


def worker(h: Harness, *args: str, schedules: bool = False) -> Proc:
    env = {**h.env, "LMQ_TEST_SCHEDULES": "1"} if schedules else None
    return h.start([sys.executable, "-m", "lmq", "worker", "--app", APP, *args], "worker", env)


def breaker(h: Harness, name: str) -> dict[str, Any] | None:
    return next((b for b in js(h, "breakers", "list") if b["name"] == name), None)


def crm_ran(h: Harness) -> set[str]:
    return {key for _, key, _ in h.records("crm")}


# --- breakers -----------------------------------------------------------------------------


def test_breaker_opened_by_hand_holds_tasks_back_until_closed(app: Harness) -> None:
    h = app
    assert js(h, "breakers", "list") == []
    out = ok(run(h, "breakers", "open", "crm"))
    assert "breaker 'crm' opened: now open" in out and "held open" in out, out
    b = breaker(h, "crm")
    assert b and b["state"] == "open" and b["forced"] is True, b

    w = worker(h, "-c", "4")
    h.wait_for(h.worker_pids, "the worker's heartbeat", timeout=30, procs=[w])
    ok(run(h, "enqueue", "call_crm", '{"n": 1}', "--app", APP))  # key from the app
    h.queue.enqueue("call_crm", {"n": 2})  # no app here: the row has no breaker (say, PHP)
    time.sleep(2.0)
    assert crm_ran(h) == set(), "a task behind an open breaker ran"
    assert h.counts()["pending"] == 2 and h.counts()["dead"] == 0

    # lmq status: the table names it; --json lists it; --check warns but stays healthy
    table = ok(run(h, "status"))
    assert "circuit breakers (not closed)" in table and "crm" in table, table
    status = js(h, "status")
    assert [b["name"] for b in status["breakers"] if b["state"] != "closed"] == ["crm"]
    assert status["healthy"] is True and any("crm" in w for w in status["warnings"])
    check = run(h, "status", "--check")
    assert check.returncode == 0, (check.stdout, check.stderr)
    lines = check.stdout.splitlines()
    assert lines[0].startswith("OK: "), lines
    assert lines[1].startswith("WARNING: breaker 'crm' is held open by a person"), lines

    out = ok(run(h, "breakers", "close", "crm"))
    assert "breaker 'crm' closed: now closed" in out, out
    h.wait_for(lambda: crm_ran(h) == {"1", "2"}, "both tasks run after close", timeout=30)
    h.wait_counts(done=2, pending=0, timeout=30)
    assert breaker(h, "crm")["state"] == "closed"  # type: ignore[index]
    check = run(h, "status", "--check")
    assert check.returncode == 0 and "WARNING" not in check.stdout, check.stdout

    out = ok(run(h, "breakers", "reset", "crm"))
    assert "breaker 'crm' reset: now closed" in out, out
    assert breaker(h, "crm") is None
    w.signal(15)
    assert w.wait(30) == 0
    w.assert_clean()


def test_breaker_opens_on_failures_and_shows_its_last_error(app: Harness) -> None:
    h = app
    (h.flags / "crm-down").touch()
    w = worker(h, "-c", "1")
    for n in (1, 2):
        ok(run(h, "enqueue", "call_crm", json.dumps({"n": n}), "--app", APP))
    b = h.wait_for(
        lambda: (b := breaker(h, "crm")) and b["state"] == "open" and b,
        "the breaker to open after two failures",
        timeout=30,
        procs=[w],
    )
    assert b["trips"] == 1 and b["forced"] is False, b
    assert "crm answered 503" in (b["last_error"] or ""), b
    assert 250 < b["retry_in"] <= 300, b  # cooldown=300
    table = ok(run(h, "breakers", "list"))
    for text in ("crm", "open", "5m", "crm answered 503"):
        assert text in table, (text, table)
    # tasks enqueued now wait: not claimed, not dead
    ok(run(h, "enqueue", "call_crm", '{"n": 3}', "--app", APP))
    time.sleep(1.5)
    assert "3" not in crm_ran(h)
    assert h.counts()["dead"] == 0
    check = run(h, "status", "--check")
    assert check.returncode == 0, check.stdout
    assert "WARNING: breaker 'crm' is open" in check.stdout, check.stdout

    # a person holds it open for a while, then (the service is back) closes it; the
    # backlog runs, the two that failed included
    out = ok(run(h, "breakers", "open", "crm", "--for", "120"))
    assert "now open" in out, out
    b = breaker(h, "crm")
    assert b and 100 < b["retry_in"] <= 120, b
    (h.flags / "crm-down").unlink()
    ok(run(h, "breakers", "close", "crm"))
    h.wait_counts(done=3, pending=0, dead=0, timeout=30, procs=[w])
    assert crm_ran(h) == {"1", "2", "3"}
    w.signal(15)
    assert w.wait(30) == 0
    w.assert_clean()


def test_breaker_commands_bad_input(app: Harness) -> None:
    h = app
    one_error_line(run(h, "breakers", "close", "nope"), "no breaker 'nope'", "breakers list")
    one_error_line(run(h, "breakers", "reset", "nope"), "no breaker 'nope'")
    res = run(h, "breakers", "open", "x", "--for", "-1")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "--for" in res.stderr
    res = run(h, "breakers", "open")
    assert res.returncode == 2 and "Missing argument" in res.stderr
    out = ok(run(h, "breakers", "open", "typo"))
    assert "no breaker 'typo' was stored before" in out, out
    assert js(h, "limits", "list") == []
    assert "no rate limits" in ok(run(h, "limits", "list"))


def test_limits_list_shows_a_rate_limit_in_use(app: Harness) -> None:
    h = app
    w = worker(h, "-c", "4")
    for n in range(4):
        ok(run(h, "enqueue", "limited", json.dumps({"n": n}), "--app", APP))
    h.wait_for(lambda: len(h.records("limited")) == 4, "the rate-limited tasks", timeout=30)
    limits = js(h, "limits", "list")
    assert [(r["name"], r["calls"], r["per"], r["burst"]) for r in limits] == [
        ("crm-rate", 5, 1.0, 2)
    ], limits
    table = ok(run(h, "limits", "list"))
    assert "crm-rate" in table and "200ms" in table, table  # spacing: 1 s / 5
    assert "rate limits" in ok(run(h, "breakers", "list"))  # listed under the breakers too
    w.signal(15)
    assert w.wait(30) == 0
    w.assert_clean()


# --- schedules ----------------------------------------------------------------------------


def _schedules(h: Harness) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in js(h, "schedules", "list")}


def test_schedules_list_pause_resume_run_now(app: Harness) -> None:
    h = app
    w = worker(h, "-c", "4", schedules=True)
    found = h.wait_for(
        lambda: (s := _schedules(h)) and set(s) >= {"hourly", "nightly", "fast"} and s,
        "the worker to store its app's schedules",
        timeout=30,
        procs=[w],
    )
    nightly, hourly = found["nightly"], found["hourly"]
    assert nightly["cron"] == "30 2 * * *" and nightly["timezone"] == "Europe/Berlin"
    assert nightly["missed"] == "skip" and nightly["paused"] is False
    local = datetime.fromisoformat(nightly["next_tick_local"])
    assert (local.hour, local.minute) == (2, 30) or (local.hour, local.minute) == (3, 0)
    utc = datetime.fromisoformat(nightly["next_tick"])
    assert utc == local and utc.utcoffset() is not None
    assert hourly["every"] == 3600 and hourly["cron"] is None
    assert datetime.fromisoformat(hourly["next_tick"]).minute == 0
    assert hourly["last_tick"] is None  # a new schedule has nothing to catch up

    # the every-second one fires: its last tick and task id are listed
    fast = h.wait_for(
        lambda: (s := _schedules(h)["fast"])["last_task_id"] is not None and s,
        "the fast schedule to fire",
        timeout=30,
        procs=[w],
    )
    h.wait_for(lambda: "fast" in h.keys("tick"), "a fast tick to run", timeout=30)
    table = ok(run(h, "schedules", "list"))
    for text in ("nightly", "30 2 * * *", "Europe/Berlin", "every 1h", "every 1s", "skip"):
        assert text in table, (text, table)
    assert "CET" in table or "CEST" in table, table
    status = js(h, "status")
    assert {s["name"] for s in status["schedules"]} >= {"hourly", "nightly", "fast"}
    assert "schedules" in ok(run(h, "status"))

    # pause: no more ticks (within about a second); resume: ticks again
    out = ok(run(h, "schedules", "pause", "fast"))
    assert "paused schedule 'fast'" in out, out
    assert _schedules(h)["fast"]["paused"] is True
    assert "already paused" in ok(run(h, "schedules", "pause", "fast"))
    time.sleep(1.5)
    before = h.keys("tick")["fast"]
    time.sleep(2.5)
    assert h.keys("tick")["fast"] == before, "a paused schedule ticked"
    assert "paused" in ok(run(h, "schedules", "list"))

    # run-now works while paused, from the stored row, and prints the id
    res = ok(run(h, "schedules", "run-now", "nightly"))
    task_id = res.strip()
    h.wait_for(lambda: "nightly" in h.keys("tick"), "the run-now task to run", timeout=30)
    shown = json.loads(ok(run(h, "show", task_id, "--json")))
    assert shown["task_name"] == "tick" and shown["payload"] == {"kind": "nightly"}
    assert _schedules(h)["nightly"]["next_tick"] == nightly["next_tick"]  # ticks unchanged
    ok(run(h, "schedules", "run-now", "fast"))  # paused: still fine

    out = ok(run(h, "schedules", "resume", "fast"))
    assert "resumed schedule 'fast'" in out, out
    assert "was not paused" in ok(run(h, "schedules", "resume", "fast"))
    h.wait_for(lambda: h.keys("tick")["fast"] >= before + 3, "ticks after resume", timeout=30)
    assert fast["task_name"] == "tick" and fast["payload"] == {"kind": "fast"}
    w.signal(15)
    assert w.wait(30) == 0
    w.assert_clean()

    # delete forgets a stored schedule (a worker declaring it stores it again on start)
    assert "deleted schedule 'hourly'" in ok(run(h, "schedules", "delete", "hourly"))
    assert set(_schedules(h)) == {"nightly", "fast"}


def test_schedule_commands_bad_input(app: Harness) -> None:
    h = app
    assert js(h, "schedules", "list") == []
    assert "no schedules stored" in ok(run(h, "schedules", "list"))
    for verb in ("pause", "resume", "run-now", "delete"):
        one_error_line(run(h, "schedules", verb, "nope"), "no schedule 'nope'")
    res = run(h, "schedules", "run-now")
    assert res.returncode == 2 and "Missing argument" in res.stderr


def test_help_explains_each_command(h: Harness) -> None:
    for argv, needle in [
        (["breakers"], "half_open"),
        (["breakers", "list"], "probe"),
        (["breakers", "open"], "--for"),
        (["breakers", "close"], "claimed again"),
        (["breakers", "reset"], "deleted"),
        (["limits", "list"], "slot"),
        (["schedules"], "exactly"),
        (["schedules", "list"], "timezone"),
        (["schedules", "pause"], "resume"),
        (["schedules", "resume"], "tick"),
        (["schedules", "run-now"], "stored row"),
        (["schedules", "delete"], "stores it again"),
        (["status"], "WARNING"),
    ]:
        out = " ".join(ok(run(h, *argv, "--help")).split())
        assert needle in out, (argv, out)


def test_invalid_schedule_in_the_app_stops_the_worker_with_one_line(h: Harness) -> None:
    (h.dir / "lmq_bad_schedule_app.py").write_text(
        "import lmq\nqueue = lmq.Queue()\n\n@queue.task\ndef t() -> None: ...\n\n"
        "queue.schedule('t', cron='*/61 * * * *')\n"
    )
    res = run(h, "worker", "--app", "lmq_bad_schedule_app", "--burst")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert "invalid cron expression '*/61 * * * *'" in res.stderr, res.stderr
