"""Recurring schedules: which ticks are due, as pure functions over a :class:`ScheduleState`.

``every`` ticks are the multiples of the interval since the epoch (UTC), so every worker
computes the same ones.  ``cron`` ticks come from cronsim in the schedule's time zone,
with cron's daylight-saving rules: a job at a fixed wall-clock time (``30 2 * * *``)
runs once a day, right after the clock jumps when its time is skipped and only at the
first occurrence when the hour repeats; a job with a wildcard in its minute or hour
field (``0 * * * *``) follows real time (every real hour, both 02:00s in the autumn).

The worker syncs each declared schedule on start (:func:`sync`), then fires what
:func:`due` returns by compare-and-set on the stored row (one transaction with the
enqueue).  No I/O here.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .exceptions import ConfigError
from .models import ScheduleState

MISSED = ("once", "all", "skip")
MAX_CATCH_UP = 1000  # missed="all": at most this many tasks for ticks missed in one go
SKIP_AGE = 60.0  # missed="skip": a tick at most min(this, the interval) old still fires
_DECLARED_REFRESH = 60.0  # an unchanged schedule's ``declared`` is rewritten at most this often

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


@lru_cache(maxsize=256)
def zone(name: str) -> tzinfo:
    """The time zone called ``name`` (ConfigError, one line, if there is none)."""
    if type(name) is not str or not name:
        raise ConfigError("a schedule's timezone is an IANA name such as 'Europe/Berlin'")
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(
            f"unknown timezone {name!r} (an IANA name such as 'Europe/Berlin' or 'UTC')"
        ) from None


def check_cron(expr: object) -> str:
    """The expression as cronsim takes it (aliases expanded), or ConfigError naming it."""
    if type(expr) is not str or not expr.strip():
        raise ConfigError("a cron expression is a string such as '*/5 * * * *'")
    text = ALIASES.get(expr.strip().lower(), expr.strip())
    fields = text.split()
    names: tuple[str, ...] = ("minute", "hour", "day-of-month", "month", "day-of-week")
    if len(fields) == 6:
        names = ("second", *names)
    sizes = {"second": 60, "minute": 60, "hour": 24, "day-of-month": 31, "month": 12}
    for name, field in zip(names, fields, strict=False):
        for term in field.split(","):
            step = term.partition("/")[2]
            # cronsim takes "*/61" as "0"; cron users mean something else: refuse it
            if step.isdigit() and int(step) > sizes.get(name, 7):
                raise ConfigError(
                    f"invalid cron expression {expr!r}: Bad {name} (a step of {step} is "
                    f"more than the field's {sizes.get(name, 7)} values)"
                )
    try:
        it = CronSim(text, datetime(2000, 1, 1, tzinfo=UTC))
        next(it)
    except CronSimError as exc:
        raise ConfigError(f"invalid cron expression {expr!r}: {exc}") from None
    except StopIteration:
        raise ConfigError(f"invalid cron expression {expr!r}: it never matches") from None
    return text


@dataclass(frozen=True, slots=True)
class Schedule:
    """A recurring task as declared (``queue.schedule``), with its tick arithmetic."""

    name: str
    task_name: str
    queue: str = "default"
    payload_json: str = "{}"
    priority: int = 0
    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    missed: str = "once"

    def __post_init__(self) -> None:
        if type(self.name) is not str or not self.name:
            raise ConfigError("a schedule's name must be a non-empty string")
        if len(self.name) > 150:
            raise ConfigError("schedule names are at most 150 characters")
        if (self.cron is None) == (self.every is None):
            raise ConfigError(
                f"schedule {self.name!r}: give exactly one of cron='...' or every=..."
            )
        if self.cron is not None:
            object.__setattr__(self, "cron", check_cron(self.cron))
        elif not isinstance(self.every, int | float) or isinstance(self.every, bool):
            raise ConfigError(
                f"schedule {self.name!r}: every must be a timedelta or seconds, not {self.every!r}"
            )
        elif not math.isfinite(self.every) or self.every <= 0:
            raise ConfigError(f"schedule {self.name!r}: every must be positive, not {self.every}")
        else:
            object.__setattr__(self, "every", float(self.every))
        zone(self.timezone)
        if self.missed not in MISSED:
            raise ConfigError(
                f"schedule {self.name!r}: missed must be once, all or skip, not {self.missed!r}"
            )

    # --- ticks ----------------------------------------------------------------------------

    def next_after(self, t: float) -> float | None:
        """The first tick strictly after ``t`` (None: the cron never matches again)."""
        if self.every is not None:
            return _every_next(self.every, t)
        assert self.cron is not None
        return _cron_next(self.cron, zone(self.timezone), t)

    def ticks_between(self, start: float, end: float, limit: int) -> list[float]:
        """The latest ``limit`` ticks in ``[start, end]``, oldest first."""
        if limit < 1 or end < start:
            return []
        if self.every is not None:
            return _every_between(self.every, start, end, limit)
        span = 60.0
        while True:
            lo = max(start, end - span)
            found: collections.deque[float] = collections.deque(maxlen=limit)
            t = self.next_after(lo - 0.001)
            while t is not None and t <= end:
                if t >= lo:
                    found.append(t)
                t = self.next_after(t)
            if len(found) >= limit or lo <= start:
                return list(found)
            span *= 4

    def interval_at(self, tick: float) -> float:
        """Seconds from ``tick`` to the next one (for missed="skip")."""
        if self.every is not None:
            return self.every
        nxt = self.next_after(tick)
        return math.inf if nxt is None else nxt - tick

    # --- comparing with the stored row ------------------------------------------------------

    def timing_differs(self, state: ScheduleState) -> bool:
        return (self.cron, self.every, self.timezone) != (state.cron, state.every, state.timezone)

    def differs(self, state: ScheduleState) -> bool:
        if self.timing_differs(state):
            return True
        if (self.task_name, self.queue, self.priority, self.missed) != (
            state.task_name,
            state.queue,
            state.priority,
            state.missed,
        ):
            return True
        return _payload(self.payload_json) != _payload(state.payload_json)


def _payload(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _every_next(every: float, t: float) -> float:
    k = math.floor(t / every) + 1
    while (k - 1) * every > t:
        k -= 1
    while k * every <= t:
        k += 1
    return k * every


def _every_between(every: float, start: float, end: float, limit: int) -> list[float]:
    hi = math.floor(end / every)
    while (hi + 1) * every <= end:
        hi += 1
    while hi * every > end:
        hi -= 1
    lo = math.ceil(start / every)
    while (lo - 1) * every >= start:
        lo -= 1
    while lo * every < start:
        lo += 1
    return [k * every for k in range(max(lo, hi - limit + 1), hi + 1)]


def _cron_next(expr: str, tz: tzinfo, t: float) -> float | None:
    # cronsim's first result is after the given second; with a fixed wall-clock time in a
    # zone with daylight saving it iterates wall-clock time, so in the repeated hour its
    # result can lie before ``t`` (the first 02:30 while it is the second 02:15): the
    # tick after ``t`` is then the next one it gives that is later in real time
    it = CronSim(expr, datetime.fromtimestamp(math.floor(t), tz))
    try:
        for _ in range(10_000):
            n = next(it).timestamp()
            if n > t:
                return n
    except StopIteration:
        return None
    return None  # pragma: no cover - a day's minutes are fewer


def tick_key(name: str, tick: float) -> str:
    """The unique key of a schedule's task for one tick (a second guard after the CAS)."""
    return f"lmq:schedule:{name}:{tick_text(tick)}"


def tick_text(tick: float) -> str:
    return f"{tick:.3f}".rstrip("0").rstrip(".")


def tick_iso(tick: float) -> str:
    return datetime.fromtimestamp(tick, UTC).isoformat()


def from_state(state: ScheduleState) -> Schedule:
    """The declaration a stored row holds."""
    return Schedule(
        name=state.name,
        task_name=state.task_name,
        queue=state.queue,
        payload_json=state.payload_json,
        priority=state.priority,
        cron=state.cron,
        every=state.every,
        timezone=state.timezone,
        missed=state.missed,
    )


# --- what a worker stores ----------------------------------------------------------------


def sync(decl: Schedule, stored: ScheduleState | None, now: float) -> ScheduleState | None:
    """The row to store for a declaration on worker start, or None to keep the stored one.

    New: the first tick after now (nothing to catch up).  Timing changed (cron, every,
    timezone): the next tick is recomputed from now.  Otherwise the stored next tick is
    kept, so ticks missed while no worker ran are seen (and ``missed`` applies); other
    changes (payload, task, queue, priority, missed) are stored with it.
    """
    if stored is None:
        return ScheduleState(
            name=decl.name,
            task_name=decl.task_name,
            queue=decl.queue,
            payload_json=decl.payload_json,
            priority=decl.priority,
            cron=decl.cron,
            every=decl.every,
            timezone=decl.timezone,
            missed=decl.missed,
            next_tick=decl.next_after(now),
            declared=now,
            updated=now,
            version=1,
        )
    if not decl.differs(stored) and now - stored.declared < _DECLARED_REFRESH:
        return None
    next_tick = stored.next_tick
    if decl.timing_differs(stored) or next_tick is None:
        next_tick = decl.next_after(now)
    return dataclasses.replace(
        stored,
        task_name=decl.task_name,
        queue=decl.queue,
        payload_json=decl.payload_json,
        priority=decl.priority,
        cron=decl.cron,
        every=decl.every,
        timezone=decl.timezone,
        missed=decl.missed,
        next_tick=next_tick,
        declared=now,
        updated=now,
        version=stored.version + 1,
    )


def due(state: ScheduleState, now: float) -> tuple[list[float], ScheduleState] | None:
    """The ticks to enqueue now (one task each) and the row that records them, or None
    when nothing is due (paused, or the next tick is still ahead).

    ``missed`` decides what happens to ticks that passed while no worker ran: ``once``
    fires one task for the latest; ``all`` one per tick (at most the latest 1,000);
    ``skip`` only a tick at most ``min(60 s, interval)`` old.  The next tick is the first
    after now either way.  The list may be empty (skipped): the row is still stored.
    """
    if state.paused or state.next_tick is None or state.next_tick > now:
        return None
    sched = from_state(state)
    limit = MAX_CATCH_UP if state.missed == "all" else 1
    ticks = sched.ticks_between(state.next_tick, now, limit)
    if state.missed == "skip" and ticks:
        tick = ticks[-1]
        if now - tick > min(SKIP_AGE, sched.interval_at(tick)):
            ticks = []
    new = dataclasses.replace(
        state,
        next_tick=sched.next_after(now),
        last_tick=ticks[-1] if ticks else state.last_tick,
        updated=now,
        version=state.version + 1,
    )
    return ticks, new


def resumed(state: ScheduleState, now: float) -> ScheduleState:
    """Paused -> running: the next tick is the first after now (the pause's ticks are not
    caught up)."""
    return dataclasses.replace(
        state,
        paused=False,
        next_tick=from_state(state).next_after(now),
        updated=now,
        version=state.version + 1,
    )


def paused(state: ScheduleState, now: float) -> ScheduleState:
    return dataclasses.replace(state, paused=True, updated=now, version=state.version + 1)


def every_seconds(every: timedelta | float | int) -> float:
    """``every=`` as seconds (a timedelta or a number)."""
    if isinstance(every, timedelta):
        return every.total_seconds()
    if isinstance(every, int | float) and not isinstance(every, bool):
        return float(every)
    raise ConfigError(f"every must be a timedelta or seconds, not {every!r}")


__all__ = [
    "MAX_CATCH_UP",
    "MISSED",
    "Schedule",
    "check_cron",
    "due",
    "every_seconds",
    "from_state",
    "paused",
    "resumed",
    "sync",
    "tick_iso",
    "tick_key",
    "zone",
]
