"""Wake-ups for idle PostgreSQL workers: LISTEN on the prefix's channel.

An ``AFTER INSERT … FOR EACH STATEMENT`` trigger on ``{prefix}queue_tasks`` calls
``pg_notify('{prefix}queue_tasks', '')``, so every committed insert (lmq's own, a
transactional enqueue, another program's bare INSERT) sends one notification, delivered
at commit; the backend also notifies when a retry or release makes a task ready at once.

:class:`ListenWakeSource` holds its own autocommit connection (not one of the pool's: a
pooled connection must not keep session state), sleeps in ``select()`` on its socket (and
on a pipe that ``stop()`` writes to, so stopping takes no time), reads what arrived with
``conn.notifies(timeout=0)`` and calls the callback for each notification.  When the
server goes away it reconnects with backoff and calls the callback once it is back
(something may have arrived while it was gone).  The worker keeps polling
(``idle_poll``) anyway, so a lost notification only delays pickup.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any

import psycopg

log = logging.getLogger("lmq.backends.postgres")

_PING_EVERY = 30.0  # idle seconds between liveness checks of the LISTEN connection


class ListenWakeSource:
    """``start(callback)`` runs a thread that LISTENs on ``channel``; ``stop()`` ends it."""

    announces_work = True  # NOTIFY comes from the insert trigger: claim at once

    def __init__(self, conninfo: str, connect_kwargs: dict[str, Any], channel: str) -> None:
        self.conninfo = conninfo
        self.connect_kwargs = dict(connect_kwargs)
        self.channel = channel
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pipe: tuple[int, int] | None = None  # stop() wakes the select() through it
        self._conn: psycopg.Connection[Any] | None = None
        self.connected = threading.Event()  # set while LISTEN is in effect (for tests)
        self.reconnects = 0

    def start(self, callback: Callable[[], None]) -> None:
        self._stop.clear()
        self._pipe = os.pipe()
        self._thread = threading.Thread(
            target=self._run, args=(callback,), name="lmq-pg-listen", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        pipe, thread = self._pipe, self._thread
        if pipe is not None:
            with contextlib.suppress(OSError):
                os.write(pipe[1], b"x")
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)  # a connection attempt in progress is left to time out
        self._thread = None
        if pipe is not None and (thread is None or not thread.is_alive()):
            self._pipe = None
            for fd in pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # --- the thread ------------------------------------------------------------------

    def _run(self, callback: Callable[[], None]) -> None:
        delay = 0.1
        first = True
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except psycopg.Error as exc:
                if first:
                    log.warning("LISTEN connection failed (%s); retrying", exc)
                    first = False
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            try:
                if not first:
                    self.reconnects += 1
                first = False
                self.connected.set()
                callback()  # anything committed before LISTEN took effect
                self._listen(conn, callback)
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    log.warning("LISTEN connection lost (%s); reconnecting", exc)
            except Exception:  # a callback that raised: keep the thread alive
                log.exception("wake-up callback failed")
            finally:
                self.connected.clear()
                self._conn = None
                with contextlib.suppress(Exception):
                    conn.close()

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.conninfo, autocommit=True, **self.connect_kwargs)
        try:
            conn.execute(f'LISTEN "{self.channel}"')
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _listen(self, conn: psycopg.Connection[Any], callback: Callable[[], None]) -> None:
        assert self._pipe is not None
        stop_fd, sock = self._pipe[0], conn.fileno()
        while not self._stop.is_set():
            ready, _, _ = select.select([sock, stop_fd], [], [], _PING_EVERY)
            if stop_fd in ready:
                return
            if not ready:  # a silent network loss shows only on a write
                conn.execute("SELECT 1")
            for _ in conn.notifies(timeout=0):  # what arrived (a closed socket raises)
                callback()
