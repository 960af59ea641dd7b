"""Transactional enqueue: ``enqueue(..., connection=app_conn)`` joins the app's transaction.

On SQL backends the task is written with the application's own connection (sqlite3,
psycopg, PyMySQL, or a SQLAlchemy ``Connection`` over any of them), so it exists exactly
when the application's change commits: a rollback leaves no task, a commit makes it
claimable and wakes an idle worker.  Backends with no transaction to join (memory, Redis)
refuse ``connection=`` with a ConfigError, storing nothing (test_transactional_refused.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

import lmq
from lmq.url import parse_url

from .conftest import BackendSpec, _enabled
from .helpers import EMPTY, wait_for

pytestmark = pytest.mark.timeout(60)

SQL_KINDS = ("sqlite", "postgresql", "mysql")
FLAVOURS = ("native", "sqlalchemy")


# --- the application's side: its own connection and its own table ---------------------


class App:
    """What an application holds: a DB-API (or SQLAlchemy) connection and a table."""

    def __init__(self, kind: str, url: str, flavour: str) -> None:
        self.kind, self.flavour = kind, flavour
        self.prefix = parse_url(url).prefix
        self.table = f"{self.prefix}app_orders"
        self._engine: Any = None
        self.conn: Any = self._connect(url)
        self.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (id INTEGER PRIMARY KEY, sku TEXT)")
        self.commit()

    def _connect(self, url: str) -> Any:
        parts = urlsplit(url.split("?", 1)[0])
        if self.flavour == "sqlalchemy":
            import sqlalchemy

            driver = {
                "sqlite": "sqlite",
                "postgresql": "postgresql+psycopg",
                "mysql": "mysql+pymysql",
            }[self.kind]
            rest = url.split("://", 1)[1].split("?", 1)[0]
            self._engine = sqlalchemy.create_engine(f"{driver}://{rest}")
            return self._engine.connect()
        if self.kind == "sqlite":
            return sqlite3.connect(parse_url(url).path)
        if self.kind == "postgresql":
            import psycopg

            return psycopg.connect(url.split("?", 1)[0].replace("postgres://", "postgresql://"))
        import pymysql

        return pymysql.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=parts.path.lstrip("/"),
            charset="utf8mb4",
        )

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        if self.flavour == "sqlalchemy":
            result = self.conn.exec_driver_sql(sql, params)
            return list(result.fetchall()) if result.returns_rows else []
        cur = self.conn.cursor()
        try:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
        finally:
            cur.close()

    def insert_order(self, order_id: int, sku: str) -> None:
        mark = "?" if self.kind == "sqlite" else "%s"
        self.execute(f"INSERT INTO {self.table} (id, sku) VALUES ({mark}, {mark})", (order_id, sku))

    def orders(self) -> list[Any]:
        return self.execute(f"SELECT id FROM {self.table} ORDER BY id")

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.rollback()
        with contextlib.suppress(Exception):
            self.execute(f"DROP TABLE IF EXISTS {self.table}")
            self.commit()
        self.conn.close()
        if self._engine is not None:
            self._engine.dispose()


@pytest.fixture(params=[b for b in _enabled() if b.kind in SQL_KINDS], ids=lambda b: b.name)
def backend_spec(request: pytest.FixtureRequest) -> BackendSpec:
    """This module runs on the SQL backends only (test_transactional_refused.py: the rest)."""
    spec: BackendSpec = request.param
    return spec


@pytest.fixture(params=FLAVOURS)
def app(
    request: pytest.FixtureRequest, backend_spec: BackendSpec, backend_url: str
) -> Iterator[App]:
    application = App(backend_spec.kind, backend_url, request.param)
    try:
        yield application
    finally:
        application.close()


# --- SQL backends ---------------------------------------------------------------------------


def test_rollback_leaves_no_task(queue: lmq.Queue, app: App) -> None:
    queue.migrate()
    app.insert_order(1, "A-1")
    task_id = queue.enqueue("ship", {"order_id": 1}, connection=app.conn)
    ids = queue.enqueue_many([("ship", {"order_id": n}) for n in (2, 3)], connection=app.conn)
    app.rollback()
    assert app.orders() == []
    assert queue.counts() == EMPTY
    for i in (task_id, *ids):
        assert queue.get(i) is None


def test_commit_makes_the_tasks_exist_and_not_before(queue: lmq.Queue, app: App) -> None:
    queue.migrate()
    app.insert_order(7, "B-7")
    task_id = queue.enqueue("ship", {"order_id": 7}, connection=app.conn)
    ids = queue.enqueue_many([("ship", {"order_id": n}) for n in (8, 9)], connection=app.conn)
    assert queue.get(task_id) is None  # not visible outside the app's transaction
    app.commit()
    assert [r[0] for r in app.orders()] == [7]
    task = queue.get(task_id)
    assert task is not None and task.status == "pending" and task.payload == {"order_id": 7}
    assert [queue.get(i).payload for i in ids] == [{"order_id": 8}, {"order_id": 9}]  # type: ignore[union-attr]
    assert queue.counts()["pending"] == 3


def _idle_worker(queue: lmq.Queue, idle_poll: float) -> tuple[lmq.Worker, threading.Thread]:
    worker = lmq.Worker(
        queue,
        lmq.WorkerSettings(install_signal_handlers=False, idle_poll=idle_poll, loop="asyncio"),
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    wait_for(queue.workers, timeout=10)  # started: heartbeat row written
    return worker, thread


def test_commit_wakes_an_idle_worker(queue: lmq.Queue, app: App) -> None:
    """The wake-up comes with the commit: from the backend's notification where it has
    one (PostgreSQL NOTIFY, SQLite's WAL watcher), else from the backend's own short
    poll (MySQL, 0.1 s). The worker's idle poll is set to 30 s, so only those can be
    that fast."""
    queue.migrate()
    done = threading.Event()

    @queue.task
    def ship(order_id: int) -> None:
        done.set()

    worker, thread = _idle_worker(queue, idle_poll=30.0)
    try:
        app.insert_order(5, "C-5")
        task_id = queue.enqueue("ship", {"order_id": 5}, connection=app.conn)
        app.rollback()  # a rolled-back enqueue wakes nobody and runs nothing
        app.insert_order(6, "C-6")
        task_id = queue.enqueue("ship", {"order_id": 6}, connection=app.conn)
        app.commit()
        assert done.wait(8), "the committed task was not picked up"
        wait_for(lambda: queue.counts()["done"] == 1, timeout=10)
        task = queue.get(task_id)
        assert task is not None and task.status == "done" and task.payload == {"order_id": 6}
        assert queue.counts()["pending"] == 0
    finally:
        worker.stop()
        thread.join(15)


def test_a_connection_for_another_database_kind_is_refused(queue: lmq.Queue, app: App) -> None:
    other = sqlite3.connect(":memory:") if app.kind != "sqlite" else _not_sqlite()
    with contextlib.closing(other), pytest.raises(lmq.ConfigError, match="connection"):
        queue.enqueue("ship", {"order_id": 1}, connection=other)
    assert queue.counts() == EMPTY


def _not_sqlite() -> Any:
    class Fake:
        def close(self) -> None:
            pass

    return Fake()
