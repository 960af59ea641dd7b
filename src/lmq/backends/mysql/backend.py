"""The MySQL / MariaDB backend (PyMySQL), WordPress-database friendly.

URL: ``mysql://user:password@host:3306/database?prefix=wp_`` (``mariadb://`` too).
Options (anything else is refused with ConfigError):

``prefix``
    table prefix (up to 16 letters, digits, ``_``): ``wp_`` puts the tables beside
    WordPress's as ``wp_queue_tasks``, ``wp_queue_dead_letters`` ...
``claim``
    ``auto`` (default): ``skip_locked`` on MySQL 8.0.1+ and MariaDB 10.6+, else ``update``.
    ``skip_locked``: ``SELECT ... FOR UPDATE SKIP LOCKED`` then ``UPDATE ... WHERE id IN``
    in one short transaction.  ``update``: the fallback for servers without SKIP LOCKED
    (forceable, so tests run both): the best ready ids from an ordered index read, then one
    ``UPDATE ... WHERE id IN (...) AND status = 'pending'`` that re-checks every row under
    its row lock (a row another claim took first drops out, so none is claimed twice), then
    a read-back of the rows carrying this claim's token (worker, lease expiry, time).  A
    single ``UPDATE ... ORDER BY ... LIMIT n`` would do it in one statement, but it sorts
    every ready row (it changes the columns of the index it would read in order).
``connect_timeout`` (default 5), ``read_timeout`` / ``write_timeout`` (default 60)
    seconds; an unreachable server raises BackendUnavailable within connect_timeout.
``lock_wait_timeout`` (default 10)
    the session's ``innodb_lock_wait_timeout``; a wait that long is retried like a deadlock.
``poll`` (default 0.1)
    seconds between an idle worker's checks for ready tasks (MySQL has no notifications);
    each check is a read of a few index entries.
``unix_socket``, ``ssl_ca``, ``ssl_cert``, ``ssl_key``
    passed to PyMySQL.
``charset``
    only ``utf8mb4`` (the default, and what the tables use): 4-byte characters round-trip.

Semantics are SQLite's (see :mod:`lmq.backends.base`); the differences are the server's:

* "now" is the database server's clock (``UNIX_TIMESTAMP()`` plus the microseconds of
  ``NOW(6)``, independent of the session time zone) in every claim, lease, retry, rescue
  and readiness check, so workers on several hosts agree on lease expiry.
* Sessions run at READ COMMITTED (no gap locks: producers never wait for a claim).
  Deadlocks (1213) and lock wait timeouts (1205) re-run the whole transaction after a
  short jittered pause, and never reach the caller.
* One connection per thread (a thread-local), opened on first use.  A lost connection
  (server restart, network) raises BackendUnavailable and the next call reconnects; a
  reused connection found dead before COMMIT was sent (an idle connection the server
  closed) is replaced and the call re-run once, transparently.
* ``next_run`` is when the row next matters to the scheduler: while a task is processing
  it holds the lease expiry, once it is done the time it finished (see schema.sql), so
  one index answers readiness, lease expiry and pruning.
* Enqueue: multi-row INSERTs of ~2 MB; the ids of one are LAST_INSERT_ID() onwards,
  stepping by auto_increment_increment (InnoDB gives a "simple insert" one consecutive
  block in every innodb_autoinc_lock_mode), checked by counting the range afterwards.
* Tables are never created implicitly: ``lmq migrate`` does, under ``GET_LOCK``.
* There are no notifications: :meth:`wake_source` returns None and idle workers poll
  :meth:`has_ready`, a read of a few index entries.
* Paused queues (``{prefix}queue_queues``): a worker of named queues just leaves the
  paused ones out; a worker of every queue reads the same ready index with ``queue NOT IN
  (...)``.  With nothing paused the claim is the statement it always was.
* Batches (``{prefix}queue_batches``, members by ``queue_tasks.batch``): counts come from
  the (batch, status) index; ``settle_batches`` completes a batch with a compare-and-set
  on ``completed IS NULL`` (that re-checks no member is pending or processing), in the
  transaction that inserts its follow-up.
* Approved dead letters are re-queued under ``FOR UPDATE SKIP LOCKED`` (``claim=update``:
  a plain ``FOR UPDATE``, whose waiter re-reads the row, and an UPDATE guarded on
  ``status = 'dead'``), after a one-entry read that finds nothing to do most seconds.
* Circuit breakers and rate limits (schema 3): ``rate_key`` leads both ready indexes, so a
  plain claim reads the ``rate_key IS NULL`` part and a rate claim its key's part, each in
  claim order; a probe claim reads the due index for the breaker's earliest due task.
  Tasks behind a breaker that is not closed are passed over by a primary-key subquery on
  ``{prefix}queue_breakers``, which plain claims leave out of the statement until they meet
  a task with a breaker (then they claim again with it, in the same transaction), so tasks
  without keys cost what they did.  Breaker, rate-limit and schedule rows are swapped by
  compare-and-set on ``version``: an INSERT for version 0 (a duplicate key loses), else
  ``UPDATE ... WHERE version = expected`` (the version always changes, so the affected-row
  count is the same with or without the FOUND_ROWS client flag); ``fire_schedule`` does
  the compare-and-set and the tick's INSERT in one transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import pymysql  # type: ignore[import-untyped]
from pymysql.cursors import Cursor  # type: ignore[import-untyped]

from ...exceptions import BackendBusy, BackendError, NotFound, SchemaMissing
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
from ..external import app_connection
from ..rows import (
    breaker_from_row,
    breaker_values,
    check_requeue,
    error_json,
    error_line,
    rate_from_row,
    rate_values,
    schedule_from_row,
    schedule_values,
    split_sql,
)
from ..sqlfile import load_migrations, load_schema
from .rows import dead_from_row, task_from_row
from .session import (
    _DEADLOCK,
    _TABLES,
    NOW_SQL,
    SCHEMA_VERSION,
    MySQLSession,
    _errno,
    supports_skip_locked,
    tables_of,
)

_INSERT_CHUNK = 2 * 1024 * 1024  # characters of VALUES per multi-row INSERT statement
_CHUNK = 1000  # ids per statement when a verb acts on many rows
_PER_QUEUE_MAX = 32  # queue names up to which a claim with paused queues reads each alone
_CHECK_FOR = 10.0  # seconds plain claims keep the breaker check after meeting a breaker
_DUPLICATE_KEY = 1062
_ALREADY_THERE = {1060, 1061}  # duplicate column / key name: a migration statement ran before
_EMPTY_COUNTS = ("pending", "processing", "done", "dead", "cancelled")
T = TypeVar("T")


def _ids_sql(ids: Sequence[TaskId]) -> str:
    """Ids as SQL integers (every id this backend hands out is an int)."""
    return ",".join(str(int(i)) for i in ids)


def _chunks(items: Sequence[T], size: int = _CHUNK) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _seconds_sql(value: float) -> str:
    """A number of seconds as an SQL literal (built by lmq from floats, never user text)."""
    return f"{float(value):.6f}"


def _int_ids(ids: Sequence[TaskId], what: str) -> list[int]:
    """Ids given one by one as integers; one that cannot be an id here is not found."""
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
    """The queues a claim may take from, with the paused ones (``exclude``) applied: a
    worker of named queues just drops the paused ones (None: all its queues are paused);
    a worker of every queue keeps ``exclude`` for a NOT IN filter."""
    if not exclude:
        return queues, ()
    if queues:
        kept = tuple(q for q in queues if q not in exclude)
        return (kept, ()) if kept else None
    return None, tuple(sorted(set(exclude)))


class MySQLBackend(MySQLSession):
    """See the module docstring."""

    def _lock_name(self) -> str:
        digest = hashlib.sha1(f"{self.database}\0{self.prefix}".encode()).hexdigest()[:24]
        return f"lmq_migrate_{digest}"  # GET_LOCK names are at most 64 characters

    def migrate(self) -> list[int]:
        applied = self.run_migrations(fresh_schema=True)
        self._schema_checked = False  # check again (cheaply) on the next call
        return applied

    def run_migrations(self, *, fresh_schema: bool = True) -> list[int]:
        """Create or upgrade the tables under a named lock; return the migrations applied.

        An empty database gets schema.sql in one go (``fresh_schema``, the default) or
        every migration in order (``fresh_schema=False``: the test that both agree).
        """

        def work(cur: Cursor) -> list[int]:
            cur.execute("SELECT GET_LOCK(%s, 60)", (self._lock_name(),))
            got = cur.fetchone()
            if not got or got[0] != 1:
                raise BackendBusy(
                    f"another `lmq migrate` held the migration lock on {self.url} for 60 s"
                )
            try:
                return self._migrate_locked(cur, fresh_schema)
            finally:
                cur.execute("SELECT RELEASE_LOCK(%s)", (self._lock_name(),))
                cur.fetchall()

        return self._run(work, tx=False, schema=False)

    def _migrate_locked(self, cur: Cursor, fresh_schema: bool) -> list[int]:
        current = self._version_on(cur.connection) or 0
        if current > SCHEMA_VERSION:
            raise SchemaMissing(
                f"MySQL database {self.database!r} has lmq schema {current}, newer than "
                f"this lmq knows ({SCHEMA_VERSION}); upgrade lmq"
            )
        cur.execute(self.q["tables"], {"names": [self.prefix + t for t in _TABLES]})
        present = {r[0] for r in cur.fetchall()}
        needed = tables_of(current)
        if current and any(self.prefix + t not in present for t in needed):
            current = 0  # repair: every migration is idempotent, so run them all again
        migrations = load_migrations("lmq.backends.mysql.migrations", self.prefix)
        applied: list[int] = []
        if current == 0 and fresh_schema and not present:  # an empty database
            for statement in split_sql(load_schema("lmq.backends.mysql", self.prefix)):
                cur.execute(statement)
            cur.execute(self.q["set_schema_version"], {"version": str(SCHEMA_VERSION)})
            applied = [n for n, _name, _sql in migrations if n <= SCHEMA_VERSION]
            current = SCHEMA_VERSION
        for number, _name, sql in migrations:
            if number <= current:
                continue
            for statement in split_sql(sql):  # DDL commits on its own: each is idempotent
                self._ddl(cur, statement)
            cur.execute(self.q["set_schema_version"], {"version": str(number)})
            applied.append(number)
        return applied

    @staticmethod
    def _ddl(cur: Cursor, statement: str) -> None:
        """One migration statement; an ADD COLUMN / ADD KEY that a run cut short already
        applied fails with "duplicate column/key name" and is skipped (MySQL 8 has no
        ADD COLUMN IF NOT EXISTS)."""
        try:
            cur.execute(statement)
        except pymysql.err.MySQLError as exc:
            if _errno(exc) not in _ALREADY_THERE:
                raise

    # --- producer ------------------------------------------------------------------------

    def enqueue(
        self,
        tasks: Sequence[NewTask],
        connection: object | None = None,
        batch: BatchSpec | None = None,
    ) -> list[TaskId]:
        if not tasks:
            return []
        if connection is not None:  # the application's transaction: it commits, not lmq
            app = app_connection(connection, "mysql")
            self._run(lambda cur: None, tx=False)  # lmq's own connection checks the tables
            try:
                return self._insert(app.cursor, tasks, own=False, batch=batch)
            except pymysql.err.MySQLError as exc:
                if _errno(exc) == _DEADLOCK:
                    raise BackendBusy(
                        f"MySQL at {self.url}: deadlock; the server rolled back the "
                        "application's transaction: run it again"
                    ) from None
                raise self._translate(exc) from None
            finally:
                with contextlib.suppress(Exception):
                    app.cursor.close()
        return self._run(lambda cur: self._insert(cur, tasks, own=True, batch=batch))

    def _insert(
        self, cur: Any, tasks: Sequence[NewTask], *, own: bool, batch: BatchSpec | None = None
    ) -> list[TaskId]:
        """Multi-row INSERTs of up to ~2 MB each (plain DB-API ``%s`` parameters, so the
        application's cursor may be any MySQL driver's); a task with a unique_key is its own
        INSERT ... ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id), which returns the live
        task's id when the key is taken."""
        ids: list[TaskId] = []
        head, row_sql = self.q["insert_head"], self.q["insert_row"]
        chunks: list[tuple[int, int]] = []  # (first id, rows) of each multi-row INSERT
        args: list[Any] = []
        rows = 0
        size = 0
        # characters, not bytes: even 4-byte characters, each escaped, fit max_allowed_packet
        limit = min(_INSERT_CHUNK, max(64 * 1024, self._max_packet() // 8))
        step = self._step()

        def flush() -> None:
            nonlocal rows, size
            if not rows:
                return
            cur.execute(head + "\n" + ",\n".join([row_sql] * rows), args)
            first = int(cur.lastrowid)
            if cur.rowcount != rows:
                raise BackendError(f"MySQL inserted {cur.rowcount} of {rows} rows")
            ids.extend(range(first, first + rows * step, step))
            chunks.append((first, rows))
            args.clear()
            rows = size = 0

        for t in tasks:  # a NewTask's fields are the row's parameters, in order
            if t.unique_key is not None:
                flush()
                cur.execute(self.q["insert_unique"], t)
                ids.append(int(cur.lastrowid))
                continue
            args.extend(t)
            rows += 1
            size += 160 + len(t.payload_json) + len(t.task_name) + len(t.queue)
            size += len(t.breaker or "") + len(t.rate_key or "") + len(t.unique_key or "")
            if size >= limit:
                flush()
        flush()
        self._check_ids(cur, chunks, own)
        if batch is not None:  # last: the batch row stays locked for the shortest time
            task, payload, queue = (
                batch.on_complete_task,
                batch.on_complete_payload_json,
                batch.on_complete_queue,
            )
            cur.execute(
                self.q["upsert_batch"],
                (batch.name, batch.total, task, payload, queue, batch.total, payload, queue, task),
            )
        return ids

    def _check_ids(self, cur: Any, chunks: list[tuple[int, int]], own: bool) -> None:
        """Guard the consecutive ids a multi-row INSERT is documented to get.

        InnoDB gives a "simple insert" (INSERT ... VALUES with a known row count) one block
        of consecutive values in every innodb_autoinc_lock_mode, LAST_INSERT_ID() being the
        first; the ids are then first + k * auto_increment_increment.  Counting the rows in
        each range checks that (rows of other transactions in a gap would be uncommitted
        and so invisible, or make the count differ).
        """
        multi = [(first, n) for first, n in chunks if n > 1]
        if not multi:
            return
        step = self._step()
        parts = " + ".join(
            f"(SELECT COUNT(*) FROM {self.prefix}queue_tasks WHERE id BETWEEN "
            f"{first} AND {first + (n - 1) * step})"
            for first, n in multi
        )
        cur.execute("SELECT " + parts)
        got = int(cur.fetchone()[0])
        expected = sum(n for _first, n in multi)
        if got != expected:
            raise BackendError(
                f"MySQL at {self.url} did not give a multi-row INSERT consecutive ids "
                f"({got} of {expected} rows where expected); nothing was enqueued"
                + ("" if own else ": roll back the application's transaction")
            )

    def _step(self) -> int:
        return self._server[1] if self._server else 1

    def _max_packet(self) -> int:
        return self._server[2] if self._server else 1 << 20

    # --- worker --------------------------------------------------------------------------

    def claim_mode(self) -> str:
        """``skip_locked`` or ``update`` (resolved from the server version when ``auto``)."""
        if self._claim_mode is None:
            self._raw_conn()
            assert self._server is not None
            self._claim_mode = "skip_locked" if supports_skip_locked(self._server[0]) else "update"
        return self._claim_mode

    def _queue_params(
        self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()
    ) -> tuple[str, dict[str, str]]:
        if not queues:
            if not exclude:
                return "", {}
            names = ", ".join(f"%(x{i})s" for i in range(len(exclude)))
            return f"AND queue NOT IN ({names})", {f"x{i}": q for i, q in enumerate(exclude)}
        if len(queues) == 1:
            return "AND queue = %(q0)s", {"q0": queues[0]}
        names = ", ".join(f"%(q{i})s" for i in range(len(queues)))
        return f"AND queue IN ({names})", {f"q{i}": q for i, q in enumerate(queues)}

    def _claim_statement(
        self,
        queues: tuple[str, ...] | None,
        exclude: tuple[str, ...] = (),
        checked: bool = True,
    ) -> tuple[str, dict[str, str]] | None:
        """The claim's SELECT for these queues (None: every one of them is paused).

        With nothing paused (``exclude`` empty) it is the statement it always was; a worker
        of every queue with some paused reads the same index with ``queue NOT IN (...)``.
        ``checked``: with the breaker check (see _checking); without it the statement is
        right only for the rows whose breaker is NULL.
        """
        key = (queues, exclude, checked)
        if key in self._claim_sql:
            return self._claim_sql[key]
        scope = _scope(queues, exclude)
        if scope is None:
            self._claim_sql[key] = None
            return None
        queues, exclude = scope
        mode = self.claim_mode()
        qf, params = self._queue_params(queues, exclude)
        p = self.prefix
        one = bool(queues) and len(queues or ()) == 1
        index = f"{p}queue_tasks_queue_ready" if one else f"{p}queue_tasks_ready"
        if mode == "update":
            sql = self.q["claim_pick"].replace("{queue_filter}", qf).replace("{index}", index)
        elif queues and len(queues) > 1:
            # one ordered index read per queue, merged here: a worker of queues a,b never
            # walks past the ready rows of other queues
            sql = " UNION ALL ".join(
                "(" + self.q["claim_select_sorted"].replace("{i}", str(i)) + ")"
                for i in range(len(queues))
            )
        else:
            sql = self.q["claim_select"].replace("{queue_filter}", qf).replace("{index}", index)
        sql = sql.replace("{claim_check}", self._breaker_ok if checked else "TRUE")
        self._claim_sql[key] = (sql, params)
        return sql, params

    def _checking(self) -> bool:
        """Whether plain claims carry the breaker check now.

        They do while tasks with a breaker were claimed in the last _CHECK_FOR seconds.
        Otherwise the claim goes without it, which is right for every row it returns whose
        breaker is NULL; when it returns a row with a breaker, the claim is run again, in
        the same transaction, with the check (and the check stays on for a while).  So a
        worker of tasks without breakers never pays for the check, and the answer is
        always exact.
        """
        return time.monotonic() < self._check_until

    def _checked_rows(self, rows: Sequence[tuple[Any, ...]], column: int) -> bool:
        """Note a claim's rows (``column``: their breaker): True when one has a breaker
        (the breaker check is then on for the next _CHECK_FOR seconds)."""
        if any(r[column] is not None for r in rows):
            self._check_until = time.monotonic() + _CHECK_FOR
            return True
        return False

    def _claim_plan(
        self, cur: Cursor, request: ClaimRequest, checked: bool = True
    ) -> tuple[str, dict[str, str]] | None:
        """The claim statement for a request (None: all its queues are paused); a plain
        claim's with the breaker check or not (``checked``, see _checking).

        A worker of every queue with some paused must not walk the paused queues' ready
        rows on every claim (a paused bulk enqueue of 50,000 made each claim ~80 ms): it
        reads the queue names (a loose scan of queue_ready, a few index dives), and claims
        from the others as a worker of those queues would, by one ordered index read
        each.  Past _PER_QUEUE_MAX names it falls back to ``queue NOT IN (...)``.
        """
        if request.breaker is not None or request.rate_key is not None:
            return self._gated_statement(request)
        if request.queues or not request.exclude:
            return self._claim_statement(request.queues, request.exclude, checked)
        cur.execute(self.q["queue_names"])
        paused = set(request.exclude)
        names = tuple(sorted(r[0] for r in cur.fetchall() if r[0] not in paused))
        if not names:
            return None
        if len(names) > _PER_QUEUE_MAX:
            return self._claim_statement(None, request.exclude, checked)
        cached = self._per_queue_sql.get((names, checked))
        if cached is not None:
            return cached
        if len(names) > 1 and self.claim_mode() == "update":
            sql = " UNION ALL ".join(
                "(" + self.q["claim_pick_sorted"].replace("{i}", str(i)) + ")"
                for i in range(len(names))
            )
            sql = sql.replace("{claim_check}", self._breaker_ok if checked else "TRUE")
            statement = (sql, {f"q{i}": q for i, q in enumerate(names)})
        else:
            made = self._claim_statement(names, (), checked)
            assert made is not None  # nothing excluded
            statement = made
        if len(self._per_queue_sql) >= 256:
            self._per_queue_sql.clear()
        self._per_queue_sql[(names, checked)] = statement
        return statement

    def _gated_statement(self, request: ClaimRequest) -> tuple[str, dict[str, Any]] | None:
        """A rate claim (``rate_key``: that key's part of the ready index, in order, none
        behind a breaker that is not closed) or a probe claim (``breaker``: that breaker's
        due tasks, whatever its state; with ``rate_key`` too, only those with that key).
        None: all its queues are paused."""
        scope = _scope(request.queues, request.exclude)
        if scope is None:
            return None
        queues, exclude = scope
        probe = request.breaker is not None
        both = probe and request.rate_key is not None
        key = ("probe" if probe else "rate", both, queues, exclude)
        qf, params = self._queue_params(queues, exclude)
        sql = self._gated_sql.get(key)
        if sql is None:
            # a probe is always picked, then taken (see _probe_in)
            name = "claim_probe_pick" if probe else "claim_rate_select"
            if not probe and self.claim_mode() == "update":
                name = "claim_rate_pick"
            gate = "AND rate_key = %(rate_key)s COLLATE utf8mb4_bin" if both else ""
            sql = self.q[name].replace("{queue_filter}", qf).replace("{gate}", gate)
            self._gated_sql[key] = sql
        out: dict[str, Any] = {**params, "key": request.breaker if probe else request.rate_key}
        if both:
            out["rate_key"] = request.rate_key
        return sql, out

    def _probe_in(self, cur: Cursor, request: ClaimRequest) -> ClaimResult:
        """A probe claim, picked and taken as the fallback claim does in either mode (the
        tasks of other breakers it passes over are read, never locked): the breaker's tasks
        without a rate key (the ready index's plain part), then, if too few, those with one
        (each key's pending part: the keys come from a loose scan, so no done row is read).
        Probes are rare: one a cool-down."""
        rescued = self._rescue(cur)
        plan = self._gated_statement(request)
        scope = _scope(request.queues, request.exclude)
        if plan is None or scope is None:  # all its queues are paused
            return ClaimResult([], rescued)
        sql, params = plan

        def take(statement: str, values: dict[str, Any], limit: int) -> list[Claimed]:
            more = dataclasses.replace(request, limit=limit)
            return self._claim_by_update(cur, more, statement, values)

        # with a rate key given too, the plain part has none of its tasks
        got = take(sql, params, request.limit) if request.rate_key is None else []
        if len(got) < request.limit:
            if request.rate_key is not None:
                keys = [request.rate_key]
            else:
                cur.execute(self.q["rate_keys"])
                keys = [r[0] for r in cur.fetchall()]
            qf, _ = self._queue_params(*scope)
            gate = "AND rate_key = %(rate_key)s COLLATE utf8mb4_bin" if request.rate_key else ""
            keyed = (
                self.q["claim_probe_keyed_pick"]
                .replace("{queue_filter}", qf)
                .replace("{gate}", gate)
            )
            for chunk in _chunks(keys):
                names = ", ".join(f"%(k{i})s" for i in range(len(chunk)))
                values = {**params, **{f"k{i}": k for i, k in enumerate(chunk)}}
                got += take(keyed.replace("{keys}", names), values, request.limit - len(got))
                if len(got) >= request.limit:
                    break
        return ClaimResult(got, rescued)

    def claim(self, request: ClaimRequest) -> ClaimResult:
        if request.breaker is not None:
            return self._run(lambda cur: self._probe_in(cur, request))
        if self.claim_mode() == "skip_locked":
            result = self._run(
                lambda cur: self._batched(cur, CompleteBatch(""), request), begin=False
            )
            assert result is not None  # a claim was asked for
            return result
        return self._run(lambda cur: self._claim_in(cur, request))

    def _claim_in(self, cur: Cursor, request: ClaimRequest) -> ClaimResult:
        if request.breaker is not None:
            return self._probe_in(cur, request)
        rescued = self._rescue(cur)
        plain = request.breaker is None and request.rate_key is None
        checked = not plain or self._checking()
        statement = self._claim_plan(cur, request, checked)
        if statement is None:  # all its queues are paused
            return ClaimResult([], rescued)
        sql, qparams = statement
        if self.claim_mode() == "update":
            claimed = self._claim_by_update(cur, request, sql, qparams, checked)
            return ClaimResult(claimed, rescued)
        cur.execute(sql, {"limit": request.limit, **qparams})
        rows = self._recheck(cur, request, list(cur.fetchall()), checked)
        return self._mark(cur, request, rows, rescued)

    def _recheck(
        self, cur: Cursor, request: ClaimRequest, rows: list[Any], checked: bool
    ) -> list[Any]:
        """A plain claim's SKIP LOCKED rows: claimed without the breaker check, one has a
        breaker: the claim again with it (the rows stay this transaction's, so the second
        read sees them; those it leaves out are unlocked at COMMIT)."""
        if not (self._checked_rows(rows, 6) and not checked):
            return rows
        statement = self._claim_plan(cur, request, True)
        assert statement is not None  # the same queues as the claim just run
        sql, qparams = statement
        cur.execute(sql, {"limit": request.limit, **qparams})
        return list(cur.fetchall())

    def _claim_by_update(
        self,
        cur: Cursor,
        request: ClaimRequest,
        sql: str,
        qparams: dict[str, str],
        checked: bool = True,
    ) -> list[Claimed]:
        """The fallback claim: pick the best ready ids, then take them with one UPDATE that
        re-checks each under its row lock (rows another claim took first drop out; a few
        passes fill the gap they leave), then read back the rows carrying this claim's
        token.  After a pick without the breaker check (an index-only read) the UPDATE takes
        only tasks without a breaker; when it left some out and one has a breaker, the
        claim picks again with the check (and keeps it on for a while)."""
        cur.execute(self.q["now"])
        now = float(cur.fetchone()[0])
        token = {"worker": request.worker_id, "until": now + request.lease, "now": now}
        plain = request.breaker is None and request.rate_key is None
        taken = 0
        for _pass in range(4):
            want = request.limit - taken
            cur.execute(sql, {**token, "limit": want, **qparams})
            rows = list(cur.fetchall())
            if rows and len(rows[0]) == 3:  # claim_pick_sorted: one read per queue, merged
                rows = sorted(rows, key=lambda r: (r[1], r[2], r[0]))
            picked = [r[0] for r in rows[:want]]
            if not picked:
                break
            fast = plain and not checked
            take = (
                self.q["claim_take"]
                .replace("{ids}", _ids_sql(picked))
                .replace("{take_check}", "AND breaker IS NULL" if fast else "")
            )
            got = int(cur.execute(take, token))
            taken += got
            if fast and got < len(picked):
                cur.execute(self.q["any_breaker"].replace("{ids}", _ids_sql(picked)))
                if cur.fetchone() is not None:
                    self._check_until = time.monotonic() + _CHECK_FOR
                    statement = self._claim_plan(cur, request, True)
                    assert statement is not None  # the same queues as the pick just run
                    sql, qparams = statement
                    checked = True
                    continue  # pick again, with the breaker check
            if got == len(picked) or len(picked) < want:
                break  # all taken, or no more ready than these
        if not taken:
            return []
        cur.execute(self.q["claim_read_back"], token)
        claimed = list(map(Claimed._make, cur.fetchall()))
        if plain:
            self._checked_rows(claimed, 6)  # a task with a breaker: keep the check on
        return claimed

    def _rescue(self, cur: Cursor) -> int:
        """Expired leases go back to pending with the lapse recorded as an error.

        The claim that follows (this one or any other) counts another attempt; a worker
        that claims a task whose attempts exceed its limit buries it unrun, so a task
        that kills its worker every time ends in the dead letters, not in a crash loop.
        """
        return int(cur.execute(self.q["rescue"], {}))  # {}: its %% become %

    def _ready_state(
        self, scope: tuple[tuple[str, ...] | None, tuple[str, ...]] | None
    ) -> tuple[float, bool, float | None, float | None]:
        """(server now, whether a task is claimable now by a plain claim, the earliest
        plain pending task still to come, the earliest lease expiry) for a readiness
        scope (None: every queue paused, only leases count)."""
        qparams: dict[str, str] = {}
        if scope is None:
            sql = self.q["lease_state"]
        else:
            queues, exclude = scope
            qf, qparams = self._queue_params(queues, exclude)
            if queues:
                probes = " ".join(
                    self.q["has_ready_probe"].replace("{i}", str(i)) for i in range(len(queues))
                )
                ready = f"(FALSE {probes})"
            elif exclude:
                ready = self.q["ready_excluding"].replace("{queue_filter}", qf)
            else:
                ready = self.q["ready_all"]
            sql = self.q["ready_state"].replace("{ready}", ready).replace("{queue_filter}", qf)

        def read(cur: Cursor) -> tuple[float, bool, float | None, float | None]:
            cur.execute(sql, qparams)
            now, ready, later, expiry = cur.fetchone()
            return (
                float(now),
                bool(ready),
                None if later is None else float(later),
                None if expiry is None else float(expiry),
            )

        return self._read(read)

    def _readiness_scope(
        self, queues: tuple[str, ...] | None, exclude: tuple[str, ...]
    ) -> tuple[tuple[str, ...] | None, tuple[str, ...]] | None:
        """_scope for has_ready/next_due; a worker of every queue with some paused checks
        the other queues by name (as _claim_plan claims), not the paused backlog."""
        scope = _scope(queues, exclude)
        if scope is None or scope[0] or not scope[1]:
            return scope

        def names(cur: Cursor) -> list[str]:
            cur.execute(self.q["queue_names"])
            return [r[0] for r in cur.fetchall()]

        paused = set(exclude)
        others = tuple(sorted(n for n in self._read(names) if n not in paused))
        if not others:
            return None
        return scope if len(others) > _PER_QUEUE_MAX else (others, ())

    def has_ready(self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()) -> bool:
        """A task a plain claim would take (due, no rate key, not behind a breaker that is
        not closed), or an expired lease to rescue."""
        scope = self._readiness_scope(queues, exclude)
        if scope is None or scope[1]:  # all paused, or more queues than read one by one
            now, ready, _later, expiry = self._ready_state(scope)
            return ready or (expiry is not None and expiry <= now)
        queues, _ = scope
        qparams: dict[str, str] = {}
        if not queues:
            sql = self.q["has_ready_all"].replace("{ready}", self.q["ready_all"])
        else:
            _qf, qparams = self._queue_params(queues)
            probes = " ".join(
                self.q["has_ready_probe"].replace("{i}", str(i)) for i in range(len(queues))
            )
            sql = self.q["has_ready_queues"].replace("{probes}", probes)

        def read(cur: Cursor) -> bool:
            cur.execute(sql, qparams)
            return bool(cur.fetchone()[0])

        return self._read(read)

    def next_due(
        self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()
    ) -> float | None:
        """0 when a plain claim would take a task now (or a lease has expired), else the
        seconds until the earliest plain task or lease expiry to come (None: none).
        Rate-keyed tasks and tasks behind a breaker that is not closed do not count."""
        now, ready, later, expiry = self._ready_state(self._readiness_scope(queues, exclude))
        if ready:
            return 0.0
        times = [t for t in (later, expiry) if t is not None]
        return max(0.0, min(times) - now) if times else None

    def rate_keys_ready(
        self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()
    ) -> dict[str, tuple[float, str]]:
        """The keys first (a loose index scan), then each key's pending part of the ready
        index and the expired leases: never a done row, however long the history."""
        scope = _scope(queues, exclude)
        if scope is None:
            return {}
        qf, qparams = self._queue_params(*scope)

        def read(cur: Cursor) -> dict[str, tuple[float, str]]:
            cur.execute(self.q["rate_keys"])
            keys = [r[0] for r in cur.fetchall()]
            found: dict[str, tuple[float, str]] = {}
            for chunk in _chunks(keys):  # keys whose rows are all done drop out here
                names = ", ".join(f"%(k{i})s" for i in range(len(chunk)))
                sql = (
                    self.q["rate_keys_ready"].replace("{keys}", names).replace("{queue_filter}", qf)
                )
                cur.execute(sql, {**qparams, **{f"k{i}": k for i, k in enumerate(chunk)}})
                for key, first, name, now in cur.fetchall():
                    found[key] = (max(0.0, float(first) - float(now)), name)
                if len(found) >= 100:
                    break
            return dict(sorted(found.items())[:100])

        return self._read(read)

    def complete(
        self, batch: CompleteBatch, claim: ClaimRequest | None = None
    ) -> ClaimResult | None:
        if not len(batch):
            return self.claim(claim) if claim is not None else None
        batched = claim is None or (self.claim_mode() == "skip_locked" and claim.breaker is None)
        if not batch.burials and batched:
            return self._run(lambda cur: self._batched(cur, batch, claim), begin=False)
        return self._run(lambda cur: self._complete_in(cur, batch, claim))

    def _batched(
        self, cur: Cursor, batch: CompleteBatch, claim: ClaimRequest | None
    ) -> ClaimResult | None:
        """The hot path in three round trips: START TRANSACTION, the acknowledgements, the
        rescue and the SKIP LOCKED select in one; the claim's UPDATE; COMMIT (by _run)."""
        statements = ["START TRANSACTION"]
        params: dict[str, Any] = {"worker": batch.worker_id}
        if batch.done:
            statements.append(self.q["ack_done"].replace("{ids}", _ids_sql(batch.done)))
        if batch.retries:
            sql, retry_params = self._retry_sql(batch)
            statements.append(sql)
            params.update(retry_params)
        if batch.released:
            statements.append(self.q["release"].replace("{ids}", _ids_sql(batch.released)))
        if batch.deferred:
            sql, defer_params = self._defer_sql(batch)
            statements.append(sql)
            params.update(defer_params)
        statement = None
        checked = True
        if claim is not None:
            statements.append(self.q["rescue"])
            plain = claim.breaker is None and claim.rate_key is None
            checked = not plain or self._checking()
            statement = self._claim_plan(cur, claim, checked)  # before START TRANSACTION
            if statement is not None:  # None: all its queues are paused
                sql, qparams = statement
                statements.append(sql)
                params.update(qparams, limit=claim.limit)
        cur.execute(";\n".join(statements), params)
        counts = [cur.rowcount]
        for _ in statements[1:]:
            cur.nextset()
            counts.append(cur.rowcount)
        if claim is None:
            return None
        if statement is None:
            return ClaimResult([], int(counts[-1]))
        rows = self._recheck(cur, claim, list(cur.fetchall()), checked)
        return self._mark(cur, claim, rows, rescued=int(counts[-2]), commit=True)

    def _mark(
        self,
        cur: Cursor,
        request: ClaimRequest,
        rows: list[Any],
        rescued: int,
        *,
        commit: bool = False,
    ) -> ClaimResult:
        """Lease the rows a SKIP LOCKED select locked (the best ``limit`` of them); with
        ``commit``, the UPDATE and the COMMIT go in one round trip."""
        if rows and len(rows[0]) == 10:  # claim_select_sorted: one read per queue, merged
            rows.sort(key=lambda r: (r[8], r[9], r[0]))
            rows = [r[:8] for r in rows[: request.limit]]
        if not rows:
            return ClaimResult([], rescued)
        sql = self.q["claim_mark"].replace("{ids}", _ids_sql([r[0] for r in rows]))
        params = {"worker": request.worker_id, "lease": request.lease}
        if commit:
            self.commit_with(cur, sql, params)
        else:
            cur.execute(sql, params)
        return ClaimResult(list(map(Claimed._make, rows)), rescued)

    def _complete_in(
        self, cur: Cursor, batch: CompleteBatch, claim: ClaimRequest | None
    ) -> ClaimResult | None:
        worker = {"worker": batch.worker_id}
        if batch.done:
            cur.execute(self.q["ack_done"].replace("{ids}", _ids_sql(batch.done)), worker)
        if batch.retries:
            self._retry(cur, batch)
        for b in batch.burials:
            params = {
                "id": int(b.id),
                "worker": batch.worker_id,
                "message": error_line(b.error),
                "reason": b.reason,
                "max_attempts": b.max_attempts,
                "fingerprint": b.fingerprint,
                "error": error_json(b.error),
            }
            if cur.execute(self.q["bury_mark"], params):  # still ours: now the record
                cur.execute(self.q["bury_copy"], params)
                cur.execute(self.q["bury_link"], params)
        if batch.released:
            cur.execute(self.q["release"].replace("{ids}", _ids_sql(batch.released)), worker)
        if batch.deferred:
            sql, params = self._defer_sql(batch)
            cur.execute(sql, {**worker, **params})
        return self._claim_in(cur, claim) if claim is not None else None

    def _retry(self, cur: Cursor, batch: CompleteBatch) -> None:
        sql, params = self._retry_sql(batch)
        cur.execute(sql, {"worker": batch.worker_id, **params})

    def _retry_sql(self, batch: CompleteBatch) -> tuple[str, dict[str, Any]]:
        """Every retry of the batch in one UPDATE (a CASE per column)."""
        params: dict[str, Any] = {}
        delays, messages, errors = [], [], []
        for i, r in enumerate(batch.retries):
            task_id = int(r.id)
            params[f"d{i}"] = float(r.delay)
            params[f"m{i}"] = error_line(r.error)
            params[f"e{i}"] = error_json(r.error)
            delays.append(f"WHEN {task_id} THEN %(d{i})s")
            messages.append(f"WHEN {task_id} THEN %(m{i})s")
            errors.append(f"WHEN {task_id} THEN %(e{i})s")
        sql = (
            self.q["retry"]
            .replace("{ids}", _ids_sql([r.id for r in batch.retries]))
            .replace("{delay_cases}", " ".join(delays))
            .replace("{message_cases}", " ".join(messages))
            .replace("{error_cases}", " ".join(errors))
        )
        return sql, params

    def _defer_sql(self, batch: CompleteBatch) -> tuple[str, dict[str, Any]]:
        """Every deferred task of the batch in one UPDATE (a CASE per column)."""
        params: dict[str, Any] = {}
        delays, breakers, rates = [], [], []
        for i, d in enumerate(batch.deferred):
            task_id = int(d.id)
            params[f"fd{i}"] = float(d.delay)
            params[f"fb{i}"] = d.breaker
            params[f"fr{i}"] = d.rate_key
            delays.append(f"WHEN {task_id} THEN %(fd{i})s")
            breakers.append(f"WHEN {task_id} THEN %(fb{i})s")
            rates.append(f"WHEN {task_id} THEN %(fr{i})s")
        sql = (
            self.q["defer"]
            .replace("{ids}", _ids_sql([d.id for d in batch.deferred]))
            .replace("{delay_cases}", " ".join(delays))
            .replace("{breaker_cases}", " ".join(breakers))
            .replace("{rate_cases}", " ".join(rates))
        )
        return sql, params

    def renew(self, request: RenewRequest) -> list[TaskId]:
        if not request.ids:
            return []
        ids = _ids_sql(request.ids)

        def work(cur: Cursor) -> list[TaskId]:
            params = {"worker": request.worker_id, "lease": request.lease}
            cur.execute(self.q["renew"].replace("{ids}", ids), params)
            cur.execute(self.q["held"].replace("{ids}", ids), params)
            return [r[0] for r in cur.fetchall()]

        return self._run(work)

    def heartbeat(self, beat: Heartbeat) -> None:
        params = {
            "id": beat.worker_id,
            "host": beat.host,
            "pid": beat.pid,
            "version": beat.version,
            "queues": beat.queues,
            "concurrency": beat.concurrency,
            "running": beat.running,
            "done": beat.done,
            "started": beat.started,
        }
        self._run(lambda cur: cur.execute(self.q["heartbeat"], params), tx=False)

    def remove_worker(self, worker_id: str) -> None:
        self._run(lambda cur: cur.execute(self.q["remove_worker"], {"id": worker_id}), tx=False)

    def prune(self, request: PruneRequest) -> int:
        def newest(cur: Cursor) -> int | None:
            cur.execute(self.q["max_id"])
            row = cur.fetchone()
            return None if row is None or row[0] is None else int(row[0])

        removed = 0
        below = self._read(newest)
        if below is not None:
            params = {"age": request.done_older_than, "below": below, "batch": request.batch}
            while True:  # small batches, each its own short statement
                n = self._run(lambda cur: cur.execute(self.q["prune_done"], params), tx=False)
                removed += n
                if n < request.batch:
                    break
        if request.dead_older_than is not None:
            removed += self._prune_dead(request.dead_older_than, request.batch)
        params = {"age": request.done_older_than, "batch": request.batch}
        while True:
            n = self._run(lambda cur: cur.execute(self.q["prune_batches"], params), tx=False)
            removed += n
            if n < request.batch:
                break
        removed += self._run(
            lambda cur: cur.execute(self.q["prune_workers"], {"age": request.workers_stale_after}),
            tx=False,
        )
        return int(removed)

    def _prune_dead(self, age: float, batch: int) -> int:
        """Dead letters re-queued, discarded or rejected more than ``age`` seconds ago, with
        the task rows that are still their record, ``batch`` letters per transaction."""

        def step(cur: Cursor) -> int:
            cur.execute(self.q["prune_dead_select"], {"age": age, "batch": batch})
            rows = cur.fetchall()
            if not rows:
                return 0
            ids = _ids_sql([r[0] for r in rows])
            cur.execute(
                self.q["prune_dead_tasks"]
                .replace("{task_ids}", _ids_sql([r[1] for r in rows]))
                .replace("{ids}", ids)
            )
            cur.execute(self.q["prune_dead"].replace("{ids}", ids))
            return len(rows)  # a letter and its task row count as one, as on Redis

        removed = 0
        while True:
            found = self._run(step)
            removed += found
            if found < batch:
                return removed

    def prepare_worker(self) -> None:
        """Nothing to tune: the claim strategy is resolved on first use."""

    def wake_source(self) -> None:
        """MySQL has no notifications: idle workers poll :meth:`has_ready` (cheap)."""
        return None

    @property
    def poll_interval(self) -> float:
        """How often an idle worker checks for ready tasks (``?poll=``, default 0.1 s)."""
        return self.poll

    # --- inspection ----------------------------------------------------------------------

    def get(self, task_id: TaskId) -> Task | None:
        try:
            key = int(task_id)
        except (TypeError, ValueError):
            return None

        def read(cur: Any) -> Task | None:
            cur.execute(self.q["get_task"], {"id": key})
            row = cur.fetchone()
            if row is not None:
                return task_from_row(row)
            cur.execute(self.q["get_dead_by_task"], {"id": key})
            dead = cur.fetchone()
            return dead_from_row(dead).as_task() if dead is not None else None

        return self._dict_read(read)

    def counts(self) -> Counts:
        """Counts without reading a finished row: the live rows through the due index
        (status, next_run), done rows as a queue's entries in queue_ready whose
        ready_priority is NULL (an index-only scan) less its live non-pending rows, dead
        letters from their table; in one read-only snapshot, so the subtraction adds up."""

        def read(cur: Cursor) -> Counts:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # this one only
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            cur.execute(self.q["count_live"])
            live = cur.fetchall()
            cur.execute(self.q["count_unready"])
            unready = cur.fetchall()
            cur.execute(self.q["count_dead"])
            dead = cur.fetchall()
            return self._counts(live, unready, dead)

        return self._run(read, begin=False)

    @staticmethod
    def _counts(
        live: Sequence[tuple[Any, ...]],
        unready: Sequence[tuple[Any, ...]],
        dead: Sequence[tuple[Any, ...]],
    ) -> Counts:
        counts = Counts()
        oldest: float | None = None
        now: float | None = None

        def per(queue: str) -> dict[str, int]:
            # the four statuses and ready/scheduled always, "cancelled" where there are some
            return counts.by_queue.setdefault(
                queue, dict.fromkeys((*_EMPTY_COUNTS[:4], "ready", "scheduled"), 0)
            )

        not_done: dict[str, int] = {}  # a queue's non-pending rows that are not done
        for queue, status, rows, ready, first, server_now in live:
            now = float(server_now)
            n = int(rows)
            if status != "pending":
                not_done[queue] = not_done.get(queue, 0) + n
            if status in ("pending", "processing", "cancelled"):
                counts_of = per(queue)
                counts_of[status] = counts_of.get(status, 0) + n
                setattr(counts, status, getattr(counts, status) + n)
            if status == "pending":
                ready_n = int(ready or 0)
                counts_of["ready"] += ready_n
                counts_of["scheduled"] += n - ready_n
                counts.ready += ready_n
                counts.scheduled += n - ready_n
                if first is not None and (oldest is None or first < oldest):
                    oldest = float(first)
        for queue, rows in unready:
            done = max(0, int(rows) - not_done.get(queue, 0))
            if done:
                per(queue)["done"] += done
                counts.done += done
        for queue, n in dead:
            per(queue)["dead"] += int(n)
            counts.dead += int(n)
        if oldest is not None and now is not None:
            counts.oldest_ready_age = max(0.0, now - oldest)
        return counts

    def list_tasks(self, flt: TaskFilter) -> list[Task]:
        if flt.status == "dead":
            dead = self.dead_letters(
                DeadFilter(task_name=flt.task_name, queue=flt.queue, limit=flt.limit)
            )
            return [d.as_task() for d in dead]
        params = {
            "status": flt.status,
            "queue": flt.queue,
            "name": flt.task_name,
            "limit": flt.limit,
        }

        def read(cur: Any) -> list[Task]:
            cur.execute(self.q["list_tasks"], params)
            return [task_from_row(r) for r in cur.fetchall()]

        return self._dict_read(read)

    def workers(self) -> list[WorkerInfo]:
        def read(cur: Cursor) -> list[WorkerInfo]:
            cur.execute(self.q["workers"])
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
                    heartbeat_age=max(0.0, float(r[10]) - r[9]),
                )
                for r in cur.fetchall()
            ]

        return self._read(read)

    # --- dead letters --------------------------------------------------------------------

    def dead_letters(self, flt: DeadFilter) -> list[DeadLetter]:
        params = {
            "all": bool(flt.include_all),
            "name": flt.task_name,
            "queue": flt.queue,
            "text": flt.error_contains,
            "fp": flt.fingerprint,
            "limit": 2**62 if flt.limit is None else flt.limit,
        }

        def read(cur: Any) -> list[DeadLetter]:
            cur.execute(self.q["list_dead"], params)
            return [dead_from_row(r) for r in cur.fetchall()]

        return self._dict_read(read)

    def get_dead(self, dead_id: TaskId) -> DeadLetter | None:
        try:
            key = int(dead_id)
        except (TypeError, ValueError):
            return None

        def read(cur: Any) -> DeadLetter | None:
            cur.execute(self.q["get_dead"], {"id": key})
            row = cur.fetchone()
            return None if row is None else dead_from_row(row)

        return self._dict_read(read)

    def dead_groups(self, flt: DeadFilter) -> list[DeadGroup]:
        params = {
            "name": flt.task_name,
            "queue": flt.queue,
            "text": flt.error_contains,
            "fp": flt.fingerprint,
            "limit": 2**62 if flt.limit is None else flt.limit,
        }

        def read(cur: Cursor) -> list[DeadGroup]:
            cur.execute(self.q["dead_groups"], params)
            groups = cur.fetchall()
            if not groups:
                return []
            cur.execute(self.q["group_examples"].replace("{ids}", _ids_sql([g[4] for g in groups])))
            examples = {r[0]: (r[1], r[2] or "") for r in cur.fetchall()}
            out = []
            for fp, n, first, last, example_id in groups:
                task_name, error = examples.get(example_id, ("", ""))
                out.append(
                    DeadGroup(
                        fingerprint=fp,
                        count=int(n),
                        task_name=task_name,
                        example=error,
                        example_id=example_id,
                        first_seen=datetime.fromtimestamp(float(first), UTC),
                        last_seen=datetime.fromtimestamp(float(last), UTC),
                    )
                )
            return out

        return self._read(read)

    def _lock_dead(self, cur: Cursor, sel: DeadSelector, doing: str) -> list[tuple[Any, ...]]:
        """The status-'dead' letters ``sel`` names or matches, oldest death first, locked
        for this transaction.  Ids given one by one that are unknown or not waiting raise
        NotFound (the caller's transaction then changes nothing)."""
        if sel.ids:
            ids = _int_ids(sel.ids, "dead letter")
            rows: list[tuple[Any, ...]] = []
            for chunk in _chunks(ids):
                where = f"id IN ({_ids_sql(chunk)})"
                cur.execute(self.q["lock_dead_rows"].replace("{where}", where), {})
                rows += cur.fetchall()
            found = {r[0] for r in rows}
            for i in ids:
                if i not in found:
                    raise NotFound(f"no dead letter {i} waiting to be {doing}")
            rows.sort(key=lambda r: (r[10], r[0]))  # oldest death first, over chunks too
            return rows
        if not (sel.all or sel.task_name or sel.queue or sel.fingerprint):
            raise ValueError(
                "say which dead letters: ids, all, or a task name, queue or fingerprint"
            )
        parts, params = ["TRUE"], {}
        for column, value in (
            ("task_name", sel.task_name),
            ("queue", sel.queue),
            ("fingerprint", sel.fingerprint),
        ):
            if value is not None:
                parts.append(f"{column} = %({column})s")
                params[column] = value
        cur.execute(self.q["lock_dead_rows"].replace("{where}", " AND ".join(parts)), params)
        return list(cur.fetchall())

    def requeue_dead(
        self,
        selector: DeadSelector,
        *,
        payload_json: str | None = None,
        delay: float = 0.0,
        spread: float = 0.0,
    ) -> list[TaskId]:
        check_requeue(selector, payload_json, delay, spread)

        def work(cur: Cursor) -> list[TaskId]:
            rows = self._lock_dead(cur, selector, "re-queued")
            n = len(rows)
            dues = [delay + spread * i / n for i in range(n)]
            return self._requeue_rows(cur, rows, dues, payload_json)

        return self._run(work)

    def _requeue_rows(
        self,
        cur: Cursor,
        rows: Sequence[tuple[Any, ...]],
        dues: Sequence[float],
        payload_json: str | None = None,
    ) -> list[TaskId]:
        """Re-queue locked dead letters (rows of lock_dead_rows): the letter becomes
        ``requeued``, its task row pending again (due ``dues[i]`` seconds from now, attempts
        0, the error history and the link to the letter kept), re-inserted if it was
        deleted; a unique key a live task holds meanwhile is dropped from the re-run."""
        if not rows:
            return []
        for chunk in _chunks([r[0] for r in rows]):
            got = cur.execute(self.q["mark_requeued"].replace("{ids}", _ids_sql(chunk)))
            if got != len(chunk):  # a stale read: another worker took some first
                raise pymysql.err.OperationalError(
                    _DEADLOCK, "dead letters changed since they were locked: run again"
                )
        plain = [(r, due) for r, due in zip(rows, dues, strict=True) if r[9] is None]
        missing: list[tuple[tuple[Any, ...], float, str | None]] = []
        for chunk in _chunks(plain):
            task_ids = [int(r[1]) for r, _due in chunk]
            sql = (
                self.q["revive_many"]
                .replace("{ids}", _ids_sql(task_ids))
                .replace(
                    "{due_cases}",
                    " ".join(f"WHEN {int(r[1])} THEN {_seconds_sql(due)}" for r, due in chunk),
                )
                .replace(
                    "{dead_cases}", " ".join(f"WHEN {int(r[1])} THEN {int(r[0])}" for r, _ in chunk)
                )
            )
            if cur.execute(sql, {"payload": payload_json}) < len(chunk):
                cur.execute(self.q["tasks_present"].replace("{ids}", _ids_sql(task_ids)))
                present = {int(r[0]) for r in cur.fetchall()}
                missing += [(r, due, None) for r, due in chunk if int(r[1]) not in present]
        for r, due in zip(rows, dues, strict=True):
            ukey = r[9]
            if ukey is None:
                continue
            cur.execute(self.q["find_unique"], {"key": ukey})
            if cur.fetchone():
                ukey = None  # a live task already holds the key: this re-run goes without
            params = {
                "task_id": r[1],
                "due": due,
                "unique_key": ukey,
                "dead_id": r[0],
                "payload": payload_json,
            }
            if not cur.execute(self.q["revive"], params):
                cur.execute(self.q["tasks_present"].replace("{ids}", _ids_sql([r[1]])))
                if cur.fetchone() is None:
                    missing.append((r, due, ukey))
        for r, due, ukey in missing:  # the task row is gone (deleted by hand): again
            dead_id, task_id, queue, name, payload, priority, max_attempts, created, errors = r[:9]
            breaker, rate_key = r[11:13]
            cur.execute(
                self.q["reinsert"],
                {
                    "task_id": task_id,
                    "queue": queue,
                    "task_name": name,
                    "payload": payload if payload_json is None else payload_json,
                    "priority": priority,
                    "max_attempts": max_attempts,
                    "created": created,
                    "errors": errors,
                    "unique_key": ukey,
                    "dead_id": dead_id,
                    "due": due,
                    "breaker": breaker,
                    "rate_key": rate_key,
                },
            )
        return [r[1] for r in rows]

    def review_dead(self, review: Review) -> int:
        if review.rate is not None and not review.rate > 0:
            raise ValueError("rate must be > 0 re-queues per second")

        def work(cur: Cursor) -> int:
            rows = self._lock_dead(cur, review.selector, "reviewed")
            if not rows:
                return 0
            cur.execute(self.q["now"])
            base = review.after if review.after is not None else float(cur.fetchone()[0])
            params = {
                "review": "approved" if review.approve else "rejected",
                "by": review.by,
                "note": review.note,
                "base": base,
            }
            ids = [int(r[0]) for r in rows]
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                if not review.approve:
                    at = "NULL"
                elif review.rate is None:
                    at = "%(base)s"
                else:
                    cases = " ".join(
                        f"WHEN {i} THEN {_seconds_sql((start + n) / review.rate)}"
                        for n, i in enumerate(chunk)
                    )
                    at = f"%(base)s + CASE id {cases} END"
                sql = (
                    self.q["review_dead"]
                    .replace("{requeue_at}", at)
                    .replace("{ids}", _ids_sql(chunk))
                )
                cur.execute(sql, params)
            return len(ids)

        return self._run(work)

    def _scalar(self, query: str) -> Any:
        """The one value a read returns."""

        def read(cur: Cursor) -> Any:
            cur.execute(self.q[query])
            return cur.fetchone()[0]

        return self._read(read)

    def requeue_approved(self, limit: int = 500) -> list[TaskId]:
        """A read of one index entry first (workers call this every second), then the
        transaction that locks the due letters (SKIP LOCKED where the server has it)."""
        if limit <= 0 or not self._scalar("approved_due"):
            return []
        skip = "SKIP LOCKED" if self.claim_mode() == "skip_locked" else ""
        sql = self.q["lock_approved"].replace("{skip_locked}", skip)

        def work(cur: Cursor) -> list[TaskId]:
            cur.execute(sql, {"limit": int(limit)})
            rows = list(cur.fetchall())
            return self._requeue_rows(cur, rows, [0.0] * len(rows))

        return self._run(work)

    def discard_dead(self, selector: DeadSelector) -> int:
        def work(cur: Cursor) -> int:
            rows = self._lock_dead(cur, selector, "discarded")
            for chunk in _chunks(rows):
                cur.execute(
                    self.q["mark_discarded"].replace("{ids}", _ids_sql([r[0] for r in chunk]))
                )
                cur.execute(
                    self.q["discard_task"].replace("{ids}", _ids_sql([r[1] for r in chunk]))
                )
            return len(rows)

        return self._run(work)

    # --- control -------------------------------------------------------------------------

    def cancel(self, selector: CancelSelector) -> list[TaskId]:
        if selector.ids:
            ids = _int_ids(selector.ids, "task")

            def by_ids(cur: Cursor) -> list[TaskId]:
                status: dict[int, str] = {}
                for chunk in _chunks(ids):
                    cur.execute(self.q["lock_tasks"].replace("{ids}", _ids_sql(chunk)))
                    status.update((int(i), st) for i, st in cur.fetchall())
                for i in ids:
                    if i not in status:
                        raise NotFound(f"no task {i}")
                pending = [i for i in ids if status[i] == "pending"]
                self._cancel_ids(cur, pending)
                return list(pending)

            return self._run(by_ids)
        parts, params = [], {}
        for column, value in (
            ("task_name", selector.task_name),
            ("queue", selector.queue),
            ("batch", selector.batch),
        ):
            if value is not None:
                parts.append(f"{column} = %({column})s")
                params[column] = value
        if not parts:
            raise ValueError("say which tasks to cancel: ids, or a task name, queue or batch")
        sql = self.q["select_cancel"].replace("{where}", " AND ".join(parts))

        def matching(cur: Cursor) -> list[TaskId]:
            cur.execute(sql, params)
            pending = [int(r[0]) for r in cur.fetchall()]
            self._cancel_ids(cur, pending)
            return list(pending)

        return self._run(matching)

    def _cancel_ids(self, cur: Cursor, ids: Sequence[int]) -> None:
        for chunk in _chunks(ids):
            cur.execute(self.q["cancel"].replace("{ids}", _ids_sql(chunk)))

    def pause_queue(self, queue: str, paused: bool) -> None:
        sql = self.q["pause_queue" if paused else "resume_queue"]
        self._run(lambda cur: cur.execute(sql, {"name": queue}), tx=False)

    def paused_queues(self) -> dict[str, float]:
        def read(cur: Cursor) -> dict[str, float]:
            cur.execute(self.q["paused_queues"])
            return {r[0]: float(r[1] or 0.0) for r in cur.fetchall()}

        return self._read(read)

    # --- batches -------------------------------------------------------------------------

    def _batch_infos(self, cur: Cursor, rows: Sequence[tuple[Any, ...]]) -> list[BatchInfo]:
        """BatchInfo for batch rows (name, total, created, completed, on_complete_task,
        followup_id): member counts by the task rows' status (a member whose dead letter
        was discarded is in none of them, as on the other backends)."""
        if not rows:
            return []
        cur.execute(self.q["batch_members"], {"names": [r[0] for r in rows]})
        members: dict[str, dict[str, Any]] = {}
        for name, status, n, last in cur.fetchall():
            per = members.setdefault(name, {**dict.fromkeys(_EMPTY_COUNTS, 0), "last": None})
            if status in _EMPTY_COUNTS:
                per[status] += int(n)
            if last is not None and (per["last"] is None or float(last) > per["last"]):
                per["last"] = float(last)
        out = []
        for name, total, created, completed, task, followup in rows:
            per = members.get(name) or {**dict.fromkeys(_EMPTY_COUNTS, 0), "last": None}
            made = utc_from_epoch(float(created))
            assert made is not None
            out.append(
                BatchInfo(
                    name=name,
                    total=int(total),
                    pending=per["pending"],
                    processing=per["processing"],
                    done=per["done"],
                    dead=per["dead"],
                    cancelled=per["cancelled"],
                    created=made,
                    last_finished=utc_from_epoch(per["last"]),
                    completed=utc_from_epoch(None if completed is None else float(completed)),
                    on_complete=task,
                    followup_id=followup,
                )
            )
        return out

    def batch(self, name: str) -> BatchInfo | None:
        def read(cur: Cursor) -> BatchInfo | None:
            cur.execute(self.q["get_batch"], {"name": name})
            found = self._batch_infos(cur, cur.fetchall())
            return found[0] if found else None

        return self._read(read)

    def batches(self, limit: int = 50) -> list[BatchInfo]:
        def read(cur: Cursor) -> list[BatchInfo]:
            cur.execute(self.q["list_batches"], {"limit": max(0, int(limit))})
            return self._batch_infos(cur, cur.fetchall())

        return self._read(read)

    def settle_batches(self) -> list[tuple[str, TaskId | None]]:
        def open_ones(cur: Cursor) -> list[str]:
            cur.execute(self.q["open_batches"])
            return [r[0] for r in cur.fetchall()]

        settled: list[tuple[str, TaskId | None]] = []
        for name in self._read(open_ones):

            def settle(cur: Cursor, name: str = name) -> tuple[str, TaskId | None] | None:
                if not cur.execute(self.q["settle_batch"], {"name": name}):
                    return None  # another worker settled it, or a member came back
                cur.execute(self.q["batch_followup"], {"name": name})
                task, payload, queue = cur.fetchone()
                if task is None:
                    return name, None
                cur.execute(
                    self.q["insert_followup"],
                    {"task_name": task, "payload": payload or "{}", "queue": queue or "default"},
                )
                followup = int(cur.lastrowid)
                cur.execute(self.q["set_followup"], {"id": followup, "name": name})
                return name, followup

            got = self._run(settle)
            if got is not None:
                settled.append(got)
        return settled

    # --- circuit breakers, rate limits, schedules -----------------------------------------

    def _stored(self, query: str, names: Sequence[str] | None) -> list[dict[str, Any]]:
        """The rows of a state table (all, or those named), by name."""
        if names is not None and not names:
            return []
        where = "" if names is None else "WHERE name IN %(names)s"
        sql = self.q[query].replace("{where}", where)

        def read(cur: Any) -> list[dict[str, Any]]:
            cur.execute(sql, {"names": list(dict.fromkeys(names or ()))})
            return list(cur.fetchall())

        return self._dict_read(read)

    def _put(self, cur: Cursor, kind: str, values: dict[str, Any], expected: int) -> bool:
        """The compare-and-set of one state row (``values`` carry version expected + 1):
        an INSERT for version 0 (a duplicate key: another worker stored it first), else an
        UPDATE guarded on the version; True when it changed the row."""
        if expected == 0:
            try:
                cur.execute(self.q[f"insert_{kind}"], values)
            except pymysql.err.IntegrityError as exc:
                if _errno(exc) == _DUPLICATE_KEY:
                    return False
                raise
            return True
        return int(cur.execute(self.q[f"update_{kind}"], {**values, "expected": expected})) == 1

    def _put_row(self, kind: str, values: dict[str, Any], expected: int) -> bool:
        return self._run(lambda cur: self._put(cur, kind, values, expected))

    def _delete_row(self, query: str, name: str) -> bool:
        return bool(self._run(lambda cur: cur.execute(self.q[query], {"name": name})))

    def breakers(self, names: Sequence[str] | None = None) -> list[BreakerState]:
        return [breaker_from_row(r) for r in self._stored("breakers", names)]

    def put_breaker(self, state: BreakerState, expected_version: int) -> bool:
        values = breaker_values(state, expected_version + 1)
        return self._put_row("breaker", values, expected_version)

    def delete_breaker(self, name: str) -> bool:
        return self._delete_row("delete_breaker", name)

    def rate_limits(self, names: Sequence[str] | None = None) -> list[RateState]:
        return [rate_from_row(r) for r in self._stored("rate_limits", names)]

    def put_rate_limit(self, state: RateState, expected_version: int) -> bool:
        values = rate_values(state, expected_version + 1)
        return self._put_row("rate_limit", values, expected_version)

    def schedules(self) -> list[ScheduleState]:
        return [schedule_from_row(r) for r in self._stored("schedules", None)]

    def put_schedule(self, state: ScheduleState, expected_version: int) -> bool:
        values = schedule_values(state, expected_version + 1)
        return self._put_row("schedule", values, expected_version)

    def delete_schedule(self, name: str) -> bool:
        return self._delete_row("delete_schedule", name)

    def fire_schedule(
        self, state: ScheduleState, expected_version: int, tasks: Sequence[NewTask]
    ) -> list[TaskId] | None:
        """The compare-and-set first (a concurrent fire waits for the row lock, then finds
        the version changed and enqueues nothing), then the tasks, in one transaction."""
        values = schedule_values(state, expected_version + 1)

        def work(cur: Cursor) -> list[TaskId] | None:
            if not self._put(cur, "schedule", values, expected_version):
                return None
            if not tasks:
                return []
            ids = self._insert(cur, tasks, own=True)
            cur.execute(self.q["set_last_task"], {"id": ids[-1], "name": state.name})
            return ids

        return self._run(work)

    def parse_id(self, text: str) -> TaskId:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"task ids are integers on MySQL, got {text!r}") from None


__all__ = ["NOW_SQL", "SCHEMA_VERSION", "MySQLBackend", "supports_skip_locked"]
