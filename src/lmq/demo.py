"""``lmq demo``: the seed's bulk product import, done the queue's way, in under a minute.

The story: a web request starts a "bulk product import" that means 5,000 calls to a slow
external API.  Made one after another inside the request (about 100 ms each) that is
over eight minutes, and the request dies long before.  Here the request only enqueues
5,000 tasks in one ``enqueue_many`` (a few tens of milliseconds) and a worker process
makes the calls, many at a time, retrying what fails.

The demo starts a fake external API on 127.0.0.1 (a free port) that answers every call
after about 100 ms, fails with 503 for a few seconds, and rejects a few permanently bad
records with 422 (the task turns those into ``lmq.Discard``: straight to the dead
letters, no retries).  The task goes through the circuit breaker ``fake-api``: a few
503s in a row open it, and while it is open the worker claims none of the import's
tasks (they keep their attempts) and only lets one probe call through after each
cool-down; the first probe that succeeds closes it.  The demo prints each transition
as the worker logs it, shows the batch's progress live, then a summary (how many calls
the breaker spared the failing API) and the commands to look around the database it
leaves.

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
BREAKER = "fake-api"
# A low threshold and short cool-downs, so the 3 s outage is seen through in seconds; a
# real API would get something like failures=5, cooldown=30, max_cooldown=600.
BREAKER_FAILURES = 5
BREAKER_COOLDOWN = 0.5
BREAKER_MAX_COOLDOWN = 1.0

queue.breaker(
    BREAKER,
    failures=BREAKER_FAILURES,
    cooldown=BREAKER_COOLDOWN,
    max_cooldown=BREAKER_MAX_COOLDOWN,
)


class ServiceUnavailable(Exception):
    """The external API answered 503: worth retrying later (with backoff); it counts
    towards opening the breaker (a 5xx status)."""

    status_code = 503


class ApiError(Exception):
    """The external API answered something unexpected."""


def is_bad_record(product_id: int) -> bool:
    return product_id % BAD_EVERY == BAD_OFFSET


# --- the task (runs in the worker process) ---------------------------------------------------


@queue.task(max_attempts=10, timeout=10, backoff=Backoff(base=0.25, cap=2.0), breaker=BREAKER)
async def import_product(product_id: int, sku: str) -> None:
    """Push one product to the external API: 2xx done, 503 retry, 4xx dead at once.

    A 503 counts towards the ``fake-api`` breaker; a ``Discard`` (the 422s) does not: the
    API answered, it is the record that is bad."""
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
    answered: list[tuple[float, int]] = field(default_factory=list)  # (time.time(), status)
    retrying: set[int] = field(default_factory=set)  # ids answered 503, no final answer yet
    retried: set[int] = field(default_factory=set)  # ids that ever got a 503
    first_call: float | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _stop: asyncio.Event | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def calls_between(self, start: float, end: float) -> int:
        """Calls answered (``time.time()``) in ``[start, end)``."""
        return sum(1 for at, _ in self.answered if start <= at < end)

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
            self.answered.append((time.time(), status))
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


# --- watching the breaker (the worker's JSON log) --------------------------------------------


@dataclass
class BreakerWatch:
    """Follows the worker's ``--log-file`` for the breaker's transitions, prints each as it
    happens and keeps them, so the summary can say how long the breaker was open and how
    many calls the API saw meanwhile."""

    path: Path
    name: str = BREAKER
    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    _offset: int = 0
    _partial: str = ""

    def poll(self) -> list[str]:
        """New transitions since the last poll, as lines to print."""
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                f.seek(self._offset)
                chunk = f.read()
                self._offset = f.tell()
        except FileNotFoundError:
            return []
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next poll
        shown = []
        for line in lines:
            if '"breaker_' not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            event = str(rec.get("event") or "")
            if not event.startswith("breaker_") or rec.get("breaker") != self.name:
                continue
            at = _epoch(rec.get("ts"))
            self.events.append((at, event, rec))
            shown.append(self._describe(at, event, rec))
        return shown

    def _describe(self, at: float, event: str, rec: dict[str, Any]) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"
        cooldown = rec.get("cooldown")
        cd = f"{float(cooldown):g} s" if isinstance(cooldown, int | float) else "its cool-down"
        if event == "breaker_opened":
            n = rec.get("failures")
            after = f"after {n} failures in a row" if n else "after repeated failures"
            return (
                f"   {stamp} [red]breaker {self.name} opened[/] {after}: the worker claims "
                f"none of its tasks for {cd} (they keep their attempts)"
            )
        if event == "breaker_half_open":
            return f"   {stamp} [yellow]breaker {self.name} half-open[/]: one probe call"
        if event == "breaker_reopened":
            return (
                f"   {stamp} [red]breaker {self.name} re-opened[/]: the probe failed, "
                f"next probe in {cd}"
            )
        if event == "breaker_closed":
            return (
                f"   {stamp} [green]breaker {self.name} closed[/]: the probe succeeded, the "
                "worker claims its tasks again"
            )
        return f"   {stamp} breaker {self.name}: {event}"

    def opened(self) -> int:
        return sum(1 for _, e, _ in self.events if e == "breaker_opened")

    def probes(self) -> int:
        return sum(1 for _, e, _ in self.events if e == "breaker_half_open")

    def closed(self) -> bool:
        return any(e == "breaker_closed" for _, e, _ in self.events)

    def open_spans(self, end: float) -> list[tuple[float, float]]:
        """``(opened, closed)`` for each time it was open or half-open (to ``end`` if it
        did not close)."""
        spans, start = [], None
        for at, event, _ in self.events:
            if event == "breaker_opened" and start is None:
                start = at
            elif event == "breaker_closed" and start is not None:
                spans.append((start, at))
                start = None
        if start is not None:
            spans.append((start, end))
        return spans


def _epoch(ts: Any) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(ts)).timestamp()
    except ValueError:
        return time.time()


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
    console.print(
        f"   the task goes through the circuit breaker {BREAKER!r}: {BREAKER_FAILURES} failures "
        f"in a row open it; a probe call after {BREAKER_COOLDOWN:g} s (then up to "
        f"{BREAKER_MAX_COOLDOWN:g} s) tests the API; one success closes it"
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
    watch = BreakerWatch(log_path)
    try:
        info = _progress(console, api, batch, count, proc, console_log, watch)
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
    _breaker_summary(console, api, watch, start_wall=time.time() - elapsed)
    console.print(f"   every failure and dead letter is in {log_path} (one JSON object a line)")
    _next_steps(console, url, batch)
    return 0


def _breaker_summary(console: Any, api: FakeApi, watch: BreakerWatch, start_wall: float) -> None:
    """How long the breaker was open, what the API saw meanwhile, what it spared the API,
    and that no task died of the outage."""
    for line in watch.poll():  # a transition logged after the last progress poll
        console.print(line)
    now = time.time()
    spans = watch.open_spans(now)
    dead_by_outage = _dead_of_outage()
    died = (
        "[green]no task died of the outage[/] (the dead ones are the bad records)"
        if dead_by_outage == 0
        else f"[red]{dead_by_outage} task(s) died of the outage[/]"
    )
    if not spans:
        console.print(f"   the breaker {BREAKER!r} never opened; {died}")
        return
    open_for = sum(b - a for a, b in spans)
    seen = sum(api.calls_between(a, b) for a, b in spans)
    probes = watch.probes()
    # What the breaker spared the API: the calls the worker would have made while it was
    # open at the rate it made them while the API was healthy (before the outage), less
    # those the API did see meanwhile (probes, and calls already under way when it opened).
    first = api.answered[0][0] if api.answered else start_wall
    healthy = [at for at, status in api.answered if at < first + OUTAGE[0] and status != 503]
    rate = len(healthy) / OUTAGE[0] if healthy else 0.0
    saved = max(0, round(rate * open_for) - seen)
    console.print(
        f"4. the breaker {BREAKER!r} opened {_times(watch.opened())} and was open for "
        f"{open_for:.1f} s in all; meanwhile the API saw {seen:,} call(s): {probes} probe(s) "
        f"and the calls already under way when it opened"
    )
    console.print(
        f"   it saved about [bold]{saved:,} calls[/] to the failing API (at the "
        f"{rate:,.0f} calls/s the worker made before the outage); "
        + died
        + (", and it closed again" if watch.closed() else "; [red]it did not close[/]")
    )


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def _dead_of_outage() -> int:
    """Dead letters whose error is the API's 503 (the breaker should leave none)."""
    return len(queue.dead_letters(error_contains="503 Service Unavailable", limit=None))


def _progress(
    console: Any, api: FakeApi, batch: str, count: int, proc: subprocess.Popen[bytes],
    console_log: IO[bytes], watch: BreakerWatch,
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
            for line in watch.poll():
                progress.console.print(line)
            api_state = " · [red]API answering 503[/]" if api.outage() else ""
            state = next((b.state for b in queue.breakers() if b.name == BREAKER), "closed")
            if state != "closed":
                api_state += f" · [red]breaker {state.replace('_', '-')}[/]"
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
