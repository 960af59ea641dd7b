"""The connection pool behind the PostgreSQL backend, and psycopg errors as lmq's.

A :class:`psycopg_pool.ConnectionPool` (sync API: the backend is called from several
threads) of autocommit connections; writes open explicit transactions.  Two things the
plain pool does not do, and a queue needs:

* **fail fast**: a pool whose server is unreachable makes ``getconn`` wait its whole
  timeout while it retries in the background.  Here every connection attempt reports its
  outcome, so a call gives up as soon as one attempt failed (within ``connect_timeout``:
  at once for a closed port), raising :class:`~lmq.exceptions.BackendUnavailable`;
* **come back fast**: once the server was unreachable, the next call probes it with one
  direct connection (failing fast again while it is down) and, when it answers, replaces
  the pool, whose own reconnect backoff may have grown to minutes.  A connection found
  broken in use (server restarted, connection killed) drains the pool, so the next call
  gets a fresh connection rather than another stale one; a connection idle for a while
  is checked before it is handed out.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from ...exceptions import BackendBusy, BackendError, BackendUnavailable, SchemaMissing

# psycopg and its pool log every failed attempt and dropped connection as warnings; with
# no logging configured those would reach stderr (Python's last-resort handler) next to
# the one line a command prints.  An application that configures logging still sees them.
logging.getLogger("psycopg").addHandler(logging.NullHandler())

_IDLE_CHECK = 5.0  # seconds idle after which a pooled connection is checked before use
_SLICE = 0.05  # getconn waits in slices, looking at connection failures in between

_SCHEMA_ERRORS = (pgerrors.UndefinedTable, pgerrors.UndefinedFunction, pgerrors.UndefinedColumn)
_BUSY_ERRORS = (
    pgerrors.DeadlockDetected,
    pgerrors.SerializationFailure,
    pgerrors.LockNotAvailable,
)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Health:
    """What the pool's connection attempts found (written from the pool's threads)."""

    def __init__(self) -> None:
        self.error: BaseException | None = None  # the last attempt's error, None if it worked
        self.connected = False  # some attempt worked


def _connection_class(health: _Health) -> type[psycopg.Connection[Any]]:
    class LmqConnection(psycopg.Connection[Any]):
        lmq_used: float = 0.0

        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> LmqConnection:
            try:
                conn = super().connect(conninfo, **kwargs)
            except psycopg.Error as exc:
                health.error = exc
                raise
            health.error = None
            health.connected = True
            conn.lmq_used = time.monotonic()
            return conn

    return LmqConnection


def _check(conn: psycopg.Connection[Any]) -> None:
    """The pool's check: a connection idle for a while must still answer."""
    if time.monotonic() - getattr(conn, "lmq_used", 0.0) > _IDLE_CHECK:
        ConnectionPool.check_connection(conn)


class Pool:
    """Connections for one backend: ``with pool.connection() as conn`` (thread-safe)."""

    def __init__(
        self,
        conninfo: str,
        kwargs: dict[str, Any],
        *,
        size: int,
        timeout: float,
        connect_timeout: float,
        where: str,
    ) -> None:
        self.conninfo = conninfo
        self.kwargs = kwargs
        self.size = size
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.where = where  # the masked URL, for messages
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None
        self._health = _Health()
        self._down = False  # the last attempt failed: probe before waiting on the pool
        self._drained = 0.0
        self._closed = False

    # --- the pool ------------------------------------------------------------------

    def _get(self) -> ConnectionPool[Any]:
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            if self._closed:
                raise BackendUnavailable(f"PostgreSQL {self.where}: the queue was closed")
            if self._pool is None:
                self._health = _Health()
                self._pool = ConnectionPool(
                    self.conninfo,
                    connection_class=_connection_class(self._health),
                    kwargs=self.kwargs,
                    min_size=1,
                    max_size=self.size,
                    open=False,
                    check=_check,
                    timeout=self.timeout,
                    reconnect_timeout=max(30.0, self.connect_timeout * 2),
                    num_workers=2,
                    name="lmq-postgres",
                )
                self._pool.open(wait=False)
            return self._pool

    def _replace(self, old: ConnectionPool[Any] | None) -> None:
        with self._lock:
            if self._pool is not old or old is None:
                return
            self._pool = None
        threading.Thread(target=_close_quietly, args=(old,), daemon=True).start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            _close_quietly(pool)

    def lost(self) -> None:
        """A connection broke in use: the others may be stale too (server restart)."""
        pool = self._pool
        now = time.monotonic()
        if pool is not None and now - self._drained > 1.0:
            self._drained = now
            with contextlib.suppress(Exception):
                pool.drain()

    # --- getting a connection -------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        self._down = True
        return BackendUnavailable(f"cannot reach PostgreSQL at {self.where}: {first_line(exc)}")

    def _probe(self) -> None:
        """While the server was unreachable: one direct attempt, failing fast."""
        kwargs = {k: v for k, v in self.kwargs.items() if k != "prepare_threshold"}
        kwargs["connect_timeout"] = max(2, round(self.connect_timeout) - 1)
        try:
            probe = psycopg.connect(self.conninfo, **kwargs)
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None
        probe.close()
        self._down = False
        self._replace(self._pool)  # its reconnect backoff may be long by now: start afresh

    def _getconn(self) -> tuple[ConnectionPool[Any], psycopg.Connection[Any]]:
        if self._down:
            self._probe()
        pool = self._get()
        # until a first connection worked, give up within connect_timeout (a one-shot
        # command must not hang on a server that drops packets); then wait for a free one
        first = not self._health.connected
        budget = max(1.5, self.connect_timeout - 1)
        wait = min(self.timeout, budget) if first else self.timeout
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            try:
                return pool, pool.getconn(timeout=max(0.001, min(_SLICE, left)))
            except PoolClosed:
                pool = self._get()  # replaced meanwhile
                continue
            except PoolTimeout:
                pass
            error = self._health.error
            if error is not None:
                raise self._unavailable(error)
            if time.monotonic() >= deadline:
                if first and not self._health.connected:
                    raise self._unavailable(TimeoutError(f"no answer within {wait:g}s"))
                raise BackendBusy(
                    f"PostgreSQL {self.where}: no connection free in the pool within "
                    f"{self.timeout:g}s (pool_size={self.size})"
                )

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        pool, conn = self._getconn()
        try:
            yield conn
        finally:
            conn.lmq_used = time.monotonic()  # type: ignore[attr-defined,unused-ignore]
            try:
                pool.putconn(conn)
            except Exception:  # a pool closed or replaced meanwhile
                with contextlib.suppress(Exception):
                    conn.close()


def _close_quietly(pool: ConnectionPool[Any]) -> None:
    with contextlib.suppress(Exception):
        pool.close(timeout=1.0)


def translate(
    exc: psycopg.Error, where: str, conn: psycopg.Connection[Any] | None, pool: Pool | None
) -> BackendError:
    """A psycopg error as the lmq exception the caller sees."""
    if isinstance(exc, _SCHEMA_ERRORS):
        return SchemaMissing(
            f"PostgreSQL {where}: {first_line(exc)}; lmq's tables are missing or incomplete: "
            "run `lmq migrate`"
        )
    if isinstance(exc, _BUSY_ERRORS):
        return BackendBusy(f"PostgreSQL {where}: {first_line(exc)}")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        if (
            pool is not None
            and conn is not None
            and (getattr(conn, "broken", False) or conn.closed)
        ):
            pool.lost()
        return BackendUnavailable(f"PostgreSQL {where}: {first_line(exc)}")
    return BackendError(f"PostgreSQL {where}: {first_line(exc)}")
