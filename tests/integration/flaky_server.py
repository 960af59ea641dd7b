"""A local HTTP service that is healthy, then fails with 503 for a while, then is healthy.

It runs an asyncio server on 127.0.0.1 (a free port) in a thread of the test process, so
the ``lmq worker`` processes under test call it over real sockets.  Every request's
arrival time (``time.time()``, the workers' clock too: same host), the time the caller
says it started the call (``X-Sent``), its path, the phase it arrived in and the status it
got are recorded in :attr:`FlakyServer.calls`.  (The arrival is stamped when this
thread's event loop reads the request, so a busy test process can bunch arrivals; the
caller's own stamp cannot be bunched that way.)

Phases: ``healthy`` (200) until ``fail_after`` requests have been answered, then
``failing`` (503) for ``outage`` seconds from the first failing request, then
``recovered`` (200) for good.  ``fail_after=None`` never fails (a plain recording server,
for the rate-limit test).  ``delay`` seconds of service time per request make calls
overlap as real ones do.  The server speaks just enough HTTP/1.1 for a GET with
keep-alive or ``Connection: close``.

The second half holds what the three gate tests (test_breaker_outage.py,
test_rate_limit.py, test_schedules_multi.py) share: starting ``lmq worker --app
lmq_gates_app`` processes with a JSON log file each, reading those logs back, sliding
windows, and reporting figures (printed; also appended as JSON lines to
``$LMQ_TEST_FIGURES`` when that names a file).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import json
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .conftest import Harness, Proc

GATES_APP = "lmq_gates_app"

HEALTHY, FAILING, RECOVERED = "healthy", "failing", "recovered"


@dataclasses.dataclass(frozen=True)
class Call:
    at: float  # arrival, epoch seconds
    path: str
    phase: str
    status: int
    worker: str  # the X-Worker header (the calling process's pid), or ""
    sent: float | None = None  # the X-Sent header: when the caller started the call

    @property
    def key(self) -> str:
        """The last path segment (the task's payload id)."""
        return self.path.rsplit("/", 1)[-1]


class FlakyServer:
    def __init__(
        self, fail_after: int | None = None, outage: float = 3.0, delay: float = 0.0
    ) -> None:
        self.fail_after = fail_after
        self.outage = outage
        self.delay = delay
        self.phase = HEALTHY
        self.fail_started: float | None = None
        self.fail_ended: float | None = None
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        self._answered = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    # --- phases --------------------------------------------------------------------------

    def _phase_at(self, now: float) -> str:
        if (
            self.phase == HEALTHY
            and self.fail_after is not None
            and self._answered >= self.fail_after
        ):
            self.phase = FAILING
            self.fail_started = now
        if (
            self.phase == FAILING
            and self.fail_started is not None
            and now >= self.fail_started + self.outage
        ):
            self.phase = RECOVERED
            self.fail_ended = self.fail_started + self.outage
        return self.phase

    # --- HTTP ----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                at = time.time()
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                path = parts[1] if len(parts) > 1 else "/"
                headers = {}
                for line in lines[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                with self._lock:
                    phase = self._phase_at(at)
                    status = 503 if phase == FAILING else 200
                    sent = float(headers["x-sent"]) if "x-sent" in headers else None
                    self._calls.append(
                        Call(at, path, phase, status, headers.get("x-worker", ""), sent)
                    )
                if self.delay:
                    await asyncio.sleep(self.delay)
                with self._lock:
                    self._answered += 1
                body = b"ok\n" if status == 200 else b"unavailable\n"
                close = headers.get("connection", "").lower() == "close"
                writer.write(
                    (
                        f"HTTP/1.1 {status} {'OK' if status == 200 else 'Service Unavailable'}\r\n"
                        f"Content-Length: {len(body)}\r\n"
                        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
                    ).encode()
                    + body
                )
                await writer.drain()
                if close:
                    return
        except ConnectionError:
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def start() -> None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", 0, backlog=1024, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        loop.run_until_complete(start())
        try:
            loop.run_forever()
        finally:
            assert self._server is not None
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            pending = asyncio.all_tasks(loop)
            for t in pending:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def start(self) -> FlakyServer:
        self._thread = threading.Thread(target=self._run, name="flaky-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the flaky server did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None


@contextlib.contextmanager
def flaky_server(
    fail_after: int | None = None, outage: float = 3.0, delay: float = 0.0
) -> Iterator[FlakyServer]:
    server = FlakyServer(fail_after, outage, delay).start()
    try:
        yield server
    finally:
        server.stop()


# --- the gate tests' shared helpers ------------------------------------------------------


def start_workers(
    h: Harness, count: int, env: dict[str, str], *args: str, name: str = "worker"
) -> tuple[list[Proc], list[Path]]:
    """``count`` ``lmq worker --app lmq_gates_app`` processes, each with its own log file."""
    procs, logs = [], []
    for i in range(count):
        log = h.dir / f"{name}-{i + 1}.jsonl"
        argv = [sys.executable, "-m", "lmq", "worker", "--app", GATES_APP]
        procs.append(h.start([*argv, "--log-file", str(log), *args], name, env=env))
        logs.append(log)
    return procs, logs


def gates_env(h: Harness, **extra: str) -> dict[str, str]:
    env = dict(h.env)
    env.update(extra)
    return env


def stop_all(procs: Sequence[Proc], timeout: float = 30) -> None:
    """SIGTERM every process at once, then each must exit 0 with a clean stderr."""
    for p in procs:
        if p.poll() is None:
            p.signal(signal.SIGTERM)
    for p in procs:
        code = p.wait(timeout)
        assert code == 0, f"{p.name} exited {code}:\n{p.stderr()[-3000:]}"
        p.assert_clean()


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def events(paths: Iterable[Path], *names: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``paths`` (all, or those whose event is one of ``names``),
    each with ``t`` (epoch seconds; the log has milliseconds) and ``file``, by time."""
    out = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            e = json.loads(line)
            if names and e.get("event") not in names:
                continue
            e["t"] = epoch(e["ts"])
            e["file"] = path.name
            out.append(e)
    out.sort(key=lambda e: e["t"])
    return out


def max_in_window(times: Sequence[float], width: float) -> int:
    """The most of ``times`` in any half-open window ``[t, t + width)``."""
    ts = sorted(times)
    best = 0
    for i, t in enumerate(ts):
        best = max(best, bisect.bisect_left(ts, t + width) - i)
    return best


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def report(test: str, backend: str, figures: dict[str, Any]) -> None:
    """Print the figures (``pytest -s`` shows them) and append them to $LMQ_TEST_FIGURES."""
    shown = ", ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    )
    print(f"\n[figures] {test} [{backend}]: {shown}")
    path = os.environ.get("LMQ_TEST_FIGURES")
    if path:
        line = json.dumps({"test": test, "backend": backend, "at": time.time(), **figures})
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
