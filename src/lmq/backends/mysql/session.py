"""MySQL sessions: the URL's options, one PyMySQL connection per thread, transactions
that re-run on deadlocks, errors translated to lmq's, and the schema check.

:class:`MySQLSession` is the base of :class:`~lmq.backends.mysql.backend.MySQLBackend`
(whose module docstring lists the URL options); it holds no queue logic.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import pymysql  # type: ignore[import-untyped]  # no stubs shipped (types-PyMySQL not pinned)
import pymysql.constants.CLIENT  # type: ignore[import-untyped]
import pymysql.cursors  # type: ignore[import-untyped]
from pymysql.connections import Connection  # type: ignore[import-untyped]
from pymysql.cursors import Cursor

from ...exceptions import BackendBusy, BackendError, BackendUnavailable, ConfigError, SchemaMissing
from ...url import QueueURL, mask
from ..sqlfile import check_prefix, load_queries

T = TypeVar("T")

SCHEMA_VERSION = 3
NOW_SQL = "(UNIX_TIMESTAMP() + MICROSECOND(NOW(6)) / 1e6)"
# {breaker_ok} in queries.sql: the task row is not behind a breaker whose stored state is
# not closed.  A scalar subquery on the breaker's primary key, evaluated only for a row with
# a breaker: MariaDB runs it as one eq_ref probe per such row (a NOT EXISTS it would turn
# into a materialized scan of every breaker, and costs each claim more to plan)
BREAKER_OK_SQL = (
    "({prefix}queue_tasks.breaker IS NULL OR COALESCE((SELECT b.state FROM"
    " {prefix}queue_breakers b WHERE b.name = {prefix}queue_tasks.breaker), 'closed')"
    " = 'closed')"
)
_OPTIONS = {
    "prefix",
    "claim",
    "connect_timeout",
    "read_timeout",
    "write_timeout",
    "lock_wait_timeout",
    "poll",
    "unix_socket",
    "ssl_ca",
    "ssl_cert",
    "ssl_key",
    "charset",
}
_CLAIM_MODES = ("auto", "skip_locked", "update")
_TABLES_V1 = ("queue_tasks", "queue_dead_letters", "queue_workers", "queue_meta")
_TABLES_V2 = (*_TABLES_V1, "queue_queues", "queue_batches")  # schema 2 added the last two
_TABLES = (*_TABLES_V2, "queue_breakers", "queue_rate_limits", "queue_schedules")  # schema 3


def tables_of(version: int) -> tuple[str, ...]:
    """The tables a database of schema ``version`` has."""
    return _TABLES_V1 if version < 2 else _TABLES_V2 if version < 3 else _TABLES


# errors worth re-running the whole transaction for
_DEADLOCK = 1213
_LOCK_WAIT_TIMEOUT = 1205
_RETRYABLE = {_DEADLOCK, _LOCK_WAIT_TIMEOUT}
_RETRY_FOR = 30.0  # seconds of deadlock retries before giving up with BackendBusy
# the connection is gone (or going): drop it, raise BackendUnavailable, reconnect next call
_CONNECTION_LOST = {
    2002,  # can't connect through socket
    2003,  # can't connect to server
    2006,  # server has gone away
    2013,  # lost connection during query
    2014,  # commands out of sync
    2045,  # can't open shared memory
    2055,  # lost connection at reading initial communication packet
    1053,  # server shutdown in progress
    1077,  # normal shutdown
    1079,  # shutdown complete
    1152,  # aborted connection
    1317,  # query execution was interrupted (connection killed)
    1927,  # MariaDB: connection was killed
    4031,  # MySQL 8: disconnected by the server for inactivity
    # a read-only server (a replica after a failover): reconnect, the name may move
    1290,  # running with --read-only
    1792,  # read-only transaction
    1836,  # read-only mode
}
_NO_TABLE = {1146}  # table doesn't exist
_BAD_SCHEMA = {1054}  # unknown column: an older or damaged schema


def _errno(exc: BaseException) -> int:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else 0


def _parse_version(text: str) -> tuple[str, tuple[int, ...]]:
    flavour = "mariadb" if "mariadb" in text.lower() else "mysql"
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    numbers = tuple(int(x) for x in m.groups()) if m else (0, 0, 0)
    if flavour == "mariadb" and numbers[0] == 5 and "-" in text:  # "5.5.5-10.6.12-MariaDB"
        m2 = re.search(r"-(\d+)\.(\d+)\.(\d+)-MariaDB", text, re.IGNORECASE)
        if m2:
            numbers = tuple(int(x) for x in m2.groups())
    return flavour, numbers


def supports_skip_locked(version: str) -> bool:
    """SKIP LOCKED: MySQL 8.0.1+, MariaDB 10.6+."""
    flavour, numbers = _parse_version(version)
    return numbers >= ((10, 6, 0) if flavour == "mariadb" else (8, 0, 1))


def _seconds(url: QueueURL, name: str, default: float) -> float:
    raw = url.options.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(
            f"invalid {name}={raw!r} in {mask(url.raw)!r}: seconds expected"
        ) from None
    if value <= 0:
        raise ConfigError(f"invalid {name}={raw!r} in {mask(url.raw)!r}: must be > 0")
    return value


class MySQLSession:
    """Connections, transactions and error handling for one MySQL queue URL."""

    def __init__(self, url: QueueURL) -> None:
        unknown = sorted(set(url.options) - _OPTIONS)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)} in {mask(url.raw)!r}; the MySQL "
                f"backend takes: {', '.join(sorted(_OPTIONS))}"
            )
        try:
            self.prefix = check_prefix(url.prefix)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.url = mask(url.raw)
        charset = url.options.get("charset", "utf8mb4").lower()
        if charset != "utf8mb4":
            raise ConfigError(
                f"charset={charset!r} in {self.url!r}: lmq's MySQL tables and connections "
                "are always utf8mb4"
            )
        self.claim_mode_option = url.options.get("claim", "auto").lower()
        if self.claim_mode_option not in _CLAIM_MODES:
            raise ConfigError(
                f"invalid claim={self.claim_mode_option!r} in {self.url!r}: use "
                + ", ".join(_CLAIM_MODES)
            )
        parts = urlsplit(url.path)
        database = unquote(parts.path.lstrip("/"))
        if not database or "/" in database:
            raise ConfigError(f"no database name in {self.url!r}: use mysql://user@host/dbname")
        try:
            port = parts.port or 3306
        except ValueError:
            raise ConfigError(f"invalid port in {self.url!r}") from None
        self.database = database
        self.lock_wait_timeout = int(_seconds(url, "lock_wait_timeout", 10))
        self.poll = _seconds(url, "poll", 0.1)
        self._params: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": port,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
            "database": database,
            "charset": "utf8mb4",
            "connect_timeout": _seconds(url, "connect_timeout", 5),
            "read_timeout": _seconds(url, "read_timeout", 60),
            "write_timeout": _seconds(url, "write_timeout", 60),
            "autocommit": True,
            # several statements per round trip on the hot path (claim, complete); every
            # value in them is still a bound, escaped parameter
            "client_flag": pymysql.constants.CLIENT.MULTI_STATEMENTS,
        }
        if "unix_socket" in url.options:
            self._params["unix_socket"] = url.options["unix_socket"]
        ssl = {k[4:]: url.options[k] for k in ("ssl_ca", "ssl_cert", "ssl_key") if k in url.options}
        if ssl:
            self._params["ssl"] = ssl
        breaker_ok = BREAKER_OK_SQL.replace("{prefix}", self.prefix)
        self._breaker_ok = breaker_ok
        self.q = {
            name: sql.replace("{now}", NOW_SQL).replace("{breaker_ok}", breaker_ok)
            for name, sql in load_queries("lmq.backends.mysql", "queries.sql", self.prefix).items()
        }
        self._local = threading.local()
        self._all_conns: list[Connection] = []
        self._conns_lock = threading.Lock()
        self._schema_checked = False
        self._schema_lock = threading.Lock()
        self._server: tuple[str, int, int] | None = None  # version, autoinc step, max packet
        self._claim_mode: str | None = (
            None if self.claim_mode_option == "auto" else self.claim_mode_option
        )
        # (queues, excluded queues, checked) -> the claim statement and its queue parameters
        self._claim_sql: dict[tuple[Any, ...], tuple[str, dict[str, str]] | None] = {}
        # (the ready queues but the paused ones, checked) -> their per-queue claim
        self._per_queue_sql: dict[tuple[Any, ...], tuple[str, dict[str, str]]] = {}
        self._check_until = 0.0  # plain claims carry the breaker check until then
        # (probe or rate, queues, excluded queues) -> a rate or probe claim's statement
        self._gated_sql: dict[tuple[Any, ...], str] = {}
        self.lock_retries = 0  # transactions re-run after a deadlock or lock wait timeout

    # --- connections ---------------------------------------------------------------------

    def _connect(self) -> Connection:
        params = self._params
        try:
            # the whole handshake within connect_timeout (PyMySQL would wait read_timeout
            # for a server that accepts the TCP connection and never greets), then the
            # session's own read/write timeouts
            limit = params["connect_timeout"]
            conn: Connection = pymysql.connect(
                **{**params, "read_timeout": limit, "write_timeout": limit}
            )
            with conn.cursor() as cur:
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                cur.execute(f"SET SESSION innodb_lock_wait_timeout = {self.lock_wait_timeout}")
                if self._server is None:
                    cur.execute(self.q["server_info"])
                    version, step, packet = cur.fetchone()
                    self._server = (str(version), int(step or 1), int(packet or 1 << 20))
            conn._read_timeout = params["read_timeout"]  # PyMySQL applies these per I/O call
            conn._write_timeout = params["write_timeout"]
        except pymysql.err.MySQLError as exc:
            raise BackendUnavailable(f"cannot connect to MySQL at {self.url}: {exc}") from None
        except OSError as exc:
            raise BackendUnavailable(f"cannot connect to MySQL at {self.url}: {exc}") from None
        with self._conns_lock:
            self._all_conns.append(conn)
        return conn

    def _raw_conn(self) -> tuple[Connection, bool]:
        """This thread's connection, and whether it was opened just now."""
        local = self._local
        conn: Connection | None = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn, False
        conn = local.conn = self._connect()  # first use in this thread (or forked child)
        local.pid = os.getpid()
        return conn, True

    def _drop(self, conn: Connection) -> None:
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._conns_lock, contextlib.suppress(ValueError):
            self._all_conns.remove(conn)
        with contextlib.suppress(Exception):
            conn.close()

    def close(self) -> None:
        with self._conns_lock:
            conns, self._all_conns = self._all_conns, []
        for conn in conns:
            with contextlib.suppress(Exception):  # best effort: another thread may own it
                conn.close()
        self._local = threading.local()

    def _translate(self, exc: BaseException) -> BackendError:
        code = _errno(exc)
        if code in _NO_TABLE or code in _BAD_SCHEMA:
            return SchemaMissing(
                f"MySQL database {self.database!r} at {self.url}: {exc.args[-1]}; lmq's tables "
                f"({self.prefix}queue_tasks ...) are missing or incomplete: run `lmq migrate`"
            )
        if code in _RETRYABLE:
            return BackendBusy(f"MySQL at {self.url}: {exc.args[-1]}")
        if code in _CONNECTION_LOST or isinstance(exc, (pymysql.err.InterfaceError, OSError)):
            return BackendUnavailable(f"lost the connection to MySQL at {self.url}: {exc}")
        return BackendError(f"MySQL at {self.url}: {exc}")

    @staticmethod
    def _lost(exc: BaseException) -> bool:
        if isinstance(exc, (pymysql.err.InterfaceError, OSError)):
            return True
        return _errno(exc) in _CONNECTION_LOST

    def _run(
        self,
        fn: Callable[[Any], T],
        *,
        tx: bool = True,
        begin: bool = True,
        cursor: type[Cursor] = Cursor,
        schema: bool = True,
    ) -> T:
        """Run ``fn(cursor)`` in a transaction (``tx``) or as autocommit statements.

        Deadlocks and lock wait timeouts re-run ``fn`` from the start after a short
        jittered pause.  A lost connection raises BackendUnavailable and the next call
        reconnects; but a reused connection found dead before COMMIT was sent (an idle
        connection the server closed, or a restart since the last call) is replaced and
        ``fn`` re-run once at once: the server rolled the transaction back, and the
        autocommit calls (reads, heartbeat, prune, migrate) are idempotent.
        """
        deadline = 0.0
        pause = 0.002
        replaced = False
        while True:
            conn, fresh = self._raw_conn()  # BackendUnavailable if it can't connect
            if schema and not self._schema_checked:
                self._ensure_schema(conn)
            committing = False
            self._local.committed = False  # fn may send COMMIT itself (commit_with)
            try:
                if tx and begin:  # begin=False: fn's first statement is START TRANSACTION
                    conn.begin()
                with conn.cursor(cursor) as cur:
                    result = fn(cur)
                if tx and not self._local.committed:
                    committing = True
                    conn.commit()
                return result
            except (pymysql.err.MySQLError, OSError) as exc:
                committing = committing or self._local.committed
                if self._lost(exc):
                    self._drop(conn)
                    if not (fresh or replaced or committing):
                        replaced = True
                        continue
                    raise self._translate(exc) from None
                self._rollback(conn)
                if _errno(exc) in _RETRYABLE:
                    now = time.monotonic()
                    if not deadline:
                        deadline = now + _RETRY_FOR
                    if now < deadline:
                        self.lock_retries += 1
                        time.sleep(random.uniform(pause / 2, pause))  # jitter spreads waiters
                        pause = min(pause * 2, 0.1)
                        continue
                raise self._translate(exc) from None
            except BaseException:
                self._rollback(conn)
                raise

    def commit_with(self, cur: Cursor, sql: str, params: Any) -> None:
        """Run ``sql`` and COMMIT in one round trip, as the last step of a ``_run`` fn."""
        self._local.committed = True  # from here on, a lost connection may have committed
        cur.execute(sql + ";\nCOMMIT", params)
        cur.nextset()

    def _rollback(self, conn: Connection) -> None:
        try:
            conn.rollback()
        except Exception:  # the connection is unusable: forget it
            self._drop(conn)

    def _read(self, fn: Callable[[Cursor], T], cursor: type[Cursor] = Cursor) -> T:
        return self._run(fn, tx=False, cursor=cursor)

    def _dict_read(self, fn: Callable[[Any], T]) -> T:
        return self._run(fn, tx=False, cursor=pymysql.cursors.DictCursor)

    # --- schema --------------------------------------------------------------------------

    def _ensure_schema(self, conn: Connection) -> None:
        with self._schema_lock:
            if self._schema_checked:
                return
            try:
                version = self._version_on(conn)
            except pymysql.err.MySQLError as exc:
                if self._lost(exc):
                    self._drop(conn)
                raise self._translate(exc) from None
            if version is None or version < SCHEMA_VERSION:
                found = "no lmq tables" if version is None else f"lmq schema {version}"
                raise SchemaMissing(
                    f"MySQL database {self.database!r} at {self.url} has {found} "
                    f"(prefix {self.prefix!r}, this lmq needs schema {SCHEMA_VERSION}): "
                    "run `lmq migrate`"
                )
            if version > SCHEMA_VERSION:
                raise SchemaMissing(
                    f"MySQL database {self.database!r} at {self.url} has lmq schema {version}, "
                    f"newer than this lmq knows ({SCHEMA_VERSION}); upgrade lmq"
                )
            self._schema_checked = True

    def _version_on(self, conn: Connection) -> int | None:
        with conn.cursor() as cur:
            try:
                cur.execute(self.q["schema_version"])
            except pymysql.err.ProgrammingError as exc:
                if _errno(exc) in _NO_TABLE:
                    return None
                raise
            row = cur.fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def schema_version(self) -> int | None:
        return self._run(lambda cur: self._version_on(cur.connection), tx=False, schema=False)

    # --- for tests and tools -------------------------------------------------------------

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """A fresh connection of lmq's own settings (closed afterwards), for tools/tests."""
        conn = self._connect()
        try:
            yield conn
        finally:
            self._drop(conn)
