"""The app the integration tests' `lmq worker` processes import (``--app lmq_itest_app``).

Every handler records what it does by appending one line ``EVENT KEY PID`` to the file
named by ``$LMQ_TEST_RECORD`` (one ``os.write`` on an ``O_APPEND`` descriptor, so lines
from many threads and processes never interleave).  The test reads the file afterwards
to check, for real, which task ran how often and in which process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import lmq

queue = lmq.Queue()  # the URL comes from the worker's --url / $LMQ_URL

NO_WAIT = lmq.Backoff(base=0.0)  # retries are ready at once (also under --burst)


def note(event: str, key: object, *extra: object) -> None:
    line = " ".join(map(str, (event, key, os.getpid(), *extra))).encode() + b"\n"
    fd = os.open(os.environ["LMQ_TEST_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def first_time(kind: str, key: object) -> bool:
    """True exactly once per (kind, key), across processes: an O_EXCL flag file."""
    path = os.path.join(os.environ["LMQ_TEST_FLAGS"], f"{kind}-{key}")
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True


@queue.task
def record(n: int) -> None:
    note("ran", n)


@queue.task
async def arecord(n: int) -> None:
    await asyncio.sleep(0)
    note("ran", n)


@queue.task(timeout=60, max_attempts=20)
async def stamped(n: int, seconds: float = 0.0) -> None:
    """Records ``stamped KEY PID START`` (the run's start, epoch seconds) when it ends."""
    started = time.time()
    if seconds:
        await asyncio.sleep(seconds)
    note("stamped", n, f"{started:.6f}")


@queue.task
def hello(name: str) -> None:
    note("hello", name)


@queue.task(timeout=60)
def sleep(n: int, seconds: float) -> None:
    note("start", n)
    time.sleep(seconds)
    note("end", n)


@queue.task(timeout=60, max_attempts=3)
def block_once(n: int, seconds: float = 30.0) -> None:
    """Blocks ``seconds`` on its first run only; later runs return at once."""
    note("start", n)
    if first_time("block_once", n):
        time.sleep(seconds)
    note("end", n)


@queue.task(timeout=60, max_attempts=3)
async def ablock_once(n: int, seconds: float = 30.0) -> None:
    note("start", n)
    if first_time("ablock_once", n):
        await asyncio.sleep(seconds)
    note("end", n)


@queue.task(max_attempts=2)
def suicide(n: int) -> None:
    """Kills the process running it, every time."""
    note("start", n)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # not reached


@queue.task(max_attempts=2, backoff=NO_WAIT)
def fail(n: int) -> None:
    note("start", n)
    raise ValueError(f"boom {n}")


@queue.task(timeout=1, max_attempts=2, backoff=NO_WAIT)
async def async_timeout(n: int) -> None:
    note("start", n)
    await asyncio.sleep(30)
    note("end", n)


@queue.task(timeout=1, max_attempts=1)
def sync_timeout(n: int) -> None:
    note("start", n)
    time.sleep(3)
    note("end", n)
