"""One-shot commands: enqueue, status, show, migrate, demo (`lmq tasks`: control.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click
from rich import box
from rich.console import Console, Group
from rich.markup import escape as esc
from rich.table import Table
from rich.text import Text

from ..exceptions import BackendError, LmqError, NotFound
from ..models import BreakerState, Counts, ScheduleState, Task, TaskError, WorkerInfo, iso
from ..queue import Queue
from .common import (
    ago,
    cli,
    echo_json,
    human_seconds,
    masked,
    open_queue,
    parse_json_object,
    url_option,
)
from .gates_view import breaker_json, breaker_line, breaker_table, schedule_json, schedule_table

out = Console(highlight=False, soft_wrap=True)


@cli.command()
@click.argument("task_name")
@click.argument("payload", required=False, default="{}", metavar="[JSON_OBJECT]")
@click.option(
    "--queue", "queue_name", metavar="Q", help="Queue name [default: the task's, else 'default']."
)
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    default=0,
    metavar="S",
    help="Run no sooner than S seconds from now.",
)
@click.option("--priority", type=int, default=None, metavar="N", help="Higher runs first.")
@click.option(
    "--unique-key",
    metavar="K",
    help="Idempotent enqueue: while a task with key K is pending or running, "
    "print its id instead of adding another.",
)
@click.option("--max-attempts", type=click.IntRange(min=1), default=None, metavar="N")
@url_option
def enqueue(
    task_name: str,
    payload: str,
    queue_name: str | None,
    delay: float,
    priority: int | None,
    unique_key: str | None,
    max_attempts: int | None,
    url: str | None,
    app: str | None,
) -> None:
    """Add one task and print its id.

    The name is not checked against an app: a name no worker handles ends in the dead
    letters ("no handler registered").  Example:

        lmq enqueue sync_product '{"product_id": 1, "sku": "A-1"}'
    """
    data = parse_json_object(payload)
    queue = open_queue(url, app, create=True)
    task_id = queue.enqueue(
        task_name,
        data,
        queue=queue_name,
        priority=priority,
        delay=delay,
        unique_key=unique_key,
        max_attempts=max_attempts,
    )
    click.echo(task_id)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option(
    "--check",
    is_flag=True,
    help="For monitoring: exit 0 if healthy, 1 if something needs a person "
    "(stale heartbeat; ready tasks and no live worker), 2 if the backend can't "
    "be reached.  Prints one line, then a WARNING line per circuit breaker that is "
    "not closed (a warning only: an open breaker alone is not unhealthy).",
)
@click.option(
    "--stale-after",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    metavar="S",
    help="A heartbeat older than S seconds is stale.",
)
@click.option(
    "--max-ready-age",
    type=click.FloatRange(min=0),
    default=None,
    metavar="S",
    help="With --check: also unhealthy when the oldest ready task waited over S s.",
)
@click.option(
    "--watch",
    type=click.FloatRange(min=0.2),
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Refresh live every SECONDS (default 2) until Ctrl-C.",
)
@url_option
def status(
    as_json: bool,
    check: bool,
    stale_after: float,
    max_ready_age: float | None,
    watch: float | None,
    url: str | None,
    app: str | None,
) -> None:
    """Queues, workers, circuit breakers that are not closed, schedules and health at a
    glance (`--watch`: live)."""
    if watch is not None and (as_json or check):
        raise click.UsageError("--watch shows the table; it does not go with --json or --check")
    try:
        queue = open_queue(url, app)
        st = _read_status(queue, stale_after, max_ready_age)
    except LmqError as exc:
        if check:
            click.echo(f"UNKNOWN: cannot read the queue: {exc}")
            raise SystemExit(2) from None
        raise
    if watch is not None:
        _watch(queue, st, watch, stale_after, max_ready_age)
        return
    stats, workers, problems, paused = st.stats, st.workers, st.problems, st.paused
    if as_json:
        echo_json(
            {
                "url": masked(queue),
                "counts": stats.as_dict(),
                "cancelled": stats.cancelled,
                "ready": stats.ready,
                "scheduled": stats.scheduled,
                "oldest_ready_age": stats.oldest_ready_age,
                "queues": {r.pop("name"): r for r in queue_rows(stats.by_queue, paused)},
                "paused": sorted(paused),
                "workers": [w.to_json() for w in workers],
                "breakers": [breaker_json(b) for b in st.breakers],
                "schedules": [schedule_json(s) for s in st.schedules],
                "healthy": not problems,
                "problems": problems,
                "warnings": st.warnings,
            }
        )
    elif check:
        note = f"; paused: {st.paused_note}" if paused else ""
        if problems:
            click.echo("CRITICAL: " + "; ".join(problems) + note)
        else:
            click.echo(
                f"OK: {len(st.alive)} worker(s) alive, {stats.ready} ready, "
                f"{stats.processing} processing, {stats.dead} dead{note}"
            )
        for w in st.warnings:  # after the status line: monitoring reads the first one
            click.echo(f"WARNING: {w}")
    else:
        out.print(_status_view(queue, st, stale_after))
    if check:
        raise SystemExit(1 if problems else 0)


@dataclass
class _Status:
    stats: Counts
    workers: list[WorkerInfo]
    paused: dict[str, datetime]
    alive: list[WorkerInfo]
    problems: list[str]
    breakers: list[BreakerState]
    schedules: list[ScheduleState]

    @property
    def warnings(self) -> list[str]:
        """A line per breaker that is not closed: worth a look, not by itself unhealthy
        (its tasks wait with their attempts intact until the service is back)."""
        return [breaker_line(b) for b in self.breakers if b.state != "closed"]

    @property
    def paused_note(self) -> str:
        """'imports (500 pending), other' for the --check line."""
        by = self.stats.by_queue
        return ", ".join(
            name + (f" ({by[name]['pending']} pending)" if by.get(name, {}).get("pending") else "")
            for name in sorted(self.paused)
        )


def queue_rows(
    by_queue: dict[str, dict[str, int]], paused: dict[str, datetime]
) -> list[dict[str, Any]]:
    """One row per queue that has tasks or is paused, by name, with ``paused``."""
    rows = []
    for name in sorted(set(by_queue) | set(paused)):
        c = by_queue.get(name, {})
        row: dict[str, Any] = {"name": name}
        for key in ("pending", "processing", "done", "dead", "cancelled"):
            row[key] = c.get(key, 0)
        for key in ("ready", "scheduled"):
            if key in c:
                row[key] = c[key]
        row["paused"] = name in paused
        row["paused_at"] = iso(paused[name]) if name in paused else None
        rows.append(row)
    return rows


def _read_status(queue: Queue, stale_after: float, max_ready_age: float | None) -> _Status:
    """Counts, workers and paused queues, and what needs a person.

    A paused queue's waiting tasks are not by themselves a problem: "ready and no live
    worker" and --max-ready-age look at the queues that are not paused.
    """
    stats = queue.stats()
    workers = queue.workers()
    paused = queue.paused_queues()
    alive = [w for w in workers if w.heartbeat_age <= stale_after]
    problems = [
        f"worker {w.id} heartbeat is {human_seconds(w.heartbeat_age)} old"
        for w in workers
        if w.heartbeat_age > stale_after
    ]
    ready, oldest = stats.ready, stats.oldest_ready_age
    held = [q for q in paused if stats.by_queue.get(q, {}).get("pending")]
    if held and ready:
        per = [c for q, c in stats.by_queue.items() if q not in paused]
        if all("ready" in c for c in stats.by_queue.values()):  # per-queue figures
            ready = sum(c["ready"] for c in per)
            if all("oldest_ready_age" in c for c in per):
                ages = [c["oldest_ready_age"] for c in per if c["oldest_ready_age"] is not None]
                oldest = max(ages) if ages else None
        elif not queue.backend.has_ready(None, tuple(paused)):
            ready, oldest = 0, None  # every ready task is in a paused queue
        else:  # some are elsewhere: at least one; the oldest may be a paused one
            ready = max(1, ready - sum(stats.by_queue[q]["pending"] for q in held))
    if ready and not alive:
        problems.append(f"{ready} task(s) ready and no live worker")
    if max_ready_age is not None and ready and oldest is not None and oldest > max_ready_age:
        problems.append(
            f"oldest ready task has waited {human_seconds(oldest)} "
            f"(> {human_seconds(max_ready_age)})"
        )
    return _Status(stats, workers, paused, alive, problems, queue.breakers(), queue.schedules())


def _status_view(queue: Queue, st: _Status, stale_after: float, header: str = "") -> Group:
    """The status tables as one renderable (printed once, or refreshed by --watch)."""
    stats, workers, paused = st.stats, st.workers, st.paused
    parts: list[Any] = [Text.from_markup(f"[bold]lmq[/] {esc(masked(queue))}{header}")]
    t = Table(title="queues", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1))
    cols = ("queue", "pending", "ready", "scheduled", "processing", "done", "dead", "cancelled")
    for col in (*cols, "paused"):
        t.add_column(col, justify="left" if col in ("queue", "paused") else "right")
    for r in queue_rows(stats.by_queue, paused):
        t.add_row(
            esc(r["name"]),
            str(r["pending"]),
            str(r.get("ready", "")),
            str(r.get("scheduled", "")),
            str(r["processing"]),
            str(r["done"]),
            str(r["dead"]),
            str(r["cancelled"]),
            "[yellow]yes[/]" if r["paused"] else "no",
        )
    t.add_row(
        "[bold]all[/]",
        str(stats.pending),
        str(stats.ready),
        str(stats.scheduled),
        str(stats.processing),
        str(stats.done),
        str(stats.dead),
        str(stats.cancelled),
        "",
    )
    parts.append(t)
    if stats.oldest_ready_age is not None:
        parts.append(f"oldest ready task waiting: {human_seconds(stats.oldest_ready_age)}")
    if paused:
        since = ", ".join(f"{esc(n)} ({ago(at)})" for n, at in paused.items())
        parts.append(Text.from_markup(f"[yellow]paused:[/] {since}  (lmq queues resume NAME)"))
    w = Table(title="workers", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1))
    for col in ("id", "host", "pid", "queues", "concurrency", "running", "done", "heartbeat"):
        w.add_column(col)
    for info in workers:
        age = human_seconds(info.heartbeat_age)
        age = f"[red]{age} (stale)[/]" if info.heartbeat_age > stale_after else f"{age} ago"
        w.add_row(
            esc(info.id),
            esc(info.host),
            str(info.pid),
            esc(info.queues),
            str(info.concurrency),
            str(info.running),
            str(info.done),
            age,
        )
    parts.append(w if workers else "workers: none running")
    held = [b for b in st.breakers if b.state != "closed"]
    if held:
        parts.append(breaker_table(held, title="circuit breakers (not closed)"))
    elif st.breakers:
        parts.append(f"circuit breakers: {len(st.breakers)}, all closed")
    if st.schedules:
        parts.append(schedule_table(st.schedules, title="schedules"))
    for p in st.problems:
        parts.append(Text.from_markup(f"[red]problem:[/] {esc(p)}"))
    return Group(*parts)


def _watch(
    queue: Queue, st: _Status, interval: float, stale_after: float, max_ready_age: float | None
) -> None:
    """Redraw the status every ``interval`` seconds until Ctrl-C (then exit 0).

    On a terminal the view is redrawn in place (rich Live); elsewhere (a pipe, a log)
    each refresh is printed after the last.  A backend that stops answering shows as a
    line and is tried again at the next refresh.
    """
    from rich.live import Live

    def view(current: _Status | None, error: str | None = None) -> Any:
        stamp = datetime.now().strftime("%H:%M:%S")
        header = f"  [dim]{stamp}, every {interval:g}s; Ctrl-C to quit[/]"
        if current is None:
            return Text.from_markup(
                f"[bold]lmq[/] {esc(masked(queue))}{header}\n[red]cannot read the queue:[/] "
                f"{esc(error or '')}"
            )
        return _status_view(queue, current, stale_after, header)

    def read() -> Any:
        try:
            return view(_read_status(queue, stale_after, max_ready_age))
        except LmqError as exc:
            return view(None, str(exc))

    try:
        if out.is_terminal:
            with Live(view(st), console=out, auto_refresh=False, transient=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(read(), refresh=True)
        else:
            out.print(view(st))
            while True:
                time.sleep(interval)
                out.print()
                out.print(read())
    except KeyboardInterrupt:
        pass


@cli.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@url_option
def show(task_id: str, as_json: bool, url: str | None, app: str | None) -> None:
    """Everything about one task, with its error history (dead-lettered ones too)."""
    queue = open_queue(url, app)
    try:
        tid = queue.backend.parse_id(task_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="TASK_ID") from None
    task = queue.get(tid)
    if task is None:
        raise NotFound(f"no task with id {task_id}")
    if as_json:
        echo_json(task.to_json())
        return
    print_task(task)


def print_task(task: Task) -> None:
    import json as _json

    rows = [
        ("id", str(task.id)),
        ("task", task.task_name),
        ("queue", task.queue),
        ("status", task.status),
        ("priority", str(task.priority)),
        ("attempts", f"{task.attempts}/{task.max_attempts or '-'}"),
        (
            "next run",
            f"{task.next_run.isoformat() if task.next_run else '-'} ({ago(task.next_run)})",
        ),
        ("created", task.created or "-"),
        ("locked by", task.locked_by or "-"),
        ("last error", task.last_error or "-"),
    ]
    if task.dead_letter_id is not None:
        rows.append(("dead letter", str(task.dead_letter_id)))
    for k, v in rows:
        out.print(f"[bold]{k:>11}[/]  {esc(v)}")
    out.print(f"[bold]{'payload':>11}[/]  {esc(_json.dumps(task.payload, ensure_ascii=False))}")
    print_errors(task.errors)


def print_errors(errors: Sequence[TaskError]) -> None:
    """Every attempt's error, with its traceback, oldest first."""
    for e in errors:
        out.print(
            f"\n[bold]attempt {e.attempt}[/] at {e.at.isoformat()}: {esc(e.type)}: {esc(e.message)}"
        )
        if e.traceback:
            out.print(e.traceback.rstrip(), markup=False, highlight=False)


@cli.command()
@url_option
def migrate(url: str | None, app: str | None) -> None:
    """Create or upgrade lmq's tables (idempotent)."""
    queue = open_queue(url, app, create=True)
    applied = queue.migrate()
    version = queue.backend.schema_version()
    if applied:
        click.echo(
            f"applied migration(s) {', '.join(map(str, applied))}; "
            f"schema version {version} at {masked(queue)}"
        )
    else:
        click.echo(f"schema is up to date (version {version}) at {masked(queue)}")


@cli.command()
@click.option(
    "--url",
    metavar="URL",
    default="sqlite:///lmq-demo.db",
    show_default=True,
    help="Where the demo keeps its queue (left behind for you to inspect).",
)
@click.option(
    "--tasks",
    "count",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    help="API calls in the bulk import.",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Calls the demo's worker makes at once.",
)
def demo(url: str, count: int, concurrency: int) -> None:
    """A bulk import of 5,000 slow API calls, queued in one step and run by a worker.

    Starts a fake external API on 127.0.0.1 (~100 ms a call, a few seconds of 503s, a
    few bad records it rejects), enqueues the calls as one batch, runs `lmq worker` with
    a live progress bar, and leaves its database for `lmq status`, `lmq dead list
    --groups` and `lmq batches show`.  A second run on SQLite starts afresh (it deletes
    the demo's database first); on a server URL it adds a new batch beside what is there.
    """
    from ..demo import run_demo

    try:
        raise SystemExit(run_demo(url, count, concurrency))
    except BackendError:
        raise
    finally:
        sys.stdout.flush()
