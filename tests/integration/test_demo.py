"""``lmq demo`` end to end: a subprocess in a temp dir, on its SQLite default.

It must finish within a minute, print its summary and next commands, and leave a
database where all 5,000 tasks are accounted for (done + dead) and where the commands it
suggests work (``lmq dead list --groups``, ``lmq batches show``, ``lmq status``).  The
API's outage goes through the ``fake-api`` circuit breaker: the demo shows it opening,
probing and closing, says how many calls it saved, and no task dies of the outage.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TRACEBACK = "Traceback"


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMQ_")}
    env["COLUMNS"] = "160"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _lmq(tmp_path: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lmq", *args],
        check=False,
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_tells_the_story_and_leaves_its_database(tmp_path: Path) -> None:
    t0 = time.monotonic()
    demo = _lmq(tmp_path, "demo", timeout=90)
    took = time.monotonic() - t0
    out = demo.stdout
    assert demo.returncode == 0, out + demo.stderr
    assert took < 60, f"the demo took {took:.1f} s"
    assert TRACEBACK not in out + demo.stderr

    # the request-sized step, timed; the summary; the next commands with real values
    assert re.search(r"enqueued 5,000 tasks \(batch demo-import-[\d-]+\) in one enqueue_many "
                     r"in \d+ ms", out), out  # fmt: skip
    summary = re.search(r"imported in ([\d.]+) s: ([\d,]+) done, (\d+) dead", out)
    assert summary, out
    done, dead = int(summary[2].replace(",", "")), int(summary[3])
    assert done + dead == 5000
    assert dead >= 5  # the five bad records at least
    assert re.search(r"[\d,]+ retried after the API's 503s", out), out

    # the outage went through the breaker: it opened, probed, closed, and saved calls
    assert "breaker fake-api opened" in out, out
    assert "breaker fake-api half-open" in out, out
    assert "breaker fake-api closed" in out, out
    assert out.index("breaker fake-api opened") < out.rindex("breaker fake-api closed")
    saved = re.search(r"saved about ([\d,]+) calls to the failing API", out)
    assert saved and int(saved[1].replace(",", "")) > 0, out
    assert "no task died of the outage" in out, out
    assert re.search(r"the breaker 'fake-api' opened (once|twice|\d+ times) and was open", out)
    batch = re.search(r"batches show (demo-import-[\d-]+)", out)
    group = re.search(r"dead requeue --group ([0-9a-f]+)", out)
    assert batch and group, out
    for cmd in ("status", "dead list --groups", "dead show"):
        assert f" {cmd}" in out

    # the database it leaves: every task done or dead, the dead ones as dead letters
    db = tmp_path / "lmq-demo.db"
    assert db.exists()
    with sqlite3.connect(db) as c:
        rows = dict(c.execute("SELECT status, count(*) FROM queue_tasks GROUP BY status"))
        letters = c.execute(
            "SELECT count(*) FROM queue_dead_letters WHERE status = 'dead'"
        ).fetchone()[0]
    c.close()
    assert rows.get("done") == done and rows.get("dead", 0) == dead, rows
    assert sum(rows.values()) == 5000, rows
    assert letters == dead
    with sqlite3.connect(db) as c:
        breakers = c.execute("SELECT name, state, trips FROM queue_breakers").fetchall()
        outage_dead = c.execute(
            "SELECT count(*) FROM queue_dead_letters WHERE error LIKE '%503%'"
        ).fetchone()[0]
    c.close()
    assert len(breakers) == 1 and breakers[0][:2] == ("fake-api", "closed"), breakers
    assert breakers[0][2] >= 1, breakers
    assert outage_dead == 0
    assert (tmp_path / "lmq-demo.db.log").exists()  # the worker's JSON log

    url = "sqlite:///lmq-demo.db"
    groups = _lmq(tmp_path, "dead", "list", "--groups", "--json", "--url", url)
    assert groups.returncode == 0, groups.stdout + groups.stderr
    listed = json.loads(groups.stdout)
    assert listed and listed[0]["fingerprint"] == group[1]
    assert sum(g["count"] for g in listed) == dead
    bad = next(g for g in listed if g["task_name"] == "import_product" and "422" in g["example"])
    assert bad["count"] >= 5

    shown = _lmq(tmp_path, "batches", "show", batch[1], "--url", url)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "5,000" in shown.stdout or "5000" in shown.stdout

    status = _lmq(tmp_path, "status", "--json", "--url", url)
    assert status.returncode == 0, status.stderr
    status_json = json.loads(status.stdout)
    assert [b["state"] for b in status_json["breakers"]] == ["closed"]
    counts = status_json["counts"]
    assert counts["done"] == done and counts["dead"] == dead
    assert counts["pending"] == 0 and counts["processing"] == 0


def test_demo_second_run_starts_afresh(tmp_path: Path) -> None:
    """A second run says it removed the previous database and counts only its own."""
    first = _lmq(tmp_path, "demo", "--tasks", "300", "-c", "50", timeout=60)
    assert first.returncode == 0, first.stdout + first.stderr
    second = _lmq(tmp_path, "demo", "--tasks", "200", "-c", "50", timeout=60)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "was removed: a fresh start" in second.stdout
    with sqlite3.connect(tmp_path / "lmq-demo.db") as c:
        total = c.execute("SELECT count(*) FROM queue_tasks").fetchone()[0]
    c.close()
    assert total == 200
