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
            text = re.sub(r"\s+", " ", sql.replace(prefix, "")).strip()
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
