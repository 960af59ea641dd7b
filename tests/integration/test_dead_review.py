"""Dead-letter review and re-queue through the CLI, with real worker processes, on every
backend: one outage's failures grouped into one line (``lmq dead list --groups``),
``requeue --group`` (asked for unless ``--yes``; answering "n" changes nothing), review
with ``--approve --rate`` that running workers act on by themselves, ``--reject`` that
keeps the record, a payload edit, and bad input for every command.

The handlers live in an app module each test writes into its directory (the worker runs
there, and ``--app`` imports from the current directory): ``import_product`` fails with
"HTTP 503 ... product N ..." while the flag file ``outage`` exists (messages that differ
only by numbers: one fingerprint), and discards a record whose sku is ``BAD``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

from .conftest import Harness, Proc, stderr_lines

APP_SOURCE = """
import os
import time

import lmq
from lmq_itest_app import note

queue = lmq.Queue()
FLAGS = os.environ["LMQ_TEST_FLAGS"]


@queue.task(max_attempts=2, backoff=lmq.Backoff(base=0.0))
def import_product(n: int, sku: str = "ok") -> None:
    if sku == "BAD":
        raise lmq.Discard(f"product {n} has a bad sku {sku!r}")
    if os.path.exists(os.path.join(FLAGS, "outage")):
        raise ConnectionError(f"HTTP 503 from api.example.com for product {n} (req 0x{n * 7919:x})")
    note("imported", n, f"{time.time():.6f}", sku)


@queue.task(max_attempts=1)
def notify(user: int) -> None:
    raise KeyError(f"no user {user} in the directory")
"""

APP = "dead_review_app"


def setup_app(h: Harness, outage: bool = True) -> None:
    (h.dir / f"{APP}.py").write_text(APP_SOURCE)
    set_outage(h, outage)


def set_outage(h: Harness, on: bool) -> None:
    flag = h.flags / "outage"
    if on:
        flag.touch()
    else:
        flag.unlink(missing_ok=True)


def worker(h: Harness, *args: str) -> Proc:
    return h.start([sys.executable, "-m", "lmq", "worker", "--app", APP, *args], "worker")


def burst(h: Harness) -> None:
    w = worker(h, "--burst", "-c", "8")
    assert w.wait(120) == 0, w.stderr()[-3000:]
    w.assert_clean()


def run(h: Harness, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``lmq ARGS``; stdin is ``stdin`` (a pipe, not a terminal) or empty."""
    return subprocess.run(
        [sys.executable, "-m", "lmq", *args],
        env=h.env,
        cwd=h.dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        input=stdin if stdin is not None else "",
    )


def ok(res: subprocess.CompletedProcess[str], shows_tracebacks: bool = False) -> str:
    """Exit 0; no traceback (but ``lmq dead show`` prints the handlers' on stdout)."""
    assert res.returncode == 0, (res.args, res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in (res.stderr if shows_tracebacks else res.stdout + res.stderr)
    return res.stdout


def ok_json(h: Harness, *args: str) -> Any:
    res = run(h, *args)
    ok(res)
    return json.loads(res.stdout)  # stdout holds only the JSON


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
    """Exit 2 with click's usage message: no traceback, nothing on stdout."""
    assert res.returncode == 2, (res.args, res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    assert "Usage:" in res.stderr, res.stderr
    for needle in needles:
        assert needle in res.stderr, f"{needle!r} not in {res.stderr!r}"
    assert res.stdout == ""


def imported(h: Harness) -> dict[int, tuple[float, str]]:
    """``n -> (time, sku)`` of every successful import_product run (the last one wins)."""
    found = {}
    if h.record_path.exists():
        for line in h.record_path.read_text().splitlines():
            ev, key, _pid, at, sku = line.split(" ")
            if ev == "imported":
                found[int(key)] = (float(at), sku)
    return found


def an_outage(h: Harness, products: int = 50, users: int = 3) -> tuple[str, str]:
    """``products`` imports and ``users`` notifications die in an outage; their groups."""
    setup_app(h, outage=True)
    h.queue.enqueue_many([("import_product", {"n": n}) for n in range(products)])
    h.queue.enqueue_many([("notify", {"user": u}) for u in range(users)])
    burst(h)
    assert h.counts() == {"pending": 0, "processing": 0, "done": 0, "dead": products + users}
    groups = ok_json(h, "dead", "list", "--groups", "--json")
    assert [(g["task_name"], g["count"]) for g in groups] == [
        ("import_product", products),
        ("notify", users),
    ]
    return groups[0]["fingerprint"], groups[1]["fingerprint"]


def letters(h: Harness, *args: str) -> list[dict[str, Any]]:
    return ok_json(h, "dead", "list", "--json", "--limit", "1000", *args)  # type: ignore[no-any-return]


# --- one outage, one line, one command ---------------------------------------------------


def test_an_outage_is_one_group_requeued_with_one_command(hb: Harness) -> None:
    h = hb
    imp, note = an_outage(h, products=50, users=3)
    groups = ok_json(h, "dead", "list", "--groups", "--json")
    g = groups[0]
    assert {"fingerprint", "count", "task_name", "example", "first_seen", "last_seen"} <= set(g)
    assert "HTTP 503 from api.example.com for product" in g["example"]
    first = datetime.fromisoformat(g["first_seen"])
    last = datetime.fromisoformat(g["last_seen"])
    assert first <= last and first.utcoffset() is not None
    # the table: one line per group
    table = ok(run(h, "dead", "list", "--groups"))
    assert table.count(imp) == 2 and table.count(note) == 1, table  # + the hint line
    row = next(line for line in table.splitlines() if imp in line and "│" in line)
    assert row.split("│")[1].strip() == "50", row
    assert "import_product" in table and "HTTP" in table, table

    # the letters themselves: newest first, the CONTRACT's keys, filters
    all_letters = letters(h)
    assert len(all_letters) == 53
    for d in all_letters:
        assert {"id", "task_name", "payload", "error", "attempts", "fingerprint"} <= set(d)
    died = [d["died_at"] for d in all_letters]
    assert died == sorted(died, reverse=True)
    in_group = letters(h, "--group", imp)
    assert len(in_group) == 50 and {d["fingerprint"] for d in in_group} == {imp}
    assert {d["payload"]["n"] for d in in_group} == set(range(50))
    assert all(d["attempts"] == 2 for d in in_group)
    assert len(letters(h, "--task", "notify")) == 3
    assert len(letters(h, "--error", "no user")) == 3
    assert len(letters(h, "--queue", "default")) == 53
    assert letters(h, "--queue", "elsewhere") == []
    assert len(ok_json(h, "dead", "list", "--json", "--limit", "5")) == 5
    assert "HTTP 503" in ok(run(h, "dead", "list", "--task", "import_product"))

    # a selector that matches many asks first: "n" (or no answer) changes nothing
    res = run(h, "dead", "requeue", "--group", imp, stdin="n\n")
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "50 dead letter(s)" in res.stderr and "Traceback" not in res.stderr
    assert "nothing" in res.stderr and res.stdout == ""
    res = run(h, "dead", "requeue", "--group", imp)  # end of input: no answer
    assert res.returncode == 1 and "nothing" in res.stderr, res.stderr
    res = run(h, "dead", "discard", "--all", stdin="no\n")
    assert res.returncode == 1 and "53 dead letter(s)" in res.stderr, res.stderr
    assert h.counts()["dead"] == 53

    # the API is back: one command re-queues the whole outage
    set_outage(h, False)
    out = json.loads(ok(run(h, "dead", "requeue", "--group", imp, "--yes", "--json")))
    assert out["requeued"] == 50 and len(out["ids"]) == 50
    assert sorted(map(str, out["ids"])) == sorted(str(d["task_id"]) for d in in_group)
    assert h.counts() == {"pending": 50, "processing": 0, "done": 0, "dead": 3}
    burst(h)
    assert sorted(imported(h)) == list(range(50))
    assert h.counts() == {"pending": 0, "processing": 0, "done": 50, "dead": 3}
    # the task links back to its dead letter; the letter says where it went
    d = in_group[0]
    task = h.run_json("show", str(d["task_id"]), "--json")
    assert task["status"] == "done" and task["attempts"] == 1
    assert str(task["dead_letter_id"]) == str(d["id"])
    assert any("HTTP 503" in e["message"] for e in task["errors"]), "error history kept"
    shown = h.run_json("dead", "show", str(d["id"]), "--json")
    assert shown["status"] == "requeued" and shown["requeued_at"]
    assert shown["requeued_task"]["status"] == "done"
    text = ok(run(h, "dead", "show", str(d["id"])), shows_tracebacks=True)
    assert "requeued" in text and f"as task {d['task_id']}" in text
    assert [g["fingerprint"] for g in ok_json(h, "dead", "list", "--groups", "--json")] == [note]

    # the rest: discarded by group, asked for with -y
    assert "discarded 3" in ok(run(h, "dead", "discard", "--group", note, "-y"))
    assert h.counts()["dead"] == 0
    assert letters(h) == []
    assert "no dead letters" in ok(run(h, "dead", "list", "--groups"))
    assert ok_json(h, "dead", "list", "--groups", "--json") == []


def test_requeue_by_task_with_delay_and_spread(h: Harness) -> None:
    an_outage(h, products=10, users=1)
    set_outage(h, False)
    t0 = time.time()
    out = ok(run(h, "dead", "requeue", "--task", "import_product", "--all", "--yes",
                 "--delay", "600", "--spread", "100"))  # fmt: skip
    assert out.startswith("re-queued 10 task(s)") and "from now" in out, out
    due = sorted(
        datetime.fromisoformat(
            h.run_json("show", str(d["task_id"]), "--json")["next_run"]
        ).timestamp()
        for d in letters(h, "--include-all", "--task", "import_product")
    )
    assert t0 + 599 <= due[0] <= time.time() + 601
    assert abs(due[-1] - due[0] - 90) < 1, due
    status = h.run_json("status", "--json")
    assert status["counts"]["pending"] == 10 and status["scheduled"] == 10


# --- review: approve at a rate, reject to keep -------------------------------------------


def test_review_approve_at_a_rate_is_requeued_by_the_worker_and_reject_keeps(
    hb: Harness,
) -> None:
    h = hb
    imp, note = an_outage(h, products=20, users=3)
    set_outage(h, False)
    w = worker(h, "-c", "4")
    h.wait_for(lambda: h.run_json("status", "--json")["workers"], "the worker's heartbeat", 30)

    # one notify letter approved for the far future first (a later review replaces it)
    one = letters(h, "--task", "notify")[0]
    out = ok(run(h, "dead", "review", str(one["id"]), "--approve",
                 "--after", "2999-01-01T00:00:00Z", "--note", "later"))  # fmt: skip
    assert out.startswith("approved 1 dead letter(s)"), out
    shown = h.run_json("dead", "show", str(one["id"]), "--json")
    assert shown["review"] == "approved" and shown["requeue_at"].startswith("2999-01-01T00:00:00")

    out = ok(run(h, "dead", "review", "--group", imp, "--approve", "--rate", "5",
                 "--note", "API back after INC-42", "--by", "alice", "--yes"))  # fmt: skip
    assert out.startswith("approved 20 dead letter(s) (by alice)"), out
    assert "5 per second" in out, out
    res = run(h, "dead", "review", "--group", note, "--reject", "--note", "users were deleted",
              stdin="y\n")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "3 dead letter(s)" in res.stderr and res.stdout.startswith("rejected 3"), res

    # the running worker re-queues the approved ones by itself, about 5 a second
    h.wait_for(lambda: len(imported(h)) == 20, "the worker to re-queue and run 20", 60, procs=[w])
    times = sorted(at for at, _ in imported(h).values())
    assert times[-1] - times[0] > 2.0, f"20 at 5/s took {times[-1] - times[0]:.2f}s"
    h.wait_counts(done=20, dead=3, pending=0, processing=0, timeout=30)
    for d in letters(h, "--include-all", "--group", imp):
        assert d["status"] == "requeued" and d["review"] == "approved"
        assert (d["reviewed_by"], d["review_note"]) == ("alice", "API back after INC-42")
        assert d["reviewed_at"] and d["requeue_at"]
        task = h.run_json("show", str(d["task_id"]), "--json")
        assert task["status"] == "done" and str(task["dead_letter_id"]) == str(d["id"])
    text = ok(run(h, "dead", "show", str(d["id"])), shows_tracebacks=True)
    assert "alice" in text and "API back after INC-42" in text and "approved" in text

    # the rejected ones stay (still dead letters, listed, counted), never re-queued
    time.sleep(2.5)
    rejected = letters(h, "--group", note)
    assert len(rejected) == 3
    for d in rejected:
        assert (d["status"], d["review"], d["review_note"]) == (
            "dead",
            "rejected",
            "users were deleted",
        )
        assert d["requeue_at"] is None and d["reviewed_by"]
    assert h.counts()["dead"] == 3
    text = ok(run(h, "dead", "show", str(one["id"])), shows_tracebacks=True)
    assert "rejected" in text and "users were deleted" in text
    w.signal(15)
    assert w.wait(30) == 0, w.stderr()[-3000:]
    w.assert_clean()
    assert "re-queued" in w.stderr() and "approved dead letter" in w.stderr()


# --- a payload edit -----------------------------------------------------------------------


def test_payload_edit_requeues_one_corrected_task(h: Harness) -> None:
    setup_app(h, outage=False)
    bad = h.queue.enqueue("import_product", {"n": 7, "sku": "BAD"})
    h.queue.enqueue("import_product", {"n": 8, "sku": "BAD"})
    burst(h)
    found = {d["payload"]["n"]: d for d in letters(h)}
    d = found[7]
    assert str(d["task_id"]) == str(bad) and d["attempts"] == 1
    did = str(d["id"])
    # not JSON, not an object, not for several, not matching the handler: nothing changes
    one_error_line(run(h, "dead", "requeue", did, "--payload", "{n: 7"), "JSON")
    one_error_line(run(h, "dead", "requeue", did, "--payload", "[7]"), "JSON object")
    one_error_line(run(h, "dead", "requeue", did, "--payload", '"x"'), "JSON object")
    usage_error(run(h, "dead", "requeue", did, str(found[8]["id"]), "--payload", "{}"), "--payload")
    usage_error(run(h, "dead", "requeue", "--all", "--yes", "--payload", "{}"), "--payload")
    one_error_line(run(h, "dead", "requeue", did, "--app", APP, "--payload", '{"m": 7}'), "payload")
    assert h.counts()["dead"] == 2

    out = ok(run(h, "dead", "requeue", did, "--payload", '{"n": 7, "sku": "SKU-7"}'))
    assert out.startswith("re-queued 1 task(s)"), out
    assert h.run_json("show", str(bad), "--json")["payload"] == {"n": 7, "sku": "SKU-7"}
    burst(h)
    assert imported(h)[7][1] == "SKU-7"
    assert h.run_json("show", str(bad), "--json")["status"] == "done"
    assert h.counts()["dead"] == 1


# --- bad input ----------------------------------------------------------------------------


def test_bad_input_is_one_line_or_usage(h: Harness) -> None:
    an_outage(h, products=2, users=1)
    d = letters(h)[0]
    did = str(d["id"])
    # unknown ids: exit 2, one line, nothing changes
    one_error_line(run(h, "dead", "show", "987654"), "987654")
    one_error_line(run(h, "dead", "show", "not-an-id-at-all"))
    one_error_line(run(h, "dead", "requeue", did, "987654"), "987654")
    one_error_line(run(h, "dead", "discard", "987654", did), "987654")
    one_error_line(run(h, "dead", "review", "987654", "--approve"), "987654")
    one_error_line(run(h, "dead", "review", "987654", "--reject", "--note", "x"), "987654")
    # unknown groups: exit 2, one line
    for args in (
        ("list", "--group", "0123456789ab"),
        ("list", "--groups", "--group", "0123456789ab"),
        ("requeue", "--group", "0123456789ab", "--yes"),
        ("discard", "--group", "0123456789ab", "--yes"),
        ("review", "--group", "0123456789ab", "--approve", "--yes"),
    ):
        one_error_line(run(h, "dead", *args), "0123456789ab")
    # review: exactly one of --approve / --reject; --after/--rate only with --approve
    usage_error(run(h, "dead", "review", did), "--approve or --reject")
    usage_error(run(h, "dead", "review", did, "--approve", "--reject"), "--approve or --reject")
    usage_error(run(h, "dead", "review", did, "--reject", "--rate", "5"), "--approve only")
    usage_error(run(h, "dead", "review", did, "--approve", "--rate", "0"), "--rate")
    usage_error(run(h, "dead", "review", did, "--approve", "--after", "tomorrow"), "--after")
    usage_error(run(h, "dead", "review", did, "--approve", "--after", "-5"), "--after")
    # selectors: some, and not both kinds
    for verb in ("requeue", "discard"):
        usage_error(run(h, "dead", verb), "--group")
        usage_error(run(h, "dead", verb, did, "--all"), "not both")
    usage_error(run(h, "dead", "review", "--approve"), "--group")
    usage_error(run(h, "dead", "requeue", did, "--delay", "-1"), "--delay")
    usage_error(run(h, "dead", "list", "--groups", "--include-all"), "--groups")
    # nothing changed
    assert h.counts()["dead"] == 3
    assert all(x["review"] is None and x["status"] == "dead" for x in letters(h))
    # a selector that matches nothing (but names no unknown group) says so, exit 0
    assert "nothing" in ok(run(h, "dead", "requeue", "--task", "no_such_task"))
    assert ok_json(h, "dead", "requeue", "--task", "no_such_task", "--json") == {
        "requeued": 0,
        "ids": [],
    }
