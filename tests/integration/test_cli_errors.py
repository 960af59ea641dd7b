"""Bad input: one clear line, exit 2, no traceback.  Bad rows: dead letters, worker goes on."""

from __future__ import annotations

import pytest

from .conftest import Harness, stderr_lines

# (id, argv, text the one stderr line must contain, database prepared first?)
BAD = [
    ("url-nonsense", ["status", "--url", "nonsense"], "invalid queue URL", False),
    ("url-postgres", ["status", "--url", "postgresql://localhost/app"], "postgres", False),
    (
        "url-missing-dir",
        ["status", "--url", "sqlite:////nonexistent/dir/x.db"],
        "/nonexistent/dir",
        False,
    ),
    ("missing-file", ["status", "--url", "sqlite:///missing.db"], "missing.db", False),
    ("missing-file-env", ["status"], "queue.db", False),  # $LMQ_URL names a missing file
    ("bad-json", ["enqueue", "x", "{bad json"], "invalid JSON", True),
    ("json-array", ["enqueue", "x", "[1,2]"], "JSON object", True),
    ("worker-no-app", ["worker"], "--app", True),
    ("worker-no-module", ["worker", "--app", "no_such_module"], "no_such_module", True),
    ("show-not-found", ["show", "999"], "999", True),
    ("dead-show-not-found", ["dead", "show", "999"], "999", True),
]


@pytest.mark.parametrize(
    ("argv", "needle", "prepare"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_bad_input_gives_one_line_and_exit_2(
    h: Harness, argv: list[str], needle: str, prepare: bool
) -> None:
    if prepare:
        h.queue.migrate()
    res = h.run(*argv, timeout=30)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    lines = stderr_lines(res.stderr)
    assert len(lines) == 1, f"expected one line on stderr, got:\n{res.stderr}"
    assert lines[0].startswith("lmq: error: "), lines[0]
    assert needle in lines[0], lines[0]
    assert res.stdout == ""
    assert not (h.dir / "missing.db").exists(), "a read-only command created a database"
    if not prepare:
        assert not h.db.exists(), "a read-only command created a database"
    else:
        assert h.counts() == {"pending": 0, "processing": 0, "done": 0, "dead": 0}


def test_bad_flag_is_a_usage_error(h: Harness) -> None:
    res = h.run("worker", "--app", "lmq_itest_app", "--concurrency", "zero")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr + res.stdout
    assert "Usage:" in res.stderr
    assert "--concurrency" in res.stderr and "'zero'" in res.stderr


def _drop_tasks_table(h: Harness) -> None:
    h.queue.enqueue("record", {"n": 1})
    h.queue.close()
    h.sql("DROP TABLE queue_tasks")


@pytest.mark.parametrize("argv", [["tasks"], ["status"], ["show", "1"]], ids=" ".join)
def test_missing_table_names_lmq_migrate(h: Harness, argv: list[str]) -> None:
    _drop_tasks_table(h)
    res = h.run(*argv)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    lines = stderr_lines(res.stderr)
    assert len(lines) == 1, res.stderr
    assert "lmq migrate" in lines[0]
    assert "queue_tasks" in lines[0]


def test_lmq_migrate_recreates_a_dropped_table(h: Harness) -> None:
    """The command the error message names repairs the database."""
    _drop_tasks_table(h)
    fixed = h.run("migrate")
    assert fixed.returncode == 0, fixed.stderr
    again = h.run("tasks", "--json")
    assert again.returncode == 0, f"`lmq migrate` said {fixed.stdout!r}, then: {again.stderr}"
    assert again.stdout.strip() == "[]"


def _insert(h: Harness, task_name: str, payload: str) -> int:
    rows = h.sql(
        "INSERT INTO queue_tasks (task_name, payload, status, created) "
        "VALUES (?, ?, 'pending', '2026-01-01 10:00:00') RETURNING id",
        (task_name, payload),
    )
    return int(rows[0][0])


def test_bad_rows_go_to_the_dead_letters_and_the_worker_goes_on(h: Harness) -> None:
    h.queue.enqueue_many([("record", {"n": k}) for k in range(100, 105)])
    expect: dict[int, tuple[str, ...]] = {
        _insert(h, "record", "not json"): ("not valid JSON",),
        # unknown name and bad JSON at once: either reason is a fair account
        _insert(h, "x", "not json"): ("not valid JSON", "no handler registered for 'x'"),
        _insert(h, "record", "[1,2]"): ("JSON object",),
        _insert(h, "record", "{}"): ("payload does not match",),  # `n` missing
        _insert(h, "record", '{"n": 1, "bogus": 2}'): ("payload does not match",),
    }
    res = h.run("enqueue", "x", "{}")  # lmq enqueue checks no names
    assert res.returncode == 0, res.stderr
    expect[int(res.stdout)] = ("no handler registered for 'x'",)
    h.queue.enqueue_many([("record", {"n": k}) for k in range(105, 110)])

    w = h.worker("--burst")
    assert w.wait(60) == 0, w.stderr()[-3000:]
    w.assert_clean()
    ran = h.keys("ran")
    assert ran == {str(k): 1 for k in range(100, 110)}, ran
    assert h.counts() == {"pending": 0, "processing": 0, "done": 10, "dead": len(expect)}
    dead = {d["task_id"]: d for d in h.run_json("dead", "list", "--json")}
    assert set(dead) == set(expect)
    for task_id, texts in expect.items():
        d = dead[task_id]
        said = f"{d['reason']} | {d['error']}"
        assert any(t in said for t in texts), f"task {task_id}: {said!r} lacks {texts}"
        assert d["attempts"] <= 1
    shown = h.run_json("show", str(min(expect)), "--json")  # readable despite its payload
    assert shown["status"] == "dead"
