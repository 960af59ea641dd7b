"""A fresh SQLite schema (schema.sql) equals the numbered migrations applied in order.

The server dialects have the same test in their own conformance files (they need a
server); this one needs nothing but sqlite3.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from pathlib import Path
from typing import Any

from lmq.backends.rows import split_sql
from lmq.backends.sqlfile import load_migrations, load_schema
from lmq.backends.sqlite.backend import SCHEMA_VERSION


def _catalog(conn: sqlite3.Connection, prefix: str) -> dict[str, Any]:
    """Every table's columns and every index's definition, with the prefix taken out."""
    out: dict[str, Any] = {}
    objects = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name LIKE ? ORDER BY name",
        (prefix + "%",),
    ).fetchall()
    for kind, name, _table, sql in objects:
        key = f"{kind}:{name.removeprefix(prefix)}"
        if kind == "table":
            cols = conn.execute(f"PRAGMA table_xinfo({name})").fetchall()
            out[key] = [tuple(c[1:]) for c in cols]  # name, type, notnull, default, pk, hidden
        elif sql is not None:  # an explicit index: its normalised definition
            # the prefix only where a name starts ("r_" is inside "breaker_ready" too)
            text = re.sub(r"\s+", " ", re.sub(rf"\b{re.escape(prefix)}", "", sql)).strip()
            out[key] = text.replace("IF NOT EXISTS ", "")
    return out


def test_fresh_schema_equals_the_migrations_applied_in_order(tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        for statement in split_sql(load_schema("lmq.backends.sqlite", "fresh_")):
            conn.execute(statement)
        migrations = load_migrations("lmq.backends.sqlite.migrations", "steps_")
        assert [n for n, _, _ in migrations] == list(range(1, SCHEMA_VERSION + 1))
        for _number, _name, sql in migrations:
            for statement in split_sql(sql):
                conn.execute(statement)
        fresh, steps = _catalog(conn, "fresh_"), _catalog(conn, "steps_")
    assert fresh, "schema.sql created nothing"
    assert "table:queue_tasks" in fresh and "index:queue_tasks_ready" in fresh
    assert fresh == steps


def test_the_catalog_comparison_sees_a_difference(tmp_path: Path) -> None:
    """The comparison above would catch a column or index present on one road only."""
    with contextlib.closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        for prefix in ("a_", "b_"):
            for statement in split_sql(load_schema("lmq.backends.sqlite", prefix)):
                conn.execute(statement)
        conn.execute("ALTER TABLE b_queue_tasks ADD COLUMN extra TEXT")
        conn.execute("CREATE INDEX b_queue_tasks_extra ON b_queue_tasks (extra)")
        assert _catalog(conn, "a_") != _catalog(conn, "b_")


def _v1_database(path: Path, prefix: str = "") -> None:
    """A database as lmq 1 left it: migration 0001 only, schema_version 1, some rows."""
    first = load_migrations("lmq.backends.sqlite.migrations", prefix)[0][2]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for statement in split_sql(first):
            conn.execute(statement)
        conn.execute(f"INSERT INTO {prefix}queue_meta (key, value) VALUES ('schema_version', '1')")
        conn.execute(
            f"INSERT INTO {prefix}queue_tasks (task_name, payload, status, created)"
            " VALUES ('old_task', '{\"n\": 1}', 'pending', '2026-01-01 00:00:00')"
        )
        conn.execute(
            f"INSERT INTO {prefix}queue_dead_letters (task_id, queue, task_name, payload,"
            " error, reason, fingerprint, died_at) VALUES (99, 'default', 'gone', '{}',"
            " 'ValueError: x', 'attempts used up', 'fp1', 1.7e9)"
        )
        conn.commit()


def test_migrate_upgrades_a_version_1_database(tmp_path: Path) -> None:
    import lmq
    from lmq.models import DeadFilter, DeadSelector, NewTask, Review

    db = tmp_path / "v1.db"
    _v1_database(db, "wp_")
    with lmq.Queue(f"sqlite:///{db}?prefix=wp_") as queue:
        assert queue.backend.schema_version() == 1
        assert queue.migrate() == list(range(2, SCHEMA_VERSION + 1))
        assert queue.backend.schema_version() == SCHEMA_VERSION
        assert queue.migrate() == []
        # the old rows are there and the new verbs work on them
        (old,) = queue.tasks(name="old_task")
        assert old.payload == {"n": 1} and old.batch is None
        backend = queue.backend
        ids = queue.enqueue_many([("member", {})], batch="b1", on_complete=("report", {}))
        info = queue.batch("b1")
        assert (info.total, info.pending, info.on_complete) == (1, 1, "report")
        assert queue.cancel(ids) == ids
        assert dict(backend.settle_batches()).keys() == {"b1"}
        queue.pause("bulk")
        assert list(queue.paused_queues()) == ["bulk"]
        assert [g.count for g in backend.dead_groups(DeadFilter())] == [1]
        (dead,) = backend.dead_letters(DeadFilter())
        assert backend.review_dead(Review(DeadSelector(ids=[dead.id]), approve=True, by="a")) == 1
        assert backend.requeue_approved() == [99]
        backend.enqueue([NewTask("t", "{}")])
    with contextlib.closing(sqlite3.connect(db)) as conn:
        upgraded = _catalog(conn, "wp_")
        for statement in split_sql(load_schema("lmq.backends.sqlite", "fresh_")):
            conn.execute(statement)
        assert upgraded == _catalog(conn, "fresh_")


def test_first_use_upgrades_a_version_1_database(tmp_path: Path) -> None:
    """SQLite upgrades on first use too (as it creates its tables on first use)."""
    import lmq

    db = tmp_path / "v1.db"
    _v1_database(db)
    with lmq.Queue(f"sqlite:///{db}") as queue:
        ids = queue.enqueue_many([("member", {})], batch="b")
        task = queue.get(ids[0])
        assert task is not None and task.batch == "b"
        assert queue.backend.schema_version() == SCHEMA_VERSION


def _v2_database(path: Path, prefix: str = "") -> None:
    """A database as lmq 2 left it: migrations 0001-0002, schema_version 2, some rows
    (a pending task, a batch member, a dead letter whose task row is kept as 'dead')."""
    migrations = load_migrations("lmq.backends.sqlite.migrations", prefix)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for number, _name, sql in migrations:
            if number <= 2:
                for statement in split_sql(sql):
                    conn.execute(statement)
        conn.execute(f"INSERT INTO {prefix}queue_meta (key, value) VALUES ('schema_version', '2')")
        conn.execute(
            f"INSERT INTO {prefix}queue_tasks (task_name, payload, status, created, batch)"
            " VALUES ('old_task', '{\"n\": 2}', 'pending', '2026-01-01 00:00:00', 'b0')"
        )
        conn.execute(
            f"INSERT INTO {prefix}queue_tasks (id, task_name, payload, status, created,"
            " dead_letter_id) VALUES (99, 'gone', '{}', 'dead', '2026-01-01 00:00:00', 1)"
        )
        conn.execute(
            f"INSERT INTO {prefix}queue_dead_letters (task_id, queue, task_name, payload,"
            " error, reason, fingerprint, died_at) VALUES (99, 'default', 'gone', '{}',"
            " 'ValueError: x', 'attempts used up', 'fp1', 1.7e9)"
        )
        conn.commit()


def test_migrate_upgrades_a_version_2_database(tmp_path: Path) -> None:
    """Schema 2 -> 3: the task keys, the new ready indexes and the breaker, rate-limit and
    schedule tables; the old rows read with no keys and are claimed as before."""
    import lmq
    from lmq.models import (
        BreakerState,
        ClaimRequest,
        DeadFilter,
        DeadSelector,
        NewTask,
        RateState,
        ScheduleState,
    )

    db = tmp_path / "v2.db"
    _v2_database(db, "wp_")
    with lmq.Queue(f"sqlite:///{db}?prefix=wp_") as queue:
        backend = queue.backend
        assert backend.schema_version() == 2
        assert queue.migrate() == [3]
        assert backend.schema_version() == SCHEMA_VERSION == 3
        assert queue.migrate() == []
        (old,) = queue.tasks(name="old_task")
        assert (old.payload, old.batch, old.breaker, old.rate_key) == ({"n": 2}, "b0", None, None)
        # the new columns and tables work, and the plain claim skips what it must
        assert backend.put_breaker(BreakerState("crm", "open", version=1), 0)
        assert backend.put_rate_limit(RateState("api", 10, 1.0, version=1), 0)
        assert backend.put_schedule(ScheduleState("tick", "tick_task", every=1.0, version=1), 0)
        keyed = backend.enqueue(
            [NewTask("call", "{}", breaker="crm"), NewTask("call", "{}", rate_key="api")]
        )
        got = backend.claim(ClaimRequest("w1", 10, 60.0)).tasks
        assert [c.id for c in got] == [old.id]
        assert [c.id for c in backend.claim(ClaimRequest("w1", 10, 60.0, breaker="crm")).tasks] == [
            keyed[0]
        ]
        assert backend.rate_keys_ready(None) == {"api": (0, "call")}
        (schedule,) = backend.schedules()
        fired = backend.fire_schedule(
            ScheduleState("tick", "tick_task", every=1.0, next_tick=2.0, version=2),
            schedule.version,
            [NewTask("tick_task", "{}")],
        )
        assert fired is not None and len(fired) == 1
        (dead,) = backend.dead_letters(DeadFilter())
        assert backend.requeue_dead(DeadSelector(ids=[dead.id])) == [99]
        task = backend.get(99)
        assert task is not None and (task.status, task.breaker) == ("pending", None)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        upgraded = _catalog(conn, "wp_")
        for statement in split_sql(load_schema("lmq.backends.sqlite", "fresh_")):
            conn.execute(statement)
        assert upgraded == _catalog(conn, "fresh_")
        # the plain claim reads the new partial ready index (rate-keyed rows are not in it)
        index_sql = conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'wp_queue_tasks_ready'"
        ).fetchone()[0]
        assert "rate_key IS NULL" in index_sql


def test_first_use_upgrades_a_version_2_database(tmp_path: Path) -> None:
    import lmq
    from lmq.models import NewTask

    db = tmp_path / "v2.db"
    _v2_database(db)
    with lmq.Queue(f"sqlite:///{db}") as queue:
        (task_id,) = queue.backend.enqueue([NewTask("call", "{}", breaker="b", rate_key="k")])
        task = queue.get(task_id)
        assert task is not None and (task.breaker, task.rate_key) == ("b", "k")
        assert queue.backend.schema_version() == SCHEMA_VERSION


def test_a_repair_after_a_dropped_table_reruns_the_migrations(tmp_path: Path) -> None:
    """`lmq migrate` re-runs every migration when a table is gone (ADD COLUMN included)."""
    import lmq

    db = tmp_path / "q.db"
    url = f"sqlite:///{db}?prefix=r_"
    with lmq.Queue(url) as queue:
        queue.migrate()
        queue.enqueue_many([("member", {})], batch="b")
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("DROP TABLE r_queue_batches")
        conn.commit()
    with lmq.Queue(url) as queue:
        queue.migrate()
        assert queue.backend.batch("b") is None
        assert queue.backend.schema_version() == SCHEMA_VERSION
    with contextlib.closing(sqlite3.connect(db)) as conn:
        repaired = _catalog(conn, "r_")
        for statement in split_sql(load_schema("lmq.backends.sqlite", "fresh_")):
            conn.execute(statement)
        assert repaired == _catalog(conn, "fresh_")
