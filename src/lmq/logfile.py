"""``--log-file``: one JSON object per line for every event lmq logs.

Fields: ``ts`` (ISO 8601 UTC, milliseconds), ``level``, ``logger``, ``event`` (when the
record has one), ``message``, plus the record's structured extras (``task_id``,
``error``…).  Secrets in URLs (``scheme://user:PASSWORD@host``) are masked in the message,
the extras and tracebacks.

The file gets every event, the per-task ones (``claimed``, ``succeeded``) included, whatever
the console's ``-v`` level.  Keeping that cheap on a busy worker: per-task (DEBUG) lines are
buffered and written at most 0.2 s later by a small flusher thread (one ``write`` for many
lines instead of one per line); a line at INFO or above (worker events, failures, dead
letters) is written at once.  A worker killed with SIGKILL can lose the last 0.2 s of
per-task lines (the database, not the log, is the record of what was done).

Logrotate: like :class:`logging.handlers.WatchedFileHandler`, the handler notices that its
path now names another file (or none) and reopens it before it writes: at every flush of
the queued per-task lines and before every line at INFO or above, rather than before every
line, so the lines logged after a move go to the new file (none is lost).  ``copytruncate``
works too (the file is opened in append mode).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from typing import Any

from .url import mask

_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_ENCODE = json.JSONEncoder(default=str, ensure_ascii=False).encode
_LEVELS = {n: logging.getLevelName(n).lower() for n in (10, 20, 30, 40, 50)}
FLUSH_INTERVAL = 0.2  # seconds a buffered per-task line may wait


def _masked(value: Any) -> Any:
    if isinstance(value, str) and "://" in value:
        return mask(value)
    if isinstance(value, list | tuple) and any(isinstance(v, str) for v in value):
        return [_masked(v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per record (no newline)."""

    def __init__(self) -> None:
        super().__init__()
        self._sec = -1
        self._prefix = ""

    def _ts(self, record: logging.LogRecord) -> str:
        sec = int(record.created)
        if sec != self._sec:  # one strftime per second, not per line
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._prefix}.{int(record.msecs):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        attrs = record.__dict__
        message = record.getMessage()
        data: dict[str, Any] = {
            "ts": self._ts(record),
            "level": _LEVELS.get(record.levelno) or record.levelname.lower(),
            "logger": record.name,
            "event": attrs.get("event"),
            "message": mask(message) if "://" in message else message,
        }
        for key, value in attrs.items():
            if key not in _STANDARD and key not in data:
                t = type(value)
                data[key] = value if t is int or t is float or t is bool else _masked(value)
        if record.exc_info and record.exc_info[1] is not None:
            data["exception"] = mask(self.formatException(record.exc_info))
        return _ENCODE(data)


class JsonFileHandler(logging.Handler):
    """Appends formatted records to ``path``; reopens it when logrotate moves it.

    Records below ``immediate`` (INFO) only join a queue on the logging thread (no lock,
    no formatting there); a daemon thread formats and writes them within
    :data:`FLUSH_INTERVAL`.  A record at ``immediate`` or above first writes out the
    queued ones (so lines stay in order), then itself.  Each batch of lines is one
    ``write`` on an ``O_APPEND`` descriptor, so the processes of ``--processes N``
    appending to one file never split each other's lines.
    """

    def __init__(self, path: str, immediate: int = logging.INFO) -> None:
        super().__init__(logging.DEBUG)
        self.path = os.path.abspath(path)
        self.immediate = immediate
        self._fd = -1
        self._ident: tuple[int, int] | None = None
        self._open()
        self._pending: collections.deque[logging.LogRecord] = collections.deque()
        self._dirty = threading.Event()
        self._closed = False
        self._flusher = threading.Thread(target=self._flush_loop, name="lmq-log", daemon=True)
        self._flusher.start()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        st = os.fstat(self._fd)
        self._ident = (st.st_dev, st.st_ino)

    def _reopen_if_moved(self) -> None:
        """Under the lock: reopen the path if it is no longer the file we write to."""
        try:
            st = os.stat(self.path)
            moved = (st.st_dev, st.st_ino) != self._ident
        except FileNotFoundError:
            moved = True
        if moved and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._open()

    def handle(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.immediate or self._closed:
            return super().handle(record)
        if self.filters and not self.filter(record):
            return False
        self._pending.append(record)  # deque.append: atomic, no lock needed
        if not self._dirty.is_set():
            self._dirty.set()
        return True

    def _write(self, lines: list[str]) -> None:
        """Under the lock: append ``lines`` in one write (looping only on a short write)."""
        data = "".join(lines).encode("utf-8", "backslashreplace")
        while data and self._fd >= 0:
            n = os.write(self._fd, data)
            data = data[n:]

    def _formatted_pending(self) -> list[str]:
        """Under the lock: the queued records as lines, oldest first."""
        pending, fmt, lines = self._pending, self.format, []
        while pending:
            record = pending.popleft()
            try:
                lines.append(fmt(record) + "\n")
            except Exception:
                self.handleError(record)
        return lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            if self._fd < 0:  # closed
                return
            self._reopen_if_moved()
            lines = self._formatted_pending()
            lines.append(line)
            self._write(lines)
        except Exception:
            self.handleError(record)

    def _flush_loop(self) -> None:
        while not self._closed:
            self._dirty.wait()
            time.sleep(FLUSH_INTERVAL)
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # Handler.lock is set in createLock
            self._dirty.clear()
            if self._fd < 0 or not self._pending:
                return
            try:
                self._reopen_if_moved()  # first: lines queued after a move go to the new file
                self._write(self._formatted_pending())
            except OSError:
                pass  # a full disk must not stop the worker (those lines are lost)

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._fd >= 0:
                try:
                    self._write(self._formatted_pending())
                except OSError:
                    pass
                finally:
                    os.close(self._fd)
                    self._fd = -1
            self._closed = True
            self._dirty.set()  # let the flusher thread end
        super().close()


def add_json_log(path: str, logger_name: str = "lmq") -> logging.Handler:
    """Send every event of ``logger_name`` to ``path`` as JSON lines.

    The logger is set to DEBUG so the file gets the per-task events too; the console
    handler keeps its own level (see :func:`lmq.cli.common.setup_logging`), so ``-v``
    still decides what the terminal shows.
    """
    handler = JsonFileHandler(path)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    # The worker logs two records per task.  Looking up the caller's file and line (which
    # neither the JSON lines nor the console show) is a quarter of a record's cost: skip
    # it on the worker's own logger only, so the user's loggers keep their source lines.
    worker = logging.getLogger(f"{logger_name}.worker")
    setattr(worker, "findCaller", _no_caller)  # noqa: B010 (an instance override)
    return handler


def _no_caller(stack_info: bool = False, stacklevel: int = 1) -> tuple[str, int, str, str | None]:
    return ("(lmq)", 0, "(lmq)", None)
