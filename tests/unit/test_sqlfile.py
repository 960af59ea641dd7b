"""Named SQL statements and migrations loaded from .sql files; table prefixes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmq.backends.sqlfile import check_prefix, load_migrations, load_queries


@pytest.mark.parametrize("prefix", ["", "wp_", "A1_b2", "x" * 16, "_", "0"])
def test_valid_prefixes(prefix: str) -> None:
    assert check_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "prefix",
    [
        "x" * 17,
        "wp-",
        "wp.",
        "wp ",
        "a;drop table x;--",
        "wp_\n",
        "\nwp_",
        "é",
        "wp`",
        '"wp"',
    ],
)
def test_invalid_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="up to 16 letters, digits or underscores"):
        check_prefix(prefix)


@pytest.fixture
def sql_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    pkg = tmp_path / "lmq_test_sqlpkg"
    (pkg / "migrations").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "migrations" / "__init__.py").write_text("")
    (pkg / "q.sql").write_text(
        "-- a header comment\n\n"
        "-- name: first\n"
        "SELECT * FROM {prefix}queue_tasks;\n\n"
        "--name:  second \n"
        "UPDATE {prefix}queue_tasks\n   SET x = 1\n WHERE id = :id;\n"
    )
    (pkg / "migrations" / "0002_more.sql").write_text("ALTER TABLE {prefix}queue_tasks ...;")
    (pkg / "migrations" / "0001_initial.sql").write_text("CREATE TABLE {prefix}queue_tasks ();")
    (pkg / "migrations" / "notes.sql").write_text("not a migration")
    (pkg / "migrations" / "0003_draft.txt").write_text("not sql")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lmq_test_sqlpkg"
    for name in [m for m in sys.modules if m.startswith("lmq_test_sqlpkg")]:
        del sys.modules[name]


def test_load_queries_by_name_with_prefix(sql_package: str) -> None:
    q = load_queries(sql_package, "q.sql", "wp_")
    assert q == {
        "first": "SELECT * FROM wp_queue_tasks",
        "second": "UPDATE wp_queue_tasks\n   SET x = 1\n WHERE id = :id",
    }


def test_load_migrations_in_order_with_prefix(sql_package: str) -> None:
    found = load_migrations(f"{sql_package}.migrations", "p_")
    assert [(n, name) for n, name, _ in found] == [(1, "initial"), (2, "more")]
    assert found[0][2] == "CREATE TABLE p_queue_tasks ();"


def test_the_sqlite_backends_files_leave_no_placeholder() -> None:
    queries = load_queries("lmq.backends.sqlite", "queries.sql", "wp_")
    assert {"claim", "insert_task", "ack_done", "retry", "release", "renew"} <= queries.keys()
    assert all("{prefix}" not in sql for sql in queries.values())
    migrations = load_migrations("lmq.backends.sqlite.migrations", "wp_")
    assert [n for n, _, _ in migrations] == list(range(1, len(migrations) + 1))
    assert all("{prefix}" not in sql for _, _, sql in migrations)
