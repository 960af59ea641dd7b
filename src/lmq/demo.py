"""``lmq demo``: the seed's bulk product import, done the queue's way, in under a minute.

The story: a web request starts a "bulk product import" that means 5,000 calls to a slow
external API.  Made one after another inside the request (about 100 ms each) that is
over eight minutes, and the request dies long before.  Here the request only enqueues
5,000 tasks in one ``enqueue_many`` (a few tens of milliseconds) and a worker process
makes the calls, many at a time, retrying what fails.

The demo starts a fake external API on 127.0.0.1 (a free port) that answers every call
after about 100 ms, fails with 503 for a few seconds (the worker backs off and retries),
and rejects a few permanently bad records with 422 (the task turns those into
``lmq.Discard``: straight to the dead letters, no retries).  It shows the batch's
progress live, then a summary and the commands to look around the database it leaves.

This module is also the demo worker's app (``lmq worker --app lmq.demo``): it defines
the queue and the ``import_product`` task, which reads the API's address from
``$LMQ_DEMO_API``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import Backoff, Discard, Queue
from .models import DeadFilter
from .url import mask, parse_url

queue = Queue(os.environ.get("LMQ_DEMO_URL", "sqlite:///lmq-demo.db"))

DEFAULT_URL = "sqlite:///lmq-demo.db"
API_ENV = "LMQ_DEMO_API"  # host:port of the fake external API, for the worker's task
CALL_SECONDS = (0.08, 0.12)  # how long the API takes to answer a call
OUTAGE = (1.0, 4.0)  # seconds after its first call during which the API answers 503
BAD_EVERY = 1000  # product ids 500, 1500, 2500… are permanently bad records (422)
BAD_OFFSET = 500


class ServiceUnavailable(Exception):
    """The external API answered 503: worth retrying later (with backoff)."""


class ApiError(Exception):
    """The external API answered something unexpected."""


def is_bad_record(product_id: int) -> bool:
    return product_id % BAD_EVERY == BAD_OFFSET


# --- the task (runs in the worker process) ---------------------------------------------------


@queue.task(max_attempts=10, timeout=10, backoff=Backoff(base=0.25, cap=2.0))
async def import_product(product_id: int, sku: str) -> None:
    """Push one product to the external API: 2xx done, 503 retry, 4xx dead at once."""
    status, body = await call_api(os.environ.get(API_ENV, "127.0.0.1:8080"), product_id, sku)
    if 200 <= status < 300:
        return
    if status == 503:
        raise ServiceUnavailable(f"the API answered 503 Service Unavailable for {sku}")
    if 400 <= status < 500:
        # Retrying a rejected record cannot help: straight to the dead letters.
        raise Discard(f"the API rejected {sku}: {status} {body}")
    raise ApiError(f"the API answered {status} for {sku}: {body}")


async def call_api(address: str, product_id: int, sku: str) -> tuple[int, str]:
    """One HTTP/1.1 ``PUT /products/ID`` with the stdlib's asyncio streams."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        body = json.dumps({"sku": sku}).encode()
        writer.write(
            f"PUT /products/{product_id} HTTP/1.1\r\nHost: {address}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        status_line = await reader.readline()
        while (await reader.readline()).strip():  # headers
            pass
        text = (await reader.read()).decode(errors="replace").strip()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ApiError(f"not an HTTP answer: {status_line[:60]!r}")
    return int(parts[1]), text


# --- the fake external API (runs in the demo process, on a thread) ---------------------------


@dataclass
class FakeApi:
    """``PUT /products/ID``: 200 after ~100 ms; 503 during the outage; 422 for bad records.

    It also counts what it answered, which is how the demo knows how many tasks are
    waiting to retry (a 503 answered, no final answer yet)."""

    host: str = "127.0.0.1"
    port: int = 0
    calls: int = 0
    unavailable: int = 0  # 503s answered
    retrying: set[int] = field(default_factory=set)  # ids answered 503, no final answer yet
    retried: set[int] = field(default_factory=set)  # ids that ever got a 503
    first_call: float | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _stop: asyncio.Event | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def outage(self, now: float | None = None) -> bool:
        if self.first_call is None:
            return False
        since = (time.monotonic() if now is None else now) - self.first_call
        return OUTAGE[0] <= since < OUTAGE[1]

    def start(self) -> FakeApi:
        ready = threading.Event()
        failed: list[BaseException] = []

        async def serve() -> None:
            self._stop = asyncio.Event()
            try:
                server = await asyncio.start_server(self._handle, self.host, 0, backlog=1024)
            except OSError as exc:
                failed.append(exc)
                ready.set()
                return
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await self._stop.wait()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(serve())
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name="lmq-demo-api", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failed:
            raise failed[0]
        return self

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readline()
            length = 0
            while line := (await reader.readline()).strip():
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip() or 0)
            body = await reader.readexactly(length) if length else b""
            status, text = self._answer(request, body)
            if status == 503:
                await asyncio.sleep(0.01)  # an overloaded backend fails fast
            else:
                await asyncio.sleep(random.uniform(*CALL_SECONDS))
            data = text.encode()
            reason = {200: "OK", 404: "Not Found", 422: "Unprocessable Entity"}.get(
                status, "Service Unavailable"
            )
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _answer(self, request: bytes, body: bytes) -> tuple[int, str]:
        now = time.monotonic()
        if self.first_call is None:
            self.first_call = now
        self.calls += 1
        parts = request.decode(errors="replace").split()
        path = parts[1] if len(parts) > 1 else ""
        if not path.startswith("/products/") or not path[10:].isdigit():
            return 404, "no such endpoint"
        product_id = int(path[10:])
        if self.outage(now):
            self.unavailable += 1
            self.retrying.add(product_id)
            self.retried.add(product_id)
            return 503, "upstream overloaded, try again later"
        self.retrying.discard(product_id)
        if is_bad_record(product_id):
            try:
                sku = json.loads(body or b"{}").get("sku", "?")
            except ValueError:
                sku = "?"
            return 422, f"invalid SKU '{sku}': no such category"
        return 200, "saved"


# --- the demo ---------------------------------------------------------------------------------


def run_demo(url: str, count: int, concurrency: int) -> int:
    from rich.console import Console

    console = Console(highlight=False)
    parsed = parse_url(url)
    shown_url = mask(url)
    fresh = ""
    log_path = Path(parsed.path + ".log") if parsed.kind == "sqlite" else Path("lmq-demo.log")
    if parsed.kind == "sqlite":
        old = [Path(parsed.path + s) for s in ("", "-wal", "-shm")]
        if any(p.exists() for p in old):
            fresh = f" (the previous run's {parsed.path} was removed: a fresh start)"
        for p in old:
            p.unlink(missing_ok=True)
    else:
        fresh = " (beside whatever is there already: the demo's batch counts only its own)"
    log_path.unlink(missing_ok=True)
    queue.use_url(url)
    queue.migrate()  # SQLite would create its tables on first use; not part of the timing

    console.print(
        f"[bold]lmq demo[/]: a bulk product import of {count:,} calls to a slow external API, "
        f"queued in {shown_url}{fresh}"
    )
    api = FakeApi().start()
    try:
        return _story(console, api, url, count, concurrency, log_path)
    finally:
        api.close()
        queue.close()


def _story(
    console: Any, api: FakeApi, url: str, count: int, concurrency: int, log_path: Path
) -> int:
    lo, hi = CALL_SECONDS
    console.print(
        f"   the fake API on {api.address} takes ~{(lo + hi) / 2 * 1000:.0f} ms a call, answers "
        f"503 for {OUTAGE[1] - OUTAGE[0]:g} s after its first second, and rejects "
        f"{sum(1 for i in range(1, count + 1) if is_bad_record(i))} bad records with 422"
    )
    console.print(
        f"   made in the web request, one after another, the calls would take "
        f"{count * (lo + hi) / 2 / 60:.0f} minutes"
    )

    batch = f"demo-import-{time.strftime('%Y%m%d-%H%M%S')}"
    items = [
        ("import_product", {"product_id": i, "sku": f"SKU-{i:05d}"}) for i in range(1, count + 1)
    ]
    t0 = time.perf_counter()
    queue.enqueue_many(items, batch=batch)
    took = time.perf_counter() - t0
    console.print(
        f"1. the request enqueued {count:,} tasks (batch {batch}) in one enqueue_many in "
        f"[bold]{took * 1000:.0f} ms[/] and returned; no API call ran in it"
    )
    console.print(
        f"2. a worker process makes the calls, {concurrency} at a time: "
        f"lmq worker --app lmq.demo -c {concurrency}"
    )
    console_log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmq", "worker", "--app", "lmq.demo", "--url", url,
         "-c", str(concurrency), "-q", "--grace", "5", "--log-file", str(log_path)],
        env={**os.environ, API_ENV: api.address},
        stdin=subprocess.DEVNULL,
        stdout=console_log,
        stderr=console_log,
    )  # fmt: skip
    start = time.perf_counter()
    try:
        info = _progress(console, api, batch, count, proc, console_log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # graceful: finishes, acknowledges, exits 0
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if info is None:
        return 1
    elapsed = time.perf_counter() - start
    console.print(
        f"3. imported in [bold]{elapsed:.1f} s[/]: [green]{info.done:,} done[/], "
        f"[red]{info.dead} dead[/] (the bad records, discarded at once), "
        f"{len(api.retried):,} retried after the API's 503s ({api.unavailable:,} retries with "
        f"backoff), {info.pending + info.processing} left; {count / elapsed:,.0f} tasks/s"
    )
    if info.completed is not None:
        console.print(f"   the worker marked batch {batch} complete")
    console.print(f"   every failure and dead letter is in {log_path} (one JSON object a line)")
    _next_steps(console, url, batch)
    return 0


def _progress(
    console: Any, api: FakeApi, batch: str, count: int, proc: subprocess.Popen[bytes],
    console_log: IO[bytes],
) -> Any:  # fmt: skip
    """Show the batch's progress until every member is done or dead; its BatchInfo, or
    None if the worker exited or nothing moved for a long time."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    samples: list[tuple[float, int]] = []
    last_move, last_finished = time.monotonic(), -1
    with Progress(
        TextColumn("[bold]import"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=8,
    ) as progress:
        bar = progress.add_task("import", total=count, detail="")
        while True:
            info = queue.batch(batch)
            now = time.monotonic()
            finished = info.done + info.dead + info.cancelled
            samples.append((now, finished))
            while len(samples) > 2 and samples[0][0] < now - 1.0:
                samples.pop(0)
            span = samples[-1][0] - samples[0][0]
            rate = (samples[-1][1] - samples[0][1]) / span if span > 0 else 0.0
            api_state = " · [red]API answering 503[/]" if api.outage() else ""
            progress.update(
                bar,
                completed=finished,
                detail=f"[green]done {info.done:,}[/] · [yellow]retrying "
                f"{len(api.retrying):,}[/] · [red]dead {info.dead}[/] · {rate:,.0f}/s{api_state}",
            )
            if finished >= info.total:
                break
            if finished != last_finished:
                last_finished, last_move = finished, now
            if proc.poll() is not None or now - last_move > 30:
                progress.stop()
                why = (
                    f"the worker exited early (status {proc.returncode})"
                    if proc.poll() is not None
                    else "nothing finished for 30 s; stopping the worker"
                )
                console.print(f"[red]{why}[/]; its output:")
                console_log.seek(0)
                tail = console_log.read().decode(errors="replace")[-3000:]
                console.print(tail or "(none)", markup=False)
                return None
            time.sleep(0.2)
    deadline = time.monotonic() + 2.5  # the worker settles batches about once a second
    while info.completed is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        info = queue.batch(batch)
    return info


def _next_steps(console: Any, url: str, batch: str) -> None:
    groups = queue.backend.dead_groups(DeadFilter(limit=1))  # the largest group
    group = groups[0].fingerprint if groups else "FINGERPRINT"
    dead = queue.dead_letters(limit=1)
    dead_id = dead[0].id if dead else "ID"
    lmq = _lmq_command()
    env = f"LMQ_URL={mask(url)}"
    console.print(f"\nNext, try (the demo's queue is left in {mask(url)}):")
    lines = [
        (f"export {env}", "the commands below use it (or give each --url)"),
        (f"{lmq} status", "queues, workers, the oldest ready task's age"),
        (f"{lmq} batches show {batch}", "the import's progress and rate"),
        (f"{lmq} dead list --groups", "the failures, one line per kind of error"),
        (f"{lmq} dead show {dead_id}", "one dead letter: payload, error, traceback"),
        (
            f"{lmq} dead requeue --group {group}",
            "put that group back once the records are fixed",
        ),
        (f"{lmq} tasks --status done --limit 5", "what the worker finished"),
    ]
    width = max(len(cmd) for cmd, _ in lines)
    for cmd, why in lines:
        console.print(f"  {cmd.ljust(width)}  [dim]# {why}[/]", soft_wrap=True)


def _lmq_command() -> str:
    """How the user runs lmq again: ``lmq`` if that is what ran and it is on PATH, else
    the script's path, or ``python -m lmq`` after ``python -m lmq demo``."""
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.basename(script) != "lmq":
        return f"{os.path.basename(sys.executable)} -m lmq"
    found = shutil.which("lmq")
    if found and os.path.abspath(found) == script:
        return "lmq"
    return os.path.relpath(script)
