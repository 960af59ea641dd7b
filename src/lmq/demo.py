"""``lmq demo``: a bulk import of slow API calls, enqueued at once and drained by a worker.

This module is also the demo's app (``--app lmq.demo``): it defines the queue and the
``import_product`` task that the demo's worker process runs.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import Backoff, Discard, Queue
from .url import parse_url

queue = Queue(os.environ.get("LMQ_DEMO_URL", "sqlite:///lmq-demo.db"))

FLAKY_RATE = 0.03  # share of calls that fail once with a "503" and succeed on retry
BAD_EVERY = 500  # every 500th product is a permanently bad record


class ServiceUnavailable(Exception):
    """What the fake external API raises now and then (a 503)."""


@queue.task(max_attempts=4, timeout=10, backoff=Backoff(base=0.2, cap=1.0))
async def import_product(product_id: int, sku: str, attempt_seed: int = 0) -> None:
    """Pretend to push one product to a slow external API (20-80 ms a call)."""
    await asyncio.sleep(random.uniform(0.02, 0.08))
    if product_id % BAD_EVERY == 0:
        raise Discard(f"product {product_id} has an invalid SKU {sku!r}: the API answered 422")
    if random.random() < FLAKY_RATE:
        raise ServiceUnavailable(f"503 Service Unavailable from api.example (product {product_id})")


def run_demo(url: str, count: int, concurrency: int) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(highlight=False)
    parsed = parse_url(url)
    if parsed.kind == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(parsed.path + suffix).unlink(missing_ok=True)  # a fresh story every run
    queue.use_url(url)
    console.print(
        f"[bold]lmq demo[/]: a bulk product import of {count:,} slow API calls, queued in {url}"
    )

    items = [
        ("import_product", {"product_id": i, "sku": f"SKU-{i:05d}"}) for i in range(1, count + 1)
    ]
    queue.migrate()  # SQLite would create its tables on first use; not part of the timing
    t0 = time.perf_counter()
    queue.enqueue_many(items)
    took = time.perf_counter() - t0
    console.print(
        f"1. the web request enqueued {count:,} tasks in one transaction in "
        f"[bold]{took * 1000:.0f} ms[/] and returned; nothing slow ran in it"
    )

    console.print(f"2. a worker process drains them: `lmq worker --app lmq.demo -c {concurrency}`")
    env = {**os.environ, "LMQ_URL": url}
    log_path = Path(parsed.path + ".log") if parsed.kind == "sqlite" else Path("lmq-demo.log")
    log_path.unlink(missing_ok=True)
    console_log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmq",
            "worker",
            "--app",
            "lmq.demo",
            "-c",
            str(concurrency),
            "-q",
            "--grace",
            "5",
            "--log-file",
            str(log_path),
        ],
        env=env,
        stderr=console_log,
    )
    start = time.perf_counter()
    counts = queue.counts()
    try:
        with Progress(
            TextColumn("[bold]import"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,}"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("import", total=count, detail="")
            while True:
                counts = queue.counts()
                finished = counts["done"] + counts["dead"]
                rate = counts["done"] / max(time.perf_counter() - start, 1e-6)
                retrying = sum(
                    1 for t in queue.tasks(status="pending", limit=1000) if t.attempts > 0
                )
                progress.update(
                    bar,
                    completed=finished,
                    detail=f"done {counts['done']:,} · retrying {retrying} · "
                    f"dead {counts['dead']} · {rate:,.0f}/s",
                )
                if finished >= count:
                    break
                if proc.poll() is not None:
                    console_log.seek(0)
                    console.print(f"[red]the worker exited early (status {proc.returncode}):[/]")
                    console.print(console_log.read().decode(errors="replace")[-2000:], markup=False)
                    return 1
                time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # graceful: finishes, acknowledges, exits 0
            proc.wait(30)
    elapsed = time.perf_counter() - start
    retried = sum(1 for t in queue.tasks(status="done", limit=count) if t.attempts > 1)
    console.print(
        f"3. done in [bold]{elapsed:.1f} s[/]: {counts['done']:,} imported "
        f"({retried} after a retry with backoff), {counts['dead']} in the dead letters, "
        f"{counts['done'] / elapsed:,.0f} tasks/s"
    )
    console.print(f"   every step is in {log_path} (one JSON object per line)")
    env_hint = f"LMQ_URL={url} {_lmq_command()}"
    console.print("\nNext, try:")
    for cmd in (
        f"{env_hint} status",
        f"{env_hint} dead list",
        f"{env_hint} dead show ID",
        f"{env_hint} dead requeue ID",
        f"{env_hint} tasks --status done --limit 5",
    ):
        console.print(f"  {cmd}", soft_wrap=True, markup=False)
    return 0


def _lmq_command() -> str:
    """How the user can run lmq again: `lmq` if that is on PATH, else the script's path."""
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    found = shutil.which("lmq")
    if not script.endswith("lmq") or (found and os.path.abspath(found) == script):
        return "lmq"
    return os.path.relpath(script)
