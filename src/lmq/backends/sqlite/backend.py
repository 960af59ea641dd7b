"""The SQLite backend: the embedded default.

One database file in WAL mode, shared by any number of producer threads and worker
processes.  Every write runs in a ``BEGIN IMMEDIATE`` transaction, so a writer waits for
the lock up front instead of failing half-way; ``database is locked`` is retried here
and never reaches the user (a :class:`~lmq.exceptions.BackendBusy` only after
``busy_wait`` seconds).  The claim is one ``UPDATE … WHERE id IN (SELECT … LIMIT n)
RETURNING`` inside that transaction, so two workers can never take one task, and it
reads only partial indexes over pending rows, so finished rows cost it nothing.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ...exceptions import (
    BackendBusy,
    BackendError,
    BackendUnavailable,
    ConfigError,
    NotFound,
    SchemaMissing,
)
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
    TaskError,
    TaskFilter,
    TaskId,
    WorkerInfo,
)
from ...url import QueueURL
from ..external import app_connection
from ..rows import (
    breaker_from_row,
    breaker_values,
    check_requeue,
    dead_from_row,
    epoch,
    error_line,
    rate_from_row,
    rate_values,
    schedule_from_row,
    schedule_values,
    split_sql,
    task_from_row,
)
from ..sqlfile import check_prefix, load_migrations, load_queries, load_schema
from .watch import WalWatcher

T = TypeVar("T")

SCHEMA_VERSION = 3
# SQLite's own busy handler sleeps 1, 2, 5 … then 100 ms between tries, so a waiting
# writer can starve behind busy workers for seconds (long enough for a short lease to
# expire).  lmq waits itself instead, retrying every 0.1-2 ms (see _retry_locked).
_BUSY_TIMEOUT_MS = 0
_PRODUCER_CHECKPOINT = 10_000  # WAL pages before a producer's commit checkpoints
_WORKER_CHECKPOINT = 1_000


def _now() -> float:
    return time.time()


def _utc_text(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


_FilterKey = tuple[tuple[str, ...] | None, tuple[str, ...]]  # (--queues, paused queues)
_ClaimKey = tuple[tuple[str, ...] | None, tuple[str, ...], str]  # ... and the gate's name
_ADD_COLUMN = re.compile(r"^ALTER\s+TABLE\s+(\w+)\s+ADD\s+COLUMN\s+(\w+)", re.IGNORECASE)


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "database is locked" in text or "database table is locked" in text or "busy" in text


STATUS_KEYS = ("pending", "processing", "done", "dead")


class SQLiteBackend:
    """See the module docstring.  ``create=False`` refuses to create a missing file."""

    def __init__(self, url: QueueURL, *, create: bool = True) -> None:
        try:
            self.prefix = check_prefix(url.prefix)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.url = url.raw
        self.path = url.path
        self.synchronous = url.options.get("synchronous", "NORMAL").upper()
        if self.synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ConfigError(
                f"invalid synchronous={self.synchronous!r} in {url.raw!r}: "
                "use NORMAL (default) or FULL"
            )
        try:
            self.busy_wait = float(url.options.get("busy_wait", "60"))
        except ValueError:
            raise ConfigError(f"invalid busy_wait in {url.raw!r}: seconds expected") from None
        self._create = create
        self._autocheckpoint = _PRODUCER_CHECKPOINT
        self.q = load_queries("lmq.backends.sqlite", "queries.sql", self.prefix)
        # the gate_* fragments (which tasks a claim of each kind may take), comments out
        self._gates = {
            name: "\n".join(ln for ln in sql.splitlines() if not ln.strip().startswith("--"))
            for name, sql in self.q.items()
            if name.startswith("gate_")
        }
        plain = self._gates["gate_plain"]
        for name in ("has_expired", "has_ready", "next_due", "next_lease_expiry"):
            self.q[name] = self.q[name].replace("{gate}", plain)
        self.q["claim_candidates"] = self.q["claim_candidates"].replace("{gate}", plain)
        self._local = threading.local()
        self._all_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._schema_checked = False
        self._schema_lock = threading.Lock()
        self._filters: dict[_FilterKey, tuple[str, dict[str, str]]] = {}
        self._claim_sql: dict[_ClaimKey, str] = {}
        self._check_path()

    # --- connections -----------------------------------------------------------------

    def _check_path(self) -> None:
        p = Path(self.path)
        if self.path == ":memory:":
            raise ConfigError(
                "sqlite:///:memory: cannot be shared between a producer and a worker; "
                "use memory:// for tests or a file path"
            )
        if not p.parent.exists() if str(p.parent) else False:
            raise BackendUnavailable(
                f"cannot open SQLite database {self.path!r}: directory "
                f"{str(p.parent)!r} does not exist"
            )
        if p.is_dir():
            raise BackendUnavailable(
                f"cannot open SQLite database {self.path!r}: it is a directory"
            )
        if not self._create and not p.exists():
            raise BackendUnavailable(
                f"no queue database at {self.path!r} (nothing enqueued yet? check --url / $LMQ_URL)"
            )

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, with the schema checked (created on first use)."""
        conn = self._raw_conn()
        if not self._schema_checked:
            self._ensure_schema(conn)
        return conn

    def _raw_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open()
        return conn

    def _open(self) -> sqlite3.Connection:
        if not self._create and not Path(self.path).exists():
            self._check_path()
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=_BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,
                cached_statements=256,
            )
            self._retry_locked(lambda: self._setup(conn))
        except sqlite3.DatabaseError as exc:
            raise BackendUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from None
        with self._conns_lock:
            self._all_conns.append(conn)
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA wal_autocheckpoint={self._autocheckpoint}")

    def _retry_locked(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying while the database is locked, up to ``busy_wait`` seconds."""
        deadline = time.monotonic() + self.busy_wait
        pause = 0.0002
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc):
                    raise self._translate(exc) from None
                if time.monotonic() >= deadline:
                    raise BackendBusy(
                        f"SQLite database {self.path!r} stayed locked for {self.busy_wait:g}s"
                    ) from None
                time.sleep(random.uniform(pause / 2, pause))  # jitter: waiters spread out
                pause = min(pause * 2, 0.002)
            except sqlite3.DatabaseError as exc:  # not a database, corrupt, read-only...
                raise self._translate(exc) from None

    def _translate(self, exc: sqlite3.Error) -> BackendError:
        if "no such table" in str(exc) or "no such column" in str(exc):
            return SchemaMissing(
                f"SQLite database {self.path!r}: {exc}; lmq's tables are missing or "
                "incomplete: run `lmq migrate`"
            )
        return BackendUnavailable(f"SQLite database {self.path!r}: {exc}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, lock taken up front, retried while the file is locked."""
        conn = self._conn()
        self._retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            yield conn
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise self._translate(exc) from None
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        else:
            try:
                self._retry_locked(lambda: conn.execute("COMMIT"))
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn()
        return self._retry_locked(lambda: fn(conn))

    def close(self) -> None:
        with self._conns_lock:
            conns, self._all_conns = self._all_conns, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):  # best effort: another thread may own it
                conn.close()
        self._local = threading.local()

    # --- schema ------------------------------------------------------------------------

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        with self._schema_lock:
            if self._schema_checked:
                return
            version = self._version(conn)
            if version is None or version < SCHEMA_VERSION:
                if not self._create and version is None:
                    raise SchemaMissing(
                        f"{self.path!r} has no lmq tables "
                        f"({self.prefix}queue_tasks); run `lmq migrate` first"
                    )
                self._migrate(conn)
            elif version > SCHEMA_VERSION:
                raise SchemaMissing(
                    f"{self.path!r} has lmq schema {version}, newer than this lmq knows "
                    f"({SCHEMA_VERSION}); upgrade lmq"
                )
            self._schema_checked = True

    def _version(self, conn: sqlite3.Connection) -> int | None:
        def read() -> int | None:
            meta = {"name": f"{self.prefix}queue_meta"}
            if not conn.execute(self.q["table_exists"], meta).fetchone():
                return None
            row = conn.execute(self.q["schema_version"]).fetchone()
            return int(row[0]) if row else None

        return self._retry_locked(read)

    def _migrate(self, conn: sqlite3.Connection) -> list[int]:
        applied: list[int] = []
        self._retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            current = self._version(conn) or 0
            if current > SCHEMA_VERSION:
                raise SchemaMissing(
                    f"{self.path!r} has lmq schema {current}, newer than this lmq knows "
                    f"({SCHEMA_VERSION}); upgrade lmq"
                )
            migrations = load_migrations("lmq.backends.sqlite.migrations", self.prefix)
            repair = bool(current) and bool(self._missing_tables(conn))
            if current == 0:  # an empty database: the current schema in one go
                for statement in split_sql(self.q_schema()):
                    conn.execute(statement)
                conn.execute(self.q["set_schema_version"], {"version": str(SCHEMA_VERSION)})
                applied = [n for n, _name, _sql in migrations if n <= SCHEMA_VERSION]
                current = SCHEMA_VERSION
            for number, _name, sql in migrations:
                if number <= current and not repair:
                    continue
                # repair (a table gone): every migration again, each one idempotent
                for statement in split_sql(sql):
                    self._migration_statement(conn, statement)
                if number > current:
                    conn.execute(self.q["set_schema_version"], {"version": str(number)})
                    applied.append(number)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return applied

    @staticmethod
    def _migration_statement(conn: sqlite3.Connection, statement: str) -> None:
        """Run one migration statement; an ADD COLUMN whose column exists is skipped
        (SQLite has no ADD COLUMN IF NOT EXISTS), so every migration can be re-run."""
        m = _ADD_COLUMN.match(statement)
        if m is not None:
            table, column = m.groups()
            have = {row[1] for row in conn.execute(f"PRAGMA table_xinfo({table})")}
            if column in have:
                return
        conn.execute(statement)

    def q_schema(self) -> str:
        """schema.sql with the prefix filled in (the current schema for an empty database)."""
        return load_schema("lmq.backends.sqlite", self.prefix)

    _TABLES = (
        "queue_tasks",
        "queue_dead_letters",
        "queue_workers",
        "queue_meta",
        "queue_queues",
        "queue_batches",
        "queue_breakers",
        "queue_rate_limits",
        "queue_schedules",
    )

    def _missing_tables(self, conn: sqlite3.Connection) -> list[str]:
        return [
            t
            for t in self._TABLES
            if not conn.execute(self.q["table_exists"], {"name": self.prefix + t}).fetchone()
        ]

    def migrate(self) -> list[int]:
        conn = self._raw_conn()
        applied = self._migrate(conn)
        self._schema_checked = True
        return applied

    def schema_version(self) -> int | None:
        conn = self._raw_conn()
        return self._version(conn)

    # --- producer ----------------------------------------------------------------------

    def enqueue(
        self,
        tasks: Sequence[NewTask],
        connection: object | None = None,
        batch: BatchSpec | None = None,
    ) -> list[TaskId]:
        if batch is not None and any(t.batch != batch.name for t in tasks):
            tasks = [t._replace(batch=batch.name) for t in tasks]
        if not tasks and batch is None:
            return []
        if connection is not None:  # the application's transaction: it commits, not lmq
            app = app_connection(connection, "sqlite")
            self._conn()  # lmq's own connection checks (or creates) the tables first
            try:
                if batch is not None:
                    self._add_batch(app.cursor, batch)
                return self._insert(app.cursor, tasks)
            except sqlite3.Error as exc:
                raise self._translate(exc) from None
            finally:
                app.cursor.close()
        with self._tx() as conn:
            if batch is not None:
                self._add_batch(conn, batch)
            return self._insert(conn, tasks)

    def _add_batch(self, conn: sqlite3.Connection | sqlite3.Cursor, spec: BatchSpec) -> None:
        conn.execute(
            self.q["batch_add"],
            {
                "name": spec.name,
                "total": spec.total,
                "now": _now(),
                "task": spec.on_complete_task,
                "payload": spec.on_complete_payload_json,
                "queue": spec.on_complete_queue,
            },
        )

    def _insert(
        self, conn: sqlite3.Connection | sqlite3.Cursor, tasks: Sequence[NewTask]
    ) -> list[TaskId]:
        if not tasks:
            return []
        insert = self.q["insert_task"]
        now = _now()
        extra = (now, _utc_text(now))
        rows = [t + extra for t in tasks]  # a NewTask and the time: the row (queries.sql)
        if all(t.unique_key is None for t in tasks):
            conn.executemany(insert, rows)
            last = conn.execute(self.q["last_id"]).fetchone()[0]
            # one write transaction holds the file lock, so the ids are consecutive
            return list(range(last - len(tasks) + 1, last + 1))
        ids: list[TaskId] = []
        for t in rows:
            if t[7] is None:  # no unique_key (NewTask's 8th field)
                conn.execute(insert, t)
                ids.append(conn.execute(self.q["last_id"]).fetchone()[0])
                continue
            got = conn.execute(self.q["insert_task_unique"], t).fetchone()
            if got is None:
                got = conn.execute(self.q["find_unique"], (t[7],)).fetchone()
            ids.append(got[0])
        return ids

    # --- worker ------------------------------------------------------------------------

    def _queue_filter(
        self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()
    ) -> tuple[str, dict[str, str]]:
        """The claim's queue condition: ``--queues`` and the paused queues (none: "")."""
        key = (queues, exclude)
        cached = self._filters.get(key)
        if cached is None:
            sql, params = "", {}
            if not queues:
                pass
            elif len(queues) == 1:
                sql, params = "AND queue = :q0", {"q0": queues[0]}
            else:
                names = ", ".join(f":q{i}" for i in range(len(queues)))
                sql = f"AND queue IN ({names})"
                params = {f"q{i}": q for i, q in enumerate(queues)}
            if exclude:
                xsql, xparams = self._exclude_filter(exclude)
                sql, params = f"{sql} {xsql}".strip(), {**params, **xparams}
            cached = self._filters[key] = (sql, params)
        return cached

    @staticmethod
    def _exclude_filter(exclude: tuple[str, ...]) -> tuple[str, dict[str, str]]:
        if not exclude:
            return "", {}
        names = ", ".join(f":x{i}" for i in range(len(exclude)))
        return f"AND queue NOT IN ({names})", {f"x{i}": q for i, q in enumerate(exclude)}

    def claim(self, request: ClaimRequest) -> ClaimResult:
        with self._tx() as conn:
            return self._claim_in(conn, request)

    def _claim_in(self, conn: sqlite3.Connection, request: ClaimRequest) -> ClaimResult:
        plain = request.breaker is None and request.rate_key is None
        if request.exclude and plain:
            return self._claim_excluding(conn, request)
        # probe and rate claims read one breaker's / key's rows: paused queues filtered
        return self._claim_with(conn, request, request.queues, request.exclude)

    @staticmethod
    def _gate_name(request: ClaimRequest) -> str:
        if request.breaker is not None:
            return "gate_probe" if request.rate_key is None else "gate_probe_rate"
        return "gate_plain" if request.rate_key is None else "gate_rate"

    def _claim_with(
        self,
        conn: sqlite3.Connection,
        request: ClaimRequest,
        queues: tuple[str, ...] | None,
        exclude: tuple[str, ...],
    ) -> ClaimResult:
        gate = self._gate_name(request)
        key = (queues, exclude, gate)
        qf, qparams = self._queue_filter(queues, exclude)
        sql = self._claim_sql.get(key)
        if sql is None:
            sql = self.q["claim"].replace("{queue_filter}", qf)
            sql = self._claim_sql[key] = sql.replace("{gate}", self._gates[gate])
        now = _now()
        rescued = self._rescue(conn, now)
        params = {
            "worker": request.worker_id,
            "now": now,
            "lease": request.lease,
            "limit": request.limit,
            **qparams,
        }
        if gate != "gate_plain":
            params["breaker"], params["rate_key"] = request.breaker, request.rate_key
        rows = conn.execute(sql, params).fetchall()
        return ClaimResult(list(map(Claimed._make, rows)), rescued)

    def _claim_excluding(self, conn: sqlite3.Connection, request: ClaimRequest) -> ClaimResult:
        """A claim that skips paused queues without walking their backlog.

        ``queue NOT IN (paused)`` on the ready index would step over every ready row of a
        paused queue ahead of the first claimable one (50,000 paused rows: ~16 ms a claim).
        Instead: the queues that have pending rows (a loose scan of the per-queue index),
        less the paused ones; with ``--queues`` or one queue left, the ordinary claim for
        those; else each queue's first ``limit`` ready rows, merged in claim order.
        """
        eligible = self._eligible(conn, request.queues, request.exclude)
        if eligible is None:  # very many queues: the NOT IN filter after all
            return self._claim_with(conn, request, request.queues, request.exclude)
        if request.queues is not None or len(eligible) <= 1:
            if not eligible:
                return ClaimResult([], self._rescue(conn, _now()))
            return self._claim_with(conn, request, eligible, ())
        now = _now()
        rescued = self._rescue(conn, now)
        candidates: list[tuple[int, float, int]] = []
        for name in eligible:
            candidates += conn.execute(
                self.q["claim_candidates"], {"queue": name, "now": now, "limit": request.limit}
            ).fetchall()
        candidates.sort(key=lambda r: (-r[0], r[1], r[2]))
        ids = [r[2] for r in candidates[: request.limit]]
        if not ids:
            return ClaimResult([], rescued)
        rows = conn.execute(
            self.q["claim_ids"],
            {
                "ids": json.dumps(ids),
                "worker": request.worker_id,
                "now": now,
                "lease": request.lease,
            },
        ).fetchall()
        order = {task_id: i for i, task_id in enumerate(ids)}
        rows.sort(key=lambda r: order[r[0]])
        return ClaimResult(list(map(Claimed._make, rows)), rescued)

    _MERGE_QUEUES = 64  # more unpaused queues than this: NOT IN instead of a merge

    def _eligible(
        self,
        conn: sqlite3.Connection,
        queues: tuple[str, ...] | None,
        exclude: tuple[str, ...],
    ) -> tuple[str, ...] | None:
        """``queues`` less ``exclude``; with every queue (None), the queues that have
        pending rows less ``exclude``, or None when there are too many to merge."""
        if queues is not None:
            return tuple(q for q in queues if q not in exclude)
        found: list[str] = []
        after = ""
        first = conn.execute(self.q["first_pending_queue"]).fetchone()
        while first is not None:
            after = first[0]
            if after not in exclude:
                found.append(after)
                if len(found) > self._MERGE_QUEUES:
                    return None
            first = conn.execute(self.q["next_pending_queue"], {"after": after}).fetchone()
        return tuple(found)

    def _rescue(self, conn: sqlite3.Connection, now: float) -> int:
        """Expired leases go back to pending with the lapse recorded as an error.

        The next claim counts another attempt; the worker that claims a task whose
        attempts exceed its limit buries it unrun, so a task that kills its worker every
        time ends in the dead letters instead of a crash loop.
        """
        expired = conn.execute(self.q["expired"], {"now": now}).fetchall()
        for task_id, attempts, locked_by in expired:
            message = f"lease expired: worker {locked_by} stopped renewing it (died or hung)"
            error = TaskError(attempts, datetime.fromtimestamp(now, UTC), "LeaseExpired", message)
            conn.execute(
                self.q["rescue"],
                {
                    "id": task_id,
                    "now": now,
                    "message": message,
                    "error": json.dumps(error.to_json()),
                },
            )
        return len(expired)

    def has_ready(self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()) -> bool:
        xf, xparams = self._exclude_filter(exclude)

        def read(c: sqlite3.Connection) -> bool:
            chosen, skip = queues, exclude
            if exclude:  # as the claim does: never walk a paused queue's backlog
                eligible = self._eligible(c, queues, exclude)
                if eligible == ():  # no queue left: only expired leases elsewhere count
                    sql = self.q["has_expired"].replace("{exclude_filter}", xf)
                    return bool(c.execute(sql, {"now": _now(), **xparams}).fetchone()[0])
                if eligible is not None:
                    chosen, skip = eligible, ()
            qf, qparams = self._queue_filter(chosen, skip)
            sql = self.q["has_ready"].replace("{queue_filter}", qf).replace("{exclude_filter}", xf)
            return bool(c.execute(sql, {"now": _now(), **qparams, **xparams}).fetchone()[0])

        return self._read(read)

    def next_due(
        self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()
    ) -> float | None:
        qf, qparams = self._queue_filter(queues, exclude)
        sql = self.q["next_due"].replace("{queue_filter}", qf)
        xf, xparams = self._exclude_filter(exclude)
        lease_sql = self.q["next_lease_expiry"].replace("{exclude_filter}", xf)

        def read(c: sqlite3.Connection) -> float | None:
            due = c.execute(sql, qparams).fetchone()[0]
            expiry = c.execute(lease_sql, xparams).fetchone()[0]
            times = [t for t in (due, expiry) if t is not None]
            return max(0.0, min(times) - _now()) if times else None

        return self._read(read)

    def complete(
        self, batch: CompleteBatch, claim: ClaimRequest | None = None
    ) -> ClaimResult | None:
        if not len(batch):
            return self.claim(claim) if claim is not None else None
        worker = batch.worker_id
        with self._tx() as conn:
            now = _now()
            if batch.done:
                conn.execute(
                    self.q["ack_done"],
                    {"ids": json.dumps(list(batch.done)), "worker": worker, "now": now},
                )
            if batch.retries:
                conn.executemany(
                    self.q["retry"],
                    [
                        {
                            "id": r.id,
                            "worker": worker,
                            "now": now,
                            "delay": r.delay,
                            "message": error_line(r.error),
                            "error": json.dumps(r.error.to_json()),
                        }
                        for r in batch.retries
                    ],
                )
            for b in batch.burials:
                params = {
                    "id": b.id,
                    "worker": worker,
                    "now": now,
                    "message": error_line(b.error),
                    "reason": b.reason,
                    "max_attempts": b.max_attempts,
                    "fingerprint": b.fingerprint,
                    "error": json.dumps(b.error.to_json()),
                }
                conn.execute(self.q["bury_copy"], params)
                conn.execute(self.q["bury_mark"], params)
            if batch.released:
                conn.execute(
                    self.q["release"],
                    {"ids": json.dumps(list(batch.released)), "worker": worker, "now": now},
                )
            if batch.deferred:
                conn.executemany(
                    self.q["defer"],
                    [
                        {
                            "id": d.id,
                            "worker": worker,
                            "now": now,
                            "delay": d.delay,
                            "breaker": d.breaker,
                            "rate_key": d.rate_key,
                        }
                        for d in batch.deferred
                    ],
                )
            return self._claim_in(conn, claim) if claim is not None else None

    def renew(self, request: RenewRequest) -> list[TaskId]:
        if not request.ids:
            return []
        with self._tx() as conn:
            rows = conn.execute(
                self.q["renew"],
                {
                    "ids": json.dumps(list(request.ids)),
                    "worker": request.worker_id,
                    "now": _now(),
                    "lease": request.lease,
                },
            ).fetchall()
        return [r[0] for r in rows]

    def heartbeat(self, beat: Heartbeat) -> None:
        with self._tx() as conn:
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
                    "now": _now(),
                },
            )

    def remove_worker(self, worker_id: str) -> None:
        with self._tx() as conn:
            conn.execute(self.q["remove_worker"], {"id": worker_id})

    def prune(self, request: PruneRequest) -> int:
        removed = 0
        now = _now()
        cutoff = now - request.done_older_than
        size = max(1, request.batch)
        for name in ("prune_done", "prune_cancelled"):
            while True:  # small batches: each transaction holds the lock only briefly
                with self._tx() as conn:
                    n = conn.execute(self.q[name], {"cutoff": cutoff, "batch": size}).rowcount
                removed += n
                if n < size:
                    break
        if request.dead_older_than is not None:
            dead_cutoff = now - request.dead_older_than
            for name in ("prune_dead_requeued", "prune_dead_discarded", "prune_dead_rejected"):
                while True:
                    with self._tx() as conn:
                        gone = conn.execute(
                            self.q[name], {"cutoff": dead_cutoff, "batch": size}
                        ).fetchall()
                        # the task row kept as its record goes with it (counted as one)
                        conn.executemany(
                            self.q["prune_dead_task"],
                            [{"dead_id": d, "task_id": t} for d, t in gone],
                        )
                    removed += len(gone)
                    if len(gone) < size:
                        break
        while True:  # completed batches whose members are all gone
            with self._tx() as conn:
                n = conn.execute(
                    self.q["prune_batches"], {"cutoff": cutoff, "batch": size}
                ).rowcount
            removed += n
            if n < size:
                break
        with self._tx() as conn:
            removed += conn.execute(
                self.q["prune_workers"], {"cutoff": _now() - request.workers_stale_after}
            ).rowcount
        return removed

    def prepare_worker(self) -> None:
        """Workers checkpoint the WAL (at SQLite's usual 1,000 pages); producers only at
        10,000, so a web request's enqueue rarely pays for writing the WAL back while a
        worker runs, and the WAL still stays bounded when none does."""
        self._autocheckpoint = _WORKER_CHECKPOINT
        with self._conns_lock:
            conns = list(self._all_conns)
        for conn in conns:
            conn.execute(f"PRAGMA wal_autocheckpoint={_WORKER_CHECKPOINT}")

    def wake_source(self) -> WalWatcher:
        return WalWatcher(self.path)

    # --- inspection --------------------------------------------------------------------

    def get(self, task_id: TaskId) -> Task | None:
        def read(c: sqlite3.Connection) -> Task | None:
            c.row_factory = sqlite3.Row
            try:
                row = c.execute(self.q["get_task"], {"id": task_id}).fetchone()
                if row is not None:
                    return _task(row)
                dead = c.execute(self.q["get_dead_by_task"], {"id": task_id}).fetchone()
                return _dead(dead).as_task() if dead is not None else None
            finally:
                c.row_factory = None

        return self._read(read)

    def counts(self) -> Counts:
        def read(c: sqlite3.Connection) -> Counts:
            now = _now()
            counts = Counts()
            oldest: float | None = None
            empty = {
                "pending": 0,
                "processing": 0,
                "done": 0,
                "dead": 0,
                "ready": 0,
                "scheduled": 0,
            }
            for queue, status, n, ready, first in c.execute(self.q["count_tasks"], {"now": now}):
                per = counts.by_queue.setdefault(queue, dict(empty))
                if status in STATUS_KEYS or status == "cancelled":
                    per[status] = per.get(status, 0) + n
                    setattr(counts, status, getattr(counts, status) + n)
                if status == "pending":
                    counts.ready += ready or 0
                    counts.scheduled += n - (ready or 0)
                    per["ready"] += ready or 0
                    per["scheduled"] += n - (ready or 0)
                    if first is not None and (oldest is None or first < oldest):
                        oldest = first
            for queue, n in c.execute(self.q["count_dead"]):
                per = counts.by_queue.setdefault(queue, dict(empty))
                per["dead"] += n
                counts.dead += n
            counts.oldest_ready_age = None if oldest is None else max(0.0, now - oldest)
            return counts

        return self._read(read)

    def list_tasks(self, flt: TaskFilter) -> list[Task]:
        if flt.status == "dead":
            dead = self.dead_letters(
                DeadFilter(task_name=flt.task_name, queue=flt.queue, limit=flt.limit)
            )
            return [d.as_task() for d in dead]

        def read(c: sqlite3.Connection) -> list[Task]:
            c.row_factory = sqlite3.Row
            try:
                rows = c.execute(
                    self.q["list_tasks"],
                    {
                        "status": flt.status,
                        "queue": flt.queue,
                        "name": flt.task_name,
                        "limit": flt.limit,
                    },
                ).fetchall()
            finally:
                c.row_factory = None
            return [_task(r) for r in rows]

        return self._read(read)

    def workers(self) -> list[WorkerInfo]:
        def read(c: sqlite3.Connection) -> list[WorkerInfo]:
            now = _now()
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
                    heartbeat_age=max(0.0, now - r[9]),
                )
                for r in c.execute(self.q["workers"])
            ]

        return self._read(read)

    # --- dead letters ------------------------------------------------------------------

    def dead_letters(self, flt: DeadFilter) -> list[DeadLetter]:
        def read(c: sqlite3.Connection) -> list[DeadLetter]:
            c.row_factory = sqlite3.Row
            try:
                rows = c.execute(
                    self.q["list_dead"],
                    {
                        "all": flt.include_all,
                        "name": flt.task_name,
                        "queue": flt.queue,
                        "text": flt.error_contains,
                        "fingerprint": flt.fingerprint,
                        "limit": -1 if flt.limit is None else flt.limit,
                    },
                ).fetchall()
            finally:
                c.row_factory = None
            return [_dead(r) for r in rows]

        return self._read(read)

    def get_dead(self, dead_id: TaskId) -> DeadLetter | None:
        def read(c: sqlite3.Connection) -> DeadLetter | None:
            c.row_factory = sqlite3.Row
            try:
                row = c.execute(self.q["get_dead"], {"id": dead_id}).fetchone()
            finally:
                c.row_factory = None
            return None if row is None else _dead(row)

        return self._read(read)

    def dead_groups(self, flt: DeadFilter) -> list[DeadGroup]:
        def read(c: sqlite3.Connection) -> list[DeadGroup]:
            rows = c.execute(
                self.q["dead_groups"],
                {
                    "name": flt.task_name,
                    "queue": flt.queue,
                    "text": flt.error_contains,
                    "fingerprint": flt.fingerprint,
                    "limit": -1 if flt.limit is None else max(0, flt.limit),
                },
            ).fetchall()
            return [
                DeadGroup(
                    fingerprint=fp,
                    count=n,
                    task_name=name,
                    example=error or "",
                    example_id=example_id,
                    first_seen=datetime.fromtimestamp(first, UTC),
                    last_seen=datetime.fromtimestamp(last, UTC),
                )
                for fp, n, name, error, example_id, first, last in rows
            ]

        return self._read(read)

    def _select_dead(self, conn: sqlite3.Connection, sel: DeadSelector, doing: str) -> list[TaskId]:
        """The status-'dead' letters ``sel`` names or matches, oldest death first.  Ids given
        one by one that are unknown or not waiting raise NotFound (the caller's
        transaction then changes nothing)."""
        if sel.ids:
            wanted: list[int] = []
            for dead_id in sel.ids:
                try:
                    wanted.append(int(dead_id))
                except (TypeError, ValueError):
                    raise NotFound(f"no dead letter {dead_id} waiting to be {doing}") from None
            rows = conn.execute(self.q["waiting_dead_ids"], {"ids": json.dumps(wanted)})
            found = [r[0] for r in rows]
            for dead_id in wanted:
                if dead_id not in found:
                    raise NotFound(f"no dead letter {dead_id} waiting to be {doing}")
            return list(found)
        if not (sel.all or sel.task_name or sel.queue or sel.fingerprint):
            raise ValueError(
                "say which dead letters: ids, all, or a task name, queue or fingerprint"
            )
        params = {"name": sel.task_name, "queue": sel.queue, "fingerprint": sel.fingerprint}
        return [r[0] for r in conn.execute(self.q["select_dead_ids"], params)]

    def _requeue(
        self,
        conn: sqlite3.Connection,
        dead_ids: Sequence[TaskId],
        dues: Sequence[float],
        now: float,
        payload_json: str | None = None,
    ) -> list[TaskId]:
        """Re-queue waiting dead letters (inside the caller's transaction): the letter
        becomes ``requeued``, its task row pending again, due at ``dues[i]`` (attempts 0,
        the error history and the link to the letter kept)."""
        requeued: list[TaskId] = []
        for dead_id, due in zip(dead_ids, dues, strict=True):
            row = conn.execute(self.q["mark_requeued"], {"id": dead_id, "now": now}).fetchone()
            if row is None:  # not waiting (checked by the caller for ids given one by one)
                continue
            task_id, queue, name, payload, priority, max_attempts, created, errors, ukey = row[:9]
            keys = {"breaker": row[9], "rate_key": row[10]}
            if ukey is not None and conn.execute(self.q["find_unique"], (ukey,)).fetchone():
                ukey = None  # a live task already holds the key; this re-run goes without
            revived = conn.execute(
                self.q["revive"],
                {
                    "task_id": task_id,
                    "now": now,
                    "due": due,
                    "unique_key": ukey,
                    "dead_id": dead_id,
                    "payload": payload_json,
                    **keys,
                },
            ).rowcount
            if not revived:  # its row is gone (deleted by hand): insert it again
                conn.execute(
                    self.q["reinsert"],
                    {
                        "task_id": task_id,
                        "queue": queue,
                        "task_name": name,
                        "payload": payload if payload_json is None else payload_json,
                        "priority": priority,
                        "max_attempts": max_attempts,
                        "now": now,
                        "due": due,
                        "created": created,
                        "errors": errors,
                        "unique_key": ukey,
                        "dead_id": dead_id,
                        **keys,
                    },
                )
            requeued.append(task_id)
        return requeued

    def requeue_dead(
        self,
        selector: DeadSelector,
        *,
        payload_json: str | None = None,
        delay: float = 0.0,
        spread: float = 0.0,
    ) -> list[TaskId]:
        check_requeue(selector, payload_json, delay, spread)
        with self._tx() as conn:
            now = _now()
            ids = self._select_dead(conn, selector, "re-queued")
            n = len(ids)
            dues = [now + delay + spread * i / n for i in range(n)]
            return self._requeue(conn, ids, dues, now, payload_json)

    def review_dead(self, review: Review) -> int:
        if review.rate is not None and not review.rate > 0:
            raise ValueError("rate must be > 0 re-queues per second")
        with self._tx() as conn:
            now = _now()
            ids = self._select_dead(conn, review.selector, "reviewed")
            base = review.after if review.after is not None else now
            conn.executemany(
                self.q["review"],
                [
                    {
                        "id": dead_id,
                        "review": "approved" if review.approve else "rejected",
                        "by": review.by,
                        "now": now,
                        "note": review.note,
                        "requeue_at": (base + (i / review.rate if review.rate else 0.0))
                        if review.approve
                        else None,
                    }
                    for i, dead_id in enumerate(ids)
                ],
            )
            return len(ids)

    def requeue_approved(self, limit: int = 500) -> list[TaskId]:
        if limit <= 0:
            return []
        # a read first (the partial index): most calls find nothing and take no write lock
        due = self._read(lambda c: c.execute(self.q["approved_due"], {"now": _now()}).fetchone())
        if not due or not due[0]:
            return []
        with self._tx() as conn:  # BEGIN IMMEDIATE: one worker at a time takes them
            now = _now()
            rows = conn.execute(self.q["approved_ids"], {"now": now, "limit": limit})
            ids = [r[0] for r in rows]
            return self._requeue(conn, ids, [now] * len(ids), now)

    def discard_dead(self, selector: DeadSelector) -> int:
        n = 0
        with self._tx() as conn:
            now = _now()
            for dead_id in self._select_dead(conn, selector, "discarded"):
                row = conn.execute(self.q["mark_discarded"], {"id": dead_id, "now": now}).fetchone()
                if row is None:
                    continue
                conn.execute(self.q["discard_task"], {"task_id": row[0], "now": now})
                n += 1
        return n

    # --- control -----------------------------------------------------------------------

    def cancel(self, selector: CancelSelector) -> list[TaskId]:
        if not (selector.ids or selector.task_name or selector.queue or selector.batch):
            raise ValueError("say which tasks to cancel: ids, or a task name, queue or batch")
        with self._tx() as conn:
            now = _now()
            if selector.ids:
                wanted: list[int] = []
                for tid in selector.ids:
                    try:
                        wanted.append(int(tid))
                    except (TypeError, ValueError):
                        raise NotFound(f"no task {tid}") from None
                for tid in wanted:
                    if not conn.execute(self.q["task_exists"], {"id": tid}).fetchone()[0]:
                        raise NotFound(f"no task {tid}")
                rows = conn.execute(self.q["cancel_ids"], {"now": now, "ids": json.dumps(wanted)})
            else:
                rows = conn.execute(
                    self.q["cancel_batch" if selector.batch else "cancel_matching"],
                    {
                        "now": now,
                        "name": selector.task_name,
                        "queue": selector.queue,
                        "batch": selector.batch,
                    },
                )
            return sorted(r[0] for r in rows.fetchall())

    def pause_queue(self, queue: str, paused: bool) -> None:
        with self._tx() as conn:
            if paused:
                conn.execute(self.q["pause_queue"], {"name": queue, "now": _now()})
            else:
                conn.execute(self.q["resume_queue"], {"name": queue})

    def paused_queues(self) -> dict[str, float]:
        def read(c: sqlite3.Connection) -> dict[str, float]:
            return {name: float(at or 0.0) for name, at in c.execute(self.q["paused_queues"])}

        return self._read(read)

    # --- batches -----------------------------------------------------------------------

    def _batch_info(self, c: sqlite3.Connection, row: tuple[Any, ...]) -> BatchInfo:
        name, total, created, completed, on_complete, followup = row
        n = dict.fromkeys(("pending", "processing", "done", "dead", "cancelled"), 0)
        last: float | None = None
        for status, count, finished in c.execute(self.q["batch_counts"], {"name": name}):
            if status in n:
                n[status] += count
            if finished is not None and (last is None or finished > last):
                last = finished
        created_at = epoch(created)
        assert created_at is not None  # NOT NULL column
        return BatchInfo(
            name=name,
            total=total,
            pending=n["pending"],
            processing=n["processing"],
            done=n["done"],
            dead=n["dead"],
            cancelled=n["cancelled"],
            created=created_at,
            last_finished=epoch(last),
            completed=epoch(completed),
            on_complete=on_complete,
            followup_id=followup,
        )

    def batch(self, name: str) -> BatchInfo | None:
        def read(c: sqlite3.Connection) -> BatchInfo | None:
            row = c.execute(self.q["batch_get"], {"name": name}).fetchone()
            return None if row is None else self._batch_info(c, row)

        return self._read(read)

    def batches(self, limit: int = 50) -> list[BatchInfo]:
        def read(c: sqlite3.Connection) -> list[BatchInfo]:
            rows = c.execute(self.q["batch_list"], {"limit": max(0, limit)}).fetchall()
            return [self._batch_info(c, r) for r in rows]

        return self._read(read)

    def settle_batches(self) -> list[tuple[str, TaskId | None]]:
        # a read first: with no batch ready to complete, no write lock is taken
        if not self._read(lambda c: c.execute(self.q["settleable"]).fetchone()):
            return []
        settled: list[tuple[str, TaskId | None]] = []
        with self._tx() as conn:
            now = _now()
            for name, task, payload, queue in conn.execute(self.q["settleable"]).fetchall():
                if not conn.execute(self.q["settle"], {"name": name, "now": now}).rowcount:
                    continue  # another worker completed it first
                followup: TaskId | None = None
                if task is not None:
                    new = NewTask(task, payload or "{}", queue or "default")
                    (followup,) = self._insert(conn, [new])
                    conn.execute(self.q["set_followup"], {"name": name, "id": followup})
                settled.append((name, followup))
        return settled

    # --- circuit breakers, rate limits, schedules (compare-and-set rows) ------------------

    def _rows(self, all_sql: str, named_sql: str, names: Sequence[str] | None) -> list[Any]:
        def read(c: sqlite3.Connection) -> list[Any]:
            c.row_factory = sqlite3.Row
            try:
                if names is None:
                    return c.execute(self.q[all_sql]).fetchall()
                return c.execute(self.q[named_sql], {"names": json.dumps(list(names))}).fetchall()
            finally:
                c.row_factory = None

        return self._read(read)

    def _cas(
        self, conn: sqlite3.Connection, kind: str, values: dict[str, Any], expected: int
    ) -> bool:
        """Store a row over version ``expected`` (0: none yet) as version expected + 1."""
        params = {**values, "version": expected + 1, "expected": expected}
        sql = self.q[f"{kind}_insert" if expected == 0 else f"{kind}_update"]
        return conn.execute(sql, params).rowcount == 1

    def breakers(self, names: Sequence[str] | None = None) -> list[BreakerState]:
        return [breaker_from_row(r) for r in self._rows("breakers_all", "breakers_named", names)]

    def put_breaker(self, state: BreakerState, expected_version: int) -> bool:
        with self._tx() as conn:
            return self._cas(conn, "breaker", breaker_values(state), expected_version)

    def delete_breaker(self, name: str) -> bool:
        with self._tx() as conn:
            return conn.execute(self.q["breaker_delete"], {"name": name}).rowcount == 1

    def rate_limits(self, names: Sequence[str] | None = None) -> list[RateState]:
        rows = self._rows("rate_limits_all", "rate_limits_named", names)
        return [rate_from_row(r) for r in rows]

    def put_rate_limit(self, state: RateState, expected_version: int) -> bool:
        with self._tx() as conn:
            return self._cas(conn, "rate_limit", rate_values(state), expected_version)

    def rate_keys_ready(
        self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()
    ) -> dict[str, tuple[float, str]]:
        qf, qparams = self._queue_filter(queues, exclude)
        sql = self.q["rate_keys_ready"].replace("{queue_filter}", qf)

        def read(c: sqlite3.Connection) -> dict[str, tuple[float, str]]:
            now = _now()
            rows = c.execute(sql, {"now": now, **qparams}).fetchall()
            return {key: (max(0.0, due - now), name) for key, due, name in rows}

        return self._read(read)

    def schedules(self) -> list[ScheduleState]:
        return [schedule_from_row(r) for r in self._rows("schedules_all", "", None)]

    def put_schedule(self, state: ScheduleState, expected_version: int) -> bool:
        with self._tx() as conn:
            return self._cas(conn, "schedule", schedule_values(state), expected_version)

    def delete_schedule(self, name: str) -> bool:
        with self._tx() as conn:
            return conn.execute(self.q["schedule_delete"], {"name": name}).rowcount == 1

    def fire_schedule(
        self, state: ScheduleState, expected_version: int, tasks: Sequence[NewTask]
    ) -> list[TaskId] | None:
        with self._tx() as conn:
            if not self._cas(conn, "schedule", schedule_values(state), expected_version):
                return None
            ids = self._insert(conn, tasks)
            if ids:
                conn.execute(self.q["schedule_set_last_task"], {"id": ids[-1], "name": state.name})
            return ids

    def parse_id(self, text: str) -> TaskId:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"task ids are integers on SQLite, got {text!r}") from None


def _task(row: sqlite3.Row) -> Task:
    return replace(task_from_row(row), batch=row["batch"])


def _dead(row: sqlite3.Row) -> DeadLetter:
    return replace(
        dead_from_row(row),
        review=row["review"],
        reviewed_by=row["reviewed_by"],
        reviewed_at=epoch(row["reviewed_at"]),
        review_note=row["review_note"],
        requeue_at=epoch(row["requeue_at"]),
        discarded_at=epoch(row["discarded_at"]),
    )


# --- wake-ups ----------------------------------------------------------------------------


__all__ = ["SQLiteBackend"]
