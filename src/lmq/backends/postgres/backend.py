"""The PostgreSQL backend (``lmq[postgres]``: psycopg 3 and psycopg_pool).

URL: ``postgresql://user:password@host:port/dbname?prefix=P&…`` (``postgres://`` works
too).  Options, besides libpq's own connection parameters (``sslmode``, ``sslrootcert``,
``sslcert``, ``sslkey``, ``application_name``, ``target_session_attrs``, ``keepalives*``,
``tcp_user_timeout``, ``service``, ``passfile``, ``options`` …, passed through):

``prefix``
    table prefix (up to 16 letters, digits, underscores): ``P`` + ``queue_tasks`` …
``pool_size`` (10)
    most connections each of a backend object's two pools opens: one for the worker's
    verbs (a worker uses two at a time), one for everything else (one per producer
    thread enqueuing at that moment).  Plus one LISTEN connection per worker.
``pool_timeout`` (10)
    seconds a call waits for a free connection (BackendBusy after that).
``connect_timeout`` (5)
    seconds one connection attempt may take; an unreachable server raises
    BackendUnavailable within that (at once for a refused connection).
``pgbouncer`` (false)
    ``true`` behind PgBouncer in transaction mode: no LISTEN (workers poll), no
    server-side prepared statements, no session state.
``pipeline`` (false)
    send a transaction's statements in one round trip (libpq pipeline mode).  Worth it
    over a slow network; on a local one psycopg's pipeline bookkeeping costs more than
    the round trips it saves.
``async_ack`` (true)
    the worker's claims, acknowledgements, renewals and heartbeats commit without waiting
    for the WAL flush (``synchronous_commit=off`` on the worker's own connections only; a
    flush costs a few milliseconds on an ordinary disk).  A server *crash* may then
    forget the last fraction of a second of them, so those tasks run again: at-least-once
    still holds and nothing enqueued is lost (enqueues, dead-letter changes and migrations
    always wait for the flush; a clean server restart flushes everything).  ``false``
    waits for every commit.

Every statement takes "now" from the server (``{prefix}queue_now()``), so workers on
several hosts agree on leases.  The claim is one ``UPDATE … FROM (SELECT … ORDER BY
priority DESC, next_run, id LIMIT n FOR UPDATE SKIP LOCKED) RETURNING``, whose
candidates also include expired leases (SKIP LOCKED too): those are rescued by the same
statement, their lapse recorded as a ``LeaseExpired`` error.  An acknowledgement writes
its whole batch (done, retry, bury, release) in one transaction with array parameters
and claims the freed slots in the same one.  Tables are created by ``lmq migrate`` only;
other calls on a database without them (or with an older schema) raise SchemaMissing
naming it.

The ready index (schema 4: one, by queue): a worker of some queues walks it once per
queue; a worker of every queue queue by queue over the queues with pending plain rows
(found by a loose scan of the same index), so an insert maintains one ready index, not
two (a second one, over every queue, cost bulk enqueues about a sixth of their speed).
Paused queues (``ClaimRequest.exclude``): a worker of some queues drops the paused ones
from its list; a worker of every queue leaves them out of that walk, so a paused backlog
costs nothing.  Batches live in ``{prefix}queue_batches`` (members carry the name in
``queue_tasks.batch``); ``settle_batches`` completes one with a compare-and-set on
``completed IS NULL`` and enqueues its follow-up in the same transaction.  Approved dead
letters are re-queued under ``FOR UPDATE SKIP LOCKED``, so concurrent workers share them.

Circuit breakers and rate limits (schema 3): tasks carry ``breaker`` / ``rate_key``.  The
ready index holds only plain rows (neither key), so a plain claim never steps over
keyed ones; rows behind a breaker have their own index, walked breaker by breaker for
the breakers with pending rows (a loose index scan) whose stored state is closed or that
have no row, so an open breaker's backlog costs a plain claim, has_ready and next_due
nothing.  That walk costs the claim's planning about a third of a millisecond, so a plain
claim leaves it out while the last claim saw no pending row with a breaker (each claim
reports that, from one probe of the index), and tops up what it left free with the full
claim the moment it sees one.  Probe claims walk one breaker's rows, rate claims one
key's (rate-keyed rows have an index of their own: rate_keys_ready scans its keys).  The
breaker, rate-limit and schedule rows are swapped by compare-and-set on ``version`` in
one statement (INSERT ... ON CONFLICT DO NOTHING at version 0, else UPDATE ... WHERE
version = expected); ``fire_schedule`` does it and the enqueue in one transaction, the
compare-and-set first, so a racing worker waits for the row lock, then enqueues nothing.

Bulk enqueues (from 64 rows without unique keys) go by binary COPY, the ids reserved
first from the identity sequence in one statement (in order, so the i-th task gets the
i-th id); with unique keys, or on an application connection in pipeline mode, by one
``INSERT … SELECT`` of JSON arrays.

Wake-ups: a statement-level trigger NOTIFYs ``{prefix}queue_tasks`` on every insert
(anyone's, COPY included, delivered at commit), and ``put_breaker`` does when a breaker
closes (its tasks are claimable again); :mod:`.wake` LISTENs on its own connection.  The
worker's pruner also vacuums the task table when the server runs without autovacuum.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row, tuple_row

from ...exceptions import BackendError, ConfigError, NotFound, SchemaMissing
from ...models import (
    BatchInfo,
    BatchSpec,
    BreakerState,
    CancelSelector,
    Claimed,
    ClaimRequest,
    ClaimResult,
    CompleteBatch,
    Counts,
    DeadFilter,
    DeadGroup,
    DeadLetter,
    DeadSelector,
    Heartbeat,
    NewTask,
    PruneRequest,
    RateState,
    RenewRequest,
    Review,
    ScheduleState,
    Task,
    TaskFilter,
    TaskId,
    WorkerInfo,
    utc_from_epoch,
)
from ...url import QueueURL, mask
from .. import rows as shared
from ..external import app_connection
from ..rows import check_requeue, error_line
from ..sqlfile import check_prefix, load_migrations, load_queries
from .connection import Pool, translate
from .wake import ListenWakeSource

SCHEMA_VERSION = 4
_PACKAGE = "lmq.backends.postgres"
_VACUUM_AFTER = 10_000  # dead rows in the task table (only when autovacuum is off)
_CHUNK = 50_000  # rows per INSERT statement in a bulk enqueue (one transaction for all)
_COPY_MIN = 64  # rows from which a bulk enqueue without unique keys goes by COPY
# the columns copy_tasks names, as binary COPY sends them
_COPY_TYPES = ("int8", "text", "text", "text", "int4", "int4", "float8", "float8", "text",
               "text", "text", "text")  # fmt: skip
# the fields of a NewTask, in order, as the insert statements name their parameters
_FIELDS = ("task_name", "payload", "queue", "priority", "max_attempts", "run_at", "delay",
           "unique_key", "batch", "breaker", "rate_key")  # fmt: skip
_STATUSES = ("pending", "processing", "done", "dead", "cancelled")

_LIBPQ = frozenset(
    {
        "host", "hostaddr", "port", "dbname", "user", "password", "passfile",
        "channel_binding", "options", "application_name", "fallback_application_name",
        "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
        "tcp_user_timeout", "sslmode", "sslcompression", "sslcert", "sslkey",
        "sslpassword", "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "sslcertmode",
        "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version",
        "gssencmode", "krbsrvname", "gsslib", "service", "target_session_attrs",
        "load_balance_hosts", "require_auth", "client_encoding",
    }
)  # fmt: skip
_OWN = frozenset(
    {
        "prefix",
        "pool_size",
        "pool_timeout",
        "connect_timeout",
        "pgbouncer",
        "pipeline",
        "async_ack",
    }
)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _flag(url: QueueURL, name: str, default: bool) -> bool:
    value = url.options.get(name)
    if value is None or value == "":
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(f"invalid {name}={value!r} in {mask(url.raw)!r}: use true or false")


def _number(url: QueueURL, name: str, default: float, low: float) -> float:
    value = url.options.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        number = low - 1
    if number < low:
        raise ConfigError(f"invalid {name}={value!r} in {mask(url.raw)!r}: a number >= {low:g}")
    return number


def task_from_row(r: dict[str, Any]) -> Task:
    """A task row (with schema 2's ``batch``; schema 3's keys are the shared reader's)."""
    task = shared.task_from_row(r)
    batch = r.get("batch")
    return task if batch is None else dataclasses.replace(task, batch=batch)


def dead_from_row(r: dict[str, Any]) -> DeadLetter:
    """A dead-letter row (with schema 2's review fields) as a DeadLetter."""
    return dataclasses.replace(
        shared.dead_from_row(r),
        review=r.get("review"),
        reviewed_by=r.get("reviewed_by"),
        reviewed_at=shared.epoch(r.get("reviewed_at")),
        review_note=r.get("review_note"),
        requeue_at=shared.epoch(r.get("requeue_at")),
        discarded_at=shared.epoch(r.get("discarded_at")),
    )


def _int_ids(ids: Sequence[TaskId], what: str) -> list[int]:
    """Ids given one by one as integers (once each); one that cannot be an id is unknown."""
    out = []
    for i in ids:
        try:
            out.append(int(i))
        except (TypeError, ValueError):
            raise NotFound(f"no {what} {i!r}") from None
    return list(dict.fromkeys(out))


def _scope(
    queues: tuple[str, ...] | None, exclude: tuple[str, ...]
) -> tuple[tuple[str, ...] | None, tuple[str, ...]] | None:
    """The queues a claim may take from with the paused ones (``exclude``) applied: a
    worker of named queues just drops the paused ones (None: every one of them is paused);
    a worker of every queue keeps ``exclude``."""
    if not exclude:
        return queues, ()
    if queues:
        kept = tuple(q for q in queues if q not in exclude)
        return (kept, ()) if kept else None
    return None, tuple(sorted(set(exclude)))


class PostgresBackend:
    """See the module docstring."""

    def __init__(self, url: QueueURL) -> None:
        try:
            self.prefix = check_prefix(url.prefix)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.url = mask(url.raw)
        unknown = sorted(set(url.options) - _OWN - _LIBPQ)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)} in {self.url!r}; the PostgreSQL "
                f"backend takes {', '.join(sorted(_OWN))} and libpq's connection parameters"
            )
        self.pgbouncer = _flag(url, "pgbouncer", False)
        # pipeline mode needs libpq >= 14 (psycopg[binary] ships one)
        self.pipeline = _flag(url, "pipeline", False) and psycopg.Pipeline.is_supported()
        self.async_ack = _flag(url, "async_ack", True)
        self.connect_timeout = _number(url, "connect_timeout", 5, 1)
        size = int(_number(url, "pool_size", 10, 1))
        timeout = _number(url, "pool_timeout", 10, 0.1)
        base = url.path
        scheme, rest = base.split("://", 1)
        if scheme.split("+", 1)[0].lower() not in {"postgres", "postgresql"}:
            raise ConfigError(f"not a PostgreSQL URL: {self.url!r}")
        libpq = {k: v for k, v in url.options.items() if k in _LIBPQ}
        libpq.setdefault("application_name", "lmq")
        for key, value in (
            ("keepalives", "1"),
            ("keepalives_idle", "30"),
            ("keepalives_interval", "10"),
            ("keepalives_count", "3"),
        ):
            libpq.setdefault(key, value)
        try:
            self.conninfo = make_conninfo("postgresql://" + rest, **libpq)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"invalid PostgreSQL URL {self.url!r}: {exc}") from None
        # lmq's own connections plan by index, without JIT (see plan_by_index in
        # queries.sql).  The application's (enqueue, the CLI's reads) plan every
        # execution for its parameters.  The worker's run a handful of statements
        # forever: they are prepared on their first run and keep one generic plan, as
        # planning the claim for its parameters cost more than running it (a claim of 1
        # from 400,000 pending: 0.9 ms of planning, 0.6 ms of execution; with its generic
        # plan 0.7 ms in all, and no worker statement slower at 400,000 rows).  The
        # claim's statements are written so that their generic plans walk the indexes
        # (the UPDATE finds its rows by id = ANY(array), not by a join the generic plan
        # would hash over the whole table).  The worker's also commit without waiting
        # for the WAL flush (async_ack).  Set once per session through libpq's
        # `options`, so a claim is one statement; PgBouncer passes no such options:
        # there, each transaction sets them (and nothing is prepared).
        self.session_settings = not self.pgbouncer
        main_conninfo = worker_conninfo = self.conninfo
        if self.session_settings:
            user = libpq.get("options", "")
            plans = f"{user} -c enable_sort=off -c jit=off".strip()
            main_conninfo = make_conninfo(
                self.conninfo, options=f"{plans} -c plan_cache_mode=force_custom_plan"
            )
            plans += " -c plan_cache_mode=force_generic_plan"
            if self.async_ack:
                plans += " -c synchronous_commit=off"
            worker_conninfo = make_conninfo(self.conninfo, options=plans)
        self.channel = f"{self.prefix}queue_tasks"
        self._listen_kwargs: dict[str, Any] = {"connect_timeout": round(self.connect_timeout)}
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": round(self.connect_timeout),
            "prepare_threshold": None if self.pgbouncer else 5,
        }
        self.pool = Pool(
            main_conninfo,
            kwargs,
            size=size,
            timeout=timeout,
            connect_timeout=self.connect_timeout,
            where=self.url,
        )
        # the worker's verbs (claim, acknowledge, renew, heartbeat, prune, readiness)
        self.worker_pool = self.pool
        if worker_conninfo != main_conninfo:
            self.worker_pool = Pool(
                worker_conninfo,
                {**kwargs, "prepare_threshold": 0},  # prepared on their first run
                size=size,
                timeout=timeout,
                connect_timeout=self.connect_timeout,
                where=self.url,
            )
        self.q = load_queries(_PACKAGE, "queries.sql", self.prefix)
        self._schema_checked = False
        self._schema_lock = threading.Lock()
        self._sql: dict[tuple[str, tuple[str, ...] | None, bool, str], str] = {}
        # whether the last plain claim saw pending rows with a breaker (see _claim_in)
        self._breaker_rows = True

    # --- connections ---------------------------------------------------------------

    @contextmanager
    def _conn(
        self, check_schema: bool = True, worker: bool = False
    ) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection; psycopg errors leave as lmq's exceptions.

        ``worker``: from the worker's pool (asynchronous commits, see ``async_ack``).
        """
        pool = self.worker_pool if worker else self.pool
        with pool.connection() as conn:
            try:
                if check_schema and not self._schema_checked:
                    self._ensure_schema(conn)
                yield conn
            except psycopg.Error as exc:
                raise self._translate(exc, conn, pool) from None

    def _translate(
        self, exc: psycopg.Error, conn: psycopg.Connection[Any] | None, pool: Pool | None = None
    ) -> BackendError:
        error = translate(exc, self.url, conn, pool)
        if isinstance(error, SchemaMissing):
            self._schema_checked = False
        return error

    @contextmanager
    def _tx(self, conn: psycopg.Connection[Any], worker: bool = False) -> Iterator[None]:
        """One transaction (its statements pipelined with ``?pipeline=true``).

        Its plans walk the ready index (``plan_by_index`` in queries.sql); ``worker``: a
        claim or acknowledgement, which commits asynchronously unless ``async_ack=false``.
        """
        with contextlib.ExitStack() as stack:
            if self.pipeline:
                stack.enter_context(conn.pipeline())
            stack.enter_context(conn.transaction())
            if self.session_settings:
                pass  # the connection has them
            elif worker and self.async_ack:
                conn.execute(self.q["plan_by_index_async_commit"])
            else:
                conn.execute(self.q["plan_by_index"])
            yield

    def close(self) -> None:
        self.pool.close()
        self.worker_pool.close()

    # --- schema --------------------------------------------------------------------

    def _version(self, conn: psycopg.Connection[Any]) -> int | None:
        exists = conn.execute(self.q["table_exists"], {"name": f"{self.prefix}queue_meta"})
        row = exists.fetchone()
        if not row or not row[0]:
            return None
        got = conn.execute(self.q["schema_version"]).fetchone()
        return int(got[0]) if got else 0

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        with self._schema_lock:
            if self._schema_checked:
                return
            version = self._version(conn)
            if version is None:
                raise SchemaMissing(
                    f"PostgreSQL {self.url} has no lmq tables ({self.prefix}queue_tasks): "
                    "run `lmq migrate` first"
                )
            if version < SCHEMA_VERSION:
                raise SchemaMissing(
                    f"PostgreSQL {self.url} has lmq schema {version}, older than this lmq "
                    f"({SCHEMA_VERSION}): run `lmq migrate`"
                )
            if version > SCHEMA_VERSION:
                raise SchemaMissing(
                    f"PostgreSQL {self.url} has lmq schema {version}, newer than this lmq "
                    f"knows ({SCHEMA_VERSION}); upgrade lmq"
                )
            self._schema_checked = True

    def schema_sql(self) -> str:
        """The current schema (``schema.sql``) for this prefix."""
        text = resources.files(_PACKAGE).joinpath("schema.sql").read_text(encoding="utf-8")
        return text.replace("{prefix}", self.prefix)

    def migrate(self) -> list[int]:
        """Create or upgrade the tables (idempotent; safe from several hosts at once)."""
        migrations = load_migrations(f"{_PACKAGE}.migrations", self.prefix)
        applied: list[int] = []
        with self._conn(check_schema=False) as conn, conn.transaction():
            conn.execute(self.q["migrate_lock"], {"prefix": self.prefix})
            current = self._version(conn) or 0
            if current > SCHEMA_VERSION:
                raise SchemaMissing(
                    f"PostgreSQL {self.url} has lmq schema {current}, newer than this lmq "
                    f"knows ({SCHEMA_VERSION}); upgrade lmq"
                )
            tasks = conn.execute(self.q["table_exists"], {"name": f"{self.prefix}queue_tasks"})
            row = tasks.fetchone()
            if not current and not (row and row[0]):
                conn.execute(self.schema_sql().encode())
                applied = [number for number, _name, _sql in migrations]
            else:  # upgrade (or repair a partial schema: migrations are idempotent)
                for number, _name, sql in migrations:
                    if number > current:
                        conn.execute(sql.encode())
                        applied.append(number)
            if applied:
                conn.execute(self.q["set_schema_version"], {"version": str(max(applied))})
        self._schema_checked = True
        return applied

    def schema_version(self) -> int | None:
        with self._conn(check_schema=False) as conn:
            return self._version(conn)

    # --- producer ------------------------------------------------------------------

    def enqueue(
        self,
        tasks: Sequence[NewTask],
        connection: object | None = None,
        batch: BatchSpec | None = None,
    ) -> list[TaskId]:
        if not tasks and batch is None:
            return []
        if connection is not None:  # the application's transaction: it commits, not lmq
            app = app_connection(connection, "postgresql")
            if not self._schema_checked:
                with self._conn():
                    pass  # lmq's own connection checks the tables first
            cursor = app.cursor
            if isinstance(cursor, psycopg.Cursor):
                cursor.row_factory = tuple_row  # whatever the application's default is
            try:
                return self._insert(cursor, tasks, batch)
            except psycopg.Error as exc:
                raise self._translate(exc, None) from None
            finally:
                with contextlib.suppress(Exception):
                    cursor.close()
        with self._conn() as conn:
            if batch is None and len(tasks) == 1 and tasks[0].unique_key is None:
                return self._insert(conn.cursor(), tasks)  # one statement: atomic as it is
            with conn.transaction():
                return self._insert(conn.cursor(), tasks, batch)

    def _insert(
        self, cur: Any, tasks: Sequence[NewTask], batch: BatchSpec | None = None
    ) -> list[TaskId]:
        if batch is not None:  # the batch row first: in the same transaction as its members
            cur.execute(
                self.q["upsert_batch"],
                {
                    "name": batch.name,
                    "total": batch.total,
                    "task": batch.on_complete_task,
                    "payload": batch.on_complete_payload_json,
                    "queue": batch.on_complete_queue,
                },
            )
            if any(t.batch != batch.name for t in tasks):
                name = batch.name
                tasks = [t if t.batch == name else t._replace(batch=name) for t in tasks]
        if not tasks:
            return []
        if len(tasks) == 1 and tasks[0].unique_key is None:
            t = tasks[0]
            cur.execute(
                self.q["insert_one"],
                {
                    "task_name": t.task_name,
                    "payload": t.payload_json,
                    "queue": t.queue,
                    "priority": t.priority,
                    "max_attempts": t.max_attempts,
                    "run_at": t.run_at,
                    "delay": t.delay,
                    "batch": t.batch,
                    "breaker": t.breaker,
                    "rate_key": t.rate_key,
                },
            )
            return [cur.fetchone()[0]]
        ids: list[TaskId] = []
        for start in range(0, len(tasks), _CHUNK):
            ids.extend(self._insert_chunk(cur, tasks[start : start + _CHUNK]))
        return ids

    def _insert_chunk(self, cur: Any, tasks: Sequence[NewTask]) -> list[TaskId]:
        columns = list(zip(*tasks, strict=True))
        keys = columns[7]
        if (
            len(tasks) >= _COPY_MIN
            and all(k is None for k in keys)
            and isinstance(cur, psycopg.Cursor)
            and cur.connection.pgconn.pipeline_status == 0  # no COPY in pipeline mode
        ):
            return self._copy_chunk(cur, tasks)
        first = tasks[0]
        if all(k is None for k in keys) and all(
            t[2:] == first[2:] for t in tasks
        ):  # one enqueue_many call: only names and payloads differ
            params: dict[str, Any] = dict(zip(_FIELDS[2:], first[2:], strict=True))
            params["task_name"] = json.dumps(columns[0])
            params["payload"] = json.dumps(columns[1])
            cur.execute(self.q["insert_uniform"], params)
            return sorted(r[0] for r in cur.fetchall())
        params = {name: json.dumps(col) for name, col in zip(_FIELDS, columns, strict=True)}
        if all(k is None for k in keys):
            cur.execute(self.q["insert_many"], params)
            # ids are handed out in insertion order, which is the order of the rows
            return sorted(r[0] for r in cur.fetchall())
        cur.execute(self.q["insert_many_unique"], params)
        inserted = sorted((r[0], r[1]) for r in cur.fetchall())
        inserted_keys = {k for _, k in inserted if k is not None}
        made = iter(inserted)
        slots: list[TaskId | str] = []  # an id, or the unique key whose id it is
        by_key: dict[str, TaskId] = {}
        for t in tasks:
            key = t.unique_key
            if key is None:
                slots.append(next(made)[0])
                continue
            if key not in by_key and key in inserted_keys:
                task_id, got = next(made)
                assert got == key, (got, key)
                by_key[key] = task_id
            slots.append(key)
        missing = sorted({k for k in keys if k is not None and k not in by_key})
        if missing:
            cur.execute(self.q["find_unique"], {"keys": missing})
            by_key.update({k: i for k, i in cur.fetchall()})
        ids: list[TaskId] = []
        for t, slot in zip(tasks, slots, strict=True):
            ids.append(by_key[slot] if t.unique_key is not None else slot)  # type: ignore[index]
        return ids

    def _copy_chunk(self, cur: psycopg.Cursor[Any], tasks: Sequence[NewTask]) -> list[TaskId]:
        """Rows without unique keys by binary COPY: the server parses no text and inserts
        them a page at a time (INSERT … SELECT does it row by row), and it works on each
        buffer of rows while the next is encoded.  Their ids come first (reserve_ids), in
        order, so the i-th task gets the i-th id as with the INSERT's RETURNING."""
        cur.execute(self.q["reserve_ids"], {"n": len(tasks)})
        row = cur.fetchone()
        assert row is not None
        now, created, reserved = row
        ids: list[TaskId] = sorted(reserved)
        with cur.copy(self.q["copy_tasks"]) as copy:
            copy.set_types(_COPY_TYPES)
            write = copy.write_row
            first = tasks[0]
            if all(t[2:] == first[2:] for t in tasks):  # one enqueue_many call, most often
                _, _, queue, priority, max_attempts, run_at, delay, _, batch, breaker, rate = first
                due = (now if run_at is None else run_at) + delay
                for task_id, t in zip(ids, tasks, strict=True):
                    write((task_id, t[0], t[1], queue, priority, max_attempts, due, now,
                           created, batch, breaker, rate))  # fmt: skip
            else:
                for task_id, t in zip(ids, tasks, strict=True):
                    due = (now if t.run_at is None else t.run_at) + t.delay
                    write((task_id, t.task_name, t.payload_json, t.queue, t.priority,
                           t.max_attempts, due, now, created, t.batch, t.breaker,
                           t.rate_key))  # fmt: skip
        return ids

    # --- worker --------------------------------------------------------------------

    def _queries(
        self,
        name: str,
        queues: tuple[str, ...] | None,
        excluding: bool = False,
        kind: str = "plain",
    ) -> str:
        """A worker statement for a worker of ``queues`` (None: every queue).

        A worker of every queue walks the per-queue ready index queue by queue over the
        queues with pending plain rows (a loose scan of that index: there is no index
        over every queue's ready rows, which would cost each insert its upkeep).
        ``excluding`` (some queues are paused, for a worker of every queue): that walk
        leaves them out, and lapsed leases of paused queues are left alone.  ``kind``: the
        claim's (``plain``, ``probe`` for ``ClaimRequest.breaker``, ``rate`` for
        ``ClaimRequest.rate_key``, ``lean``: a plain claim that walks only the plain rows,
        while no pending row has a breaker); has_ready and the due statements are the
        plain claim's.
        """
        key = (name, queues, excluding, kind)
        sql = self._sql.get(key)
        if sql is None:
            if queues and not excluding:
                plain, first = self.q["ready_queues"], self.q["first_queues"]
                qf = "AND queue = ANY(%(queues)s)"
            else:  # every queue: queue by queue over those with pending rows (schema 4)
                plain, first = self.q["ready_excluding"], self.q["first_excluding"]
                qf = "AND queue <> ALL(%(exclude)s::text[])" if excluding else ""
            ready = {
                "plain": self.q["plain_ready"],
                "lean": plain,
                "probe": self.q["ready_probe"],
                "rate": self.q["ready_rate"],
            }[kind]
            text = self.q[name]
            named = "SELECT unnest(%(queues)s::text[]) AS name"
            for placeholder, fragment in (
                ("{due_queues}", named if queues and not excluding else self.q["pending_queues"]),
                ("{ready}", ready),
                ("{plain}", plain),
                ("{first_plain}", first),
                ("{breakers_due}", self.q["breakers_due"]),
                ("{ready_breakers}", self.q["ready_breakers"]),
                ("{gate}", self.q["plain_gate" if kind == "lean" else f"{kind}_gate"]),
                ("{unblocked}", self.q["unblocked"]),
                ("{closed_breakers}", self.q["closed_breakers"]),
                ("{pending_queues}", self.q["pending_queues"]),
                ("{queue_filter}", qf),
            ):
                if placeholder in text:  # the fragment without its comment lines
                    part = "\n".join(
                        ln for ln in fragment.splitlines() if not ln.lstrip().startswith("--")
                    )
                    text = text.replace(placeholder, part)
            sql = self._sql[key] = text
        return sql

    def claim(self, request: ClaimRequest) -> ClaimResult:
        if _scope(request.queues, request.exclude) is None:
            return ClaimResult([])  # every queue this worker takes is paused
        with self._conn(worker=True) as conn:
            if self.session_settings:  # one statement: no transaction needed
                result, short = self._claim_in(conn, request)()
            else:
                with self._tx(conn, worker=True):
                    pending = self._claim_in(conn, request)
                result, short = pending()
            if short:
                result = self._top_up(conn, request, result, short)
        return result

    def _top_up(
        self, conn: psycopg.Connection[Any], request: ClaimRequest, got: ClaimResult, short: int
    ) -> ClaimResult:
        """A lean plain claim found rows with a breaker it did not walk (see ``_claim_in``):
        claim the slots it left free with the full plain claim."""
        more = dataclasses.replace(request, limit=short)
        if self.session_settings:
            extra, _ = self._claim_in(conn, more, lean=False)()
        else:
            with self._tx(conn, worker=True):
                pending = self._claim_in(conn, more, lean=False)
            extra, _ = pending()
        return ClaimResult(got.tasks + extra.tasks, got.rescued + extra.rescued)

    def _claim_in(
        self, conn: psycopg.Connection[Any], request: ClaimRequest, lean: bool | None = None
    ) -> Callable[[], tuple[ClaimResult, int]]:
        """Send the claim; return a function reading its result (after a pipeline) and how
        many slots a lean claim left that the full plain claim should try to fill.

        A plain claim walks the rows behind closed breakers too, which costs its planning
        about a third of a millisecond; every claim reports whether any pending row has a
        breaker, and while none has, plain claims are "lean" (the plain rows only).  The
        first claim after such rows appear is lean still: it may take a plain task before
        a higher-priority one behind a breaker, and what it leaves free is topped up at
        once by the full claim (so an idle worker never misses them).
        """
        scope = _scope(request.queues, request.exclude)
        if scope is None:
            return lambda: (ClaimResult([]), 0)
        queues, exclude = scope
        params: dict[str, Any] = {
            "worker": request.worker_id,
            "lease": request.lease,
            "limit": request.limit,
            "queues": list(queues or ()),
        }
        params["exclude"] = list(exclude)
        kind = "plain"
        if request.breaker is not None:  # a probe: only that breaker's tasks
            kind = "probe"
            params["breaker"] = request.breaker
        elif request.rate_key is not None:  # only that rate key's tasks
            kind = "rate"
            params["rate_key"] = request.rate_key
        elif lean if lean is not None else not self._breaker_rows:
            kind = "lean"
        cur = conn.cursor()
        cur.execute(self._queries("claim", queues, bool(exclude), kind), params)

        def result() -> tuple[ClaimResult, int]:
            rows = cur.fetchall()
            # the flag row is the one without an id (the last one, as Append runs in order)
            breaker_rows = any(r[8] for r in rows if r[0] is None)
            rows = [r for r in rows if r[0] is not None]
            if kind in ("plain", "lean"):
                self._breaker_rows = breaker_rows
            rescued = sum(1 for r in rows if r[8])
            got = ClaimResult([Claimed._make(r[:8]) for r in rows], rescued)
            short = request.limit - len(rows) if kind == "lean" and breaker_rows else 0
            return got, short

        return result

    def _due(
        self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()
    ) -> tuple[float | None, float | None, float | None, float]:
        """The earliest plain pending next_run, the same behind closed breakers, the
        earliest lease expiry (tasks a plain claim may take), and the server's now."""
        sql = self._queries("due", queues, bool(exclude))
        params = {"queues": list(queues or ()), "exclude": list(exclude)}
        with self._conn(worker=True) as conn:
            if self.session_settings:
                row = conn.execute(sql, params).fetchone()
            else:
                with self._tx(conn):
                    cur = conn.execute(sql, params)
                row = cur.fetchone()
        assert row is not None
        return row[0], row[1], row[2], row[3]

    def has_ready(self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()) -> bool:
        scope = _scope(queues, exclude)
        if scope is None:
            return False
        queues, exclude = scope
        sql = self._queries("has_ready", queues, bool(exclude))
        params = {"queues": list(queues or ()), "exclude": list(exclude)}
        with self._conn(worker=True) as conn:
            row = conn.execute(sql, params).fetchone()
        return bool(row and row[0])

    def next_due(
        self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()
    ) -> float | None:
        scope = _scope(queues, exclude)
        if scope is None:
            return None
        due, behind_breakers, expiry, now = self._due(*scope)
        times = [t for t in (due, behind_breakers, expiry) if t is not None]
        return max(0.0, min(times) - now) if times else None

    def complete(
        self, batch: CompleteBatch, claim: ClaimRequest | None = None
    ) -> ClaimResult | None:
        if not len(batch):
            return self.claim(claim) if claim is not None else None
        worker = batch.worker_id
        pending: Callable[[], tuple[ClaimResult, int]] | None = None
        with self._conn(worker=True) as conn:
            with self._tx(conn, worker=True):
                cur = conn.cursor()
                if batch.done:
                    cur.execute(self.q["ack_done"], {"ids": list(batch.done), "worker": worker})
                if batch.retries:
                    cur.execute(
                        self.q["retry"],
                        {
                            "worker": worker,
                            "ids": [r.id for r in batch.retries],
                            "delays": [r.delay for r in batch.retries],
                            "messages": [error_line(r.error) for r in batch.retries],
                            "errors": [json.dumps(r.error.to_json()) for r in batch.retries],
                        },
                    )
                if batch.burials:
                    b = batch.burials
                    cur.execute(
                        self.q["bury"],
                        {
                            "worker": worker,
                            "ids": [x.id for x in b],
                            "messages": [error_line(x.error) for x in b],
                            "reasons": [x.reason for x in b],
                            "fingerprints": [x.fingerprint for x in b],
                            "max_attempts": [x.max_attempts for x in b],
                            "errors": [json.dumps(x.error.to_json()) for x in b],
                        },
                    )
                if batch.released:
                    cur.execute(self.q["release"], {"ids": list(batch.released), "worker": worker})
                if batch.deferred:
                    d = batch.deferred
                    cur.execute(
                        self.q["defer"],
                        {
                            "worker": worker,
                            "ids": [x.id for x in d],
                            "delays": [x.delay for x in d],
                            "breakers": [x.breaker for x in d],
                            "rate_keys": [x.rate_key for x in d],
                        },
                    )
                if (
                    batch.released
                    or any(r.delay <= 0 for r in batch.retries)
                    or any(x.delay <= 0 for x in batch.deferred)
                ):
                    cur.execute(self.q["notify"])  # ready again at once: wake other workers
                if claim is not None:
                    pending = self._claim_in(conn, claim)
            if pending is None:
                return None
            result, short = pending()
            if short and claim is not None:
                result = self._top_up(conn, claim, result, short)
            return result

    def renew(self, request: RenewRequest) -> list[TaskId]:
        if not request.ids:
            return []
        with self._conn(worker=True) as conn:
            rows = conn.execute(
                self.q["renew"],
                {"ids": list(request.ids), "worker": request.worker_id, "lease": request.lease},
            ).fetchall()
        return [r[0] for r in rows]

    def heartbeat(self, beat: Heartbeat) -> None:
        with self._conn(worker=True) as conn:
            conn.execute(
                self.q["heartbeat"],
                {
                    "id": beat.worker_id,
                    "host": beat.host,
                    "pid": beat.pid,
                    "version": beat.version,
                    "queues": beat.queues,
                    "concurrency": beat.concurrency,
                    "running": beat.running,
                    "done": beat.done,
                    "started": beat.started,
                },
            )

    def remove_worker(self, worker_id: str) -> None:
        with self._conn(worker=True) as conn:
            conn.execute(self.q["remove_worker"], {"id": worker_id})

    def prune(self, request: PruneRequest) -> int:
        """Done and cancelled tasks, old dead letters (with ``dead_older_than``), completed
        batches with no member left, stale workers: ``request.batch`` rows per statement,
        each statement its own transaction, so locks are held briefly."""
        removed = 0
        steps = [("prune_done", request.done_older_than)]
        steps.append(("prune_cancelled", request.done_older_than))
        if request.dead_older_than is not None:
            steps.append(("prune_dead", request.dead_older_than))
        steps.append(("prune_batches", request.done_older_than))
        with self._conn(worker=True) as conn:
            for step, age in steps:
                while True:
                    n = conn.execute(self.q[step], {"age": age, "batch": request.batch}).rowcount
                    removed += max(n, 0)
                    if n < request.batch:
                        break
            n = conn.execute(self.q["prune_workers"], {"age": request.workers_stale_after}).rowcount
            removed += max(n, 0)
            self._vacuum(conn)
        return removed

    def _vacuum(self, conn: psycopg.Connection[Any]) -> None:
        """Without autovacuum, vacuum the task table once enough dead rows piled up."""
        try:
            row = conn.execute(self.q["dead_rows"]).fetchone()
            if row is not None and (row[0] or 0) >= _VACUUM_AFTER:
                conn.execute(self.q["vacuum"])
        except psycopg.Error:
            pass  # best effort (not the table's owner, say): the administrator vacuums

    def prepare_worker(self) -> None:
        pass

    def wake_source(self) -> ListenWakeSource | None:
        if self.pgbouncer:  # transaction pooling: LISTEN would not survive; poll instead
            return None
        return ListenWakeSource(self.conninfo, self._listen_kwargs, self.channel)

    # --- inspection ----------------------------------------------------------------

    def get(self, task_id: TaskId) -> Task | None:
        try:
            task_id = int(task_id)
        except (TypeError, ValueError):
            return None  # cannot be an id here
        with self._conn() as conn:
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(self.q["get_task"], {"id": task_id}).fetchone()
            if row is not None:
                return task_from_row(row)
            dead = cur.execute(self.q["get_dead_by_task"], {"id": task_id}).fetchone()
        return dead_from_row(dead).as_task() if dead is not None else None

    def counts(self) -> Counts:
        counts = Counts()
        oldest: float | None = None
        now: float | None = None
        with self._conn() as conn:
            if self.session_settings:  # no JIT (the session's): it would cost more than it saves
                tasks = conn.execute(self.q["count_tasks"]).fetchall()
                dead = conn.execute(self.q["count_dead"]).fetchall()
            else:
                with self._tx(conn):
                    tasks_cur = conn.execute(self.q["count_tasks"])
                    dead_cur = conn.execute(self.q["count_dead"])
                tasks, dead = tasks_cur.fetchall(), dead_cur.fetchall()

        def per(queue: str) -> dict[str, int]:
            # the four statuses and ready/scheduled always, "cancelled" where there are some
            return counts.by_queue.setdefault(
                queue, dict.fromkeys((*_STATUSES[:4], "ready", "scheduled"), 0)
            )

        for queue, status, n, ready, first, at in tasks:
            now = at
            counts_of = per(queue)
            counts_of[status] = counts_of.get(status, 0) + n
            setattr(counts, status, getattr(counts, status) + n)
            if status == "pending":
                due = ready or 0
                counts_of["ready"] += due
                counts_of["scheduled"] += n - due
                counts.ready += due
                counts.scheduled += n - due
                if first is not None and (oldest is None or first < oldest):
                    oldest = first
        for queue, n in dead:
            per(queue)["dead"] += n
            counts.dead += n
        if oldest is not None and now is not None:
            counts.oldest_ready_age = max(0.0, now - oldest)
        return counts

    def list_tasks(self, flt: TaskFilter) -> list[Task]:
        if flt.status == "dead":
            dead = self.dead_letters(
                DeadFilter(task_name=flt.task_name, queue=flt.queue, limit=flt.limit)
            )
            return [d.as_task() for d in dead]
        where = ["status = %(status)s" if flt.status else
                 "status IN ('pending', 'processing', 'done', 'cancelled')"]  # fmt: skip
        if flt.queue is not None:
            where.append("queue = %(queue)s")
        if flt.task_name is not None:
            where.append("task_name = %(name)s")
        sql = self.q["list_tasks"].replace("{where}", " AND ".join(where))
        params = {"status": flt.status, "queue": flt.queue, "name": flt.task_name}
        with self._conn() as conn:
            cur = conn.cursor(row_factory=dict_row)
            rows = cur.execute(sql, {**params, "limit": flt.limit}).fetchall()
        return [task_from_row(r) for r in rows]

    def workers(self) -> list[WorkerInfo]:
        with self._conn() as conn:
            rows = conn.execute(self.q["workers"]).fetchall()
        return [
            WorkerInfo(
                id=r[0],
                host=r[1],
                pid=r[2],
                version=r[3],
                queues=r[4],
                concurrency=r[5],
                running=r[6],
                done=r[7],
                started=datetime.fromtimestamp(r[8], UTC),
                last_beat=datetime.fromtimestamp(r[9], UTC),
                heartbeat_age=max(0.0, r[10]),
            )
            for r in rows
        ]

    # --- dead letters --------------------------------------------------------------

    @staticmethod
    def _dead_where(flt: DeadFilter) -> tuple[list[str], dict[str, Any]]:
        where: list[str] = []
        if flt.task_name is not None:
            where.append("task_name = %(name)s")
        if flt.queue is not None:
            where.append("queue = %(queue)s")
        if flt.error_contains is not None:
            where.append("strpos(lower(error), lower(%(text)s)) > 0")
        if flt.fingerprint is not None:
            where.append("fingerprint = %(fp)s")
        params = {
            "name": flt.task_name,
            "queue": flt.queue,
            "text": flt.error_contains,
            "fp": flt.fingerprint,
            "limit": flt.limit,  # None: LIMIT NULL, no limit
        }
        return where, params

    def dead_letters(self, flt: DeadFilter) -> list[DeadLetter]:
        where, params = self._dead_where(flt)
        where.insert(0, "TRUE" if flt.include_all else "status = 'dead'")
        sql = self.q["list_dead"].replace("{where}", " AND ".join(where))
        with self._conn() as conn:
            rows = conn.cursor(row_factory=dict_row).execute(sql, params).fetchall()
        return [dead_from_row(r) for r in rows]

    def get_dead(self, dead_id: TaskId) -> DeadLetter | None:
        try:
            key = int(dead_id)
        except (TypeError, ValueError):
            return None
        with self._conn() as conn:
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(self.q["get_dead"], {"id": key}).fetchone()
        return None if row is None else dead_from_row(row)

    def dead_groups(self, flt: DeadFilter) -> list[DeadGroup]:
        """Status-'dead' letters only (``include_all`` does not apply to groups)."""
        where, params = self._dead_where(flt)
        sql = self.q["dead_groups"].replace("{where}", "".join(f" AND {w}" for w in where))
        with self._conn() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [
            DeadGroup(
                fingerprint=fp,
                count=n,
                task_name=task_name,
                example=error or "",
                example_id=example_id,
                first_seen=datetime.fromtimestamp(first, UTC),
                last_seen=datetime.fromtimestamp(last, UTC),
            )
            for fp, n, first, last, example_id, task_name, error in rows
        ]

    def _lock_dead(
        self, conn: psycopg.Connection[Any], sel: DeadSelector, doing: str
    ) -> list[tuple[int, int, str | None]]:
        """(id, task_id, unique_key) of the status-'dead' letters ``sel`` names or matches,
        oldest death first, locked for the transaction.  Ids given one by one that are
        unknown or not waiting raise NotFound (and the transaction changes nothing)."""
        if sel.ids:
            ids = _int_ids(sel.ids, "dead letter")
            rows = conn.execute(
                self.q["lock_dead"].replace("{where}", "AND id = ANY(%(ids)s::bigint[])"),
                {"ids": ids},
            ).fetchall()
            found = {r[0] for r in rows}
            for i in ids:
                if i not in found:
                    raise NotFound(f"no dead letter {i} waiting to be {doing}")
            return rows
        if not (sel.all or sel.task_name or sel.queue or sel.fingerprint):
            raise ValueError(
                "say which dead letters: ids, all, or a task name, queue or fingerprint"
            )
        where = ""
        if sel.task_name is not None:
            where += " AND task_name = %(name)s"
        if sel.queue is not None:
            where += " AND queue = %(queue)s"
        if sel.fingerprint is not None:
            where += " AND fingerprint = %(fp)s"
        sql = self.q["lock_dead"].replace("{where}", where)
        params = {"name": sel.task_name, "queue": sel.queue, "fp": sel.fingerprint}
        return conn.execute(sql, params).fetchall()

    def requeue_dead(
        self,
        selector: DeadSelector,
        *,
        payload_json: str | None = None,
        delay: float = 0.0,
        spread: float = 0.0,
    ) -> list[TaskId]:
        check_requeue(selector, payload_json, delay, spread)
        with self._conn() as conn, conn.transaction():
            rows = self._lock_dead(conn, selector, "re-queued")
            n = len(rows)
            dues = [delay + spread * i / n for i in range(n)]
            return self._requeue_rows(conn, rows, dues, payload_json)

    def _requeue_rows(
        self,
        conn: psycopg.Connection[Any],
        rows: Sequence[tuple[int, int, str | None]],
        dues: Sequence[float],
        payload_json: str | None = None,
    ) -> list[TaskId]:
        """Re-queue locked dead letters: each becomes ``requeued`` and its task row pending
        again (due ``dues[i]`` seconds from now, attempts 0, the error history, batch and
        the link to the letter kept), inserted again if it was deleted; a unique key that
        a live task holds meanwhile (or an earlier letter of these) is dropped."""
        if not rows:
            return []
        dead_ids = [r[0] for r in rows]
        conn.execute(self.q["mark_requeued"], {"ids": dead_ids})
        keys: list[str | None] = []
        taken: set[str] = set()
        for _dead_id, _task_id, key in rows:
            keep = key
            if key is not None:
                row = conn.execute(self.q["key_taken"], {"key": key}).fetchone()
                if key in taken or (row and row[0]):
                    keep = None  # a live task holds it: this re-run goes without
                else:
                    taken.add(key)
            keys.append(keep)
        params: dict[str, Any] = {
            "task_ids": [r[1] for r in rows],
            "dead_ids": dead_ids,
            "dues": list(dues),
            "keys": keys,
            "payload": payload_json,
        }
        revived = {r[0] for r in conn.execute(self.q["revive"], params).fetchall()}
        gone = [i for i, r in enumerate(rows) if r[1] not in revived]
        if gone:  # task rows deleted by hand: insert them again from their letters
            conn.execute(
                self.q["reinsert"],
                {
                    "dead_ids": [dead_ids[i] for i in gone],
                    "dues": [dues[i] for i in gone],
                    "keys": [keys[i] for i in gone],
                    "payload": payload_json,
                },
            )
        conn.execute(self.q["notify"])
        return [r[1] for r in rows]

    def review_dead(self, review: Review) -> int:
        if review.rate is not None and not review.rate > 0:
            raise ValueError("rate must be > 0 re-queues per second")
        with self._conn() as conn, conn.transaction():
            rows = self._lock_dead(conn, review.selector, "reviewed")
            if not rows:
                return 0
            n = conn.execute(
                self.q["review_dead"],
                {
                    "ids": [r[0] for r in rows],  # oldest death first
                    "review": "approved" if review.approve else "rejected",
                    "by": review.by,
                    "note": review.note,
                    "approve": review.approve,
                    "after": review.after,
                    "step": 0.0 if review.rate is None else 1.0 / review.rate,
                },
            ).rowcount
        return max(n, 0)

    def requeue_approved(self, limit: int = 500) -> list[TaskId]:
        """One read of the partial index first (workers call this about once a second),
        then the transaction that locks the due letters with SKIP LOCKED."""
        if limit <= 0:
            return []
        with self._conn() as conn:
            row = conn.execute(self.q["approved_due"]).fetchone()
            if not (row and row[0]):
                return []
            with conn.transaction():
                rows = conn.execute(self.q["lock_approved"], {"limit": int(limit)}).fetchall()
                return self._requeue_rows(conn, rows, [0.0] * len(rows))

    def discard_dead(self, selector: DeadSelector) -> int:
        with self._conn() as conn, conn.transaction():
            rows = self._lock_dead(conn, selector, "discarded")
            if rows:
                conn.execute(self.q["mark_discarded"], {"ids": [r[0] for r in rows]})
                conn.execute(self.q["discard_task"], {"ids": [r[1] for r in rows]})
        return len(rows)

    # --- control ---------------------------------------------------------------------

    def cancel(self, selector: CancelSelector) -> list[TaskId]:
        if selector.ids:
            ids = _int_ids(selector.ids, "task")
            with self._conn() as conn, conn.transaction():
                rows = conn.execute(self.q["lock_tasks"], {"ids": ids}).fetchall()
                status = dict(rows)
                for i in ids:
                    if i not in status:
                        raise NotFound(f"no task {i}")
                pending = [i for i in ids if status[i] == "pending"]
                if not pending:
                    return []
                done = {r[0] for r in conn.execute(self.q["cancel_ids"], {"ids": pending})}
            return [i for i in pending if i in done]
        where = ""
        for column, value in (
            ("task_name", selector.task_name),
            ("queue", selector.queue),
            ("batch", selector.batch),
        ):
            if value is not None:
                where += f" AND {column} = %({column})s"
        if not where:
            raise ValueError("say which tasks to cancel: ids, or a task name, queue or batch")
        params = {"task_name": selector.task_name, "queue": selector.queue, "batch": selector.batch}
        with self._conn() as conn:
            cur = conn.execute(self.q["cancel_matching"].replace("{where}", where), params)
            return sorted(r[0] for r in cur.fetchall())

    def pause_queue(self, queue: str, paused: bool) -> None:
        with self._conn() as conn:
            conn.execute(self.q["pause_queue" if paused else "resume_queue"], {"name": queue})

    def paused_queues(self) -> dict[str, float]:
        with self._conn() as conn:
            rows = conn.execute(self.q["paused_queues"]).fetchall()
        return {name: float(at or 0.0) for name, at in rows}

    # --- batches ---------------------------------------------------------------------

    def _batch_infos(
        self, conn: psycopg.Connection[Any], rows: Sequence[tuple[Any, ...]]
    ) -> list[BatchInfo]:
        """BatchInfo for batch rows (name, total, created, completed, on_complete_task,
        followup_id), with member counts by the task rows' status."""
        if not rows:
            return []
        members: dict[str, dict[str, Any]] = {}
        got = conn.execute(self.q["batch_members"], {"names": [r[0] for r in rows]})
        for name, status, n, last in got.fetchall():
            per = members.setdefault(name, {**dict.fromkeys(_STATUSES, 0), "last": None})
            if status in _STATUSES:
                per[status] += n
            if last is not None and (per["last"] is None or last > per["last"]):
                per["last"] = last
        out = []
        for name, total, created, completed, task, followup in rows:
            per = members.get(name) or {**dict.fromkeys(_STATUSES, 0), "last": None}
            made = utc_from_epoch(created)
            assert made is not None  # NOT NULL column
            out.append(
                BatchInfo(
                    name=name,
                    total=total,
                    pending=per["pending"],
                    processing=per["processing"],
                    done=per["done"],
                    dead=per["dead"],
                    cancelled=per["cancelled"],
                    created=made,
                    last_finished=utc_from_epoch(per["last"]),
                    completed=utc_from_epoch(completed),
                    on_complete=task,
                    followup_id=followup,
                )
            )
        return out

    def batch(self, name: str) -> BatchInfo | None:
        with self._conn() as conn:
            rows = conn.execute(self.q["get_batch"], {"name": name}).fetchall()
            found = self._batch_infos(conn, rows)
        return found[0] if found else None

    def batches(self, limit: int = 50) -> list[BatchInfo]:
        with self._conn() as conn:
            rows = conn.execute(self.q["list_batches"], {"limit": max(0, int(limit))}).fetchall()
            return self._batch_infos(conn, rows)

    def settle_batches(self) -> list[tuple[str, TaskId | None]]:
        """Each open batch with no member left is completed in a transaction of its own,
        its follow-up enqueued in the same one; the UPDATE ... WHERE completed IS NULL is
        the compare-and-set that makes concurrent callers complete it once."""
        settled: list[tuple[str, TaskId | None]] = []
        with self._conn() as conn:
            names = [r[0] for r in conn.execute(self.q["open_batches"]).fetchall()]
            for name in names:
                with conn.transaction():
                    row = conn.execute(self.q["settle_batch"], {"name": name}).fetchone()
                    if row is None:
                        continue  # another worker settled it, or a member came back
                    task, payload, queue = row
                    followup: TaskId | None = None
                    if task is not None:
                        made = conn.execute(
                            self.q["insert_followup"],
                            {
                                "task_name": task,
                                "payload": payload or "{}",
                                "queue": queue or "default",
                            },
                        ).fetchone()
                        assert made is not None
                        followup = made[0]
                        conn.execute(self.q["set_followup"], {"id": followup, "name": name})
                settled.append((name, followup))
        return settled

    # --- circuit breakers, rate limits, schedules --------------------------------------

    @staticmethod
    def _names_where(names: Sequence[str] | None) -> tuple[str, dict[str, Any]]:
        if names is None:
            return "", {}
        return "WHERE name = ANY(%(names)s::text[])", {"names": list(names)}

    def _put(
        self, conn: psycopg.Connection[Any], what: str, row: dict[str, Any], expected: int
    ) -> bool:
        """The compare-and-set: insert at expected version 0, else update where the
        stored version is ``expected``; the stored version becomes ``expected + 1``."""
        row = {**row, "version": expected + 1, "expected": expected}
        sql = self.q[f"insert_{what}" if expected == 0 else f"update_{what}"]
        return conn.execute(sql, row).rowcount == 1

    def breakers(self, names: Sequence[str] | None = None) -> list[BreakerState]:
        if names is not None and not names:
            return []
        where, params = self._names_where(names)
        with self._conn(worker=True) as conn:
            cur = conn.cursor(row_factory=dict_row)
            rows = cur.execute(self.q["breakers"].replace("{where}", where), params).fetchall()
        return [shared.breaker_from_row(r) for r in rows]

    def put_breaker(self, state: BreakerState, expected_version: int) -> bool:
        """The compare-and-set; a breaker that closes (from open or half_open) notifies
        idle workers, whose LISTEN would otherwise not hear that its tasks are back."""
        row = {**shared.breaker_values(state), "version": expected_version + 1}
        with self._conn(worker=True) as conn:
            if expected_version == 0:
                return conn.execute(self.q["insert_breaker"], row).rowcount == 1
            got = conn.execute(
                self.q["update_breaker"], {**row, "expected": expected_version}
            ).fetchone()
            if got is not None and state.state == "closed" and got[0] != "closed":
                conn.execute(self.q["notify"])
            return got is not None

    def delete_breaker(self, name: str) -> bool:
        """A deleted row counts as closed: deleting one that was not wakes idle workers."""
        with self._conn(worker=True) as conn:
            got = conn.execute(self.q["delete_breaker"], {"name": name}).fetchone()
            if got is not None and got[0] != "closed":
                conn.execute(self.q["notify"])
            return got is not None

    def rate_limits(self, names: Sequence[str] | None = None) -> list[RateState]:
        if names is not None and not names:
            return []
        where, params = self._names_where(names)
        with self._conn(worker=True) as conn:
            cur = conn.cursor(row_factory=dict_row)
            rows = cur.execute(self.q["rate_limits"].replace("{where}", where), params).fetchall()
        return [shared.rate_from_row(r) for r in rows]

    def put_rate_limit(self, state: RateState, expected_version: int) -> bool:
        with self._conn(worker=True) as conn:
            return self._put(conn, "rate_limit", shared.rate_values(state), expected_version)

    def rate_keys_ready(
        self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()
    ) -> dict[str, tuple[float, str]]:
        """The rate index's keys by a loose scan (one probe each), each key's earliest
        due task by a loose scan over its priorities; plus keys with a lapsed lease."""
        scope = _scope(queues, exclude)
        if scope is None:
            return {}
        queues, exclude = scope
        excluding = bool(exclude)
        ready_sql = self._queries("rate_keys_ready", queues, excluding)
        lapsed_sql = self._queries("rate_keys_lapsed", queues, excluding)
        params = {"queues": list(queues or ()), "exclude": list(exclude)}
        with self._conn(worker=True) as conn:
            if self.session_settings:
                ready = conn.execute(ready_sql, params).fetchall()
                lapsed = conn.execute(lapsed_sql, params).fetchall()
            else:
                with self._tx(conn):
                    ready_cur = conn.execute(ready_sql, params)
                    lapsed_cur = conn.execute(lapsed_sql, params)
                ready, lapsed = ready_cur.fetchall(), lapsed_cur.fetchall()
        out: dict[str, tuple[float, str]] = {}
        for key, next_run, task_name, now in ready:
            out[key] = (max(0.0, next_run - now), task_name)
        for key, task_name, _now in lapsed:
            if key in out or len(out) < 100:
                out[key] = (0.0, task_name)
        return out

    @staticmethod
    def _schedule_row(state: ScheduleState) -> dict[str, Any]:
        row = shared.schedule_values(state)
        if row["last_task_id"] is not None:
            row["last_task_id"] = int(row["last_task_id"])  # a bigint column
        return row

    def schedules(self) -> list[ScheduleState]:
        with self._conn() as conn:
            rows = conn.cursor(row_factory=dict_row).execute(self.q["schedules"]).fetchall()
        return [shared.schedule_from_row(r) for r in rows]

    def put_schedule(self, state: ScheduleState, expected_version: int) -> bool:
        with self._conn() as conn:
            return self._put(conn, "schedule", self._schedule_row(state), expected_version)

    def delete_schedule(self, name: str) -> bool:
        with self._conn() as conn:
            return conn.execute(self.q["delete_schedule"], {"name": name}).rowcount > 0

    def fire_schedule(
        self, state: ScheduleState, expected_version: int, tasks: Sequence[NewTask]
    ) -> list[TaskId] | None:
        """The compare-and-set first (a concurrent fire waits for its row lock, then finds
        the version changed and enqueues nothing), then the tasks, in one transaction."""
        row = self._schedule_row(state)
        with self._conn() as conn, conn.transaction():
            if not self._put(conn, "schedule", row, expected_version):
                return None
            if not tasks:
                return []
            ids = self._insert(conn.cursor(), tasks)
            conn.execute(self.q["set_last_task"], {"id": ids[-1], "name": state.name})
            return ids

    def parse_id(self, text: str) -> TaskId:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"task ids are integers on PostgreSQL, got {text!r}") from None


__all__ = ["SCHEMA_VERSION", "PostgresBackend"]
