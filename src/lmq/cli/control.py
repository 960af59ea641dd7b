"""Control: ``lmq tasks`` (list, cancel), ``lmq queues`` (list, pause, resume) and
``lmq batches`` (list, show)."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.markup import escape as esc
from rich.table import Table

from ..exceptions import ConfigError
from ..models import STATUSES, BatchInfo, Task, TaskId
from ..queue import Queue
from .commands import out, queue_rows
from .common import ago, cli, echo_json, human_seconds, open_queue, url_option

TASK_STATUSES = (*STATUSES, *(("cancelled",) if "cancelled" not in STATUSES else ()))


def _queue_from(ctx: click.Context, url: str | None, app: str | None) -> Queue:
    """A subcommand's --url/--app, else the ones given to its group (``lmq tasks --url U
    cancel 5``)."""
    parent = ctx.parent.params if ctx.parent is not None else {}
    return open_queue(url or parent.get("url"), app or parent.get("app"))


def _confirm(what: str, yes: bool) -> None:
    """Ask before acting on a selection that may match many (never without a terminal)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"{what}? refusing without a terminal to ask: add --yes")
    click.confirm(f"{what}?", abort=True, err=True)


def _parse_ids(queue: Queue, ids: tuple[str, ...]) -> list[TaskId]:
    parsed = []
    for text in ids:
        try:
            parsed.append(queue.backend.parse_id(text))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="ID") from None
    return parsed


def _shown(ids: list[TaskId], most: int = 20) -> str:
    text = ", ".join(map(str, ids[:most]))
    return text + (f" and {len(ids) - most} more" if len(ids) > most else "")


# --- lmq tasks ----------------------------------------------------------------------------


@cli.group(invoke_without_command=True)
@click.option("--status", "status_", type=click.Choice(TASK_STATUSES), help="Only this status.")
@click.option("--queue", "queue_name", metavar="Q", help="Only this queue.")
@click.option("--name", metavar="N", help="Only this task name.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list on stdout.")
@url_option
@click.pass_context
def tasks(
    ctx: click.Context,
    status_: str | None,
    queue_name: str | None,
    name: str | None,
    limit: int,
    as_json: bool,
    url: str | None,
    app: str | None,
) -> None:
    """List tasks, newest first (`lmq tasks cancel ...` cancels pending ones)."""
    if ctx.invoked_subcommand is not None:
        return
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


@tasks.command("cancel")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--task", "task_name", metavar="NAME", help="Every pending task of this name.")
@click.option("--queue", "queue_name", metavar="Q", help="Every pending task in this queue.")
@click.option("--batch", "batch_name", metavar="NAME", help="Every pending task of this batch.")
@click.option("--yes", "-y", is_flag=True, help="Don't ask for confirmation.")
@url_option
@click.pass_context
def tasks_cancel(
    ctx: click.Context,
    ids: tuple[str, ...],
    task_name: str | None,
    queue_name: str | None,
    batch_name: str | None,
    yes: bool,
    url: str | None,
    app: str | None,
) -> None:
    """Cancel tasks that have not started yet (running ones finish).

    Ids given one by one need no confirmation; --task, --queue and --batch (several
    given: all must match) ask unless --yes.  Cancelled tasks are kept like done ones
    until retention prunes them.
    """
    selectors = task_name or queue_name or batch_name
    if ids and selectors:
        raise click.UsageError("give ids, or --task / --queue / --batch, not both")
    if not ids and not selectors:
        raise click.UsageError("say which tasks to cancel: ID..., --task, --queue or --batch")
    queue = _queue_from(ctx, url, app)
    if ids:
        wanted = _parse_ids(queue, ids)
        cancelled = queue.cancel(wanted)
        left = [i for i in wanted if i not in set(cancelled)]
        msg = f"cancelled {len(cancelled)} task(s)" + (
            f": {_shown(cancelled)}" if cancelled else ""
        )
        if left:
            msg += f"; not pending (running or finished), left alone: {_shown(left)}"
        click.echo(msg)
        return
    parts = []
    if task_name:
        parts.append(f"task {task_name!r}")
    if queue_name:
        parts.append(f"queue {queue_name!r}")
    if batch_name:
        parts.append(f"batch {batch_name!r}")
    pending = None
    if batch_name:
        info = queue.batch(batch_name)  # NotFound for an unknown batch
        if not (task_name or queue_name):
            pending = info.pending
    elif queue_name and not task_name:
        pending = queue.stats().by_queue.get(queue_name, {}).get("pending", 0)
    if pending == 0:
        click.echo(f"no pending task of {' and '.join(parts)}: nothing cancelled")
        return
    count = f"the {pending} pending" if pending is not None else "every pending"
    _confirm(f"cancel {count} task(s) of {' and '.join(parts)}", yes)
    cancelled = queue.cancel(task_name=task_name, queue=queue_name, batch=batch_name)
    click.echo(
        f"cancelled {len(cancelled)} task(s)" + (f": {_shown(cancelled)}" if cancelled else "")
    )


# --- lmq queues ---------------------------------------------------------------------------


@cli.group()
def queues() -> None:
    """Queues: list them, pause one (workers stop claiming its tasks) or resume it."""


@queues.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON list on stdout.")
@url_option
def queues_list(as_json: bool, url: str | None, app: str | None) -> None:
    """Every queue with tasks (or paused), its counts and whether it is paused."""
    queue = open_queue(url, app)
    rows = queue_rows(queue.stats().by_queue, queue.paused_queues())
    if as_json:
        echo_json(rows)
        return
    t = Table()
    for col in ("queue", "pending", "processing", "done", "dead", "cancelled", "paused"):
        t.add_column(col, justify="left" if col in ("queue", "paused") else "right")
    for r in rows:
        t.add_row(
            esc(r["name"]),
            str(r["pending"]),
            str(r["processing"]),
            str(r["done"]),
            str(r["dead"]),
            str(r["cancelled"]),
            f"[yellow]yes[/] (since {r['paused_at']})" if r["paused"] else "no",
        )
    out.print(t)
    if not rows:
        out.print("no queues yet (a queue exists once a task is enqueued to it)")


@queues.command("pause")
@click.argument("name")
@url_option
def queues_pause(name: str, url: str | None, app: str | None) -> None:
    """Stop workers claiming tasks of queue NAME (running ones finish).

    Workers notice within about a second.  A queue with no tasks yet can be paused too
    (before a bulk enqueue, say), and so can a SQLite database not yet created.
    """
    queue = open_queue(url, app, create=True)
    known = name in queue.stats().by_queue
    if queue.pause(name):
        click.echo(
            f"paused queue {name!r}: workers stop claiming its tasks within about a second"
            + ("" if known else " (it has no tasks yet)")
        )
    else:
        click.echo(f"queue {name!r} was already paused")


@queues.command("resume")
@click.argument("name")
@url_option
def queues_resume(name: str, url: str | None, app: str | None) -> None:
    """Let workers claim tasks of queue NAME again."""
    queue = open_queue(url, app)
    if queue.resume(name):
        click.echo(f"resumed queue {name!r}")
    else:
        known = name in queue.stats().by_queue
        click.echo(
            f"queue {name!r} was not paused; nothing to resume"
            + ("" if known else " (and it has no tasks: check the name)")
        )


# --- lmq batches --------------------------------------------------------------------------


@cli.group()
def batches() -> None:
    """Batches: `enqueue_many(..., batch=NAME)` tasks, with their progress."""


@batches.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list on stdout, newest first.")
@url_option
def batches_list(limit: int, as_json: bool, url: str | None, app: str | None) -> None:
    """The newest batches first, with their progress."""
    queue = open_queue(url, app)
    found = queue.batches(limit)
    if as_json:
        echo_json([b.to_json() for b in found])
        return
    t = Table()
    for col in ("batch", "total", "pending", "running", "done", "dead", "cancelled", "state"):
        t.add_column(col, justify="right" if col not in ("batch", "state") else "left")
    for b in found:
        t.add_row(
            esc(b.name),
            str(b.total),
            str(b.pending),
            str(b.processing),
            str(b.done),
            str(b.dead),
            str(b.cancelled),
            _state(b),
        )
    out.print(t)
    if not found:
        out.print("no batches")


def _state(b: BatchInfo) -> str:
    if b.completed is not None:
        return f"complete ({ago(b.completed)})"
    eta = b.eta()
    return "running" + (f", ~{human_seconds(eta)} left" if eta is not None else "")


@batches.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@url_option
def batches_show(name: str, as_json: bool, url: str | None, app: str | None) -> None:
    """One batch's progress: members by status, rate, time left, its follow-up task."""
    queue = open_queue(url, app)
    b = queue.batch(name)  # NotFound: exit 2, one line
    if as_json:
        echo_json(b.to_json())
        return
    finished = b.finished
    pct = 100.0 * finished / b.total if b.total else 100.0
    rate = b.rate()
    eta = b.eta()
    rows = [
        ("batch", b.name),
        ("created", f"{b.created.isoformat()} ({ago(b.created)})"),
        ("progress", f"{finished}/{b.total} finished ({pct:.0f}%)"),
        ("pending", str(b.pending)),
        ("running", str(b.processing)),
        ("done", str(b.done)),
        ("dead", str(b.dead) + ("  (see: lmq dead list)" if b.dead else "")),
        ("cancelled", str(b.cancelled)),
        ("rate", f"{rate:.1f} task(s)/s" if rate is not None else "-"),
        (
            "time left",
            "none (complete)"
            if b.completed is not None
            else (f"~{human_seconds(eta)}" if eta is not None else "unknown yet"),
        ),
        (
            "completed",
            f"{b.completed.isoformat()} ({ago(b.completed)})" if b.completed else "no",
        ),
        ("on complete", b.on_complete or "-"),
        (
            "follow-up",
            str(b.followup_id)
            if b.followup_id is not None
            else ("not yet enqueued" if b.on_complete else "-"),
        ),
    ]
    for k, v in rows:
        out.print(f"[bold]{k:>11}[/]  {esc(v)}")
