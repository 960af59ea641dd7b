"""One-shot commands: enqueue, status, tasks, show, migrate, demo."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.markup import escape as esc
from rich.table import Table

from ..exceptions import BackendError, LmqError, NotFound
from ..models import STATUSES, Task, TaskError
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
    "be reached.  Prints one line.",
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
@url_option
def status(
    as_json: bool,
    check: bool,
    stale_after: float,
    max_ready_age: float | None,
    url: str | None,
    app: str | None,
) -> None:
    """Queues, workers and health at a glance."""
    try:
        queue = open_queue(url, app)
        stats = queue.stats()
        workers = queue.workers()
    except LmqError as exc:
        if check:
            click.echo(f"UNKNOWN: cannot read the queue: {exc}")
            raise SystemExit(2) from None
        raise
    alive = [w for w in workers if w.heartbeat_age <= stale_after]
    stale = [w for w in workers if w.heartbeat_age > stale_after]
    problems: list[str] = []
    for w in stale:
        problems.append(f"worker {w.id} heartbeat is {human_seconds(w.heartbeat_age)} old")
    if stats.ready and not alive:
        problems.append(f"{stats.ready} task(s) ready and no live worker")
    if (
        max_ready_age is not None
        and stats.oldest_ready_age is not None
        and stats.oldest_ready_age > max_ready_age
    ):
        problems.append(
            f"oldest ready task has waited {human_seconds(stats.oldest_ready_age)} "
            f"(> {human_seconds(max_ready_age)})"
        )
    if as_json:
        echo_json(
            {
                "url": masked(queue),
                "counts": stats.as_dict(),
                "ready": stats.ready,
                "scheduled": stats.scheduled,
                "oldest_ready_age": stats.oldest_ready_age,
                "queues": stats.by_queue,
                "workers": [w.to_json() for w in workers],
                "healthy": not problems,
                "problems": problems,
            }
        )
    elif check:
        if problems:
            click.echo("CRITICAL: " + "; ".join(problems))
        else:
            click.echo(
                f"OK: {len(alive)} worker(s) alive, {stats.ready} ready, "
                f"{stats.processing} processing, {stats.dead} dead"
            )
    else:
        _print_status(queue, stats, workers, stale_after, problems)
    if check:
        raise SystemExit(1 if problems else 0)


def _print_status(
    queue: Any, stats: Any, workers: Any, stale_after: float, problems: list[str]
) -> None:
    out.print(f"[bold]lmq[/] {masked(queue)}")
    t = Table(title="queues", title_justify="left")
    for col in ("queue", "pending", "ready", "scheduled", "processing", "done", "dead"):
        t.add_column(col, justify="left" if col == "queue" else "right")
    for name, c in sorted(stats.by_queue.items()):
        t.add_row(
            esc(name),
            str(c["pending"]),
            "",
            "",
            str(c["processing"]),
            str(c["done"]),
            str(c["dead"]),
        )
    t.add_row(
        "[bold]all[/]",
        str(stats.pending),
        str(stats.ready),
        str(stats.scheduled),
        str(stats.processing),
        str(stats.done),
        str(stats.dead),
    )
    out.print(t)
    if stats.oldest_ready_age is not None:
        out.print(f"oldest ready task waiting: {human_seconds(stats.oldest_ready_age)}")
    w = Table(title="workers", title_justify="left")
    for col in ("id", "host", "pid", "queues", "concurrency", "running", "done", "heartbeat"):
        w.add_column(col)
    for info in workers:
        age = human_seconds(info.heartbeat_age)
        age = f"[red]{age} (stale)[/]" if info.heartbeat_age > stale_after else age
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
    if workers:
        out.print(w)
    else:
        out.print("workers: none running")
    for p in problems:
        out.print(f"[red]problem:[/] {esc(p)}")


@cli.command()
@click.option("--status", "status_", type=click.Choice(STATUSES), help="Only this status.")
@click.option("--queue", "queue_name", metavar="Q", help="Only this queue.")
@click.option("--name", metavar="N", help="Only this task name.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list on stdout.")
@url_option
def tasks(
    status_: str | None,
    queue_name: str | None,
    name: str | None,
    limit: int,
    as_json: bool,
    url: str | None,
    app: str | None,
) -> None:
    """List tasks, newest first."""
    queue = open_queue(url, app)
    found = queue.tasks(status=status_, queue=queue_name, name=name, limit=limit)
    if as_json:
        echo_json([_task_json(t) for t in found])
        return
    t = Table()
    for col in ("id", "task", "queue", "status", "attempts", "next run", "last error"):
        t.add_column(col)
    for task in found:
        t.add_row(
            str(task.id),
            esc(task.task_name),
            esc(task.queue),
            task.status,
            f"{task.attempts}/{task.max_attempts or '-'}",
            ago(task.next_run) if task.status == "pending" else "-",
            esc((task.last_error or "")[:60]),
        )
    out.print(t)
    if not found:
        out.print("no tasks match")


def _task_json(task: Task) -> dict[str, Any]:
    data = task.to_json()
    data.pop("errors")
    return data


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
@click.option("--tasks", "count", type=click.IntRange(min=1), default=3000, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=200, show_default=True)
def demo(url: str, count: int, concurrency: int) -> None:
    """Enqueue and drain a few thousand demo tasks with a live progress bar."""
    from ..demo import run_demo

    try:
        raise SystemExit(run_demo(url, count, concurrency))
    except BackendError:
        raise
    finally:
        sys.stdout.flush()
