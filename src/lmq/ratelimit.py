"""Rate limits: GCRA slot reservations, as pure functions over a stored :class:`RateState`.

``calls`` per ``per`` seconds gives a slot spacing ``T = per / calls``; ``burst`` slots may
be back to back.  The stored ``tat`` (theoretical arrival time) is when the next slot
would be free if no burst were allowed; a slot at time ``t`` is free when
``t >= tat - (burst - 1) * T``.  So over any window ``W`` the slots granted number at most
``W / T + burst``, however many workers reserve them.

A worker reserves the slots falling within the next ~0.5 s (at most its free slots) by
compare-and-set, claims that many tasks with a rate claim, starts each at its slot time
and gives back the slots it could not fill (only if nobody reserved after it: the row's
version is still the one it wrote).  No I/O here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .exceptions import ConfigError
from .models import RateState

Key = str | Callable[[Mapping[str, Any]], "str | None"] | None

HORIZON = 0.5  # seconds of slots a worker reserves at a time


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``calls`` per ``per`` seconds across all workers, ``burst`` back to back.

    ``key``: a rate-limit name, a callable computing one from the payload (None from it:
    not limited), or None for the task's name.
    """

    calls: int
    per: float = 1.0
    burst: int = 1
    key: Key = None

    def __post_init__(self) -> None:
        check_rate(self.calls, self.per, self.burst)
        k = self.key
        if k is not None and not callable(k) and (type(k) is not str or not k):
            raise ConfigError("a rate-limit key is a non-empty name, a callable or None")
        if type(k) is str and len(k) > 191:
            raise ConfigError("rate-limit names are at most 191 characters")

    @property
    def spacing(self) -> float:
        return self.per / self.calls

    def with_key(self, key: Key) -> RateLimit:
        return dataclasses.replace(self, key=key)


def check_rate(calls: object, per: object, burst: object) -> None:
    """Raise ConfigError (one line) for a rate that cannot work."""
    if type(calls) is not int or calls < 1:
        raise ConfigError(f"a rate limit's calls must be an integer >= 1, not {calls!r}")
    if (
        not isinstance(per, int | float)
        or isinstance(per, bool)
        or not math.isfinite(per)
        or per <= 0
    ):
        raise ConfigError(f"a rate limit's per must be seconds > 0, not {per!r}")
    if type(burst) is not int or burst < 1:
        raise ConfigError(f"a rate limit's burst must be an integer >= 1, not {burst!r}")


def fresh(name: str, limit: RateLimit) -> RateState:
    """The row for a rate limit never stored (version 0)."""
    return RateState(name=name, calls=limit.calls, per=limit.per, burst=limit.burst)


def reserve(
    state: RateState,
    limit: RateLimit,
    now: float,
    n: int,
    horizon: float = HORIZON,
) -> tuple[list[float], RateState | None]:
    """Up to ``n`` slot times within ``[now, now + horizon]``, earliest first, and the row
    that grants them (None when no slot falls in the horizon).  The policy in force is
    ``limit`` (the row takes its calls/per/burst: a changed declaration applies)."""
    t = limit.spacing
    tau = (limit.burst - 1) * t
    tat = state.tat  # (an idle limit's old tat: its first slots are now, at most burst)
    slots: list[float] = []
    end = now + horizon
    while len(slots) < n:
        slot = max(now, tat - tau)
        if slot > end:
            break
        slots.append(slot)
        tat = max(tat, slot) + t
    if not slots:
        return [], None
    return slots, dataclasses.replace(
        state,
        calls=limit.calls,
        per=limit.per,
        burst=limit.burst,
        tat=tat,
        updated=now,
        version=state.version + 1,
    )


def give_back(state: RateState, unused: int, now: float) -> RateState | None:
    """Return the last ``unused`` slots of the reservation that made ``state`` (store it
    only if the row's version is still ``state.version``).  None when nothing to return."""
    if unused <= 0:
        return None
    t = state.per / state.calls
    return dataclasses.replace(
        state, tat=state.tat - unused * t, updated=now, version=state.version + 1
    )


def next_free(state: RateState, limit: RateLimit, now: float) -> float:
    """Seconds until the next slot is free (0 if one is now)."""
    t = limit.spacing
    return max(0.0, state.tat - (limit.burst - 1) * t - now)


__all__ = ["HORIZON", "RateLimit", "check_rate", "fresh", "give_back", "next_free", "reserve"]
