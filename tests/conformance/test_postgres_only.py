"""PostgreSQL-only behaviour: the schema (fresh == migrated, and `lmq migrate` from schemas
1 and 2), the seed's bare INSERT, the NOTIFY trigger and the LISTEN wake source (also across a
killed connection), PgBouncer in transaction mode, schema and connection errors,
concurrent migrates and claims, paused queues in the claim's plan, concurrent batch
settling and approved re-queues, batches inside the application's transaction, the plans
of the claims with breakers and rate keys (an open breaker's backlog is never walked).

Runs when ``LMQ_TEST_POSTGRES_URL`` names a server (``.ci/run`` sets it); every test
works under a fresh prefix of its own and drops it afterwards.  The PgBouncer test starts
a private ``pgbouncer`` (Debian package ``pgbouncer``) on a port of its own, in front of
that server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lmq
from lmq.backends.postgres import PostgresBackend
from lmq.backends.postgres.backend import SCHEMA_VERSION
from lmq.backends.sqlfile import load_migrations
from lmq.models import (
    BreakerState,
    ClaimRequest,
    CompleteBatch,
    DeadFilter,
    DeadSelector,
    NewTask,
    Review,
    ScheduleState,
    TaskId,
)
from lmq.url import parse_url
from lmq_testservers import drop_prefix

from .helpers import claim, complete, ids, kill, run_burst, wait_for

PG_URL = os.environ.get("LMQ_TEST_POSTGRES_URL", "")
pytestmark = pytest.mark.skipif(not PG_URL, reason="set LMQ_TEST_POSTGRES_URL to a PostgreSQL URL")


def _base() -> str:
    return PG_URL.split("?", 1)[0]


def _with(url: str, **options: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


def _raw() -> Any:
    import psycopg

    return psycopg.connect(_base(), autocommit=True, connect_timeout=5)


def _new_prefix() -> str:
    return f"p{uuid.uuid4().hex[:8]}_"


@pytest.fixture
def prefix() -> Iterator[str]:
    p = _new_prefix()
    try:
        yield p
    finally:
        drop_prefix(_base(), p)


@pytest.fixture
def pq(prefix: str) -> Iterator[lmq.Queue]:
    with lmq.Queue(_with(_base(), prefix=prefix)) as q:
        q.migrate()
        yield q


# --- the schema ------------------------------------------------------------------------------


def _catalog(conn: Any, prefix: str) -> dict[str, set[tuple[Any, ...]]]:
    """Everything lmq creates under ``prefix``, with the prefix written as {prefix}."""
    like = prefix.replace("_", r"\_") + "%"

    def norm(value: Any) -> Any:
        return value.replace(prefix, "{prefix}") if isinstance(value, str) else value

    def rows(sql: str) -> set[tuple[Any, ...]]:
        return {tuple(norm(v) for v in r) for r in conn.execute(sql, (like,)).fetchall()}

    return {
        "columns": rows(
            "SELECT table_name, column_name, data_type, column_default, is_nullable,"
            " is_identity, identity_generation, character_maximum_length"
            " FROM information_schema.columns WHERE table_name LIKE %s"
        ),
        "indexes": rows(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE tablename LIKE %s"
        ),
        "constraints": rows(
            "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)"
            " FROM pg_constraint c WHERE c.conrelid::regclass::text LIKE %s"
        ),
        "triggers": rows(
            "SELECT event_object_table, trigger_name, event_manipulation, action_timing,"
            " action_orientation, action_statement"
            " FROM information_schema.triggers WHERE event_object_table LIKE %s"
        ),
        "functions": rows(
            "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p WHERE p.proname LIKE %s"
        ),
        "tables": rows("SELECT tablename, '' FROM pg_tables WHERE tablename LIKE %s"),
    }


def test_fresh_schema_equals_the_migrations_applied_in_order() -> None:
    fresh, migrated = _new_prefix(), _new_prefix()
    try:
        backend = PostgresBackend(parse_url(_with(_base(), prefix=fresh)))
        with _raw() as conn:
            conn.execute(backend.schema_sql().encode())
            migrations = load_migrations("lmq.backends.postgres.migrations", migrated)
            assert [m[0] for m in migrations] == list(range(1, SCHEMA_VERSION + 1))
            for _number, _name, sql in migrations:
                conn.execute(sql.encode())
            a, b = _catalog(conn, fresh), _catalog(conn, migrated)
        backend.close()
        assert len(a["tables"]) == 9 and len(a["indexes"]) >= 22 and a["triggers"]
        assert {f[0] for f in a["functions"]} == {"{prefix}queue_now", "{prefix}queue_notify"}
        for kind in a:
            assert a[kind] == b[kind], kind
    finally:
        drop_prefix(_base(), fresh)
        drop_prefix(_base(), migrated)


def test_migrate_creates_every_object_under_the_prefix(prefix: str) -> None:
    with lmq.Queue(_with(_base(), prefix=prefix)) as q:
        assert q.migrate() == list(range(1, SCHEMA_VERSION + 1))
        assert q.migrate() == []
        assert q.backend.schema_version() == SCHEMA_VERSION
    with _raw() as conn:
        cat = _catalog(conn, prefix)
    assert {t[0] for t in cat["tables"]} == {
        "{prefix}queue_tasks",
        "{prefix}queue_dead_letters",
        "{prefix}queue_workers",
        "{prefix}queue_meta",
        "{prefix}queue_queues",
        "{prefix}queue_batches",
        "{prefix}queue_breakers",
        "{prefix}queue_rate_limits",
        "{prefix}queue_schedules",
    }
    assert all(i[1].startswith("{prefix}") for i in cat["indexes"])
    assert all(t[1].startswith("{prefix}") for t in cat["triggers"])


def test_concurrent_migrates_apply_the_schema_once(prefix: str) -> None:
    url = _with(_base(), prefix=prefix)
    barrier = threading.Barrier(4)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            with lmq.Queue(url) as q:
                barrier.wait()
                results.append(q.migrate())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(results) == [[], [], [], list(range(1, SCHEMA_VERSION + 1))]


def test_a_long_prefix_works() -> None:
    p = "p" + uuid.uuid4().hex[:14] + "_"  # 16 characters, the most a prefix may have
    try:
        with lmq.Queue(_with(_base(), prefix=p)) as q:
            q.migrate()
            task_id = q.enqueue("t", unique_key="k")
            assert ids(claim(q.backend)) == [task_id]
    finally:
        drop_prefix(_base(), p)


# --- the seed's bare INSERT ------------------------------------------------------------------


@pytest.mark.parametrize("created", ["2024-06-01 14:03:00", "garbage"])
def test_the_seeds_bare_insert_makes_a_runnable_task(
    pq: lmq.Queue, prefix: str, created: str
) -> None:
    seen: list[tuple[int, str]] = []

    @pq.task
    def import_row(row: int, sku: str) -> None:
        seen.append((row, sku))

    with _raw() as conn:
        (task_id,) = conn.execute(
            f"INSERT INTO {prefix}queue_tasks (task_name, payload, status, created)"
            " VALUES (%s, %s, 'pending', %s) RETURNING id",
            ("import_row", '{"row": 7, "sku": "A-1"}', created),
        ).fetchone()
    task = pq.get(task_id)
    assert task is not None
    assert (task.status, task.attempts, task.queue, task.priority, task.created) == (
        "pending",
        0,
        "default",
        0,
        created,
    )
    assert pq.backend.has_ready(None)
    assert run_burst(pq) == 0
    assert seen == [(7, "A-1")]
    done = pq.get(task_id)
    assert done is not None and done.status == "done"


# --- wake-ups --------------------------------------------------------------------------------


class _Calls:
    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.n += 1


def _settled(calls: _Calls, quiet: float = 0.3) -> int:
    """The count once no call came for ``quiet`` seconds."""
    last, since = calls.n, time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.02)
        if calls.n != last:
            last, since = calls.n, time.monotonic()
    return last


def test_inserts_from_anyone_reach_the_wake_source(pq: lmq.Queue, prefix: str) -> None:
    wake = pq.backend.wake_source()
    assert wake is not None
    calls = _Calls()
    wake.start(calls)
    try:
        assert wake.connected.wait(10)
        base = _settled(calls)
        # another program's bare INSERT, committed: one wake-up
        with _raw() as conn:
            conn.execute(
                f"INSERT INTO {prefix}queue_tasks (task_name, payload, status, created)"
                " VALUES ('t', '{}', 'pending', 'now')"
            )
        wait_for(lambda: calls.n > base, timeout=5)
        assert _settled(calls) == base + 1
        # a bulk enqueue: one statement, one notification
        base = calls.n
        pq.enqueue_many([("t", {"i": i}) for i in range(2000)])
        wait_for(lambda: calls.n > base, timeout=5)
        assert _settled(calls) == base + 1
        # an uncommitted insert wakes nobody; its commit does
        base = calls.n
        with _raw() as conn, conn.transaction():
            conn.execute(f"INSERT INTO {prefix}queue_tasks (task_name) VALUES ('t')")
            conn.execute(f"INSERT INTO {prefix}queue_tasks (task_name) VALUES ('t')")
            time.sleep(0.3)
            assert calls.n == base
        wait_for(lambda: calls.n > base, timeout=5)
        assert _settled(calls) == base + 1  # identical notifications fold into one
        # a task released (ready again at once) wakes the others too
        base = calls.n
        got = claim(pq.backend, "w1", limit=1)
        complete(pq.backend, "w1", released=ids(got))
        wait_for(lambda: calls.n > base, timeout=5)
    finally:
        wake.stop()


def test_a_breaker_that_closes_wakes_idle_workers(pq: lmq.Queue) -> None:
    """Its tasks are claimable again, and nothing was inserted: put_breaker notifies when
    a breaker closes (or its row is deleted) from open or half_open, and only then."""
    backend = pq.backend
    wake = backend.wake_source()
    assert wake is not None
    calls = _Calls()
    wake.start(calls)
    try:
        assert wake.connected.wait(10)
        base = _settled(calls)
        opened = BreakerState("crm", "open", version=1)
        assert backend.put_breaker(opened, 0)
        counted = BreakerState("other", "closed", failures=1, version=1)
        assert backend.put_breaker(counted, 0)
        assert backend.put_breaker(dataclasses.replace(counted, failures=2, version=2), 1)
        assert _settled(calls) == base  # opening, and counting while closed: no wake-up
        closed = dataclasses.replace(opened, state="closed", version=2)
        assert not backend.put_breaker(closed, 5)  # a lost compare-and-set wakes nobody
        assert _settled(calls) == base
        assert backend.put_breaker(closed, 1)
        wait_for(lambda: calls.n > base, timeout=5)
        base = _settled(calls)
        assert backend.put_breaker(dataclasses.replace(closed, state="open", version=3), 2)
        assert backend.delete_breaker("other")  # it was closed: nothing to announce
        assert _settled(calls) == base
        assert backend.delete_breaker("crm")  # open: its tasks are back
        wait_for(lambda: calls.n > base, timeout=5)
    finally:
        wake.stop()


def test_the_wake_source_survives_its_connection_being_killed(pq: lmq.Queue, prefix: str) -> None:
    wake = pq.backend.wake_source()
    assert wake is not None
    calls = _Calls()
    wake.start(calls)
    try:
        assert wake.connected.wait(10)
        assert wake._conn is not None
        pid = wake._conn.info.backend_pid
        with _raw() as conn:
            assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        wait_for(lambda: wake.reconnects >= 1 and wake.connected.is_set(), timeout=10)
        assert wake._conn is not None and wake._conn.info.backend_pid != pid
        base = _settled(calls)
        pq.enqueue("t")
        wait_for(lambda: calls.n > base, timeout=5)
    finally:
        started = time.monotonic()
        wake.stop()
        assert time.monotonic() - started < 2
    assert wake._thread is None


def test_a_worker_wakes_on_an_insert_from_another_program(pq: lmq.Queue, prefix: str) -> None:
    ran = threading.Event()

    @pq.task
    def job() -> None:
        ran.set()

    # idle_poll far longer than the test: only the notification can wake the worker
    worker = lmq.Worker(
        pq, lmq.WorkerSettings(install_signal_handlers=False, idle_poll=30, loop="asyncio")
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(pq.workers, timeout=10)
        time.sleep(0.5)  # idle, waiting on its wake source
        with _raw() as conn:
            conn.execute(
                f"INSERT INTO {prefix}queue_tasks (task_name, payload, status, created)"
                " VALUES ('job', '{}', 'pending', 'now')"
            )
        assert ran.wait(10)
    finally:
        worker.stop()
        thread.join(20)


# --- schema and connection errors ------------------------------------------------------------


def test_tables_missing_names_lmq_migrate(prefix: str) -> None:
    with lmq.Queue(_with(_base(), prefix=prefix)) as q:
        for call in (lambda: q.enqueue("t"), q.counts, lambda: claim(q.backend)):
            with pytest.raises(lmq.SchemaMissing, match="lmq migrate"):
                call()
        assert q.backend.schema_version() is None
        q.migrate()
        assert q.enqueue("t")


@pytest.mark.parametrize(("version", "says"), [("0", "lmq migrate"), ("99", "upgrade lmq")])
def test_an_older_or_newer_schema_is_refused(prefix: str, version: str, says: str) -> None:
    url = _with(_base(), prefix=prefix)
    with lmq.Queue(url) as q:
        q.migrate()
    with _raw() as conn:
        conn.execute(
            f"UPDATE {prefix}queue_meta SET value = %s WHERE key = 'schema_version'", (version,)
        )
    with lmq.Queue(url) as q:
        with pytest.raises(lmq.SchemaMissing, match=says):
            q.counts()
        if version == "0":
            assert q.migrate() == list(range(1, SCHEMA_VERSION + 1))  # idempotent upgrade
            assert q.counts() == {"pending": 0, "processing": 0, "done": 0, "dead": 0}
        else:
            with pytest.raises(lmq.SchemaMissing, match="upgrade lmq"):
                q.migrate()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_a_closed_port_is_unavailable_within_five_seconds() -> None:
    url = f"postgresql://root@127.0.0.1:{_free_port()}/test?prefix=x_"
    with lmq.Queue(url) as q:
        for _ in range(2):  # and again: the second call fails fast too
            started = time.monotonic()
            with pytest.raises(lmq.BackendUnavailable, match=r"127\.0\.0\.1"):
                q.counts()
            assert time.monotonic() - started < 5


def test_the_password_never_shows(prefix: str) -> None:
    url = f"postgresql://root:s3cret@127.0.0.1:{_free_port()}/test?prefix={prefix}"
    with lmq.Queue(url) as q:
        assert "s3cret" not in q.backend.url
        with pytest.raises(lmq.BackendUnavailable) as info:
            q.counts()
    assert "s3cret" not in str(info.value)


def test_unknown_options_are_refused() -> None:
    with pytest.raises(lmq.ConfigError, match="pool_sise"):
        PostgresBackend(parse_url(_with(_base(), prefix="x_", pool_sise="3")))
    with pytest.raises(lmq.ConfigError, match="pgbouncer"):
        PostgresBackend(parse_url(_with(_base(), pgbouncer="maybe")))


def test_killed_connections_are_replaced(prefix: str) -> None:
    app = f"lmqtest{uuid.uuid4().hex[:8]}"
    with lmq.Queue(_with(_base(), prefix=prefix, application_name=app)) as q:
        q.migrate()
        task_id = q.enqueue("t")
        with _raw() as conn:  # what a server restart does to every connection
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (app,),
            ).fetchone()[0]
        assert killed >= 1
        failures = 0
        for _ in range(3):
            try:
                assert q.get(task_id) is not None
                break
            except lmq.BackendUnavailable:
                failures += 1  # the call that met the dead connection
        assert failures <= 1
        assert q.counts()["pending"] == 1


# --- claims ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pipeline", ["false", "true"])
def test_skip_locked_claims_from_several_threads_never_share_a_task(
    prefix: str, pipeline: str
) -> None:
    """Workers in threads, each with its own Queue, on the hot path (ack + claim)."""
    url = _with(_base(), prefix=prefix, pipeline=pipeline)
    with lmq.Queue(url) as q:
        q.migrate()
        made = set(q.enqueue_many([("t", {"i": i}) for i in range(3000)]))
    threads_n = 6
    got: dict[str, list[TaskId]] = {f"w{n}": [] for n in range(threads_n)}
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads_n)

    def work(n: int) -> None:
        worker = f"w{n}"
        try:
            with lmq.Queue(url) as mine:
                b = mine.backend
                barrier.wait()
                req = ClaimRequest(worker, 7 + n * 5, 60)
                held = b.claim(req).tasks
                while held:
                    got[worker].extend(t.id for t in held)
                    result = b.complete(CompleteBatch(worker, done=[t.id for t in held]), req)
                    assert result is not None
                    held = result.tasks
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    claimed = Counter(i for mine in got.values() for i in mine)
    assert set(claimed) == made
    assert set(claimed.values()) == {1}
    with lmq.Queue(url) as q:
        assert q.counts() == {"pending": 0, "processing": 0, "done": 3000, "dead": 0}
        assert sum(1 for w in got.values() if w) > 1  # the work really was shared


def test_claim_with_several_queues_keeps_the_order(pq: lmq.Queue) -> None:
    low = pq.enqueue("t", queue="a")
    high = pq.enqueue("t", queue="b", priority=5)
    pq.enqueue("t", queue="c", priority=9)
    assert ids(claim(pq.backend, queues=("a", "b"), limit=1)) == [high]
    assert ids(claim(pq.backend, queues=("a", "b"))) == [low]


# --- PgBouncer in transaction mode -----------------------------------------------------------


def _pgbouncer() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )
    if found is None:
        pytest.fail(
            "pgbouncer is not installed: apt-get install -y pgbouncer (Debian package), "
            "which .ci/run installs"
        )
    return found


@pytest.fixture
def bouncer() -> Iterator[str]:
    """A private PgBouncer (transaction pooling) in front of the test server: its URL."""
    from urllib.parse import urlsplit

    binary = _pgbouncer()
    server = urlsplit(_base())
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="lmq-pgbouncer-"))
    as_root = os.geteuid() == 0  # pgbouncer refuses to run as root
    user = server.username or "root"
    (workdir / "userlist.txt").write_text(f'"{user}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.hostname or '127.0.0.1'} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {workdir / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        "default_pool_size = 4\n"
        "max_client_conn = 200\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"
        f"pidfile = {workdir / 'pgbouncer.pid'}\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    cmd = [binary, str(workdir / "pgbouncer.ini")]
    if as_root:
        shutil.chown(workdir, "postgres")
        for f in workdir.iterdir():
            shutil.chown(f, "postgres")
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    out = workdir / "pgbouncer.log"
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen(cmd, stdout=devnull, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                log = out.read_text() if out.exists() else "(no log)"
                pytest.fail(f"pgbouncer exited {proc.returncode}: {log}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                pytest.fail("pgbouncer did not listen within 10 s")
            time.sleep(0.05)
        path = server.path or "/test"
        yield f"postgresql://{user}@127.0.0.1:{port}{path}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


def test_behind_pgbouncer_in_transaction_mode(bouncer: str, prefix: str) -> None:
    url = _with(bouncer, prefix=prefix, pgbouncer="true")
    with lmq.Queue(url) as q:
        assert q.migrate() == list(range(1, SCHEMA_VERSION + 1))
        assert q.backend.wake_source() is None  # no LISTEN through a transaction pooler
        a = q.enqueue("t", {"n": 1})
        assert q.enqueue("t", unique_key="k") == q.enqueue("t", unique_key="k")
        many = q.enqueue_many([("t", {"i": i}) for i in range(500)])
        assert len(set(many)) == 500
        (first,) = claim(q.backend, "w1", limit=1)
        assert first.id == a
        complete(q.backend, "w1", done=[a])

        # many threads, many repetitions of each statement (a server-side prepared
        # statement would be missing on the next server connection PgBouncer hands out)
        errors: list[BaseException] = []

        def hammer(n: int) -> None:
            try:
                with lmq.Queue(url) as mine:
                    for _ in range(15):
                        got = claim(mine.backend, f"h{n}", limit=3)
                        complete(mine.backend, f"h{n}", released=ids(got))
                        mine.counts()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []

        ran: list[int] = []

        @q.task
        def t(n: int = 0, i: int = -1) -> None:
            ran.append(i)

        assert run_burst(q, concurrency=20) == 0
        assert len(ran) == 501  # the unique one and the 500
        assert q.counts() == {"pending": 0, "processing": 0, "done": 502, "dead": 0}

        # the issue-4 verbs through the pooler: batches, pauses, cancel, review
        q.pause("slow")
        q.enqueue_many([("t", {}) for _ in range(3)], queue="slow")
        assert q.backend.paused_queues().keys() == {"slow"}
        q.enqueue_many([("t", {"i": i}) for i in range(5)], batch="b", on_complete=("t", {}))
        cancelled = q.enqueue("t", {"i": 99})
        assert q.backend.cancel(lmq.models.CancelSelector(ids=[cancelled])) == [cancelled]
        assert run_burst(q) == 0
        info = q.backend.batch("b")
        assert info is not None and info.done == 5 and info.followup_id is not None
        assert q.get(info.followup_id).status == "done"  # type: ignore[union-attr]
        assert q.stats().pending == 3 and q.stats().cancelled == 1
        q.resume("slow")
        _task_id, letter = kill(q, message="order 17 failed")
        (group,) = q.backend.dead_groups(DeadFilter())
        assert group.count == 1 and group.example_id == letter.id
        review = Review(DeadSelector(fingerprint=group.fingerprint), True, "ops")
        assert q.backend.review_dead(review) == 1
        assert q.backend.requeue_approved() == [letter.task_id]
        assert q.counts()["dead"] == 0

        # the issue-5 verbs through the pooler: every kind of claim (repeated: no prepared
        # statements), breakers, rate keys, deferrals, schedules
        b = q.backend
        complete(b, "w9", done=ids(claim(b, "w9", limit=100)))  # what is left from above
        assert b.put_breaker(BreakerState("crm", "open", version=1), 0)
        blocked = b.enqueue([NewTask("t", "{}", breaker="crm") for _ in range(3)])
        keyed = b.enqueue([NewTask("t", "{}", rate_key="api") for _ in range(6)])
        for _ in range(6):
            assert claim(b, "w9", queues=("default",)) == []
            assert not b.has_ready(("default",))
        assert b.rate_keys_ready(None) == {"api": (0, "t")}
        got = []
        for _ in range(6):
            got += ids(b.claim(ClaimRequest("w9", 1, 30.0, rate_key="api")).tasks)
        assert sorted(got) == sorted(keyed)
        complete(b, "w9", deferred=[lmq.models.DeferOutcome(got[0], 60.0)])
        probe = b.claim(ClaimRequest("w9", 10, 30.0, breaker="crm")).tasks
        assert sorted(ids(probe)) == sorted(blocked)
        s1 = ScheduleState("tick", "t", every=1.0, next_tick=1.0, version=1)
        assert b.put_schedule(s1, 0)
        fired = b.fire_schedule(
            ScheduleState("tick", "t", every=1.0, next_tick=2.0, version=2),
            1,
            [NewTask("t", "{}", unique_key="lmq:schedule:tick:1")],
        )
        assert fired is not None and len(fired) == 1
        assert b.fire_schedule(s1, 1, [NewTask("t", "{}")]) is None
        assert [s.version for s in b.schedules()] == [2]


# --- upgrading older schemas; the issue-4 and issue-5 verbs on this server -------------------


def _make_schema(prefix: str, version: int) -> None:
    """What an lmq of schema ``version`` left: the migrations up to it, schema_version."""
    migrations = load_migrations("lmq.backends.postgres.migrations", prefix)
    with _raw() as conn:
        for number, _name, sql in migrations:
            if number <= version:
                conn.execute(sql.encode())
        conn.execute(
            f"INSERT INTO {prefix}queue_meta (key, value) VALUES ('schema_version', %s)",
            (str(version),),
        )


@pytest.mark.parametrize("version", [1, 2, 3])
def test_lmq_migrate_upgrades_an_older_database(version: int) -> None:
    """A version-1, -2 or -3 database with work in it: refused until `lmq migrate` (the CLI),
    which applies the later migrations only; the catalog is then schema.sql's, the old rows
    are kept (and claimable: the ready indexes are rebuilt), and the new verbs and a worker
    run on it."""
    old, fresh = _new_prefix(), _new_prefix()
    try:
        _make_schema(old, version)
        with _raw() as conn:  # rows the old schema wrote
            conn.execute(
                f"INSERT INTO {old}queue_tasks (task_name, payload, status) VALUES"
                " ('job', '{\"n\": 1}', 'pending'), ('job', '{\"n\": 2}', 'done')"
            )
            conn.execute(
                f"INSERT INTO {old}queue_dead_letters (task_id, queue, task_name, payload,"
                " error, reason, fingerprint, died_at) VALUES (99, 'default', 'job', '{}',"
                " 'ValueError: old', 'attempts used up', 'fp-old',"
                " extract(epoch FROM now()))"
            )
            if version >= 2:  # a paused queue and a pending batch member
                conn.execute(f"INSERT INTO {old}queue_queues (name, paused) VALUES ('p', true)")
                conn.execute(
                    f"INSERT INTO {old}queue_tasks (task_name, payload, queue, batch) VALUES"
                    " ('job', '{\"n\": 4}', 'p', 'old-batch')"
                )
        url = _with(_base(), prefix=old)
        with lmq.Queue(url) as q, pytest.raises(lmq.SchemaMissing, match="lmq migrate"):
            q.counts()
        done = subprocess.run(
            [sys.executable, "-m", "lmq", "migrate", "--url", url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        with lmq.Queue(_with(_base(), prefix=fresh)) as q:
            q.migrate()
        with _raw() as conn:
            a, b = _catalog(conn, fresh), _catalog(conn, old)
        for kind in a:
            assert a[kind] == b[kind], kind
        with lmq.Queue(url) as q:
            assert q.backend.schema_version() == SCHEMA_VERSION == 4
            assert q.migrate() == []
            pending = 2 if version >= 2 else 1
            assert q.counts() == {"pending": pending, "processing": 0, "done": 1, "dead": 1}
            (group,) = q.backend.dead_groups(DeadFilter())
            assert (group.fingerprint, group.count, group.example) == (
                "fp-old",
                1,
                "ValueError: old",
            )
            if version >= 2:
                assert set(q.backend.paused_queues()) == {"p"}
                q.resume("p")
            seen: list[Any] = []

            @q.task
            def job(n: int) -> None:
                seen.append(n)

            @q.task
            def finished(name: str) -> None:
                seen.append(name)

            q.enqueue_many([("job", {"n": 3})], batch="b", on_complete=("finished", {"name": "b"}))
            assert run_burst(q) == 0
            assert sorted(map(str, seen)) == sorted(["1", "3", "b"] + ["4"] * (version >= 2))
            info = q.batch("b")
            assert info is not None and info.completed is not None
            assert info.done == 1 and info.followup_id is not None
            # schema 3's verbs on the upgraded tables
            backend = q.backend
            keyed = backend.enqueue([NewTask("job", '{"n": 5}', breaker="crm", rate_key="r")])
            assert backend.get(keyed[0]).breaker == "crm"  # type: ignore[union-attr]
            assert backend.put_breaker(BreakerState("crm", "open", version=1), 0)
            assert backend.breakers()[0].state == "open"
            assert not backend.has_ready(None)
            assert backend.rate_keys_ready(None) == {}
            assert ids(backend.claim(ClaimRequest("w", 5, 30.0, breaker="crm")).tasks) == keyed
            assert backend.put_schedule(ScheduleState("s", "job", version=1), 0)
            assert backend.fire_schedule(ScheduleState("s", "job", version=2), 1, []) == []
            assert backend.schedules()[0].version == 2
    finally:
        drop_prefix(_base(), old)
        drop_prefix(_base(), fresh)


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _plan_nodes(child)


def _walked(conn: Any, sql: str, params: dict[str, Any]) -> tuple[int, int, Any]:
    """Rows a statement's scans returned in all, and the most one node filtered out."""
    (plan,) = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).fetchone()[0]
    nodes = list(_plan_nodes(plan["Plan"]))
    scans = [n for n in nodes if "Scan" in n["Node Type"]]
    rows = sum(n.get("Actual Rows", 0) * n.get("Actual Loops", 1) for n in scans)
    return rows, max(n.get("Rows Removed by Filter", 0) for n in nodes), plan


def test_the_claim_is_unchanged_without_paused_queues_and_skips_a_paused_backlog(
    pq: lmq.Queue,
) -> None:
    backend = pq.backend
    assert isinstance(backend, PostgresBackend)
    for queues in (None, ("a",), ("a", "b")):
        for name in ("claim", "has_ready", "due"):
            plain = backend._queries(name, queues)
            assert backend._queries(name, queues, False) == plain
            assert "queue <> ALL" not in plain  # no paused queue: leases of every queue
            # a worker of every queue walks them queue by queue (schema 4), others theirs
            assert ("qs(name)" in plain) == (queues is None), (name, queues)
    # a paused backlog ahead of everything else in the ready order: the statements of a
    # worker of every queue walk only the open queue's rows (one probe per queue to find
    # the queues); a claim, "is anything ready" and "when is the next one due"
    pq.enqueue_many([("t", {}) for _ in range(5000)], queue="paused", priority=9)
    open_ids = pq.enqueue_many([("t", {}) for _ in range(20)], queue="open")
    params = {"worker": "w", "lease": 30.0, "limit": 10, "queues": [], "exclude": ["paused"]}
    with _raw() as conn:
        conn.execute(f"ANALYZE {backend.prefix}queue_tasks")
        for name in ("claim", "has_ready", "due"):
            sql = backend._queries(name, None, True)
            assert "<> ALL" in sql
            with conn.transaction(force_rollback=True):
                conn.execute("SET LOCAL enable_sort = off")
                conn.execute("SET LOCAL jit = off")
                rows, filtered, plan = _walked(conn, sql, params)
            assert rows < 200 and filtered < 200, (name, plan)
    assert backend.has_ready(None, ("paused",))
    assert backend.next_due(None, ("paused",)) == 0
    got = backend.claim(ClaimRequest("w", 10, 30.0, None, ("paused",))).tasks
    assert len(got) == 10 and set(ids(got)) <= set(open_ids)


def _index_scans(plan: dict[str, Any]) -> set[str]:
    return {n["Index Name"] for n in _plan_nodes(plan["Plan"]) if "Index Name" in n}


def test_an_open_breakers_backlog_and_rate_keyed_rows_are_never_walked(pq: lmq.Queue) -> None:
    """5,000 tasks behind an open breaker and 5,000 rate-keyed ones, ahead of everything in
    the ready order: the plain claim (of every queue, of some, with some paused), has_ready
    and "due" walk the plain rows' index and the rows of the closed breakers only, also
    once nothing is left for them (an idle worker's reads); the probe claim, the rate
    claim and rate_keys_ready walk only their own rows (rate_keys_ready: including a key's
    rows behind an open breaker).  Plain rows are found through the plain ready indexes
    (their predicate: no rate key, no breaker), whatever the statistics say."""
    backend = pq.backend
    assert isinstance(backend, PostgresBackend)
    p = backend.prefix
    assert backend.put_breaker(BreakerState("down", "open", version=1), 0)
    backend.enqueue([NewTask("t", "{}", priority=9, breaker="down") for _ in range(5000)])
    backend.enqueue([NewTask("t", "{}", priority=8, rate_key="k") for _ in range(5000)])
    backend.enqueue([NewTask("t", "{}", priority=7, breaker="down", rate_key="k2")] * 2000)
    behind_up = backend.enqueue([NewTask("t", "{}", priority=1, breaker="up")] * 20)
    plain_ids = pq.enqueue_many([("t", {}) for _ in range(20)])
    params: dict[str, Any] = {"worker": "w", "lease": 30.0, "limit": 10, "queues": [],
                              "exclude": [], "breaker": "up", "rate_key": "k"}  # fmt: skip
    cases = [
        ("claim", None, False, "plain", {f"{p}queue_tasks_queue_ready"}),
        ("claim", ("default",), False, "plain", {f"{p}queue_tasks_queue_ready"}),
        ("claim", None, True, "plain", {f"{p}queue_tasks_queue_ready"}),
        ("has_ready", None, False, "plain", {f"{p}queue_tasks_queue_ready"}),
        ("has_ready", ("default",), False, "plain", {f"{p}queue_tasks_queue_ready"}),
        ("has_ready", None, True, "plain", {f"{p}queue_tasks_queue_ready"}),
        ("due", ("default",), False, "plain", {f"{p}queue_tasks_queue_ready"}),
        ("due", None, False, "plain", {f"{p}queue_tasks_queue_ready"}),
        ("due", None, True, "plain", {f"{p}queue_tasks_queue_ready"}),
        ("claim", None, False, "lean", {f"{p}queue_tasks_queue_ready"}),
        ("claim", ("default",), False, "lean", {f"{p}queue_tasks_queue_ready"}),
        ("claim", None, True, "lean", {f"{p}queue_tasks_queue_ready"}),
        ("claim", None, False, "probe", {f"{p}queue_tasks_breaker_ready"}),
        ("claim", None, False, "rate", {f"{p}queue_tasks_rate_ready"}),
        ("rate_keys_ready", None, False, "plain", {f"{p}queue_tasks_rate_ready"}),
    ]

    def check(cases: list[tuple[str, Any, bool, str, set[str]]]) -> None:
        with _raw() as conn:
            conn.execute(f"ANALYZE {p}queue_tasks")
            for name, queues, excluding, kind, indexes in cases:
                sql = backend._queries(name, queues, excluding, kind)
                args = {**params, "queues": list(queues or ()), "exclude": ["x"] * excluding}
                with conn.transaction(force_rollback=True):
                    conn.execute("SET LOCAL enable_sort = off")
                    conn.execute("SET LOCAL jit = off")
                    conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                    rows, filtered, plan = _walked(conn, sql, args)
                case = (name, queues, excluding, kind)
                # rate_keys_ready does walk a rate key's rows behind an open breaker (the
                # 2,000 of k2: the rate index does not tell breakers apart); nothing else
                most = 2000 + 200 if name == "rate_keys_ready" else 200
                assert rows < 200 and filtered < most, (case, rows, filtered, plan)
                used = _index_scans(plan)
                assert indexes <= used, (case, used)
                if kind != "rate" and name != "rate_keys_ready":  # breaker rows: their index
                    assert f"{p}queue_tasks_breaker_ready" in used, (case, used)

    check(cases)
    got = backend.claim(ClaimRequest("w", 100, 30.0)).tasks
    assert sorted(ids(got)) == sorted(plain_ids + behind_up)
    # nothing left for a plain claim: an idle worker's reads walk nothing either
    check([c for c in cases if c[0] in ("claim", "has_ready", "due", "due")])
    assert not backend.has_ready(None)
    due = backend.next_due(None)  # only the leases just taken, not the blocked backlog
    assert due is not None and 25 < due <= 30
    assert set(backend.rate_keys_ready(None)) == {"k"}
    assert len(backend.claim(ClaimRequest("w", 10, 30.0, rate_key="k")).tasks) == 10
    assert backend.claim(ClaimRequest("w", 10, 30.0, rate_key="k2")).tasks == []
    probe = backend.claim(ClaimRequest("w", 1, 30.0, breaker="down")).tasks
    assert [t.breaker for t in probe] == ["down"]


@pytest.mark.parametrize("options", [{}, {"pipeline": "true"}])
def test_lean_plain_claims_while_no_row_has_a_breaker(prefix: str, options: dict[str, str]) -> None:
    """While no pending row has a breaker, plain claims walk the plain rows only (a
    statement that plans in half the time); the first claim that finds such rows tops up
    what it left free with the full claim, in claims and in acknowledgements alike."""
    with lmq.Queue(_with(_base(), prefix=prefix, **options)) as q:
        q.migrate()
        backend = q.backend
        assert isinstance(backend, PostgresBackend)
        first = q.enqueue_many([("t", {}) for _ in range(3)])
        assert backend._breaker_rows  # unknown at first: the full claim
        assert ids(claim(backend, limit=1)) == first[:1]
        assert not backend._breaker_rows  # none seen: lean from now on
        # rows with a breaker appear; the lean claim takes the plain ones, sees them, and
        # its free slots are filled by the full claim at once
        behind = backend.enqueue([NewTask("t", "{}", breaker="b", priority=5)] * 2)
        got = ids(claim(backend, limit=10))
        assert sorted(got) == sorted(first[1:] + behind)
        assert backend._breaker_rows
        assert claim(backend) == []
        complete(backend, done=[*first, *behind])
        assert claim(backend) == [] and not backend._breaker_rows
        # an idle worker's claim when only rows with a breaker are ready: topped up too
        (only,) = backend.enqueue([NewTask("t", "{}", breaker="b")])
        assert ids(claim(backend)) == [only]
        # the same through an acknowledgement that claims
        plain_one = q.enqueue("t")
        assert ids(claim(backend, limit=1)) == [plain_one]
        assert not backend._breaker_rows
        more = backend.enqueue([NewTask("t", "{}", breaker="b")] * 2)
        result = backend.complete(
            CompleteBatch("w1", done=[only, plain_one]), ClaimRequest("w1", 10, 30.0)
        )
        assert result is not None and sorted(ids(result.tasks)) == sorted(more)
        # a blocked breaker's rows: the full claim finds nothing, and says so
        assert backend.put_breaker(BreakerState("b", "open", version=1), 0)
        backend.enqueue([NewTask("t", "{}", breaker="b")] * 2)
        assert claim(backend) == [] and backend._breaker_rows


@pytest.mark.parametrize("options", [{}, {"pgbouncer": "true"}, {"pipeline": "true"}])
def test_paused_queues_are_not_claimed_nor_rescued(prefix: str, options: dict[str, str]) -> None:
    with lmq.Queue(_with(_base(), prefix=prefix, **options)) as q:
        q.migrate()
        backend = q.backend
        stop = q.enqueue_many([("t", {}) for _ in range(5)], queue="stop", priority=9)
        go = q.enqueue_many([("t", {}) for _ in range(3)], queue="go")
        lapsed = q.enqueue("t", queue="stop")
        complete(backend, "w", released=ids(claim(backend, "w", queues=("stop",), limit=6)))
        (held,) = claim(backend, "dead-worker", queues=("stop",), limit=1, lease=0.01)
        assert held.id in stop
        time.sleep(0.05)  # its lease runs out
        q.pause("stop")
        q.pause("stop")  # twice: keeps the first time
        paused = tuple(backend.paused_queues())
        assert paused == ("stop",)
        assert not backend.has_ready(("stop",), paused)
        assert backend.has_ready(None, paused)
        assert backend.next_due(("stop",), paused) is None
        assert backend.next_due(None, paused) == 0
        got = backend.claim(ClaimRequest("w", 10, 30.0, None, paused))
        assert sorted(ids(got.tasks)) == sorted(go) and got.rescued == 0
        assert not backend.has_ready(None, paused)
        assert backend.claim(ClaimRequest("w", 10, 30.0, ("stop", "go"), paused)).tasks == []
        result = backend.complete(
            CompleteBatch("w", done=ids(got.tasks)), ClaimRequest("w", 10, 30.0, ("stop",), paused)
        )
        assert result is not None and result.tasks == []
        q.resume("stop")
        assert backend.paused_queues() == {}
        again = backend.claim(ClaimRequest("w", 10, 30.0, None, ()))
        assert sorted(ids(again.tasks)) == sorted([*stop, lapsed]) and again.rescued == 1


def test_concurrent_settles_and_approved_requeues_happen_once(prefix: str) -> None:
    """Several threads (each with its own Queue) call settle_batches and requeue_approved
    at once: each batch completes once with one follow-up, each approved letter is
    re-queued once, and no error reaches a caller."""
    url = _with(_base(), prefix=prefix)
    with lmq.Queue(url) as q:
        q.migrate()
        for n in range(5):
            q.enqueue_many(
                [("t", {}) for _ in range(3)], batch=f"b{n}", on_complete=("fin", {"n": n})
            )
            complete(q.backend, done=ids(claim(q.backend, limit=3)))
        letters = [kill(q, message=f"failure {i}")[1] for i in range(40)]
        review = Review(DeadSelector(all=True), True, "ops", rate=1000.0)
        assert q.backend.review_dead(review) == len(letters)
        time.sleep(0.05)
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
            assert info is not None and info.followup_id == followup
            assert info.completed is not None
    finally:
        for q in queues:
            q.close()


@pytest.mark.parametrize("commit", [True, False])
def test_a_batch_in_the_applications_transaction(pq: lmq.Queue, commit: bool) -> None:
    """The batch row and its members are written in the application's open transaction:
    both exist only if it commits."""
    import psycopg

    with psycopg.connect(_base(), connect_timeout=5) as app:
        made = pq.enqueue_many(
            [("t", {"i": i}) for i in range(3)],
            connection=app,
            batch="tx",
            on_complete=("fin", {}),
        )
        assert pq.backend.batch("tx") is None  # not committed yet
        if commit:
            app.commit()
        else:
            app.rollback()
    info = pq.backend.batch("tx")
    if commit:
        assert info is not None and (info.total, info.pending) == (3, 3)
        assert [pq.get(i).batch for i in made] == ["tx"] * 3  # type: ignore[union-attr]
    else:
        assert info is None and all(pq.get(i) is None for i in made)


# --- bulk enqueue by COPY --------------------------------------------------------------------


def test_a_bulk_enqueue_goes_by_copy_row_for_row_as_the_insert(pq: lmq.Queue) -> None:
    """From _COPY_MIN rows without unique keys the rows go by binary COPY, their ids
    reserved first: each task gets its id in order, and every column is what the INSERT
    path writes (uniform calls and mixed rows alike)."""
    from lmq.backends.postgres import backend as pgmod

    backend = pq.backend
    assert isinstance(backend, PostgresBackend)
    n = pgmod._COPY_MIN * 3
    made = pq.enqueue_many([("t", {"i": i}) for i in range(n)], queue="q", priority=3, delay=60)
    assert made == sorted(made) and len(set(made)) == n
    for i in (0, n // 2, n - 1):
        task = pq.get(made[i])
        assert task is not None and task.payload == {"i": i} and task.queue == "q"
        assert task.priority == 3 and task.status == "pending"
    mixed = [
        NewTask(
            f"t{i}",
            f'{{"i": {i}}}',
            queue=f"q{i % 3}",
            priority=i % 5,
            max_attempts=(i % 4) or None,
            run_at=None if i % 2 else 2e9,
            delay=float(i),
            batch=None,
            breaker="b" if i % 7 == 0 else None,
            rate_key="r" if i % 11 == 0 else None,
        )
        for i in range(n)
    ]
    by_copy = backend.enqueue(mixed)
    one_by_one = [backend.enqueue([t])[0] for t in mixed[:12]]  # insert_one, for comparison
    assert by_copy == sorted(by_copy) and by_copy[0] > made[-1]
    with _raw() as conn:
        now = conn.execute("SELECT extract(epoch FROM now())").fetchone()[0]
        cols = ("task_name, payload, queue, priority, max_attempts, next_run, batch, breaker,"
                " rate_key, status, attempts, created, updated")  # fmt: skip
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                f"SELECT id, {cols} FROM {backend.prefix}queue_tasks WHERE id = ANY(%s)",
                (by_copy + one_by_one,),
            )
        }
    for i, (task_id, t) in enumerate(zip(by_copy, mixed, strict=True)):
        row = rows[task_id]
        assert row[:5] == (t.task_name, t.payload_json, t.queue, t.priority, t.max_attempts)
        assert row[6:11] == (None, t.breaker, t.rate_key, "pending", 0)
        due = (2e9 if i % 2 == 0 else float(now)) + t.delay
        assert abs(row[5] - due) < 60, (i, row[5], due)
        assert abs(row[12] - float(now)) < 60
    for a, b in zip(by_copy[:12], one_by_one, strict=True):
        ra, rb = rows[a], rows[b]
        assert ra[:5] == rb[:5] and ra[6:11] == rb[6:11]
        assert len(ra[11]) == len(rb[11]) == 19 and ra[11][:10] == rb[11][:10]  # created


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_bulk_enqueue_in_the_applications_transaction(pq: lmq.Queue, pipeline: bool) -> None:
    """COPY on the application's connection joins its transaction (a rollback leaves no
    task, a commit all of them and one wake-up); in pipeline mode, where libpq has no
    COPY, the rows go by INSERT."""
    import psycopg

    wake = pq.backend.wake_source()
    assert wake is not None
    calls = _Calls()
    wake.start(calls)
    try:
        assert wake.connected.wait(10)
        for commit in (False, True):
            base = _settled(calls)
            with psycopg.connect(_base(), connect_timeout=5) as app:
                with contextlib.ExitStack() as stack:
                    if pipeline:
                        stack.enter_context(app.pipeline())
                    app.execute("SELECT 1")
                    made = pq.enqueue_many([("t", {"i": i}) for i in range(500)], connection=app)
                assert made == sorted(made) and len(made) == 500
                assert pq.get(made[0]) is None  # not committed yet
                time.sleep(0.2)
                assert calls.n == base
                app.commit() if commit else app.rollback()
            if commit:
                assert [pq.get(i).payload["i"] for i in made[::50]] == list(range(0, 500, 50))  # type: ignore[union-attr]
                wait_for(lambda b=base: calls.n > b, timeout=5)  # type: ignore[misc]
                assert _settled(calls) == base + 1
            else:
                assert all(pq.get(i) is None for i in made[::50])
    finally:
        wake.stop()
