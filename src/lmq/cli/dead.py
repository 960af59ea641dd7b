"""``lmq dead``: list, show, re-queue and discard dead letters."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.markup import escape as esc
from rich.table import Table

from ..exceptions import ConfigError
from ..models import DeadLetter, TaskId
from ..queue import Queue
from .commands import out, print_errors
from .common import ago, cli, echo_json, open_queue, url_option

F = TypeVar("F", bound=Callable[..., Any])


@cli.group()
def dead() -> None:
    """Dead letters: tasks that used their attempts or were discarded.

    Review them with `lmq dead list` and `lmq dead show ID`, fix the cause, then
    `lmq dead requeue ID...` (attempts reset) or `lmq dead discard ID...`.
    """


def _dead_json(d: DeadLetter, full: bool = False) -> dict[str, Any]:
    data = d.to_json()
    if not full:
        data.pop("errors")
    return data


@dead.command("list")
@click.option("--task", "task_name", metavar="NAME", help="Only this task name.")
@click.option("--queue", "queue_name", metavar="Q", help="Only this queue.")
@click.option("--error", "error_text", metavar="TEXT", help="Only errors containing TEXT.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list on stdout, newest first.")
@url_option
def dead_list(
    task_name: str | None,
    queue_name: str | None,
    error_text: str | None,
    limit: int,
    as_json: bool,
    url: str | None,
    app: str | None,
) -> None:
    """Dead letters waiting for a person, newest first."""
    queue = open_queue(url, app)
    found = queue.dead_letters(
        task_name=task_name, queue=queue_name, error_contains=error_text, limit=limit
    )
    if as_json:
        echo_json([_dead_json(d) for d in found])
        return
    t = Table()
    for col in ("id", "task id", "task", "queue", "attempts", "died", "reason / error"):
        t.add_column(col)
    for d in found:
        t.add_row(
            str(d.id),
            str(d.task_id),
            esc(d.task_name),
            esc(d.queue),
            f"{d.attempts}/{d.max_attempts or '-'}",
            ago(d.died_at),
            esc(d.reason[:60]) + ("" if d.error in d.reason else f"\n[dim]{esc(d.error[:80])}[/]"),
        )
    out.print(t)
    if not found:
        out.print("no dead letters")


@dead.command("show")
@click.argument("dead_id")
@click.option("--json", "as_json", is_flag=True)
@url_option
def dead_show(dead_id: str, as_json: bool, url: str | None, app: str | None) -> None:
    """One dead letter: payload, reason and every attempt's error with its traceback."""
    queue = open_queue(url, app)
    d = queue.dead_letter(_parse(queue, dead_id))
    if as_json:
        echo_json(_dead_json(d, full=True))
        return
    import json

    for k, v in (
        ("dead letter", d.id),
        ("task id", d.task_id),
        ("task", d.task_name),
        ("queue", d.queue),
        ("status", d.status),
        ("died", d.died_at.isoformat()),
        ("attempts", f"{d.attempts}/{d.max_attempts or '-'}"),
        ("reason", d.reason),
        ("error", d.error),
        ("fingerprint", d.fingerprint),
    ):
        out.print(f"[bold]{k:>11}[/]  {esc(str(v))}")
    out.print(f"[bold]{'payload':>11}[/]  {esc(json.dumps(d.payload, ensure_ascii=False))}")
    print_errors(d.errors)


def _parse(queue: Queue, text: str) -> TaskId:
    try:
        return queue.backend.parse_id(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="ID") from None


def _selection(
    queue: Queue, ids: tuple[str, ...], all_: bool, task_name: str | None, yes: bool, verb: str
) -> tuple[list[TaskId], bool]:
    if ids and (all_ or task_name):
        raise click.UsageError("give ids, or --all / --task, not both")
    if not ids and not (all_ or task_name):
        raise click.UsageError(f"say which dead letters to {verb}: ID..., --all or --task NAME")
    if ids:
        return [_parse(queue, i) for i in ids], False
    matching = queue.dead_letters(task_name=task_name, limit=None)
    if not matching:
        return [], True
    what = f"{len(matching)} dead letter(s)" + (f" of task {task_name!r}" if task_name else "")
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"{verb} {what}? refusing without a terminal to ask: add --yes")
        click.confirm(f"{verb} {what}?", abort=True, err=True)
    return [], True


def _selector_options(f: F) -> F:
    """IDs, or --all / --task NAME (asking for confirmation unless --yes)."""
    for option in reversed(
        (
            click.argument("ids", nargs=-1, metavar="[ID]..."),
            click.option(
                "--all", "all_", is_flag=True, help="Every dead letter (or every one of --task)."
            ),
            click.option(
                "--task", "task_name", metavar="NAME", help="Every dead letter of this task."
            ),
            click.option("--yes", "-y", is_flag=True, help="Don't ask for confirmation."),
            url_option,
        )
    ):
        f = option(f)
    return f


@dead.command("requeue")
@_selector_options
def dead_requeue(
    ids: tuple[str, ...],
    all_: bool,
    task_name: str | None,
    yes: bool,
    url: str | None,
    app: str | None,
) -> None:
    """Put dead letters back in the queue with their attempts reset.

    Ids given one by one need no confirmation; --all and --task ask unless --yes.
    """
    queue = open_queue(url, app)
    chosen, by_filter = _selection(queue, ids, all_, task_name, yes, "requeue")
    if by_filter:
        done = queue.requeue_dead(all=True, task_name=task_name)
    else:
        done = queue.requeue_dead(chosen)
    click.echo(
        f"re-queued {len(done)} task(s)" + (f": {', '.join(map(str, done[:20]))}" if done else "")
    )


@dead.command("discard")
@_selector_options
def dead_discard(
    ids: tuple[str, ...],
    all_: bool,
    task_name: str | None,
    yes: bool,
    url: str | None,
    app: str | None,
) -> None:
    """Mark dead letters discarded: kept as a record, no longer listed or counted."""
    queue = open_queue(url, app)
    chosen, by_filter = _selection(queue, ids, all_, task_name, yes, "discard")
    n = (
        queue.discard_dead(all=True, task_name=task_name)
        if by_filter
        else queue.discard_dead(chosen)
    )
    click.echo(f"discarded {n} dead letter(s)")
