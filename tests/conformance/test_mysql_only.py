"""MySQL / MariaDB specifics, against the server ``$LMQ_TEST_MYSQL_URL`` names.

Both claim strategies (SKIP LOCKED and the atomic-UPDATE fallback), concurrent claimers and
producers (deadlocks retried inside the backend), the schema file against the migrations,
a WordPress database with ``wp_`` tables and the seed's bare ``$wpdb->insert``, utf8mb4,
and the errors (missing or old schema, unreachable server, lost connection).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import pymysql
import pymysql.constants.CLIENT
import pytest

import lmq
from lmq.backends.mysql.backend import SCHEMA_VERSION, MySQLBackend, supports_skip_locked
from lmq.models import ClaimRequest, CompleteBatch, NewTask, TaskId

from .helpers import EMPTY, burial, claim, complete, ids, kill, retry, run_burst, wait_for

BASE = os.environ.get("LMQ_TEST_MYSQL_URL", "")
pytestmark = pytest.mark.skipif(not BASE, reason="set LMQ_TEST_MYSQL_URL to a MySQL/MariaDB URL")

MODES = ["skip_locked", "update"]


def with_options(url: str, **options: str) -> str:
    """``url`` with its query options updated (``claim``, ``prefix``, ...)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(options)
    return urlunsplit(parts._replace(query=urlencode(query)))


def connect(url: str = BASE, database: str | None = None, **kw: Any) -> Any:
    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=database if database is not None else parts.path.lstrip("/"),
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=5,
        **kw,
    )


def drop_prefix(_url: str, prefix: str) -> None:
    """Drop every table named ``prefix...`` in the test database (prefix compared as text,
    not as a LIKE pattern)."""
    assert prefix and prefix.replace("_", "").isalnum(), prefix
    with connect() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
            " AND LEFT(table_name, CHAR_LENGTH(%s)) = %s",
            (prefix, prefix),
        )
        names = [r[0] for r in cur.fetchall()]
        if names:
            cur.execute("DROP TABLE IF EXISTS " + ", ".join(f"`{n}`" for n in names))


def fresh_prefix() -> str:
    return f"m{uuid.uuid4().hex[:8]}_"


@contextlib.contextmanager
def prefixed(migrate: bool = True, **options: str) -> Iterator[str]:
    """A URL with a fresh prefix (migrated unless told not to); dropped afterwards."""
    prefix = fresh_prefix()
    url = with_options(BASE, prefix=prefix, **options)
    try:
        if migrate:
            with lmq.Queue(url) as q:
                q.migrate()
        yield url
    finally:
        drop_prefix(BASE.split("?", 1)[0], prefix)


@pytest.fixture(params=MODES)
def mode_queue(request: pytest.FixtureRequest) -> Iterator[lmq.Queue]:
    with prefixed(claim=request.param) as url, lmq.Queue(url) as q:
        backend = q.backend
        assert isinstance(backend, MySQLBackend)
        assert backend.claim_mode() == request.param
        yield q


# --- claim strategies ---------------------------------------------------------------------


def test_version_decides_the_claim_strategy() -> None:
    assert supports_skip_locked("10.6.0-MariaDB")
    assert supports_skip_locked("10.11.19-MariaDB-0+deb12u1")
    assert supports_skip_locked("5.5.5-10.11.6-MariaDB")  # the old replication-safe prefix
    assert not supports_skip_locked("10.5.22-MariaDB")
    assert supports_skip_locked("8.0.36")
    assert supports_skip_locked("8.0.1")
    assert not supports_skip_locked("8.0.0-dmr")
    assert not supports_skip_locked("5.7.44-log")
    with prefixed(claim="auto") as url, lmq.Queue(url) as q:
        backend = q.backend
        assert isinstance(backend, MySQLBackend)
        with connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            (version,) = cur.fetchone()
        expected = "skip_locked" if supports_skip_locked(version) else "update"
        assert backend.claim_mode() == expected


def test_claim_complete_in_both_modes(mode_queue: lmq.Queue) -> None:
    q, backend = mode_queue, mode_queue.backend
    low = q.enqueue("t", {"n": 1})
    high = q.enqueue("t", {"n": 2}, priority=5)
    other = q.enqueue("t", {"n": 3}, queue="other")
    (first,) = claim(backend, "w1", limit=1)
    assert (first.id, first.attempts, json.loads(first.payload)) == (high, 1, {"n": 2})
    assert ids(claim(backend, "w2", queues=("other",))) == [other]
    assert ids(claim(backend, "w3", queues=("default", "other"))) == [low]
    assert claim(backend, "w4") == []
    complete(backend, "w1", done=[high])
    complete(backend, "w3", retries=[retry(low, 0, "again")])
    complete(backend, "w2", released=[other])
    assert q.counts() == {**EMPTY, "pending": 2, "done": 1}
    again = claim(backend, "w5")
    assert sorted(ids(again)) == sorted([low, other])
    assert {c.id: c.attempts for c in again} == {low: 2, other: 1}
    task = q.get(high)
    assert task is not None and (task.status, task.locked_by) == ("done", None)


def test_claim_and_complete_in_one_transaction(mode_queue: lmq.Queue) -> None:
    q, backend = mode_queue, mode_queue.backend
    made = q.enqueue_many([("t", {"i": i}) for i in range(6)])
    first = claim(backend, "w", limit=3)
    result = backend.complete(CompleteBatch("w", done=ids(first)), ClaimRequest("w", 10, 30.0))
    assert result is not None
    assert sorted(ids(first) + ids(result.tasks)) == sorted(made)
    assert q.counts() == {**EMPTY, "processing": 3, "done": 3}


def test_expired_leases_are_rescued_by_the_claim(mode_queue: lmq.Queue) -> None:
    q, backend = mode_queue, mode_queue.backend
    task_id = q.enqueue("t")
    claim(backend, "gone", lease=1)
    assert claim(backend, "w2") == []
    wait_for(lambda: backend.has_ready(None), timeout=5)
    result = backend.claim(ClaimRequest("w2", 5, 30.0))
    assert ids(result.tasks) == [task_id] and result.rescued == 1
    task = q.get(task_id)
    assert task is not None and (task.locked_by, task.attempts) == ("w2", 2)
    assert [e.type for e in task.errors] == ["LeaseExpired"]
    (lapse,) = task.errors
    assert lapse.attempt == 1 and "gone" in lapse.message
    assert abs(lapse.at.timestamp() - time.time()) < 60  # the server's UTC time, parsed


@pytest.mark.parametrize("mode", MODES)
def test_concurrent_claimers_and_producers_never_share_a_task(mode: str) -> None:
    """Several threads claim and acknowledge while others enqueue (some with unique keys):
    no exception reaches them (deadlocks and lock waits are retried inside the backend),
    no task is claimed twice, and every task ends done."""
    claimers_n, producers_n, per_producer = 6, 3, 400
    with prefixed(claim=mode) as url:
        queues = [lmq.Queue(url) for _ in range(3)]
        errors: list[BaseException] = []
        claimed: dict[str, list[TaskId]] = {f"w{n}": [] for n in range(claimers_n)}
        made: list[TaskId] = []
        made_lock = threading.Lock()
        producing = threading.Event()
        producing.set()
        barrier = threading.Barrier(claimers_n + producers_n)

        def producer(n: int) -> None:
            q = queues[n % len(queues)]
            rnd = random.Random(n)
            try:
                barrier.wait()
                sent = 0
                while sent < per_producer:
                    size = rnd.choice([1, 1, 5, 20])
                    batch = [
                        NewTask(
                            "t",
                            "{}",
                            priority=rnd.choice([0, 0, 1, 5]),
                            unique_key=f"p{n}-{sent + i}" if rnd.random() < 0.2 else None,
                        )
                        for i in range(size)
                    ]
                    got = q.backend.enqueue(batch)
                    with made_lock:
                        made.extend(got)
                    sent += size
            except BaseException as exc:  # reported below
                errors.append(exc)

        def claimer(n: int) -> None:
            worker = f"w{n}"
            backend = queues[n % len(queues)].backend
            held: list[TaskId] = []
            try:
                barrier.wait()
                idle_since = None
                while True:
                    result = (
                        backend.complete(
                            CompleteBatch(worker, done=held), ClaimRequest(worker, 1 + n % 5, 60)
                        )
                        if held
                        else backend.claim(ClaimRequest(worker, 1 + n % 5, 60))
                    )
                    assert result is not None
                    held = ids(result.tasks)
                    claimed[worker].extend(held)
                    if held:
                        idle_since = None
                    elif not producing.is_set():
                        idle_since = idle_since or time.monotonic()
                        if time.monotonic() - idle_since > 0.5:
                            return
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=producer, args=(n,)) for n in range(producers_n)]
        threads += [threading.Thread(target=claimer, args=(n,)) for n in range(claimers_n)]
        for t in threads:
            t.start()
        for t in threads[:producers_n]:
            t.join(120)
        producing.clear()
        for t in threads[producers_n:]:
            t.join(120)
        try:
            assert errors == []
            assert not any(t.is_alive() for t in threads)
            every = [i for mine in claimed.values() for i in mine]
            assert len(every) == len(set(every)), "a task was claimed twice"
            assert set(every) == set(made)
            counts = queues[0].counts()
            assert counts == {**EMPTY, "done": len(set(made))}
        finally:
            retried = sum(
                q.backend.lock_retries for q in queues if isinstance(q.backend, MySQLBackend)
            )
            print(f"\n{mode}: {len(set(made))} tasks, {retried} transaction(s) re-run")
            for q in queues:
                q.close()


# --- indexes ------------------------------------------------------------------------------


def _explain(url: str, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with connect(url, cursorclass=pymysql.cursors.DictCursor) as conn, conn.cursor() as cur:
        cur.execute("EXPLAIN " + sql, params)
        return list(cur.fetchall())


@pytest.mark.parametrize("mode", MODES)
def test_the_claim_reads_the_ready_index_in_order(mode: str) -> None:
    with prefixed(claim=mode) as url, lmq.Queue(url) as q:
        backend = q.backend
        assert isinstance(backend, MySQLBackend)
        q.enqueue_many([("t", {}) for _ in range(2000)])
        q.enqueue_many([("t", {}) for _ in range(200)], queue="other", priority=3)
        done = claim(backend, limit=1500)
        complete(backend, done=ids(done))
        p = backend.prefix
        for queues, index in (
            (None, f"{p}queue_tasks_ready"),
            (("other",), f"{p}queue_tasks_queue_ready"),
        ):
            sql, params = backend._claim_statement(queues)
            token = {"now": time.time(), "until": time.time() + 30, "worker": "w"}
            plan, *breakers = _explain(url, sql, {"limit": 100, **token, **params})
            assert plan["key"] == index, plan
            assert "filesort" not in (plan["Extra"] or ""), plan
            assert plan["type"] in {"ref", "range"}, plan
            # the breaker check: a subquery of queue_breakers (not run for a task without one)
            assert [b["table"] for b in breakers] == ["b"], breakers
        sql = backend.q["has_ready_all"].replace("{ready}", backend.q["ready_all"])
        for plan in _explain(url, sql):
            assert plan["table"] in {None, "b"} or plan["key"] in {
                f"{p}queue_tasks_due",
                f"{p}queue_tasks_ready",
            }, plan


# --- schema ------------------------------------------------------------------------------


def _catalog(prefix: str) -> dict[str, list[tuple[Any, ...]]]:
    def norm(value: Any) -> Any:
        return value.replace(prefix, "{prefix}") if isinstance(value, str) else value

    with connect() as conn, conn.cursor() as cur:
        like = prefix.replace("_", "\\_") + "%"
        cur.execute(
            "SELECT table_name, engine, table_collation, create_options"
            " FROM information_schema.tables"
            " WHERE table_schema = DATABASE() AND table_name LIKE %s ORDER BY table_name",
            (like,),
        )
        tables = [tuple(map(norm, r)) for r in cur.fetchall()]
        cur.execute(
            "SELECT table_name, ordinal_position, column_name, column_type, is_nullable,"
            " column_default, character_set_name, collation_name, extra,"
            " generation_expression"
            " FROM information_schema.columns"
            " WHERE table_schema = DATABASE() AND table_name LIKE %s"
            " ORDER BY table_name, ordinal_position",
            (like,),
        )
        columns = [tuple(map(norm, r)) for r in cur.fetchall()]
        cur.execute(
            "SELECT table_name, index_name, non_unique, seq_in_index, column_name, collation,"
            " sub_part, nullable, index_type"
            " FROM information_schema.statistics"
            " WHERE table_schema = DATABASE() AND table_name LIKE %s"
            " ORDER BY table_name, index_name, seq_in_index",
            (like,),
        )
        indexes = [tuple(map(norm, r)) for r in cur.fetchall()]
    return {"tables": tables, "columns": columns, "indexes": indexes}


def test_schema_sql_equals_the_migrations_in_order() -> None:
    fresh, stepped = fresh_prefix(), fresh_prefix()
    try:
        a = MySQLBackend(lmq.url.parse_url(with_options(BASE, prefix=fresh)))
        b = MySQLBackend(lmq.url.parse_url(with_options(BASE, prefix=stepped)))
        assert a.run_migrations(fresh_schema=True) == list(range(1, SCHEMA_VERSION + 1))
        assert b.run_migrations(fresh_schema=False) == list(range(1, SCHEMA_VERSION + 1))
        assert a.schema_version() == b.schema_version() == SCHEMA_VERSION
        one, two = _catalog(fresh), _catalog(stepped)
        assert len(one["tables"]) == 9 and len(one["indexes"]) >= 21
        assert one == two
        for _name, _engine, collation, _opts in one["tables"]:
            assert str(collation).startswith("utf8mb4")
        assert {r[1] for r in one["tables"]} == {"InnoDB"}
        a.close()
        b.close()
    finally:
        drop_prefix(BASE.split("?", 1)[0], fresh)
        drop_prefix(BASE.split("?", 1)[0], stepped)


def test_concurrent_migrates_from_several_backends() -> None:
    with prefixed(migrate=False) as url:
        results: list[object] = []

        def run() -> None:
            try:
                with lmq.Queue(url) as q:
                    results.append(q.migrate())
            except BaseException as exc:  # reported below
                results.append(exc)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(map(str, results)) == sorted(
            [str(list(range(1, SCHEMA_VERSION + 1))), "[]", "[]", "[]"]
        )
        with lmq.Queue(url) as q:
            assert q.migrate() == []
            assert q.counts() == EMPTY


def test_missing_tables_name_lmq_migrate() -> None:
    with prefixed(migrate=False) as url, lmq.Queue(url) as q:
        with pytest.raises(lmq.exceptions.SchemaMissing, match="lmq migrate"):
            q.enqueue("t")
        with pytest.raises(lmq.exceptions.SchemaMissing, match="lmq migrate"):
            q.counts()
        assert q.backend.schema_version() is None
        assert q.migrate() == list(range(1, SCHEMA_VERSION + 1))
        assert q.get(q.enqueue("t")) is not None


@pytest.mark.parametrize(("stored", "message"), [("0", "lmq migrate"), ("99", "upgrade lmq")])
def test_older_or_newer_schema_version(stored: str, message: str) -> None:
    with prefixed() as url:
        prefix = dict(parse_qsl(urlsplit(url).query))["prefix"]
        with connect() as conn, conn.cursor() as cur:
            cur.execute(
                f"UPDATE {prefix}queue_meta SET `value` = %s WHERE `key` = 'schema_version'",
                (stored,),
            )
        with lmq.Queue(url) as q, pytest.raises(lmq.exceptions.SchemaMissing, match=message):
            q.enqueue("t")


def test_dropped_table_later_is_schema_missing() -> None:
    with prefixed() as url, lmq.Queue(url) as q:
        q.enqueue("t")
        prefix = dict(parse_qsl(urlsplit(url).query))["prefix"]
        with connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP TABLE {prefix}queue_dead_letters")
        with pytest.raises(lmq.exceptions.SchemaMissing, match="lmq migrate"):
            q.dead_letters()
        assert q.migrate() == list(range(1, SCHEMA_VERSION + 1))  # repaired
        assert q.dead_letters() == []


# --- WordPress -------------------------------------------------------------------------------


@pytest.fixture
def wordpress_db() -> Iterator[str]:
    """A database of its own with WordPress-like tables, reached with ?prefix=wp_."""
    name = f"lmq_wp_{uuid.uuid4().hex[:8]}"
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        with connect(database=name) as conn, conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE wp_posts (ID BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,"
                " post_title TEXT) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            )
        parts = urlsplit(BASE)
        url = urlunsplit(parts._replace(path=f"/{name}"))
        yield with_options(url, prefix="wp_")
    finally:
        with connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.mark.parametrize("hours", [10, -10])
def test_wpdb_bare_insert_with_site_local_created_runs_at_once(
    wordpress_db: str, hours: int
) -> None:
    database = urlsplit(wordpress_db).path.lstrip("/")
    with lmq.Queue(wordpress_db) as queue:
        assert queue.migrate() == list(range(1, SCHEMA_VERSION + 1))
        with connect(database=database) as conn, conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            assert {r[0] for r in cur.fetchall()} == {
                "wp_posts",
                "wp_queue_tasks",
                "wp_queue_dead_letters",
                "wp_queue_workers",
                "wp_queue_meta",
                "wp_queue_queues",
                "wp_queue_batches",
                "wp_queue_breakers",
                "wp_queue_rate_limits",
                "wp_queue_schedules",
            }
            # a site whose MySQL session runs in local time, as $wpdb->insert writes it:
            # current_time('mysql') is site-local, `hours` from UTC
            cur.execute("SET time_zone = %s", (f"{hours:+03d}:00",))
            cur.execute("SELECT DATE_FORMAT(NOW(), '%Y-%m-%d %H:%i:%s')")
            (created,) = cur.fetchone()
            cur.execute(
                "INSERT INTO wp_queue_tasks (task_name, payload, status, created)"
                " VALUES (%s, %s, %s, %s)",
                ("import_row", json.dumps({"row": 7, "title": "Café ☕"}), "pending", created),
            )
            task_id = cur.lastrowid
        seen: list[dict[str, Any]] = []

        @queue.task
        def import_row(**payload: Any) -> None:
            seen.append(payload)

        task = queue.get(task_id)
        assert task is not None and task.status == "pending"
        assert task.created == created  # kept as written, never used for scheduling
        assert task.next_run is not None
        assert abs(task.next_run.timestamp() - time.time()) < 60
        assert run_burst(queue) == 0
        assert seen == [{"row": 7, "title": "Café ☕"}]
        done = queue.get(task_id)
        assert done is not None and (done.status, done.attempts) == ("done", 1)


def test_wp_prefix_names_every_object(wordpress_db: str) -> None:
    database = urlsplit(wordpress_db).path.lstrip("/")
    with lmq.Queue(wordpress_db) as queue:
        queue.migrate()
        with connect(database=database) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT DISTINCT index_name FROM information_schema.statistics"
                " WHERE table_schema = DATABASE() AND table_name LIKE 'wp\\_queue\\_%%'"
                " AND index_name <> 'PRIMARY'"
            )
            names = {r[0] for r in cur.fetchall()}
        assert names and all(n.startswith("wp_queue_") for n in names), names


# --- utf8mb4 ---------------------------------------------------------------------------------


def test_four_byte_characters_round_trip(mode_queue: lmq.Queue) -> None:
    q = mode_queue
    payload = {"emoji": "😀🎉🧵", "han": "𠜎𠜱", "mixed": "Zoë 👩‍💻 ok"}
    task_id = q.enqueue("emoji_😀", payload, unique_key="key-🔑", queue="q-🚀")
    assert q.enqueue("emoji_😀", {}, unique_key="key-🔑", queue="q-🚀") == task_id
    task = q.get(task_id)
    assert task is not None
    assert (task.payload, task.task_name, task.unique_key, task.queue) == (
        payload,
        "emoji_😀",
        "key-🔑",
        "q-🚀",
    )
    (c,) = claim(q.backend, queues=("q-🚀",))
    assert json.loads(c.payload) == payload and c.task_name == "emoji_😀"
    complete(q.backend, retries=[retry(task_id, 0, "failed on 💥")])
    again = q.get(task_id)
    assert again is not None and again.last_error == "ValueError: failed on 💥"


def test_unique_keys_are_case_sensitive(mode_queue: lmq.Queue) -> None:
    q = mode_queue
    assert q.enqueue("t", unique_key="Order-1") != q.enqueue("t", unique_key="order-1")


def test_bulk_enqueue_over_several_statements_keeps_ids_in_order(mode_queue: lmq.Queue) -> None:
    q = mode_queue
    pad = "x" * 300
    made = q.enqueue_many([("t", {"i": i, "pad": pad}) for i in range(12_000)])  # > 2 MB
    assert len(set(made)) == 12_000
    for i in (0, 1, 5000, 6999, 7000, 11_999):
        task = q.get(made[i])
        assert task is not None and task.payload["i"] == i
    assert q.counts()["pending"] == 12_000


# --- reaching the server -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_closed_port_is_backend_unavailable_at_once() -> None:
    url = f"mysql://root@127.0.0.1:{_free_port()}/test"
    started = time.monotonic()
    with lmq.Queue(url) as q, pytest.raises(lmq.exceptions.BackendUnavailable):
        q.enqueue("t")
    assert time.monotonic() - started < 5


def test_a_server_that_never_answers_times_out_with_connect_timeout() -> None:
    with socket.socket() as listener:  # accepts TCP connections, never says hello
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        url = f"mysql://root@127.0.0.1:{port}/test?connect_timeout=1"
        started = time.monotonic()
        with lmq.Queue(url) as q, pytest.raises(lmq.exceptions.BackendUnavailable):
            q.counts()
        assert time.monotonic() - started < 5


def test_url_options_are_checked() -> None:
    for bad in ("?claim=fast", "?charset=latin1", "?nonsense=1", "?connect_timeout=x", ""):
        url = "mysql://root@127.0.0.1:3306/test" + bad if bad else "mysql://root@127.0.0.1:3306"
        with pytest.raises(lmq.exceptions.ConfigError):
            lmq.Queue(url).backend  # noqa: B018 - opening the backend checks the URL


class _Proxy:
    """A TCP relay on loopback standing in for the server: stop() is a server restart."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = _free_port()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the accept() and stops listening
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._socks.clear()


def test_lost_connection_is_unavailable_then_reconnects() -> None:
    parts = urlsplit(BASE)
    proxy = _Proxy((parts.hostname or "127.0.0.1", parts.port or 3306))
    proxy.start()
    try:
        with prefixed() as url:
            through = urlunsplit(
                urlsplit(url)._replace(netloc=f"{parts.username or 'root'}@127.0.0.1:{proxy.port}")
            )
            with lmq.Queue(through) as q:
                first = q.enqueue("t")
                proxy.stop()  # the "server" goes away
                started = time.monotonic()
                with pytest.raises(lmq.exceptions.BackendUnavailable):
                    q.enqueue("t")
                with pytest.raises(lmq.exceptions.BackendUnavailable):
                    q.counts()
                assert time.monotonic() - started < 5
                proxy.start()  # back: the next calls reconnect by themselves
                second = q.enqueue("t")
                assert second != first
                assert q.counts()["pending"] == 2
    finally:
        proxy.stop()


def test_a_killed_connection_is_replaced_transparently() -> None:
    with prefixed() as url, lmq.Queue(url) as q:
        q.enqueue("t")
        backend = q.backend
        assert isinstance(backend, MySQLBackend)
        conn_id = backend._local.conn.thread_id()  # this thread's connection
        with connect() as conn, conn.cursor() as cur:
            cur.execute(f"KILL {int(conn_id)}")  # as wait_timeout or a DBA would
        assert q.counts()["pending"] == 1  # found dead before anything was sent: replaced
        assert q.enqueue("t") is not None


# --- dead letters ------------------------------------------------------------------------------


def test_requeue_reinserts_a_task_row_deleted_by_hand(mode_queue: lmq.Queue) -> None:
    q = mode_queue
    task_id, dead = kill(q, payload={"sku": "A"}, unique_key="k-1", priority=2)
    prefix = q.backend.prefix  # type: ignore[attr-defined]
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"DELETE FROM {prefix}queue_tasks WHERE id = %s", (task_id,))
    assert q.get(task_id) is not None  # still answered from the dead letter
    assert q.requeue_dead([dead.id]) == [task_id]
    task = q.get(task_id)
    assert task is not None
    assert (task.status, task.payload, task.priority, task.unique_key) == (
        "pending",
        {"sku": "A"},
        2,
        "k-1",
    )
    assert [e.message for e in task.errors] == ["boom"]
    assert q.enqueue("t", unique_key="k-1") == task_id  # the key is live again


def test_requeue_while_a_live_task_holds_the_unique_key(mode_queue: lmq.Queue) -> None:
    q = mode_queue
    task_id, dead = kill(q, unique_key="k-2")
    live = q.enqueue("t", unique_key="k-2")
    assert live != task_id
    assert q.requeue_dead([dead.id]) == [task_id]
    revived = q.get(task_id)
    assert revived is not None and revived.status == "pending" and revived.unique_key is None
    assert q.enqueue("t", unique_key="k-2") == live


# --- schema 2: upgrading, the new verbs on this server -----------------------------------------


def _make_schema_1(prefix: str) -> None:
    """What an lmq of schema 1 left: 0001_initial.sql only, schema_version 1."""
    from lmq.backends.rows import split_sql
    from lmq.backends.sqlfile import load_migrations

    (number, _name, sql), *_later = load_migrations("lmq.backends.mysql.migrations", prefix)
    assert number == 1
    with connect() as conn, conn.cursor() as cur:
        for statement in split_sql(sql):
            cur.execute(statement)
        cur.execute(
            f"INSERT INTO {prefix}queue_meta (`key`, `value`) VALUES ('schema_version', '1')"
        )


def test_lmq_migrate_upgrades_a_schema_1_database() -> None:
    """A version-1 database with work in it: refused until `lmq migrate` (the CLI), which
    applies 0002 and 0003; the catalog is then schema.sql's, the old rows are kept, and the new
    verbs and a worker run on it."""
    old, fresh = fresh_prefix(), fresh_prefix()
    try:
        _make_schema_1(old)
        with connect() as conn, conn.cursor() as cur:  # rows schema 1 wrote
            cur.execute(
                f"INSERT INTO {old}queue_tasks (task_name, payload, status) VALUES"
                " ('job', '{\"n\": 1}', 'pending'), ('job', '{\"n\": 2}', 'done')"
            )
            cur.execute(
                f"INSERT INTO {old}queue_dead_letters (task_id, queue, task_name, payload,"
                " error, reason, fingerprint, died_at) VALUES (99, 'default', 'job', '{}',"
                " 'ValueError: old', 'attempts used up', 'fp-old', UNIX_TIMESTAMP())"
            )
        url = with_options(BASE, prefix=old)
        with lmq.Queue(url) as q, pytest.raises(lmq.exceptions.SchemaMissing, match="migrate"):
            q.counts()
        done = subprocess.run(
            [sys.executable, "-m", "lmq", "migrate", "--url", url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        with lmq.Queue(with_options(BASE, prefix=fresh)) as q:
            q.migrate()
        assert _catalog(old) == _catalog(fresh)
        with lmq.Queue(url) as q:
            assert q.backend.schema_version() == SCHEMA_VERSION
            assert q.migrate() == []
            assert q.counts() == {**EMPTY, "pending": 1, "done": 1, "dead": 1}
            (group,) = q.backend.dead_groups(lmq.models.DeadFilter())
            assert (group.fingerprint, group.count, group.example) == (
                "fp-old",
                1,
                "ValueError: old",
            )
            seen: list[Any] = []

            @q.task
            def job(n: int) -> None:
                seen.append(n)

            @q.task
            def finished(name: str) -> None:
                seen.append(name)

            q.enqueue_many([("job", {"n": 3})], batch="b", on_complete=("finished", {"name": "b"}))
            assert run_burst(q) == 0
            assert sorted(map(str, seen)) == ["1", "3", "b"]
            info = q.batch("b")
            assert info.completed is not None and info.done == 1 and info.followup_id is not None
    finally:
        drop_prefix(BASE.split("?", 1)[0], old)
        drop_prefix(BASE.split("?", 1)[0], fresh)


def test_a_migration_cut_short_is_finished_by_the_next_run() -> None:
    """DDL commits statement by statement: a schema-1 database with part of 0002 applied
    (a column and an index already there) is upgraded by running 0002 again."""
    prefix = fresh_prefix()
    try:
        _make_schema_1(prefix)
        with connect() as conn, conn.cursor() as cur:
            cur.execute(f"ALTER TABLE {prefix}queue_tasks ADD COLUMN batch VARCHAR(191) NULL")
            cur.execute(
                f"ALTER TABLE {prefix}queue_tasks ADD KEY {prefix}queue_tasks_batch (batch, status)"
            )
        with lmq.Queue(with_options(BASE, prefix=prefix)) as q:
            assert q.migrate() == [2, 3]
            assert q.get(q.enqueue_many([("t", {})], batch="x")[0]).batch == "x"  # type: ignore[union-attr]
    finally:
        drop_prefix(BASE.split("?", 1)[0], prefix)


@pytest.mark.parametrize("mode", MODES)
def test_the_claim_is_unchanged_without_paused_queues_and_indexed_with_them(mode: str) -> None:
    """No paused queue: the statement the claim always sent.  Some paused: a worker of
    every queue reads each other queue's part of queue_ready in order (never the paused
    queue's ready rows), so a paused backlog costs the others nothing."""
    with prefixed(claim=mode) as url, lmq.Queue(url) as q:
        backend = q.backend
        assert isinstance(backend, MySQLBackend)
        for queues in (None, ("a",), ("a", "b")):
            statement = backend._claim_statement(queues)
            assert statement is not None and backend._claim_statement(queues, ()) == statement
            assert "NOT IN" not in statement[0]
        assert backend._claim_statement(("a",), ("a",)) is None  # its only queue is paused
        assert backend._claim_statement(("a", "b"), ("a",)) == backend._claim_statement(("b",))
        q.enqueue_many([("t", {}) for _ in range(3000)], queue="paused", priority=5)
        q.enqueue_many([("t", {}) for _ in range(50)], queue="open")
        q.enqueue_many([("t", {}) for _ in range(50)], queue="other")
        p = backend.prefix
        with backend.connection() as conn, conn.cursor() as cur:
            plan = backend._claim_plan(cur, ClaimRequest("w", 10, 30.0, None, ("paused",)))
        assert plan is not None
        sql, params = plan
        token = {"now": time.time(), "until": time.time() + 30, "worker": "w"}
        explained = _explain(url, sql, {"limit": 10, **token, **params})
        parts = [r for r in explained if r["table"] == f"{p}queue_tasks"]
        assert len(parts) == 2, parts  # one ordered read per queue that is not paused
        for part in parts:
            assert part["key"] == f"{p}queue_tasks_queue_ready", part
            assert "filesort" not in (part["Extra"] or ""), part
        got = backend.claim(ClaimRequest("w", 200, 30.0, None, ("paused",))).tasks
        assert len(got) == 100 and {c.queue for c in got} == {"open", "other"}
        assert backend.claim(ClaimRequest("w", 10, 30.0, None, ("paused",))).tasks == []


@pytest.mark.parametrize("mode", MODES)
def test_paused_queues_are_not_claimed_in_either_mode(mode: str) -> None:
    with prefixed(claim=mode) as url, lmq.Queue(url) as q:
        backend = q.backend
        stop = q.enqueue_many([("t", {}) for _ in range(5)], queue="stop", priority=9)
        go = q.enqueue_many([("t", {}) for _ in range(3)], queue="go")
        q.pause("stop")
        paused = tuple(backend.paused_queues())
        assert paused == ("stop",)
        assert not backend.has_ready(("stop",), paused)
        assert backend.has_ready(None, paused)
        got = backend.claim(ClaimRequest("w", 10, 30.0, None, paused)).tasks
        assert sorted(ids(got)) == sorted(go)
        assert not backend.has_ready(None, paused)
        assert backend.claim(ClaimRequest("w", 10, 30.0, ("stop", "go"), paused)).tasks == []
        result = backend.complete(
            CompleteBatch("w", done=ids(got)), ClaimRequest("w", 10, 30.0, ("stop",), paused)
        )
        assert result is not None and result.tasks == []
        q.resume("stop")
        assert sorted(ids(claim(backend, queues=("stop", "go")))) == sorted(stop)


@pytest.mark.parametrize("mode", MODES)
def test_concurrent_settles_and_approved_requeues_happen_once(mode: str) -> None:
    """Several threads (each with its own connection) call settle_batches and
    requeue_approved at once: each batch completes once with one follow-up, each approved
    letter is re-queued once, and no error (deadlock, lock wait) reaches a caller."""
    with prefixed(claim=mode) as url:
        with lmq.Queue(url) as q:
            for n in range(5):
                made = q.enqueue_many(
                    [("t", {}) for _ in range(3)], batch=f"b{n}", on_complete=("fin", {"n": n})
                )
                complete(q.backend, done=ids(claim(q.backend, limit=3)))
                assert all(q.get(i).status == "done" for i in made)  # type: ignore[union-attr]
            letters = [kill(q, message=f"failure {i}")[1] for i in range(40)]
            assert q.backend.review_dead(
                lmq.models.Review(lmq.models.DeadSelector(all=True), True, "ops")
            ) == len(letters)
        queues = [lmq.Queue(url) for _ in range(4)]
        barrier = threading.Barrier(len(queues))
        settled: list[tuple[str, Any]] = []
        requeued: list[TaskId] = []
        errors: list[BaseException] = []

        def run(q: lmq.Queue) -> None:
            try:
                barrier.wait()
                for _ in range(5):
                    settled.extend(q.backend.settle_batches())
                    requeued.extend(q.backend.requeue_approved(limit=7))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(q,)) for q in queues]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        try:
            assert errors == []
            assert sorted(name for name, _ in settled) == [f"b{n}" for n in range(5)]
            assert len({f for _, f in settled}) == 5
            assert sorted(requeued) == sorted(d.task_id for d in letters)
            q = queues[0]
            assert q.counts()["dead"] == 0
            assert q.stats().pending == 40 + 5  # the re-queued and the follow-ups
            for name, followup in settled:
                info = q.batch(name)
                assert info.followup_id == followup and info.completed is not None
        finally:
            for q in queues:
                q.close()


def test_a_wordpress_database_runs_batches_and_reviews(wordpress_db: str) -> None:
    with lmq.Queue(wordpress_db) as queue:
        queue.migrate()
        seen: list[Any] = []

        @queue.task
        def import_row(row: int) -> None:
            if row == 2:
                raise ValueError(f"bad row {row}")
            seen.append(row)

        @queue.task
        def report(title: str) -> None:
            seen.append(title)

        queue.enqueue_many(
            [("import_row", {"row": i}) for i in range(4)],
            batch="import-☕",
            on_complete=("report", {"title": "Café ☕"}),
            max_attempts=1,
        )
        assert run_burst(queue) == 0
        info = queue.batch("import-☕")
        assert (info.done, info.dead, info.total) == (3, 1, 4) and info.completed is not None
        assert sorted(map(str, seen)) == ["0", "1", "3", "Café ☕"]
        (group,) = queue.backend.dead_groups(lmq.models.DeadFilter())
        assert group.count == 1 and group.task_name == "import_row"


# --- schema 3: circuit breakers, rate limits, schedules ---------------------------------------


def _make_schema(prefix: str, version: int) -> None:
    """What an lmq of schema ``version`` left: its migrations only, run in order."""
    from lmq.backends.rows import split_sql
    from lmq.backends.sqlfile import load_migrations

    with connect() as conn, conn.cursor() as cur:
        for number, _name, sql in load_migrations("lmq.backends.mysql.migrations", prefix):
            if number <= version:
                for statement in split_sql(sql):
                    cur.execute(statement)
        cur.execute(
            f"INSERT INTO {prefix}queue_meta (`key`, `value`) VALUES ('schema_version', %s)",
            (str(version),),
        )


def _reads(url: str, sql: str, params: dict[str, Any]) -> tuple[int, list[Any]]:
    """Run one statement in a transaction that is rolled back: the index entries it read
    after its first (Handler_read_next) and its rows."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cur.execute("BEGIN")
        cur.execute("FLUSH STATUS")
        cur.execute(sql, params)
        rows = list(cur.fetchall())
        cur.execute("SHOW SESSION STATUS LIKE 'Handler_read_next'")
        read = int(cur.fetchone()[1])
        cur.execute("ROLLBACK")
    return read, rows


def test_lmq_migrate_upgrades_a_schema_2_database() -> None:
    """A version-2 database with work in it: `lmq migrate` applies 0003 (one rebuild of the
    task table), the catalog is then schema.sql's, the old rows keep working (a pending task
    runs, a dead letter re-queues), and tasks with keys, breakers, rate limits and schedules
    work on it."""
    old, fresh = fresh_prefix(), fresh_prefix()
    try:
        _make_schema(old, 2)
        with connect() as conn, conn.cursor() as cur:  # rows schema 2 wrote
            cur.execute(
                f"INSERT INTO {old}queue_tasks (task_name, payload, status, batch) VALUES"
                " ('job', '{\"n\": 1}', 'pending', NULL), ('job', '{\"n\": 2}', 'done', 'b1'),"
                " ('job', '{\"n\": 3}', 'cancelled', NULL)"
            )
            cur.execute(
                f"INSERT INTO {old}queue_dead_letters (task_id, queue, task_name, payload,"
                " error, reason, fingerprint, died_at, review) VALUES (99, 'default', 'job',"
                " '{\"n\": 4}', 'ValueError: old', 'attempts used up', 'fp-old',"
                " UNIX_TIMESTAMP(), 'approved')"
            )
        url = with_options(BASE, prefix=old)
        with lmq.Queue(url) as q, pytest.raises(lmq.exceptions.SchemaMissing, match="migrate"):
            q.counts()
        done = subprocess.run(
            [sys.executable, "-m", "lmq", "migrate", "--url", url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        with lmq.Queue(with_options(BASE, prefix=fresh)) as q:
            q.migrate()
        assert _catalog(old) == _catalog(fresh)
        with lmq.Queue(url) as q:
            backend = q.backend
            assert isinstance(backend, MySQLBackend)
            assert backend.schema_version() == SCHEMA_VERSION == 3
            assert q.migrate() == []
            assert q.counts() == {**EMPTY, "pending": 1, "done": 1, "dead": 1}
            assert backend.breakers() == backend.rate_limits() == backend.schedules() == []
            (letter,) = backend.dead_letters(lmq.models.DeadFilter())
            (revived,) = backend.requeue_dead(lmq.models.DeadSelector(ids=(letter.id,)))
            keyed = backend.enqueue(
                [
                    NewTask("job", '{"n": 5}', breaker="crm"),
                    NewTask("job", '{"n": 6}', rate_key="k"),
                ]
            )
            got = backend.get(keyed[1])
            assert got is not None and (got.breaker, got.rate_key) == (None, "k")
            rated = backend.claim(ClaimRequest("w", 10, 30.0, rate_key="k")).tasks
            assert [(c.id, c.rate_key) for c in rated] == [(keyed[1], "k")]
            backend.complete(CompleteBatch("w", done=[keyed[1]]))
            seen: list[Any] = []

            @q.task
            def job(n: int) -> None:
                seen.append(n)

            assert run_burst(q) == 0
            assert sorted(seen) == [1, 4, 5]
            assert q.get(revived).status == "done"  # type: ignore[union-attr]
    finally:
        drop_prefix(BASE.split("?", 1)[0], old)
        drop_prefix(BASE.split("?", 1)[0], fresh)


def test_migration_3_cut_short_is_finished_by_the_next_run() -> None:
    """0003's first statements ran (the key columns are there), its table rebuild did not."""
    prefix = fresh_prefix()
    try:
        _make_schema(prefix, 2)
        with connect() as conn, conn.cursor() as cur:
            cur.execute(f"ALTER TABLE {prefix}queue_tasks ADD COLUMN breaker VARCHAR(191) NULL")
            cur.execute(f"ALTER TABLE {prefix}queue_tasks ADD COLUMN rate_key VARCHAR(191) NULL")
        with lmq.Queue(with_options(BASE, prefix=prefix)) as q:
            assert q.migrate() == [3]
            assert q.migrate() == []
            (task_id,) = q.backend.enqueue([NewTask("t", "{}", rate_key="k")])
            assert claim(q.backend) == []  # the rebuilt ready index leaves it out
            assert ids(q.backend.claim(ClaimRequest("w", 5, 30.0, rate_key="k")).tasks) == [task_id]
    finally:
        drop_prefix(BASE.split("?", 1)[0], prefix)


@pytest.mark.parametrize("mode", MODES)
def test_rate_and_probe_claims_read_their_key_in_index_order(mode: str) -> None:
    """A rate claim reads its key's part of the ready index from the first entry (no sort of
    the key's whole backlog, which under FOR UPDATE would lock it all); a plain claim reads
    the `rate_key IS NULL` part, never a rate-keyed row, and passes over tasks behind an
    open breaker only by their own entries; a probe picks from the ready index's plain part
    (then the keyed parts) up to the breaker's first task, without locking the others."""
    with prefixed(claim=mode) as url, lmq.Queue(url) as q:
        backend = q.backend
        assert isinstance(backend, MySQLBackend)
        p = backend.prefix
        backend.enqueue([NewTask("r", "{}", rate_key="api") for _ in range(3000)])
        backend.enqueue([NewTask("x", "{}", breaker="crm") for _ in range(1000)])
        backend.enqueue([NewTask("t", "{}") for _ in range(200)])
        with connect() as conn, conn.cursor() as cur:
            cur.execute(f"ANALYZE TABLE {p}queue_tasks")  # the statistics a live table has
            cur.fetchall()
        time.sleep(0.05)
        token = {"now": time.time() + 1, "until": time.time() + 30, "worker": "w", "limit": 5}
        with backend.connection() as conn, conn.cursor() as cur:
            rate_sql = backend._claim_plan(cur, ClaimRequest("w", 5, 30.0, rate_key="api"))
            probe_sql = backend._claim_plan(cur, ClaimRequest("w", 5, 30.0, breaker="crm"))
            plain_sql = backend._claim_plan(cur, ClaimRequest("w", 5, 30.0))
        assert rate_sql and probe_sql and plain_sql
        for (sql, params), index, most in (
            (rate_sql, f"{p}queue_tasks_ready", 20),
            (probe_sql, f"{p}queue_tasks_ready", 20),  # (its tasks come first here)
            (plain_sql, f"{p}queue_tasks_ready", 20),
        ):
            plan, *_breakers = _explain(url, sql, {**token, **params})
            assert plan["key"] == index, plan
            assert "filesort" not in (plan["Extra"] or ""), plan
            read, rows = _reads(url, sql, {**token, **params})
            assert len(rows) == 5 and read < most, (index, read)
        # the breaker opens: its 1,000 tasks are passed over (their own index entries only)
        assert backend.put_breaker(lmq.models.BreakerState("crm", state="open", version=1), 0)
        read, rows = _reads(url, plain_sql[0], {**token, **plain_sql[1]})
        assert len(rows) == 5 and read < 1000 + 20, read
        assert {backend.get(r[0]).task_name for r in rows} == {"t"}  # type: ignore[union-attr]
        got = backend.claim(ClaimRequest("w", 500, 30.0)).tasks
        assert len(got) == 200 and {c.task_name for c in got} == {"t"}
        probed = backend.claim(ClaimRequest("p", 2, 30.0, breaker="crm")).tasks
        assert {c.task_name for c in probed} == {"x"}
        assert not backend.has_ready(None)
        due = backend.next_due(None)
        assert due is not None and due > 20  # the leases taken above, not the blocked tasks
        assert backend.rate_keys_ready(None) == {"api": (0.0, "r")}


def test_counts_with_rate_keyed_tasks(mode_queue: lmq.Queue) -> None:
    """Rate-keyed pending rows are not in queue_ready's pending part; counts still sees them
    as pending (not done)."""
    q, backend = mode_queue, mode_queue.backend
    backend.enqueue([NewTask("r", "{}", rate_key="k", queue=name) for name in ("a", "a", "b")])
    backend.enqueue([NewTask("t", "{}", breaker="crm", queue="a")])
    got = backend.claim(ClaimRequest("w", 1, 30.0, rate_key="k")).tasks
    complete(backend, "w", done=ids(got))
    counts = q.counts()
    assert counts == {**EMPTY, "pending": 3, "done": 1}
    per = backend.counts().by_queue
    assert per["a"]["pending"] + per["b"]["pending"] == 3
    assert per["a"]["done"] + per["b"]["done"] == 1


def test_a_requeue_reinserting_a_deleted_row_restores_the_keys(mode_queue: lmq.Queue) -> None:
    q, backend = mode_queue, mode_queue.backend
    (task_id,) = backend.enqueue([NewTask("t", "{}", breaker="crm", rate_key="api")])
    (got,) = backend.claim(ClaimRequest("w", 5, 30.0, rate_key="api")).tasks
    assert (got.breaker, got.rate_key) == ("crm", "api")
    complete(backend, "w", burials=[burial(task_id)])
    (letter,) = backend.dead_letters(lmq.models.DeadFilter())
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"DELETE FROM {backend.prefix}queue_tasks WHERE id = %s", (task_id,))
    assert backend.requeue_dead(lmq.models.DeadSelector(ids=(letter.id,))) == [task_id]
    task = q.get(task_id)
    assert task is not None and (task.status, task.breaker, task.rate_key) == (
        "pending",
        "crm",
        "api",
    )
    assert claim(backend) == []
    assert ids(backend.claim(ClaimRequest("w", 5, 30.0, rate_key="api")).tasks) == [task_id]


def test_compare_and_set_counts_the_row_even_when_nothing_else_changed(
    mode_queue: lmq.Queue,
) -> None:
    """The CAS is one UPDATE guarded on the version; the version always changes, so it
    counts as one changed row whatever the client's FOUND_ROWS flag (a put whose other
    fields are unchanged still wins, once)."""
    backend = mode_queue.backend
    state = lmq.models.RateState("api", 10, 1.0, 1, tat=5.0, updated=1.0, version=1)
    assert backend.put_rate_limit(state, 0)
    assert not backend.put_rate_limit(state, 0)  # the row exists: INSERT's duplicate key
    same = dataclasses.replace(state, version=2)
    assert backend.put_rate_limit(same, 1)
    assert not backend.put_rate_limit(same, 1)
    assert backend.rate_limits() == [same]
    for flags in (0, pymysql.constants.CLIENT.FOUND_ROWS):
        with connect(client_flag=flags) as conn, conn.cursor() as cur:
            changed = cur.execute(
                backend.q["update_rate_limit"],
                {**lmq.backends.rows.rate_values(same, 3), "expected": 2},
            )
            assert changed == 1
            cur.execute(
                f"UPDATE {backend.prefix}queue_rate_limits SET version = 2 WHERE name = 'api'"
            )


def test_a_wordpress_database_runs_a_breaker_a_rate_limit_and_a_schedule(
    wordpress_db: str,
) -> None:
    """With ?prefix=wp_: the seed's bare $wpdb->insert (no keys) is still a runnable task;
    keyed tasks, the state tables and a schedule's fire work beside WordPress's tables."""
    database = urlsplit(wordpress_db).path.lstrip("/")
    with lmq.Queue(wordpress_db) as queue:
        queue.migrate()
        backend = queue.backend
        with connect(database=database) as conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO wp_queue_tasks (task_name, payload, status, created)"
                " VALUES ('import_row', '{\"row\": 1}', 'pending', NOW())"
            )
            bare = cur.lastrowid
        (keyed,) = backend.enqueue([NewTask("import_row", '{"row": 2}', rate_key="crm")])
        assert backend.put_breaker(lmq.models.BreakerState("crm", version=1), 0)
        sched = lmq.models.ScheduleState("tick", "import_row", every=1.0, next_tick=1.0, version=1)
        assert backend.put_schedule(sched, 0)
        fired = dataclasses.replace(sched, next_tick=2.0, last_tick=1.0, version=2)
        tick = NewTask("import_row", '{"row": 3}', unique_key="lmq:schedule:tick:1")
        (ticked,) = backend.fire_schedule(fired, 1, [tick]) or []
        assert backend.fire_schedule(fired, 1, [tick]) is None
        assert {c.id for c in claim(backend, limit=10)} == {bare, ticked}
        assert ids(backend.claim(ClaimRequest("w", 5, 30.0, rate_key="crm")).tasks) == [keyed]
        with connect(database=database) as conn, conn.cursor() as cur:
            cur.execute("SHOW TABLES LIKE 'wp\\_queue\\_%'")
            assert {r[0] for r in cur.fetchall()} >= {
                "wp_queue_breakers",
                "wp_queue_rate_limits",
                "wp_queue_schedules",
            }


@pytest.mark.parametrize("mode", MODES)
def test_plain_claims_leave_the_breaker_check_out_until_they_meet_a_breaker(mode: str) -> None:
    """Without a task with a breaker in sight, the claim statement has no subquery (MariaDB
    plans one on every execution); a claim that meets one claims again with the check, in
    the same transaction, so a task behind an open breaker is never returned."""
    with prefixed(claim=mode) as url, lmq.Queue(url) as q:
        backend = q.backend
        assert isinstance(backend, MySQLBackend)
        p = backend.prefix
        fast = backend._claim_statement(None, (), checked=False)
        assert fast is not None and f"{p}queue_breakers" not in fast[0]
        token = {"now": time.time() + 1, "until": time.time() + 30, "worker": "w", "limit": 5}
        (plan,) = _explain(url, fast[0], {**token, **fast[1]})
        assert plan["key"] == f"{p}queue_tasks_ready", plan
        plain = backend.enqueue([NewTask("t", "{}") for _ in range(3)])
        assert ids(backend.claim(ClaimRequest("w", 2, 30.0)).tasks) == plain[:2]
        assert not backend._checking()
        # a high-priority task behind an open breaker, first in claim order
        assert backend.put_breaker(lmq.models.BreakerState("crm", state="open", version=1), 0)
        (blocked,) = backend.enqueue([NewTask("x", "{}", priority=9, breaker="crm")])
        assert ids(backend.claim(ClaimRequest("w", 1, 30.0)).tasks) == plain[2:]
        assert backend._checking()  # the claim met a breaker: checked from now on
        assert claim(backend) == []
        task = backend.get(blocked)
        assert task is not None and task.status == "pending" and task.attempts == 0
        backend._check_until = 0.0  # as 10 s later: unchecked again, and still exact
        result = backend.complete(CompleteBatch("w", done=plain), ClaimRequest("w", 5, 30.0))
        assert result is not None and result.tasks == []
        assert backend.put_breaker(lmq.models.BreakerState("crm", version=2), 1)  # closed
        backend._check_until = 0.0
        (got,) = backend.claim(ClaimRequest("w", 5, 30.0)).tasks
        assert (got.id, got.breaker) == (blocked, "crm")


def test_a_probe_finds_a_rate_keyed_task_past_the_keys_done_rows(mode_queue: lmq.Queue) -> None:
    """No task of the breaker without a rate key: the probe reads each key's pending part
    (the keys from a loose scan), so a long history of done rows costs it nothing."""
    backend = mode_queue.backend
    assert isinstance(backend, MySQLBackend)
    done = backend.enqueue([NewTask("r", "{}", rate_key="api") for _ in range(500)])
    with connect() as conn, conn.cursor() as cur:
        cur.execute(
            f"UPDATE {backend.prefix}queue_tasks SET status = 'done' WHERE id IN "
            f"({','.join(map(str, done))})"
        )
    backend.enqueue([NewTask("t", "{}", breaker="other"), NewTask("r", "{}", rate_key="zz")])
    (wanted,) = backend.enqueue([NewTask("r", "{}", rate_key="api", breaker="crm")])
    assert backend.put_breaker(lmq.models.BreakerState("crm", state="open", version=1), 0)
    assert [(c.task_name, c.breaker) for c in claim(backend)] == [("t", "other")]
    (got,) = backend.claim(ClaimRequest("p", 3, 30.0, breaker="crm")).tasks
    assert (got.id, got.breaker, got.rate_key) == (wanted, "crm", "api")
    assert backend.claim(ClaimRequest("p", 3, 30.0, breaker="crm")).tasks == []
    task = backend.get(wanted)
    assert task is not None and (task.status, task.locked_by) == ("processing", "p")
