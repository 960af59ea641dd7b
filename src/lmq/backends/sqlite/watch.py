"""Wake-ups for idle SQLite workers: something committed to the database file.

Every commit in WAL mode appends to the ``-wal`` file.  On Linux, inotify reports those
writes, so an idle worker sleeps in ``read()`` at no cost and wakes within a
millisecond of a commit.  Elsewhere (or if inotify is unavailable) a thread polls the
file's ``stat()`` every few milliseconds instead.  Either way a missed change only
delays pickup until the worker's idle poll (at most a second).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import struct
import sys
import threading
from collections.abc import Callable

_IN_MODIFY = 0x002
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then the name)


class WalWatcher:
    """``start(callback)`` calls ``callback`` (from its own thread) after commits."""

    def __init__(self, db_path: str, poll_interval: float = 0.005) -> None:
        self.db_path = os.path.abspath(db_path)
        self.wal_name = os.path.basename(self.db_path) + "-wal"
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._wake_r, self._wake_w = os.pipe()  # lets stop() interrupt a blocking read
        self.mode = "inotify" if sys.platform.startswith("linux") else "poll"

    def start(self, callback: Callable[[], None]) -> None:
        if self.mode == "inotify":
            self._fd = _inotify_watch(os.path.dirname(self.db_path))
            if self._fd is None:
                self.mode = "poll"
        target = self._run_inotify if self.mode == "inotify" else self._run_poll
        self._thread = threading.Thread(
            target=target, args=(callback,), name="lmq-sqlite-watch", daemon=True
        )
        self._thread.start()

    def _run_inotify(self, callback: Callable[[], None]) -> None:
        fd = self._fd
        assert fd is not None
        name = self.wal_name.encode()
        while not self._stop.is_set():
            ready, _, _ = select.select([fd, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if _mentions(data, name):
                callback()

    def _run_poll(self, callback: Callable[[], None]) -> None:
        wal = os.path.join(os.path.dirname(self.db_path), self.wal_name)

        def state() -> tuple[int, int, int] | None:
            try:
                st = os.stat(wal)
            except OSError:
                return None
            return (st.st_mtime_ns, st.st_size, st.st_ino)

        last = state()
        while not self._stop.wait(self.poll_interval):
            now = state()
            if now != last:
                last = now
                callback()

    def stop(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=1)
        for fd in (self._fd, self._wake_r, self._wake_w):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = None


def _mentions(data: bytes, name: bytes) -> bool:
    """Whether a buffer of inotify events names ``name``."""
    offset, size = 0, _EVENT.size
    while offset + size <= len(data):
        _wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
        start = offset + size
        if data[start : start + length].rstrip(b"\0") == name:
            return True
        offset = start + length
    return False


def _inotify_watch(directory: str) -> int | None:
    """An inotify fd watching ``directory`` for writes, or None if unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return None
        mask = _IN_MODIFY | _IN_CREATE | _IN_MOVED_TO | _IN_CLOSE_WRITE
        if libc.inotify_add_watch(fd, os.fsencode(directory or "."), mask) < 0:
            os.close(fd)
            return None
        return int(fd)
    except (OSError, AttributeError):
        return None
