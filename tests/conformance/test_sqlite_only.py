"""SQLite specifics: the seed's bare INSERT, prefixes, the schema version, file errors."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import lmq
from lmq.backends.sqlite.backend import SCHEMA_VERSION

from .helpers import claim, ids, run_burst


def _url(tmp_path: Path, prefix: str | None = None) -> str:
    url = f"sqlite:///{tmp_path}/q.db"
    return url if prefix is None else f"{url}?prefix={prefix}"


def _names(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        names = {r[0] for r in rows}
    conn.close()
    return names


@pytest.mark.parametrize("prefix", ["", "wp_"])
@pytest.mark.parametrize("created", ["2024-06-01 14:03:00", "2999-12-31 23:59:59", "garbage"])
def test_the_seeds_bare_insert_makes_a_runnable_task(
    tmp_path: Path, prefix: str, created: str
) -> None:
    with lmq.Queue(_url(tmp_path, prefix)) as queue:
        queue.migrate()
        seen: list[tuple[int, str]] = []

        @queue.task
        def import_row(row: int, sku: str) -> None:
            seen.append((row, sku))

        conn = sqlite3.connect(tmp_path / "q.db")
        with conn:  # what the PHP plugin (or any other program) writes
            cursor = conn.execute(
                f"INSERT INTO {prefix}queue_tasks (task_name, payload, status, created) "
                "VALUES (?, ?, 'pending', ?)",
                ("import_row", '{"row": 7, "sku": "A-1"}', created),
            )
        conn.close()
        task_id = cursor.lastrowid
        assert task_id is not None
        task = queue.get(task_id)
        assert task is not None
        assert (task.status, task.attempts, task.queue, task.priority) == (
            "pending",
            0,
            "default",
            0,
        )
        assert task.created == created  # kept as written, never used for scheduling
        assert task.next_run is not None and task.next_run.timestamp() <= time.time() + 1
        assert queue.backend.has_ready(None)
        assert run_burst(queue) == 0
        assert seen == [(7, "A-1")]
        done = queue.get(task_id)
        assert done is not None and done.status == "done"


def test_prefix_names_every_object(tmp_path: Path) -> None:
    with lmq.Queue(_url(tmp_path, "wp_")) as queue:
        queue.enqueue("t")
    names = _names(tmp_path / "q.db")
    assert {"wp_queue_tasks", "wp_queue_dead_letters", "wp_queue_workers", "wp_queue_meta"} <= names
    assert all(n.startswith("wp_") for n in names), names


def test_two_prefixes_share_a_file_independently(tmp_path: Path) -> None:
    with lmq.Queue(_url(tmp_path, "a_")) as a, lmq.Queue(_url(tmp_path, "b_")) as b:
        a.enqueue("t")
        assert b.counts()["pending"] == 0
        assert a.counts()["pending"] == 1


def test_a_sixteen_character_prefix_works(tmp_path: Path) -> None:
    prefix = "p" * 15 + "_"
    with lmq.Queue(_url(tmp_path, prefix)) as queue:
        task_id = queue.enqueue("t")
        assert queue.get(task_id) is not None
    assert f"{prefix}queue_tasks" in _names(tmp_path / "q.db")


@pytest.mark.parametrize("prefix", ["p" * 17, "wp-", "x;drop"])
def test_a_bad_prefix_is_a_config_error(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(lmq.ConfigError, match="prefix"):
        lmq.Queue(_url(tmp_path, prefix)).counts()
    assert not (tmp_path / "q.db").exists()


def test_schema_version_is_stored_in_the_meta_table(tmp_path: Path) -> None:
    with lmq.Queue(_url(tmp_path, "wp_")) as queue:
        queue.enqueue("t")
        assert queue.backend.schema_version() == SCHEMA_VERSION
    with sqlite3.connect(tmp_path / "q.db") as conn:
        row = conn.execute("SELECT value FROM wp_queue_meta WHERE key = 'schema_version'")
        assert row.fetchone() == (str(SCHEMA_VERSION),)
    conn.close()


def _set_version(db: Path, version: int) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE queue_meta SET value = ? WHERE key = 'schema_version'", (str(version),)
        )
    conn.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    with lmq.Queue(_url(tmp_path)) as queue:
        queue.enqueue("t")
    _set_version(tmp_path / "q.db", SCHEMA_VERSION + 1)
    with lmq.Queue(_url(tmp_path)) as queue:
        with pytest.raises(lmq.BackendError, match="newer than this lmq") as info:
            queue.counts()
        assert "upgrade lmq" in str(info.value)
        with pytest.raises(lmq.BackendError, match="newer"):
            queue.enqueue("t")


def test_migrate_refuses_a_newer_schema_too(tmp_path: Path) -> None:
    with lmq.Queue(_url(tmp_path)) as queue:
        queue.migrate()
    _set_version(tmp_path / "q.db", SCHEMA_VERSION + 1)
    with lmq.Queue(_url(tmp_path)) as queue:
        with pytest.raises(lmq.BackendError, match="newer"):
            queue.migrate()
        with pytest.raises(lmq.BackendError, match="newer"):
            queue.enqueue("t")  # nor may a migrate() call unlock the queue


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    with lmq.Queue(_url(tmp_path)) as queue:
        assert queue.migrate() == list(range(1, SCHEMA_VERSION + 1))
        assert queue.migrate() == []
        task_id = queue.enqueue("t")
    with lmq.Queue(_url(tmp_path)) as queue:
        assert queue.migrate() == []
        assert queue.get(task_id) is not None
    names = _names(tmp_path / "q.db")
    assert {"queue_tasks", "queue_dead_letters", "queue_workers", "queue_meta"} <= names


def test_first_use_creates_the_tables_then_migrate_has_nothing_to_do(tmp_path: Path) -> None:
    with lmq.Queue(_url(tmp_path)) as queue:
        queue.enqueue("t")
        assert queue.migrate() == []


def test_missing_directory_is_backend_unavailable(tmp_path: Path) -> None:
    queue = lmq.Queue(f"sqlite:///{tmp_path}/missing/dir/q.db")
    with pytest.raises(lmq.BackendUnavailable, match="does not exist"):
        queue.enqueue("t")
    with pytest.raises(lmq.BackendUnavailable):
        queue.counts()
    assert not (tmp_path / "missing").exists()


def test_a_file_that_is_not_a_database_is_backend_unavailable(tmp_path: Path) -> None:
    (tmp_path / "q.db").write_bytes(b"this is not a database, just text\n" * 100)
    with pytest.raises(lmq.BackendUnavailable):
        lmq.Queue(_url(tmp_path)).counts()


def test_wal_mode(tmp_path: Path) -> None:
    with lmq.Queue(_url(tmp_path)) as queue:
        queue.enqueue("t")
    with sqlite3.connect(tmp_path / "q.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


# --- claims from separate processes -----------------------------------------------------


def _claim_in_child(url: str, worker: str, barrier: Any, out: Any) -> None:
    got: list[Any] = []
    with lmq.Queue(url) as queue:
        queue.counts()  # connect before the race starts
        barrier.wait(30)
        while tasks := claim(queue.backend, worker=worker, limit=3):
            got.extend(ids(tasks))
    out.put((worker, got))


@pytest.mark.timeout(60)
def test_claims_from_separate_processes_never_share_a_task(tmp_path: Path) -> None:
    url = _url(tmp_path)
    with lmq.Queue(url) as queue:
        made = set(queue.enqueue_many([("t", {"i": i}) for i in range(600)]))
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    procs = [
        ctx.Process(target=_claim_in_child, args=(url, f"p{n}", barrier, out)) for n in range(3)
    ]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    out.close()
    out.join_thread()
    claimed = [i for got in results.values() for i in got]
    assert len(claimed) == len(set(claimed)) == 600
    assert set(claimed) == made
    with lmq.Queue(url) as queue:
        owners = {t.id: t.locked_by for t in queue.tasks(status="processing", limit=1000)}
    for worker, got in results.items():
        assert {owners[i] for i in got} <= {worker}


def test_workers_checkpoint_the_wal_and_producers_rarely(tmp_path: Path) -> None:
    """A producer's connection checkpoints only past 10,000 WAL pages; a worker's at 1,000."""
    queue = lmq.Queue(_url(tmp_path))

    @queue.task
    def t() -> None:
        pass

    t.enqueue()
    backend: Any = queue.backend

    def autocheckpoint() -> int:
        return int(backend._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0])

    assert autocheckpoint() == 10_000
    backend.prepare_worker()
    assert autocheckpoint() == 1_000
    assert run_burst(queue) == 0  # a worker's own connections get the same
    assert queue.counts()["done"] == 1
