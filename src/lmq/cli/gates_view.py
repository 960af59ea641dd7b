"""Formatting of circuit breakers, rate limits and schedules, shared by ``lmq status`` and
``lmq breakers|limits|schedules`` (no click here: commands.py and gates.py both import it)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rich import box
from rich.markup import escape as esc
from rich.table import Table

from ..models import BreakerState, RateState, ScheduleState
from .common import human_seconds


def when(ts: float | None, now: float | None = None) -> str:
    """'in 12s', '3m ago', 'now', '-' for an epoch time."""
    if ts is None:
        return "-"
    delta = ts - (time.time() if now is None else now)
    if abs(delta) < 0.5:
        return "now"
    text = human_seconds(abs(delta))
    return f"in {text}" if delta > 0 else f"{text} ago"


def utc_text(ts: float | None) -> str:
    """'2026-03-29 01:00:00Z', '-' for None."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _clock(dt: datetime, today: str) -> str:
    """'20:26', '15:26:12' with seconds when they are not 0, the date first when it is
    not ``today``."""
    text = dt.strftime("%H:%M:%S" if dt.second or dt.microsecond >= 500_000 else "%H:%M")
    day = dt.strftime("%Y-%m-%d")
    return text if day == today else f"{day} {text}"


def tick_text(ts: float | None, tz: str, now: float) -> str:
    """A tick in UTC with how far off it is, then on the schedule's own clock:
    '01:30Z (in 10.0h)' / '2026-12-03 02:30 CET'."""
    if ts is None:
        return "-"
    today = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
    utc = datetime.fromtimestamp(ts, UTC)
    text = f"{_clock(utc, today)}Z ({when(ts, now)})"
    local = zone_text(ts, tz, today)
    return f"{text}\n{local}" if local else text


def zone_text(ts: float | None, tz: str, today: str | None = None) -> str:
    """The same instant on the schedule's own clock: '03:00 CEST' ('' for UTC)."""
    if ts is None or tz in ("UTC", "Etc/UTC", "Z"):
        return ""
    try:
        local = datetime.fromtimestamp(ts, ZoneInfo(tz))
    except (ZoneInfoNotFoundError, ValueError):
        return f"(unknown timezone {tz})"
    if today is None:
        return local.strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"{_clock(local, today)} {local.strftime('%Z')}"


def state_markup(b: BreakerState) -> str:
    if b.state == "open":
        return "[red]open[/]" + (" [dim](held)[/]" if b.forced else "")
    if b.state == "half_open":
        return "[yellow]half-open[/]"
    return b.state


def retry_text(b: BreakerState, now: float | None = None) -> str:
    """When the breaker lets a probe through (or why it will not)."""
    now = time.time() if now is None else now
    if b.state == "closed":
        return "-"
    if b.state == "half_open":
        return "probing" + (f" ({b.probe_by})" if b.probe_by else "")
    if b.forced and b.retry_at is None:
        return "none until closed"
    if b.retry_at is None:
        return "-"
    return "due now" if b.retry_at <= now else when(b.retry_at, now)


def breaker_line(b: BreakerState, now: float | None = None) -> str:
    """One sentence for ``lmq status --check`` and ``--json`` ``warnings``."""
    now = time.time() if now is None else now
    since = f" for {human_seconds(max(0.0, now - b.opened_at))}" if b.opened_at else ""
    if b.state == "half_open":
        what = f"half-open{since}, a probe is running" + (f" on {b.probe_by}" if b.probe_by else "")
    elif b.forced and b.retry_at is None:
        what = f"held open by a person{since}, no probe until `lmq breakers close {b.name}`"
    else:
        nxt = retry_text(b, now)
        what = f"open{since}, next probe {nxt if nxt != '-' else 'unknown'}"
    error = f"; last error: {b.last_error[:100]}" if b.last_error else ""
    return f"breaker {b.name!r} is {what} (trips {b.trips}{error})"


def breaker_json(b: BreakerState, now: float | None = None) -> dict[str, Any]:
    data = b.to_json()
    now = time.time() if now is None else now
    data["retry_in"] = (
        max(0.0, round(b.retry_at - now, 3)) if b.state == "open" and b.retry_at else None
    )
    return data


def schedule_json(s: ScheduleState) -> dict[str, Any]:
    data = s.to_json()
    data["next_tick_local"] = _local_iso(s.next_tick, s.timezone)
    data["last_tick_local"] = _local_iso(s.last_tick, s.timezone)
    return data


def _local_iso(ts: float | None, tz: str) -> str | None:
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, ZoneInfo(tz)).isoformat()
    except (ZoneInfoNotFoundError, ValueError):
        return None


def rule_text(s: ScheduleState, sep: str = " ") -> str:
    """'*/5 * * * * Europe/Berlin' (cron) or 'every 5m'."""
    if s.cron:
        return s.cron + (f"{sep}{s.timezone}" if s.timezone != "UTC" else "")
    if s.every is not None:
        return f"every {_interval(s.every)}"
    return "-"


def _interval(secs: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size and secs % size == 0:
            return f"{secs / size:g}{unit}"
    return f"{secs:g}s"


def breaker_table(found: list[BreakerState], title: str | None = None) -> Table:
    now = time.time()
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1))
    t.add_column("breaker", no_wrap=True, overflow="fold")
    t.add_column("state", no_wrap=True)
    t.add_column("fails", justify="right", no_wrap=True)
    t.add_column("trips", justify="right", no_wrap=True)
    t.add_column("cool-down", no_wrap=True)
    t.add_column("next probe", min_width=10, overflow="fold")
    t.add_column("opened", no_wrap=True)
    t.add_column("last error", min_width=12, ratio=1, overflow="fold")
    for b in found:
        t.add_row(
            esc(b.name),
            state_markup(b),
            str(b.failures),
            str(b.trips),
            human_seconds(b.cooldown) if b.cooldown else "-",
            esc(retry_text(b, now)),
            when(b.opened_at, now) if b.state != "closed" else "-",
            esc((b.last_error or "-")[:100]),
        )
    return t


def rate_table(found: list[RateState], title: str | None = None) -> Table:
    now = time.time()
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1))
    for col in ("rate limit", "calls", "per", "burst", "spacing", "next free slot"):
        t.add_column(col, justify="left" if col in ("rate limit", "next free slot") else "right")
    for r in found:
        spacing = r.per / r.calls if r.calls else 0.0
        free = "now" if r.tat <= now else when(r.tat, now)
        t.add_row(
            esc(r.name),
            str(r.calls),
            f"{r.per:g}s",
            str(r.burst),
            human_seconds(spacing),
            free,
        )
    return t


def schedule_table(found: list[ScheduleState], title: str | None = None) -> Table:
    """Next tick in UTC and on the schedule's clock (or 'paused'), last tick with the task
    it enqueued; the task column only when some schedule enqueues another name or queue."""
    now = time.time()
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1))
    show_task = any(s.task_name != s.name or s.queue != "default" for s in found)
    t.add_column("schedule", no_wrap=True, overflow="fold")
    t.add_column("rule", min_width=13, overflow="fold")
    if show_task:
        t.add_column("task", min_width=6, overflow="fold")
    t.add_column("next tick", no_wrap=True)
    t.add_column("last tick, task", no_wrap=True)
    t.add_column("missed", no_wrap=True)
    for s in found:
        row = [esc(s.name), esc(rule_text(s, "\n"))]
        if show_task:
            row.append(esc(s.task_name + ("" if s.queue == "default" else f" @{s.queue}")))
        last = "never"
        if s.last_tick is not None:
            last = esc(tick_text(s.last_tick, s.timezone, now))
            if s.last_task_id is not None:
                last += f"\ntask {esc(str(s.last_task_id))}"
        row += [
            "[yellow]paused[/]" if s.paused else esc(tick_text(s.next_tick, s.timezone, now)),
            last,
            s.missed,
        ]
        t.add_row(*row)
    return t
