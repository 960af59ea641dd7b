"""``lmq breakers`` (list, open, close, reset), ``lmq limits list`` and ``lmq schedules``
(list, pause, resume, run-now): the state every worker shares, for a person to see and act on.

Breakers, rate limits and schedules are rows in the backend (see docs/reliability.md and
docs/scheduling.md); these commands read and change those rows through the Queue API, so
they need no app (``--app`` only adds the URL an app's Queue was made with).
"""

from __future__ import annotations

import json

import click

from ..exceptions import NotFound
from ..models import BreakerState, ScheduleState
from ..queue import Queue
from .commands import out
from .common import cli, echo_json, open_queue, url_option
from .gates_view import (
    breaker_json,
    breaker_table,
    rate_table,
    retry_text,
    schedule_json,
    schedule_table,
    utc_text,
    when,
)


def _breaker(queue: Queue, name: str) -> BreakerState | None:
    return next((b for b in queue.breakers() if b.name == name), None)


def _no_breaker(queue: Queue, name: str) -> NotFound:
    names = sorted(b.name for b in queue.breakers())
    known = f" (stored: {', '.join(names[:10])})" if names else " (none is stored yet)"
    return NotFound(f"no breaker {name!r}{known}; `lmq breakers list` shows them")


def _schedule(queue: Queue, name: str) -> ScheduleState:
    found = next((s for s in queue.schedules() if s.name == name), None)
    if found is None:
        names = sorted(s.name for s in queue.schedules())
        known = (
            f" (stored: {', '.join(names[:10])})"
            if names
            else " (none is stored: a worker stores its app's schedules when it starts)"
        )
        raise NotFound(f"no schedule {name!r}{known}")
    return found


def _print_breaker(verb: str, b: BreakerState, note: str = "") -> None:
    if b.state == "open" and b.forced and b.retry_at is None:
        detail = f", held open: no probe until `lmq breakers close {b.name}`"
    elif b.state == "open":
        detail = f", next probe {retry_text(b)}"
    elif b.state == "half_open":
        detail = f", {retry_text(b)}"
    else:
        detail = note
    click.echo(f"breaker {b.name!r} {verb}: now {b.state.replace('_', '-')}{detail}")


# --- lmq breakers -----------------------------------------------------------------------------


@cli.group()
def breakers() -> None:
    """Circuit breakers: list them, hold one open, close or reset it.

    A breaker is shared by every worker on every host (its state is a row in the
    backend).  While it is open, workers claim none of the tasks behind it (they keep
    their attempts); after the cool-down one probe task runs (half_open); success closes
    it, failure re-opens it with twice the cool-down.  See docs/reliability.md.
    """


@breakers.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON list on stdout (only that).")
@url_option
def breakers_list(as_json: bool, url: str | None, app: str | None) -> None:
    """Every stored breaker with its state, consecutive failures, trips, cool-down, when
    the next probe may run, who holds the probe and the last error; then the rate limits
    (`lmq limits list`).  A breaker is stored once a task behind it finishes or a person
    acts on it."""
    queue = open_queue(url, app)
    found = queue.breakers()
    if as_json:
        echo_json([breaker_json(b) for b in found])
        return
    if found:
        out.print(breaker_table(found))
    else:
        out.print("no breakers stored yet (one is stored once a task behind it has run)")
    limits = queue.rate_limits()
    if limits:
        out.print(rate_table(limits, title="rate limits"))


@breakers.command("open")
@click.argument("name")
@click.option(
    "--for",
    "for_seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Hold it open this long, then probe as usual [default: until `close` or `reset`].",
)
@url_option
def breakers_open(name: str, for_seconds: float | None, url: str | None, app: str | None) -> None:
    """Open breaker NAME by hand: workers stop claiming its tasks within about a second.

    Without --for no probe runs until a person closes or resets it (say, during a
    planned outage of the service behind it).  Running tasks finish.  A name no stored
    breaker has yet is opened too (tasks declared with that breaker then wait).
    """
    queue = open_queue(url, app, create=True)
    before = _breaker(queue, name)
    b = queue.open_breaker(name, for_seconds=for_seconds)
    _print_breaker("opened", b)
    if before is None:
        click.echo(
            f"(no breaker {name!r} was stored before: check the name matches a task's breaker=...)"
        )


@breakers.command("close")
@click.argument("name")
@url_option
def breakers_close(name: str, url: str | None, app: str | None) -> None:
    """Close breaker NAME: its tasks are claimed again at once, its failure counters are
    zeroed and its cool-down is back to the base (the service is back, say)."""
    queue = open_queue(url, app)
    if _breaker(queue, name) is None:
        raise _no_breaker(queue, name)
    _print_breaker("closed", queue.close_breaker(name), ": its tasks are claimed again")


@breakers.command("reset")
@click.argument("name")
@url_option
def breakers_reset(name: str, url: str | None, app: str | None) -> None:
    """Forget breaker NAME: its stored row is deleted (trips and cool-down history
    included), so it behaves like a breaker that never failed."""
    queue = open_queue(url, app)
    if _breaker(queue, name) is None:
        raise _no_breaker(queue, name)
    _print_breaker(
        "reset", queue.reset_breaker(name), " (its row is deleted: trips and cool-down forgotten)"
    )


# --- lmq limits -------------------------------------------------------------------------------


@cli.group()
def limits() -> None:
    """Rate limits: calls per period per key, shared by every worker (GCRA)."""


@limits.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON list on stdout (only that).")
@url_option
def limits_list(as_json: bool, url: str | None, app: str | None) -> None:
    """Every stored rate limit: calls per period, burst, the spacing between calls and
    when its next slot is free.  A rate limit is stored once a task under it ran."""
    queue = open_queue(url, app)
    found = queue.rate_limits()
    if as_json:
        echo_json([r.to_json() for r in found])
        return
    if found:
        out.print(rate_table(found))
    else:
        out.print("no rate limits stored yet (one is stored once a task under it has run)")


# --- lmq schedules ----------------------------------------------------------------------------


@cli.group()
def schedules() -> None:
    """Recurring tasks declared with queue.schedule(...): list, pause, resume, run now.

    Workers store their app's schedules when they start and enqueue each tick exactly
    once, however many run.  See docs/scheduling.md.
    """


@schedules.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON list on stdout (only that).")
@url_option
def schedules_list(as_json: bool, url: str | None, app: str | None) -> None:
    """Every stored schedule: its rule (cron and timezone, or every), the next tick in UTC
    and on its own clock, the last tick and the task it enqueued, the missed-tick policy
    and whether it is paused."""
    queue = open_queue(url, app)
    found = queue.schedules()
    if as_json:
        echo_json([schedule_json(s) for s in found])
        return
    if found:
        out.print(schedule_table(found))
    else:
        out.print(
            "no schedules stored (a worker stores its app's queue.schedule(...) "
            "declarations when it starts)"
        )


@schedules.command("pause")
@click.argument("name")
@url_option
def schedules_pause(name: str, url: str | None, app: str | None) -> None:
    """Stop enqueuing ticks of schedule NAME (workers notice within about a second).

    A worker restarting keeps it paused; ticks that pass while paused are not caught
    up on resume."""
    queue = open_queue(url, app)
    s = _schedule(queue, name)
    if s.paused:
        click.echo(f"schedule {name!r} was already paused")
        return
    queue.pause_schedule(name)
    click.echo(f"paused schedule {name!r}: no tick is enqueued until `lmq schedules resume`")


@schedules.command("resume")
@click.argument("name")
@url_option
def schedules_resume(name: str, url: str | None, app: str | None) -> None:
    """Let schedule NAME tick again, from its next tick after now."""
    queue = open_queue(url, app)
    s = _schedule(queue, name)
    if not s.paused:
        click.echo(f"schedule {name!r} was not paused; nothing to resume")
        return
    queue.resume_schedule(name)
    after = _schedule(queue, name)
    nxt = after.next_tick
    click.echo(
        f"resumed schedule {name!r}"
        + (f": next tick {utc_text(nxt)} ({when(nxt)})" if nxt is not None else "")
    )


@schedules.command("run-now")
@click.argument("name")
@url_option
def schedules_run_now(name: str, url: str | None, app: str | None) -> None:
    """Enqueue one task of schedule NAME now, from its stored row (task, queue, payload,
    priority), and print its id; the schedule's own ticks are unchanged.  Works while
    paused too, and needs no app."""
    queue = open_queue(url, app)
    s = _schedule(queue, name)
    task_id = queue.run_schedule_now(name)
    click.echo(task_id)
    payload = json.dumps(json.loads(s.payload_json), ensure_ascii=False)
    click.echo(
        f"enqueued {s.task_name} {payload[:80]} on queue {s.queue!r} from schedule {name!r}",
        err=True,
    )


@schedules.command("delete")
@click.argument("name")
@url_option
def schedules_delete(name: str, url: str | None, app: str | None) -> None:
    """Forget schedule NAME: its stored row is deleted and running workers stop firing it
    within about a second.  For a schedule removed from the code: a worker whose app
    still declares it stores it again (as new) when it starts."""
    queue = open_queue(url, app)
    _schedule(queue, name)
    queue.backend.delete_schedule(name)
    click.echo(
        f"deleted schedule {name!r} (a worker whose app still declares it stores it again "
        "when it starts)"
    )
