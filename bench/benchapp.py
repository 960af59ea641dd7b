"""The lmq app the benchmark's workers import: ``lmq worker --app benchapp``.

Handlers record, per process, the wall-clock time of the first and the last task they
ran; the figures are written to ``$BENCH_STATS_DIR/span-<pid>.json`` when the worker
exits.  That costs a ``time.time()`` and two list stores per task.  The pickup handler
appends its latency to ``$BENCH_STATS_DIR/pickup-<pid>.txt``.  aiohttp is imported only
when ``$BENCH_WORKLOAD`` is ``http``, so it does not inflate the no-op worker's RSS.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from typing import Any

import lmq

queue = lmq.Queue()

_STATS_DIR = os.environ.get("BENCH_STATS_DIR", ".")
_span = [0.0, 0.0]  # first task's start, last task's end (epoch seconds)
_http: dict[str, Any] = {}  # the shared aiohttp.ClientSession, made on first use
_now = time.time

if os.environ.get("BENCH_WORKLOAD") == "http":
    import aiohttp
else:
    aiohttp = None


@queue.task
async def noop_async(n: int) -> None:
    now = _now()
    if not _span[0]:
        _span[0] = now
    _span[1] = now


@queue.task
def noop_sync(n: int) -> None:
    now = _now()
    if not _span[0]:
        _span[0] = now
    _span[1] = now


@queue.task
async def pickup(t: float) -> None:
    latency = _now() - t
    with open(os.path.join(_STATS_DIR, f"pickup-{os.getpid()}.txt"), "a") as f:
        f.write(f"{latency!r}\n")


@queue.task
async def http_get(url: str) -> None:
    start = _now()
    if not _span[0]:
        _span[0] = start
    session = _http.get("session")
    if session is None:
        assert aiohttp is not None, "set BENCH_WORKLOAD=http"
        session = _http["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000)
        )
    async with session.get(url) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
    _span[1] = max(_span[1], _now())


def _write_span() -> None:
    if _span[0]:
        path = os.path.join(_STATS_DIR, f"span-{os.getpid()}.json")
        with open(path, "w") as f:
            json.dump({"pid": os.getpid(), "first": _span[0], "last": _span[1]}, f)


atexit.register(_write_span)
