"""The app of the breaker, rate-limit and schedule tests (``lmq worker --app lmq_gates_app``).

The handlers call the test's flaky HTTP server (tests/integration/flaky_server.py, at
``$LMQ_TEST_FLAKY_URL``) with a minimal asyncio HTTP client, and append ``EVENT KEY PID
[EXTRA]`` lines to ``$LMQ_TEST_RECORD`` as tests/integration/lmq_itest_app.py does.

The policies come from the environment, so a soak variant can stretch them:

* ``LMQ_GATES_FAILURES`` (5), ``LMQ_GATES_COOLDOWN`` (1.0 s), ``LMQ_GATES_MAX_COOLDOWN``
  (2.0 s): the ``flaky-api`` breaker;
* ``LMQ_GATES_RATE`` (20): the ``rated-api`` rate limit, calls a second, burst 1;
* ``LMQ_GATES_SCHEDULE``: ``tick`` declares the every-second schedule ``tick``; ``hourly``
  declares ``hourly`` (every hour, for the declare-once check), ``half-hourly`` the same
  schedule every 30 minutes (a changed declaration); unset: none.

:func:`build` makes a Queue with all of this on any URL, so the test process enqueues
through the same declarations (the tasks get their ``breaker`` / ``rate_key`` columns).
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta
from urllib.parse import urlsplit

import lmq

BREAKER = "flaky-api"
RATE = "rated-api"


def note(event: str, key: object, *extra: object) -> None:
    line = " ".join(map(str, (event, key, os.getpid(), *extra))).encode() + b"\n"
    fd = os.open(os.environ["LMQ_TEST_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class ServiceError(Exception):
    """An HTTP error status; the breaker reads ``status_code`` (5xx counts, most 4xx not)."""

    def __init__(self, status: int, path: str) -> None:
        super().__init__(f"HTTP {status} from {path}")
        self.status_code = status


async def http_get(path: str, timeout: float = 10.0) -> int:
    """GET ``$LMQ_TEST_FLAKY_URL`` + ``path`` on a fresh connection; the status code.

    Headers: ``X-Worker`` (this pid) and ``X-Sent`` (when the call started here, epoch
    seconds: the start a rate limit governs, free of the server's own scheduling)."""
    parts = urlsplit(os.environ["LMQ_TEST_FLAKY_URL"])
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    async def call() -> int:
        sent = time.time()  # the call's start, in the worker (the server records it too)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nX-Worker: {os.getpid()}\r\n"
                f"X-Sent: {sent:.6f}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            await reader.read()  # the body, up to the server's close
            return status
        finally:
            writer.close()

    return await asyncio.wait_for(call(), timeout)


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def build(url: str | None = None) -> lmq.Queue:
    """A Queue on ``url`` (default: ``$LMQ_URL``) with this app's policies and handlers."""
    queue = lmq.Queue(url)
    queue.breaker(
        BREAKER,
        failures=int(_env_float("LMQ_GATES_FAILURES", 5)),
        cooldown=_env_float("LMQ_GATES_COOLDOWN", 1.0),
        max_cooldown=_env_float("LMQ_GATES_MAX_COOLDOWN", 2.0),
    )
    queue.rate_limit(RATE, int(_env_float("LMQ_GATES_RATE", 20)), per=1.0, burst=1)

    # max_attempts is well above the probes an outage of a few seconds can fail, so an
    # outage alone never dead-letters a task; the quick backoff keeps the test short
    @queue.task(
        breaker=BREAKER, max_attempts=25, timeout=15, backoff=lmq.Backoff(base=0.2, cap=1.0)
    )
    async def call_flaky(n: int) -> None:
        status = await http_get(f"/flaky/{n}")
        if status != 200:
            raise ServiceError(status, f"/flaky/{n}")
        note("done", n)

    # one attempt: a rate-limited task must wait its turn, never fail
    @queue.task(rate_limit=RATE, max_attempts=1, timeout=30)
    async def call_rated(n: int) -> None:
        status = await http_get(f"/rated/{n}")
        if status != 200:
            raise ServiceError(status, f"/rated/{n}")
        note("rated", n)

    @queue.task(max_attempts=1)
    async def tick() -> None:
        note("tick", "-", f"{time.time():.6f}")

    @queue.task(max_attempts=1)
    async def hourly() -> None:
        note("hourly", "-", f"{time.time():.6f}")

    which = os.environ.get("LMQ_GATES_SCHEDULE", "")
    if which == "tick":
        queue.schedule("tick", every=timedelta(seconds=1))
    elif which == "hourly":
        queue.schedule("hourly", every=timedelta(hours=1), payload={})
    elif which == "half-hourly":  # the same schedule, its timing changed
        queue.schedule("hourly", every=timedelta(minutes=30), payload={})
    return queue


queue = build()
