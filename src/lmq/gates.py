"""The Queue's side of circuit breakers, rate limits and schedules.

:class:`GatesAPI` is mixed into :class:`lmq.Queue`: the declarations
(``queue.breaker``, ``queue.rate_limit``, ``queue.schedule``), the policy look-ups the
worker uses, and the verbs a person uses (``open_breaker``, ``pause_schedule``, ...),
each a compare-and-set loop over the backend's stored row.  The decisions themselves
are in :mod:`lmq.breaker`, :mod:`lmq.ratelimit` and :mod:`lmq.schedule`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from . import breaker as breaker_mod
from . import payload as payload_mod
from . import schedule as schedule_mod
from .breaker import DEFAULT_POLICY, Breaker
from .exceptions import ConfigError, LmqError, NotFound
from .models import BreakerState, NewTask, RateState, ScheduleState, TaskId
from .ratelimit import RateLimit, check_rate
from .schedule import Schedule

if TYPE_CHECKING:
    from .backends import Backend
    from .queue import TaskFunction

KeySpec = str | Callable[[Mapping[str, Any]], "str | None"]
S = TypeVar("S")
_CAS_TRIES = 50


@dataclass(frozen=True, slots=True)
class ScheduleDecl:
    """``queue.schedule(...)`` as given: queue/priority None take the handler's."""

    schedule: Schedule
    queue: str | None
    priority: int | None


# --- a handler's declaration ---------------------------------------------------------------


def check_gate_args(breaker: object, rate_limit: object) -> None:
    """``@queue.task(breaker=..., rate_limit=...)``: ConfigError (one line) if unusable."""
    if breaker is not None and not isinstance(breaker, Breaker) and not callable(breaker):
        if type(breaker) is not str or not breaker:
            raise ConfigError(
                "breaker= takes a breaker name, a callable computing one from the payload, "
                f"or an lmq.Breaker; not {breaker!r}"
            )
        if len(breaker) > 191:
            raise ConfigError("breaker names are at most 191 characters")
    if rate_limit is not None and not isinstance(rate_limit, RateLimit):
        if type(rate_limit) is not str or not rate_limit:
            raise ConfigError(
                "rate_limit= takes the name of a queue.rate_limit(...) declaration or an "
                f"lmq.RateLimit; not {rate_limit!r}"
            )
        if len(rate_limit) > 191:
            raise ConfigError("rate-limit names are at most 191 characters")


def breaker_gate(task_name: str, decl: object) -> tuple[KeySpec, Breaker | None] | None:
    """(key spec, the handler's own policy or None) for a ``breaker=`` declaration."""
    if decl is None:
        return None
    if isinstance(decl, Breaker):
        return (decl.key if decl.key is not None else task_name), decl
    return decl, None  # type: ignore[return-value]  # a name or a callable (checked)


def rate_gate(task_name: str, decl: object) -> tuple[KeySpec, RateLimit | None] | None:
    if decl is None:
        return None
    if isinstance(decl, RateLimit):
        return (decl.key if decl.key is not None else task_name), decl
    return decl, None  # type: ignore[return-value]  # a name (checked)


def compute_key(task_name: str, what: str, spec: KeySpec, payload: Mapping[str, Any]) -> str | None:
    """A task's breaker / rate-limit key: the name, or what the callable makes of the
    payload (None: this task goes through none)."""
    if type(spec) is str:
        return spec
    assert callable(spec)
    try:
        key = spec(payload)
    except Exception as exc:
        raise ValueError(
            f"{task_name}: the {what} key could not be computed from the payload: {exc!r}"
        ) from None
    if key is None:
        return None
    if type(key) is not str or not key:
        raise TypeError(
            f"{task_name}: the {what} key must be a non-empty string (or None), not {key!r}"
        )
    if len(key) > 191:
        raise ValueError(f"{task_name}: the {what} key {key[:40]!r}... is over 191 characters")
    return key


def _seconds(value: object, what: str) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{what} must be seconds > 0, not {value!r}")
    return float(value)


# --- the Queue's verbs ----------------------------------------------------------------


class GatesAPI:
    """Breakers, rate limits and schedules on :class:`lmq.Queue` (a mixin)."""

    if TYPE_CHECKING:
        registry: dict[str, TaskFunction[Any, Any]]
        _breaker_policies: dict[str, Breaker]
        _rate_limits: dict[str, RateLimit]
        _schedules: dict[str, ScheduleDecl]

        @property
        def backend(self) -> Backend: ...

    # --- declarations ---------------------------------------------------------------------

    def breaker(
        self,
        name: str,
        *,
        failures: int = 5,
        ratio: float | None = None,
        window: float = 60.0,
        min_calls: int = 20,
        cooldown: float = 30.0,
        max_cooldown: float = 600.0,
        counts: Callable[[BaseException], bool] | None = None,
    ) -> Breaker:
        """Declare the policy of the breaker called ``name`` (for ``@queue.task(breaker=
        name)``, and for keys computed to that name).  Opens after ``failures``
        consecutive counted failures, or, with ``ratio``, once at least ``min_calls`` calls
        in ``window`` seconds failed at that ratio or more; a probe runs after
        ``cooldown`` seconds, doubled after each failed probe up to ``max_cooldown``.
        Declaring a name again replaces its policy."""
        if type(name) is not str or not name:
            raise ConfigError("a breaker name must be a non-empty string")
        policy = Breaker(name, failures, ratio, window, min_calls, cooldown, max_cooldown, counts)
        self._breaker_policies[name] = policy
        return policy

    def rate_limit(self, name: str, calls: int, *, per: float = 1.0, burst: int = 1) -> RateLimit:
        """Declare the rate limit ``name``: ``calls`` task starts per ``per`` seconds across
        every worker, at most ``burst`` back to back (``@queue.task(rate_limit=name)``).
        Tasks over the limit wait, pending; they never fail for it."""
        if type(name) is not str or not name:
            raise ConfigError("a rate-limit name must be a non-empty string")
        check_rate(calls, per, burst)
        limit = RateLimit(calls, float(per), burst, name)
        self._rate_limits[name] = limit
        return limit

    def schedule(
        self,
        name: str,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        timezone: str = "UTC",
        payload: Mapping[str, Any] | None = None,
        task: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        missed: str = "once",
    ) -> Schedule:
        """Declare a recurring task: ``cron="*/5 * * * *"`` (in ``timezone``) or
        ``every=timedelta(...)`` (or seconds).  Workers store it when they start and
        enqueue ``task`` (default: the schedule's name) with ``payload`` at each tick,
        exactly once however many run.  ``missed``: what to do with ticks that passed
        while no worker ran: ``once`` (one task for the latest), ``all`` (one per tick, at
        most 1,000) or ``skip``.  Idempotent: declaring the same schedule again is a no-op.
        """
        task_name = name if task is None else task
        if type(task_name) is not str or not task_name:
            raise ConfigError(f"schedule {name!r}: task must be a non-empty task name")
        if every is not None:
            every = schedule_mod.every_seconds(every)
        if priority is not None and (type(priority) is not int):
            raise ConfigError(f"schedule {name!r}: priority must be an integer")
        if queue is not None and (type(queue) is not str or not queue):
            raise ConfigError(f"schedule {name!r}: queue must be a non-empty string")
        try:
            payload_json = payload_mod.encode_payload(payload)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"schedule {name!r}: {exc}") from None
        sched = Schedule(
            name=name,
            task_name=task_name,
            payload_json=payload_json,
            cron=cron,
            every=every,
            timezone=timezone,
            missed=missed,
        )
        self._schedules[name] = ScheduleDecl(sched, queue, priority)
        return sched

    def declared_schedules(self) -> list[Schedule]:
        """The schedules declared in code, with the handler's queue and priority filled in."""
        out = []
        for decl in self._schedules.values():
            handler = self.registry.get(decl.schedule.task_name)
            queue = decl.queue or (handler.options.queue if handler else "default")
            priority = decl.priority
            if priority is None:
                priority = handler.options.priority if handler else 0
            out.append(dataclasses.replace(decl.schedule, queue=queue, priority=priority))
        return out

    # --- policies (what the worker applies) -------------------------------------------------

    def breaker_policy(self, key: str, handler: TaskFunction[Any, Any] | None = None) -> Breaker:
        """The policy for breaker ``key``: the handler's own ``lmq.Breaker``, else the
        ``queue.breaker(key, ...)`` declaration, else the defaults."""
        gate = handler.breaker_gate if handler is not None else None
        if gate is not None and gate[1] is not None:
            return gate[1]
        return self._breaker_policies.get(key, DEFAULT_POLICY)

    def rate_policy(
        self, key: str, handler: TaskFunction[Any, Any] | None = None
    ) -> RateLimit | None:
        """The rate limit for ``key``: the handler's ``lmq.RateLimit``, else the
        ``queue.rate_limit(key, ...)`` declaration; None when this app knows neither."""
        gate = handler.rate_gate if handler is not None else None
        if gate is not None and gate[1] is not None:
            return gate[1]
        return self._rate_limits.get(key)

    @property
    def declares_breakers(self) -> bool:
        return bool(self._breaker_policies) or any(
            tf.breaker_gate is not None for tf in self.registry.values()
        )

    def check_gates(self) -> None:
        """ConfigError for a handler naming a rate limit nobody declared (worker start)."""
        for tf in self.registry.values():
            decl = tf.options.rate_limit
            if type(decl) is str and decl not in self._rate_limits:
                raise ConfigError(
                    f"task {tf.name!r} uses rate limit {decl!r}, which is not declared "
                    f"(queue.rate_limit({decl!r}, calls, per=seconds))"
                )

    # --- breakers ---------------------------------------------------------------------------

    def breakers(self) -> list[BreakerState]:
        """Every stored breaker, by name (one is stored once a task behind it finishes or
        a person acts on it)."""
        return self.backend.breakers()

    def _change_breaker(
        self, name: str, change: Callable[[BreakerState, float], BreakerState | None]
    ) -> BreakerState:
        if type(name) is not str or not name:
            raise TypeError("a breaker name must be a non-empty string")
        backend = self.backend
        for _ in range(_CAS_TRIES):
            rows = backend.breakers([name])
            state = rows[0] if rows else BreakerState(name=name)
            new = change(state, time.time())
            if new is None:
                return state
            if backend.put_breaker(new, state.version):
                return new
        raise LmqError(f"breaker {name!r} changed too often to update it; try again")

    def open_breaker(self, name: str, for_seconds: float | None = None) -> BreakerState:
        """Hold breaker ``name`` open: no task behind it is claimed and no probe runs until
        it is closed or reset; with ``for_seconds``, only that long (then probes as
        usual).  Returns the new state."""
        span = None if for_seconds is None else _seconds(for_seconds, "for_seconds")
        base = self.breaker_policy(name).cooldown
        return self._change_breaker(
            name, lambda state, now: breaker_mod.forced_open(state, now, span, base)
        )

    def close_breaker(self, name: str) -> BreakerState:
        """Close breaker ``name`` (counters zeroed, cool-down back to its base): its tasks
        are claimed again at once."""
        base = self.breaker_policy(name).cooldown
        return self._change_breaker(name, lambda state, now: breaker_mod.closed(state, now, base))

    def reset_breaker(self, name: str) -> BreakerState:
        """Forget breaker ``name`` (its row is deleted): closed, as if never tripped."""
        if type(name) is not str or not name:
            raise TypeError("a breaker name must be a non-empty string")
        self.backend.delete_breaker(name)
        return BreakerState(name=name, updated=time.time())

    # --- rate limits ------------------------------------------------------------------------

    def rate_limits(self) -> list[RateState]:
        """Every stored rate limit (stored once a worker has reserved slots of it)."""
        return self.backend.rate_limits()

    # --- schedules --------------------------------------------------------------------------

    def schedules(self) -> list[ScheduleState]:
        """Every stored schedule (a worker stores its app's schedules when it starts)."""
        return self.backend.schedules()

    def _schedule_row(self, name: str) -> ScheduleState:
        if type(name) is not str or not name:
            raise TypeError("a schedule name must be a non-empty string")
        for state in self.backend.schedules():
            if state.name == name:
                return state
        raise NotFound(f"no schedule {name!r} is stored (a worker stores them when it starts)")

    def _change_schedule(
        self, name: str, change: Callable[[ScheduleState, float], ScheduleState | None]
    ) -> ScheduleState:
        for _ in range(_CAS_TRIES):
            state = self._schedule_row(name)
            new = change(state, time.time())
            if new is None:
                return state
            if self.backend.put_schedule(new, state.version):
                return new
        raise LmqError(f"schedule {name!r} changed too often to update it; try again")

    def pause_schedule(self, name: str) -> ScheduleState:
        """Stop firing schedule ``name`` (its ticks pass unfired until resumed)."""
        return self._change_schedule(
            name, lambda s, now: None if s.paused else schedule_mod.paused(s, now)
        )

    def resume_schedule(self, name: str) -> ScheduleState:
        """Fire schedule ``name`` again from its next tick (ticks of the pause are not
        caught up)."""
        return self._change_schedule(
            name, lambda s, now: schedule_mod.resumed(s, now) if s.paused else None
        )

    def run_schedule_now(self, name: str) -> TaskId:
        """Enqueue schedule ``name``'s task now, from the stored row (no app needed); its
        ticks are unchanged.  Returns the task id."""
        state = self._schedule_row(name)
        return self.backend.enqueue([self.schedule_task(state)])[0]

    def schedule_task(self, state: ScheduleState, unique_key: str | None = None) -> NewTask:
        """The task a schedule's tick enqueues (the handler's keys computed, if known)."""
        breaker = rate_key = None
        handler = self.registry.get(state.task_name)
        if handler is not None and handler.gated:
            breaker, rate_key = handler.keys(payload_mod.decode_payload(state.payload_json))
        return NewTask(
            state.task_name,
            state.payload_json,
            state.queue,
            state.priority,
            unique_key=unique_key,
            breaker=breaker,
            rate_key=rate_key,
        )


__all__ = [
    "GatesAPI",
    "ScheduleDecl",
    "breaker_gate",
    "check_gate_args",
    "compute_key",
    "rate_gate",
]
