"""Redis hashes as lmq's models.

A task is a row of columns (one hash per column, see scripts.lua).  Error histories
are JSON lists; the scripts write ``"at"`` as epoch seconds (no date
formatting in Lua), Python writes ISO 8601: both are read here.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from ...models import (
    BatchInfo,
    BreakerState,
    DeadLetter,
    RateState,
    ScheduleState,
    Task,
    utc_from_epoch,
)
from ...payload import loads_lenient
from ..rows import error_time, parse_errors


def _float(text: str | float | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def task_from_hash(task_id: str, h: dict[str, str | None]) -> Task:
    """A task from its columns (see scripts.lua: ``head`` and ``lease`` are packed)."""
    queue, priority, name, max_attempts, _ = (h.get("head") or "default\x000\0\0\0").split("\0")
    lease = h.get("lease")
    return Task(
        id=task_id,
        queue=queue,
        task_name=name,
        payload=loads_lenient(h.get("payload") or "{}"),
        priority=_int(priority) or 0,
        status=h.get("status") or "pending",
        attempts=_int(h.get("attempts")) or 0,
        max_attempts=_int(max_attempts),
        next_run=utc_from_epoch(_float(h.get("next_run"))),
        created=h.get("created") or None,
        updated=utc_from_epoch(_float(h.get("updated"))),
        locked_by=lease.split("\0", 1)[0] if lease else None,
        locked_until=utc_from_epoch(_float(h.get("locked_until"))),
        last_error=h.get("last_error"),
        unique_key=h.get("unique_key"),
        errors=parse_errors(h.get("errors")),
        dead_letter_id=h.get("dead_letter_id") or None,
        batch=h.get("batch") or None,
        breaker=h.get("breaker"),
        rate_key=h.get("rate_key"),
    )


def dead_from_hash(dead_id: str, h: dict[str, str]) -> DeadLetter:  # one hash per letter
    return DeadLetter(
        id=h.get("id") or dead_id,
        task_id=h.get("task_id", ""),
        queue=h.get("queue") or "default",
        task_name=h.get("task_name", ""),
        payload=loads_lenient(h.get("payload", "{}")),
        priority=_int(h.get("priority")) or 0,
        attempts=_int(h.get("attempts")) or 0,
        max_attempts=_int(h.get("max_attempts")),
        error=h.get("error", ""),
        reason=h.get("reason", ""),
        fingerprint=h.get("fingerprint", ""),
        created=h.get("created") or None,
        died_at=error_time(_float(h.get("died_at")) or 0.0),
        status=h.get("status", "dead"),
        errors=parse_errors(h.get("errors")),
        requeued_at=utc_from_epoch(_float(h.get("requeued_at"))),
        review=h.get("review") or None,
        reviewed_by=h.get("reviewed_by"),
        reviewed_at=utc_from_epoch(_float(h.get("reviewed_at"))),
        review_note=h.get("review_note"),
        requeue_at=utc_from_epoch(_float(h.get("requeue_at"))),
        discarded_at=utc_from_epoch(_float(h.get("discarded_at"))),
    )


def _count(h: dict[str, str], name: str) -> int:
    return max(_int(h.get(name)) or 0, 0)


def batch_from_hash(name: str, h: dict[str, str]) -> BatchInfo:
    """A batch from its hash: the row's fields and the member counters the scripts keep."""
    return BatchInfo(
        name=name,
        total=_count(h, "total"),
        pending=_count(h, "pending"),
        processing=_count(h, "processing"),
        done=_count(h, "done"),
        dead=_count(h, "dead"),
        cancelled=_count(h, "cancelled"),
        created=error_time(_float(h.get("created")) or 0.0),
        last_finished=utc_from_epoch(_float(h.get("last_finished"))),
        completed=utc_from_epoch(_float(h.get("completed"))),
        on_complete=h.get("on_complete_task") or None,
        followup_id=h.get("followup_id") or None,
    )


# --- breaker, rate-limit and schedule rows: one hash each, field = the dataclass field -----

S = TypeVar("S", BreakerState, RateState, ScheduleState)

# the fields that are not text, by how they are read back; an absent field is the
# dataclass default (None for the optional ones)
_KINDS: dict[str, type] = {
    "failures": int,
    "window_calls": int,
    "window_failures": int,
    "trips": int,
    "version": int,
    "calls": int,
    "burst": int,
    "priority": int,
    "window_start": float,
    "cooldown": float,
    "opened_at": float,
    "retry_at": float,
    "probe_until": float,
    "updated": float,
    "per": float,
    "tat": float,
    "every": float,
    "next_tick": float,
    "last_tick": float,
    "declared": float,
    "forced": bool,
    "paused": bool,
}


def state_fields(state: BreakerState | RateState | ScheduleState) -> list[str]:
    """A row as a flat list [field, value, ...] of text, None fields left out (absent)."""
    out: list[str] = []
    for f in fields(state):
        value: Any = getattr(state, f.name)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = str(value)
        out += [f.name, text]
    return out


def state_from_hash(cls: type[S], name: str, flat: list[str]) -> S:
    """The row ``name`` of ``cls`` from HGETALL's flat [field, value, ...] answer."""
    known = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, text in zip(flat[::2], flat[1::2], strict=True):
        if key not in known or key == "name":
            continue
        kind = _KINDS.get(key)
        if kind is bool:
            kwargs[key] = text == "1"
        elif kind is int:
            kwargs[key] = int(text) if text.lstrip("-").isdigit() else int(float(text))
        elif kind is float:
            kwargs[key] = float(text)
        else:
            kwargs[key] = text
    return cls(name=name, **kwargs)
