"""Circuit breakers: the decisions, as pure functions over a stored :class:`BreakerState`.

The backend only stores a breaker's row and swaps it by compare-and-set on ``version``;
everything here is the same for every backend and does no I/O.  Every function takes
the row as read and returns the row to store (its version one higher), or None when
nothing changes, so a worker writes only when there is something to say.

    closed --(``failures`` consecutive counted failures; with ``ratio``: at least
              ``min_calls`` calls in the current ``window`` and failed/calls >= ratio)--> open
    open --(now >= retry_at, not forced; one worker wins the CAS)--> half_open (one probe)
    half_open --probe answered--> closed (cool-down back to its base)
    half_open --probe failed--> open (cool-down doubled, at most ``max_cooldown``)
    half_open past ``probe_until`` (the prober died) --> probed again by anyone

Outcomes of ordinary tasks reported while the breaker is open or half-open are ignored
(they were in flight when it opened).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .exceptions import ConfigError, Discard
from .models import BreakerState

Key = str | Callable[[Mapping[str, Any]], "str | None"] | None

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True, slots=True)
class Breaker:
    """A circuit breaker's policy, and (for ``@queue.task(breaker=Breaker(...))``) its key.

    ``key``: a breaker name, a callable computing one from the payload (``lambda p:
    p["host"]``; None from it means "no breaker for this task"), or None for the task's
    name.  ``counts(exc) -> bool`` decides which exceptions count as failures (default:
    :func:`counts_as_failure`).
    """

    key: Key = None
    failures: int = 5
    ratio: float | None = None
    window: float = 60.0
    min_calls: int = 20
    cooldown: float = 30.0
    max_cooldown: float = 600.0
    counts: Callable[[BaseException], bool] | None = None

    def __post_init__(self) -> None:
        check_policy(
            self.failures,
            self.ratio,
            self.window,
            self.min_calls,
            self.cooldown,
            self.max_cooldown,
            self.counts,
        )
        k = self.key
        if k is not None and not callable(k) and (type(k) is not str or not k):
            raise ConfigError("a breaker key is a non-empty name, a callable or None")
        if type(k) is str and len(k) > 191:
            raise ConfigError("breaker names are at most 191 characters")

    def with_key(self, key: Key) -> Breaker:
        return dataclasses.replace(self, key=key)

    def counted(self, exc: BaseException) -> bool:
        """Does this exception count as a failure of the service behind the breaker?"""
        if self.counts is not None:
            return bool(self.counts(exc))
        return counts_as_failure(exc)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_policy(
    failures: object,
    ratio: object,
    window: object,
    min_calls: object,
    cooldown: object,
    max_cooldown: object,
    counts: object,
) -> None:
    """Raise ConfigError (one line) for a policy that cannot work."""
    if type(failures) is not int or failures < 1:
        raise ConfigError(f"breaker failures must be an integer >= 1, not {failures!r}")
    if ratio is not None and (not _number(ratio) or not 0 < ratio <= 1):  # type: ignore[operator]
        raise ConfigError(f"breaker ratio must be in (0, 1] (or None), not {ratio!r}")
    if not _number(window) or window <= 0:  # type: ignore[operator]
        raise ConfigError(f"breaker window must be seconds > 0, not {window!r}")
    if type(min_calls) is not int or min_calls < 1:
        raise ConfigError(f"breaker min_calls must be an integer >= 1, not {min_calls!r}")
    if not _number(cooldown) or cooldown <= 0:  # type: ignore[operator]
        raise ConfigError(f"breaker cooldown must be seconds > 0, not {cooldown!r}")
    if not _number(max_cooldown) or max_cooldown < cooldown:  # type: ignore[operator]
        raise ConfigError(
            f"breaker max_cooldown must be seconds >= cooldown ({cooldown!r}), not {max_cooldown!r}"
        )
    if counts is not None and not callable(counts):
        raise ConfigError("breaker counts must be a callable(exc) -> bool (or None)")


def _status(exc: BaseException) -> int | None:
    for value in (
        getattr(exc, "status_code", None),
        getattr(exc, "status", None),
        getattr(getattr(exc, "response", None), "status_code", None),
    ):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def counts_as_failure(exc: BaseException) -> bool:
    """The default rule: every exception counts except :class:`lmq.Discard` and ones that
    look permanent (an HTTP status 4xx other than 408/429 on ``exc.status_code``,
    ``exc.status`` or ``exc.response.status_code``): the service answered."""
    if isinstance(exc, Discard):
        return False
    status = _status(exc)
    return not (status is not None and 400 <= status < 500 and status not in (408, 429))


DEFAULT_POLICY = Breaker()


# --- transitions -------------------------------------------------------------------------


def _next(row: BreakerState, now: float, /, **changes: Any) -> BreakerState:
    return dataclasses.replace(row, updated=now, version=row.version + 1, **changes)


def record(
    state: BreakerState,
    policy: Breaker,
    outcomes: Iterable[bool],
    now: float,
    last_error: str | None = None,
) -> BreakerState | None:
    """Ordinary tasks' outcomes (True: a counted failure, False: the service answered), in
    the order they finished.  Returns the new row (maybe opened), or None if unchanged."""
    if state.state != CLOSED:
        return None  # in flight when it opened: ignored
    failures = state.failures
    window_start, calls, failed = state.window_start, state.window_calls, state.window_failures
    ratio = policy.ratio
    trip = False
    any_failed = False
    for bad in outcomes:
        if ratio is not None:
            if now - window_start >= policy.window:
                window_start, calls, failed = now, 0, 0
            calls += 1
            failed += bad
        if bad:
            failures += 1
            any_failed = True
        else:
            failures = 0
        if ratio is None:
            trip = trip or failures >= policy.failures
        else:
            trip = trip or (calls >= policy.min_calls and failed / calls >= ratio)
        if trip:
            break
    if trip:
        return opened(state, policy, now, failures, last_error)
    if (failures, window_start, calls, failed) == (
        state.failures,
        state.window_start,
        state.window_calls,
        state.window_failures,
    ):
        return None
    return _next(
        state,
        now,
        failures=failures,
        window_start=window_start,
        window_calls=calls,
        window_failures=failed,
        last_error=last_error if any_failed and last_error else state.last_error,
    )


def opened(
    state: BreakerState,
    policy: Breaker,
    now: float,
    failures: int | None = None,
    last_error: str | None = None,
) -> BreakerState:
    """Closed -> open with the base cool-down."""
    cooldown = policy.cooldown
    return _next(
        state,
        now,
        state=OPEN,
        failures=state.failures if failures is None else failures,
        cooldown=cooldown,
        opened_at=now,
        retry_at=now + cooldown,
        probe_by=None,
        probe_until=None,
        trips=state.trips + 1,
        forced=False,
        last_error=last_error or state.last_error,
    )


def probe_due(state: BreakerState, now: float) -> bool:
    """May a worker start a probe now?"""
    if state.state == OPEN:
        return not state.forced and state.retry_at is not None and now >= state.retry_at
    if state.state == HALF_OPEN:
        return state.probe_until is None or now >= state.probe_until
    return False


def start_probe(
    state: BreakerState, worker_id: str, now: float, lease: float
) -> BreakerState | None:
    """Open (cool-down over) or a dead prober's half-open -> half_open, probed by
    ``worker_id`` until ``now + lease``; None when no probe is due."""
    if not probe_due(state, now):
        return None
    return _next(state, now, state=HALF_OPEN, probe_by=worker_id, probe_until=now + lease)


def no_probe(state: BreakerState, now: float, retry_in: float = 1.0) -> BreakerState | None:
    """The prober found no task to probe with: back to open, trying again in ``retry_in``
    seconds (None if the row is no longer that half-open)."""
    if state.state != HALF_OPEN:
        return None
    return _next(state, now, state=OPEN, probe_by=None, probe_until=None, retry_at=now + retry_in)


def probe_result(
    state: BreakerState,
    policy: Breaker,
    failed: bool,
    now: float,
    last_error: str | None = None,
) -> BreakerState | None:
    """A probe task's outcome: answered -> closed; a counted failure -> open again with the
    cool-down doubled.  A probe reported while the breaker is not half-open (a person
    acted meanwhile) counts as an ordinary outcome."""
    if state.state != HALF_OPEN:
        return record(state, policy, [failed], now, last_error)
    if not failed:
        return closed(state, now, policy.cooldown)
    cooldown = min(2 * max(state.cooldown, policy.cooldown), policy.max_cooldown)
    return _next(
        state,
        now,
        state=OPEN,
        cooldown=cooldown,
        retry_at=now + cooldown,
        probe_by=None,
        probe_until=None,
        last_error=last_error or state.last_error,
    )


def closed(state: BreakerState, now: float, cooldown: float | None = None) -> BreakerState:
    """Closed with its counters zeroed (a probe answered, or a person closed it)."""
    return _next(
        state,
        now,
        state=CLOSED,
        failures=0,
        window_start=now,
        window_calls=0,
        window_failures=0,
        cooldown=state.cooldown if cooldown is None else cooldown,
        opened_at=None,
        retry_at=None,
        probe_by=None,
        probe_until=None,
        forced=False,
    )


def forced_open(
    state: BreakerState, now: float, for_seconds: float | None, cooldown: float
) -> BreakerState:
    """Opened by a person: no probes until closed (``for_seconds`` None), or probes as
    usual once ``for_seconds`` have passed."""
    return _next(
        state,
        now,
        state=OPEN,
        cooldown=state.cooldown or cooldown,
        opened_at=now if state.state == CLOSED or state.opened_at is None else state.opened_at,
        retry_at=None if for_seconds is None else now + for_seconds,
        probe_by=None,
        probe_until=None,
        trips=state.trips + (state.state == CLOSED),
        forced=for_seconds is None,
    )


def transition_event(old: BreakerState, new: BreakerState) -> str | None:
    """The log event for a stored change, or None when the state stayed the same."""
    if old.state == new.state:
        return None
    if new.state == OPEN:
        return "breaker_reopened" if old.state == HALF_OPEN else "breaker_opened"
    if new.state == HALF_OPEN:
        return "breaker_half_open"
    return "breaker_closed"


__all__ = [
    "CLOSED",
    "DEFAULT_POLICY",
    "HALF_OPEN",
    "OPEN",
    "Breaker",
    "check_policy",
    "closed",
    "counts_as_failure",
    "forced_open",
    "no_probe",
    "opened",
    "probe_due",
    "probe_result",
    "record",
    "start_probe",
    "transition_event",
]
