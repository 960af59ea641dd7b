"""The SqliteHuey app for the same workloads (imported by the bench and huey_runner.py).

Storage: huey's ``SqliteStorage`` (WAL, as SqliteHuey ships it) with
``synchronous=NORMAL``, the durability lmq's SQLite backend uses; SqliteHuey's own
choices are FULL (default) or OFF (``fsync=False``).  ``results=False``: no result rows.

Completion is counted in shared memory (a ``multiprocessing.Value`` and its lock, so
process workers count too); the runner waits for the count to reach its target.
"""

from __future__ import annotations

import http.client
import multiprocessing
import os
import threading
import time
import urllib.parse

from huey import SqliteHuey
from huey.storage import SqliteStorage


class NormalSyncStorage(SqliteStorage):
    def _create_connection(self):  # type: ignore[no-untyped-def]
        conn = super()._create_connection()
        conn.execute("pragma synchronous=NORMAL")
        return conn


def make_storage(path: str) -> NormalSyncStorage:
    return NormalSyncStorage(name="bench", filename=path)


huey = SqliteHuey(
    "bench",
    results=False,
    storage_class=NormalSyncStorage,
    filename=os.environ.get("BENCH_HUEY_DB", "huey-bench.db"),
)

_STATS_DIR = os.environ.get("BENCH_STATS_DIR", ".")
done = multiprocessing.Value("q", 0)  # tasks finished, over all workers
first = multiprocessing.RawValue("d", 0.0)  # first task's start (epoch seconds)
last = multiprocessing.RawValue("d", 0.0)  # last task's end
errors = multiprocessing.RawValue("q", 0)  # tasks that raised (counted in `done` too)
_local = threading.local()


def use_db(path: str) -> None:
    """Point this process's huey at another database file (the producer side)."""
    huey.storage.close()
    huey.storage = make_storage(path)


def _count(start: float, end: float, failed: bool = False) -> None:
    with done.get_lock():
        done.value += 1
        errors.value += failed
        if first.value == 0.0 or start < first.value:
            first.value = start
        last.value = max(last.value, end)


@huey.task()
def noop(n: int) -> None:
    now = time.time()
    _count(now, now)


@huey.task()
def pickup(t: float) -> None:
    latency = time.time() - t
    with open(os.path.join(_STATS_DIR, f"pickup-{os.getpid()}.txt"), "a") as f:
        f.write(f"{latency!r}\n")


@huey.task()
def http_get(url: str) -> None:
    """One GET on this thread's keep-alive connection (huey's threads are sync)."""
    start = time.time()
    failed = True
    try:
        _get(url)
        failed = False
    finally:
        _count(start, time.time(), failed)


def _get(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = http.client.HTTPConnection(parts.netloc, timeout=30)
    try:
        conn.request("GET", parts.path or "/")
        resp = conn.getresponse()
        resp.read()
    except (OSError, http.client.HTTPException):
        conn.close()  # reconnect once: the server may have closed an idle connection
        conn.request("GET", parts.path or "/")
        resp = conn.getresponse()
        resp.read()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}")
