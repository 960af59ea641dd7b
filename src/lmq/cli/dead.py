"""``lmq dead``: list (or group), show, review, re-queue and discard dead letters."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from rich.markup import escape as esc
from rich.table import Table

from ..exceptions import ConfigError, NotFound
from ..models import DeadGroup, DeadLetter, TaskId
from ..queue import Queue
from .commands import out, print_errors
from .common import ago, cli, echo_json, human_seconds, open_queue, parse_json_object, url_option

F = TypeVar("F", bound=Callable[..., Any])


@cli.group()
def dead() -> None:
    """Dead letters: tasks that used their attempts or were discarded by their handler.

    See what failed with `lmq dead list --groups` (one line per kind of failure) and
    `lmq dead show ID`; fix the cause; then `lmq dead requeue --group FINGERPRINT`
    (attempts reset), or record a verdict with `lmq dead review ... --approve|--reject
    --note TEXT` (the workers re-queue approved ones by themselves), or `lmq dead
    discard`.
    """


def _dead_json(d: DeadLetter, full: bool = False) -> dict[str, Any]:
    data = d.to_json()
    if not full:
        data.pop("errors")
    return data


def _iso(dt: datetime | None) -> str:
    return "-" if dt is None else dt.astimezone(UTC).isoformat(timespec="seconds")


def _check_group(queue: Queue, group: str) -> int:
    """How many dead letters wait in ``group``; NotFound (exit 2) when none do."""
    n = sum(g.count for g in queue.dead_groups(group=group, limit=None))
    if n:
        return n
    if queue.dead_letters(group=group, include_all=True, limit=1):
        raise NotFound(f"no dead letter of group {group!r} is waiting (all re-queued or discarded)")
    raise NotFound(f"no dead-letter group {group!r} (`lmq dead list --groups` lists them)")


# --- list ---------------------------------------------------------------------------------


@dead.command("list")
@click.option("--task", "task_name", metavar="NAME", help="Only this task name.")
@click.option("--queue", "queue_name", metavar="Q", help="Only this queue.")
@click.option("--error", "error_text", metavar="TEXT", help="Only errors containing TEXT.")
@click.option(
    "--group", metavar="FINGERPRINT", help="Only this group (a fingerprint from --groups)."
)
@click.option(
    "--groups", "as_groups", is_flag=True, help="One line per error fingerprint, largest first."
)
@click.option(
    "--include-all", is_flag=True, help="Also the re-queued and discarded records (not --groups)."
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list on stdout (only that).")
@url_option
def dead_list(
    task_name: str | None,
    queue_name: str | None,
    error_text: str | None,
    group: str | None,
    as_groups: bool,
    include_all: bool,
    limit: int,
    as_json: bool,
    url: str | None,
    app: str | None,
) -> None:
    """Dead letters waiting for a person, newest first; or, with --groups, one line per
    kind of failure (task, exception type and message with numbers, ids and quoted
    values normalised), so 5,000 failures from one outage are one line."""
    if as_groups and include_all:
        raise click.UsageError("--groups counts the waiting dead letters only (no --include-all)")
    queue = open_queue(url, app)
    if group is not None and not include_all:
        _check_group(queue, group)
    if as_groups:
        groups = queue.dead_groups(
            task_name=task_name,
            queue=queue_name,
            error_contains=error_text,
            group=group,
            limit=limit,
        )
        if as_json:
            echo_json([g.to_json() for g in groups])
        else:
            _print_groups(groups)
        return
    found = queue.dead_letters(
        task_name=task_name,
        queue=queue_name,
        error_contains=error_text,
        group=group,
        include_all=include_all,
        limit=limit,
    )
    if group is not None and include_all and not found:
        raise NotFound(f"no dead-letter group {group!r} (`lmq dead list --groups` lists them)")
    if as_json:
        echo_json([_dead_json(d) for d in found])
        return
    t = Table()
    for col in ("id", "task", "queue", "tries", "died", "review", "error"):
        t.add_column(col)
    for d in found:
        review = d.review or "-"
        if d.status != "dead":
            review = f"{d.status}" + (f", {d.review}" if d.review else "")
        t.add_row(
            str(d.id),
            esc(d.task_name),
            esc(d.queue),
            f"{d.attempts}/{d.max_attempts or '-'}",
            ago(d.died_at),
            esc(review),
            esc(d.error[:80]) + f"\n[dim]group {esc(d.fingerprint)}[/]",
        )
    if found:
        out.print(t)
        if len(found) == limit:
            out.print(f"[dim](the newest {limit}; --limit N for more)[/]")
    else:
        out.print("no dead letters")


def _print_groups(groups: list[DeadGroup]) -> None:
    if not groups:
        out.print("no dead letters")
        return
    t = Table()
    for col in ("count", "group", "task", "first", "last", "example (id)"):
        # only the example wraps: a fingerprint or task name cut in two can't be copied
        t.add_column(
            col, justify="right" if col == "count" else "left", no_wrap=col != "example (id)"
        )
    for g in groups:
        t.add_row(
            str(g.count),
            esc(g.fingerprint),
            esc(g.task_name),
            ago(g.first_seen),
            ago(g.last_seen),
            f"{esc(g.example[:80])} [dim]({esc(str(g.example_id))})[/]",
        )
    out.print(t)
    out.print(
        f"[dim]handle a group at once: lmq dead requeue --group {esc(groups[0].fingerprint)}"
        " (or: lmq dead review --group ... --approve --note ..., lmq dead discard --group ...)"
        "[/]"
    )


# --- show ---------------------------------------------------------------------------------


@dead.command("show")
@click.argument("dead_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True)
@url_option
def dead_show(dead_id: str, as_json: bool, url: str | None, app: str | None) -> None:
    """One dead letter: payload, reason, review, status, every attempt's error with its
    traceback, and the task it was re-queued as."""
    queue = open_queue(url, app)
    d = queue.dead_letter(_parse(queue, dead_id))
    task = queue.get(d.task_id) if d.status == "requeued" else None
    if as_json:
        data = _dead_json(d, full=True)
        data["requeued_task"] = None
        if task is not None:
            data["requeued_task"] = {
                "id": task.id,
                "status": task.status,
                "attempts": task.attempts,
            }
        echo_json(data)
        return
    rows: list[tuple[str, object]] = [
        ("dead letter", d.id),
        ("task id", d.task_id),
        ("task", d.task_name),
        ("queue", d.queue),
        ("status", d.status),
        ("died", _iso(d.died_at)),
        ("attempts", f"{d.attempts}/{d.max_attempts or '-'}"),
        ("reason", d.reason),
        ("error", d.error),
        ("group", d.fingerprint),
    ]
    if d.review:
        rows += [
            ("review", d.review),
            ("by", d.reviewed_by or "-"),
            ("reviewed", _iso(d.reviewed_at)),
            ("note", d.review_note or "-"),
        ]
        if d.review == "approved" and d.status == "dead":
            rows.append(("requeue at", f"{_iso(d.requeue_at)} (a worker re-queues it)"))
    else:
        rows.append(("review", "not reviewed"))
    if d.status == "requeued":
        now = f", now {task.status} (attempts {task.attempts})" if task else " (since pruned)"
        if task and task.status == "dead" and str(task.dead_letter_id) != str(d.id):
            now += f"; dead again: lmq dead show {task.dead_letter_id}"
        rows.append(("re-queued", f"{_iso(d.requeued_at)} as task {d.task_id}{now}"))
    if d.status == "discarded":
        rows.append(("discarded", _iso(d.discarded_at)))
    for k, v in rows:
        out.print(f"[bold]{k:>11}[/]  {esc(str(v))}")
    out.print(f"[bold]{'payload':>11}[/]  {esc(json.dumps(d.payload, ensure_ascii=False))}")
    if d.status == "requeued":
        out.print(f"[dim]the task: lmq show {d.task_id}[/]")
    print_errors(d.errors)


# --- selecting dead letters ------------------------------------------------------------


def _parse(queue: Queue, text: str) -> TaskId:
    try:
        return queue.backend.parse_id(text)
    except ValueError:
        raise NotFound(f"no dead letter with id {text!r} (not an id on this backend)") from None


@dataclass(frozen=True)
class Selection:
    ids: tuple[TaskId, ...] = ()
    all: bool = False
    task_name: str | None = None
    queue: str | None = None
    group: str | None = None

    def kwargs(self) -> dict[str, Any]:
        if self.ids:
            return {"ids": self.ids}
        return {
            "all": self.all,
            "task_name": self.task_name,
            "queue": self.queue,
            "group": self.group,
        }

    def describe(self, n: int) -> str:
        parts = []
        if self.group:
            parts.append(f"group {self.group}")
        if self.task_name:
            parts.append(f"task {self.task_name!r}")
        if self.queue:
            parts.append(f"queue {self.queue!r}")
        return f"{n} dead letter(s)" + (f" of {' and '.join(parts)}" if parts else "")


def _select(
    queue: Queue,
    verb: str,
    ids: tuple[str, ...],
    all_: bool,
    task_name: str | None,
    queue_name: str | None,
    group: str | None,
    yes: bool,
) -> Selection | None:
    """The dead letters to act on, confirmed (None: nothing matches, say so and stop).

    Ids given one by one need no confirmation; a selector that can match many asks
    (showing how many) unless --yes.  Answered no, or no answer (end of input): exit 1.
    """
    many = all_ or task_name or queue_name or group
    if ids and many:
        raise click.UsageError("give ids, or --all / --task / --queue / --group, not both")
    if not ids and not many:
        raise click.UsageError(
            f"say which dead letters to {verb}: ID..., --all, --task NAME, --queue Q "
            "or --group FINGERPRINT"
        )
    if ids:
        return Selection(ids=tuple(_parse(queue, i) for i in ids))
    sel = Selection((), bool(all_), task_name, queue_name, group)
    if group is not None:
        _check_group(queue, group)
    groups = queue.dead_groups(task_name=task_name, queue=queue_name, group=group, limit=None)
    n = sum(g.count for g in groups)
    if not n:
        return None
    if not yes:
        try:
            ok = click.confirm(f"{verb} {sel.describe(n)}?", default=False, err=True)
            if not sys.stdin.isatty():  # the answer came from a pipe: end the prompt's line
                click.echo("", err=True)
        except click.exceptions.Abort:  # end of input: nobody said yes
            click.echo("", err=True)
            ok = False
        if not ok:
            click.echo(
                f"lmq: not confirmed, nothing to {verb} (--yes skips the question)", err=True
            )
            raise click.exceptions.Exit(1)
    return sel


def _selector_options(f: F) -> F:
    """IDs, or --all / --task / --queue / --group (asking for confirmation unless --yes)."""
    for option in reversed(
        (
            click.argument("ids", nargs=-1, metavar="[ID]..."),
            click.option("--all", "all_", is_flag=True, help="Every waiting dead letter."),
            click.option(
                "--task", "task_name", metavar="NAME", help="Every dead letter of this task."
            ),
            click.option(
                "--queue", "queue_name", metavar="Q", help="Every dead letter of this queue."
            ),
            click.option(
                "--group",
                metavar="FINGERPRINT",
                help="Every dead letter of this group (`lmq dead list --groups`).",
            ),
            click.option("--yes", "-y", is_flag=True, help="Don't ask for confirmation."),
            click.option("--json", "as_json", is_flag=True, help="The result as JSON on stdout."),
            url_option,
        )
    ):
        f = option(f)
    return f


def _shown(ids: list[TaskId], most: int = 20) -> str:
    text = ", ".join(map(str, ids[:most]))
    return text + (f" and {len(ids) - most} more" if len(ids) > most else "")


# --- requeue / discard --------------------------------------------------------------------


@dead.command("requeue")
@_selector_options
@click.option(
    "--payload",
    metavar="JSON_OBJECT",
    help="A corrected payload (a JSON object) for a single dead letter given by id.",
)
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    default=0,
    metavar="S",
    help="The first one is due in S seconds.",
)
@click.option(
    "--spread",
    type=click.FloatRange(min=0),
    default=0,
    metavar="S",
    help="Spread them evenly over S seconds (oldest death first).",
)
def dead_requeue(
    ids: tuple[str, ...],
    all_: bool,
    task_name: str | None,
    queue_name: str | None,
    group: str | None,
    yes: bool,
    as_json: bool,
    url: str | None,
    app: str | None,
    payload: str | None,
    delay: float,
    spread: float,
) -> None:
    """Put dead letters back in the queue with their attempts reset.

    Each task keeps its id, its earlier errors and a link to its dead letter.  Ids given
    one by one need no confirmation; --all, --task, --queue and --group (several given:
    all must match) ask unless --yes.  Thousands at once:
    `lmq dead requeue --group FP --yes --delay 60 --spread 3600`.
    """
    if payload is not None and len(ids) != 1:
        raise click.UsageError("--payload edits one dead letter: give exactly one ID")
    queue = open_queue(url, app)
    new_payload = None if payload is None else parse_json_object(payload, "--payload")
    sel = _select(queue, "re-queue", ids, all_, task_name, queue_name, group, yes)
    if sel is None:
        _nothing(as_json, "requeued", "no dead letters match; nothing re-queued")
        return
    if new_payload is not None:
        _check_payload(queue, sel.ids[0], new_payload)
    done = queue.requeue_dead(**sel.kwargs(), payload=new_payload, delay=delay, spread=spread)
    if as_json:
        echo_json({"requeued": len(done), "ids": done})
        return
    when = ""
    if done and (delay or spread):
        last = delay + (spread * (len(done) - 1) / len(done) if spread else 0)
        when = (
            f"; due in {human_seconds(delay)}"
            if last == delay
            else f"; due from {human_seconds(delay)} to {human_seconds(last)} from now"
        )
    click.echo(f"re-queued {len(done)} task(s)" + (f": {_shown(done)}" if done else "") + when)


def _check_payload(queue: Queue, dead_id: TaskId, payload: dict[str, Any]) -> None:
    """With --app, the new payload must fit the handler's signature (as at enqueue)."""
    if not queue.registry:
        return
    letter = queue.dead_letter(dead_id)
    handler = queue.registry.get(letter.task_name)
    problem = handler.check_payload(payload) if handler else None
    if problem:
        raise ConfigError(problem)


def _nothing(as_json: bool, key: str, text: str) -> None:
    if as_json:
        echo_json({key: 0, "ids": []} if key == "requeued" else {key: 0})
    else:
        click.echo(text)


@dead.command("discard")
@_selector_options
def dead_discard(
    ids: tuple[str, ...],
    all_: bool,
    task_name: str | None,
    queue_name: str | None,
    group: str | None,
    yes: bool,
    as_json: bool,
    url: str | None,
    app: str | None,
) -> None:
    """Mark dead letters discarded: kept as a record, no longer listed or counted."""
    queue = open_queue(url, app)
    sel = _select(queue, "discard", ids, all_, task_name, queue_name, group, yes)
    if sel is None:
        _nothing(as_json, "discarded", "no dead letters match; nothing discarded")
        return
    n = queue.discard_dead(**sel.kwargs())
    if as_json:
        echo_json({"discarded": n})
    else:
        click.echo(f"discarded {n} dead letter(s)")


# --- review -------------------------------------------------------------------------------


def _parse_after(text: str | None) -> datetime | float | None:
    """Seconds from now, or an ISO 8601 time (without an offset: local time)."""
    if text is None:
        return None
    try:
        secs = float(text)
    except ValueError:
        pass
    else:
        if not secs >= 0 or secs == float("inf"):
            raise click.BadParameter("seconds from now must be >= 0", param_hint="--after")
        return secs
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither seconds nor an ISO 8601 time (e.g. 2026-11-28T18:00Z)",
            param_hint="--after",
        ) from None
    return when if when.tzinfo is not None else when.astimezone()


@dead.command("review")
@_selector_options
@click.option("--approve", is_flag=True, help="Approve: the workers re-queue them.")
@click.option("--reject", is_flag=True, help="Reject: they stay as the record.")
@click.option("--note", metavar="TEXT", help="Why (kept with the review).")
@click.option("--by", metavar="NAME", help="Who reviewed [default: the OS user].")
@click.option(
    "--after",
    metavar="TIME|SECONDS",
    help="Approved: re-queue no sooner than this ISO 8601 time (no offset: local time) "
    "or this many seconds from now.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    metavar="N",
    help="Approved: re-queue N per second (oldest death first) instead of all at once.",
)
def dead_review(
    ids: tuple[str, ...],
    all_: bool,
    task_name: str | None,
    queue_name: str | None,
    group: str | None,
    yes: bool,
    as_json: bool,
    url: str | None,
    app: str | None,
    approve: bool,
    reject: bool,
    note: str | None,
    by: str | None,
    after: str | None,
    rate: float | None,
) -> None:
    """Record a verdict on dead letters: who (--by), when, and why (--note).

    Approved ones are re-queued by the running workers by themselves (about once a
    second; from --after, at --rate per second); rejected ones stay as the record and
    are no longer waiting for a decision.  A later review replaces an earlier one.

        lmq dead review --group 8d59abad6eea --approve --note "SKU table fixed" --rate 20
    """
    if approve == reject:
        raise click.UsageError("say --approve or --reject (one of them)")
    if reject and (after is not None or rate is not None):
        raise click.UsageError("--after and --rate apply to --approve only")
    when = _parse_after(after)
    queue = open_queue(url, app)
    verb = "approve" if approve else "reject"
    sel = _select(queue, verb, ids, all_, task_name, queue_name, group, yes)
    if sel is None:
        _nothing(as_json, "reviewed", f"no dead letters match; nothing to {verb}")
        return
    n = queue.review_dead(**sel.kwargs(), approve=approve, note=note, by=by, after=when, rate=rate)
    if as_json:
        echo_json({"reviewed": n, "review": "approved" if approve else "rejected"})
        return
    who = f" (by {by})" if by else ""
    if reject:
        click.echo(f"rejected {n} dead letter(s){who}; they stay as the record")
        return
    if isinstance(when, datetime):
        start = f"from {_iso(when)}"
    elif when:
        start = f"in {human_seconds(when)}"
    else:
        start = "within about a second"
    pace = ""
    if rate:
        pace = f", {rate:g} per second (about {human_seconds(max(0.0, (n - 1) / rate))})"
    click.echo(f"approved {n} dead letter(s){who}; a running worker re-queues them {start}{pace}")
