"""What every backend's rows have in common: error histories, error lines, schema files,
and tasks, dead letters, breakers, rate limits and schedules built from a mapping of
their columns (and back: ``*_values`` give a state's columns for an INSERT/UPDATE).

Each backend reads its rows into something indexable by column name (``sqlite3.Row``,
psycopg's ``dict_row``, a PyMySQL dict) and passes it here with the one conversion that
differs, the ``created`` column (text on SQLite and PostgreSQL, a DATETIME on MySQL).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..models import (
    BreakerState,
    DeadLetter,
    DeadSelector,
    RateState,
    ScheduleState,
    Task,
    TaskError,
    utc_from_epoch,
)
from ..payload import loads_lenient

Row = Any  # a mapping of column name to value: sqlite3.Row, a dict...


def split_sql(sql: str) -> list[str]:
    """Statements of a schema file: comment lines dropped first (they may hold a ';')."""
    code = "\n".join(ln for ln in sql.splitlines() if not ln.strip().startswith("--"))
    return [text for chunk in code.split(";") if (text := chunk.strip())]


def error_line(error: TaskError) -> str:
    """``Type: message``, the one line kept in ``last_error`` and the dead letter."""
    return f"{error.type}: {error.message}" if error.message else error.type


def error_json(error: TaskError) -> str:
    return json.dumps(error.to_json(), ensure_ascii=False)


def error_time(value: Any) -> datetime:
    """An error's ``at``: ISO 8601 text (Python writes it) or epoch seconds (Lua does)."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    try:
        return datetime.fromisoformat(str(value))
    except (TypeError, ValueError):
        return datetime.fromtimestamp(0, UTC)


def parse_errors(value: Any) -> tuple[TaskError, ...]:
    """The ``errors`` column: a JSON list as text, or already decoded (PostgreSQL jsonb).

    Anything malformed (written by another program) reads as no history rather than
    failing the read.
    """
    if not value:
        return ()
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError:
            return ()
    out = []
    for e in value if isinstance(value, list) else []:
        if not isinstance(e, dict):
            continue
        out.append(
            TaskError(
                attempt=int(e.get("attempt") or 0),
                at=error_time(e.get("at")),
                type=str(e.get("type", "")),
                message=str(e.get("message", "")),
                traceback=e.get("traceback"),
            )
        )
    return tuple(out)


def text(value: Any) -> str | None:
    return None if value is None else str(value)


def epoch(value: Any) -> datetime | None:
    """A time column (epoch seconds: float, or Decimal from MySQL arithmetic) as UTC."""
    return utc_from_epoch(None if value is None else float(value))


def optional(r: Row, key: str) -> Any:
    """``r[key]``, or None when the row has no such column (an older SELECT list)."""
    try:
        return r[key]
    except (KeyError, IndexError):
        return None


def task_from_row(r: Row, created: Callable[[Any], str | None] = text) -> Task:
    return Task(
        id=r["id"],
        queue=r["queue"],
        task_name=r["task_name"],
        payload=loads_lenient(r["payload"]),
        priority=r["priority"],
        status=r["status"],
        attempts=r["attempts"],
        max_attempts=r["max_attempts"],
        next_run=epoch(r["next_run"]),
        created=created(r["created"]),
        updated=epoch(r["updated"]),
        locked_by=r["locked_by"],
        locked_until=epoch(r["locked_until"]),
        last_error=r["last_error"],
        unique_key=r["unique_key"],
        errors=parse_errors(r["errors"]),
        dead_letter_id=r["dead_letter_id"],
        breaker=optional(r, "breaker"),
        rate_key=optional(r, "rate_key"),
    )


def dead_from_row(r: Row, created: Callable[[Any], str | None] = text) -> DeadLetter:
    died = epoch(r["died_at"])
    assert died is not None  # NOT NULL column
    return DeadLetter(
        id=r["id"],
        task_id=r["task_id"],
        queue=r["queue"],
        task_name=r["task_name"],
        payload=loads_lenient(r["payload"]),
        priority=r["priority"],
        attempts=r["attempts"],
        max_attempts=r["max_attempts"],
        error=r["error"] or "",
        reason=r["reason"] or "",
        fingerprint=r["fingerprint"] or "",
        created=created(r["created"]),
        died_at=died,
        status=r["status"],
        errors=parse_errors(r["errors"]),
        requeued_at=epoch(r["requeued_at"]),
    )


def check_requeue(
    selector: DeadSelector, payload_json: str | None, delay: float, spread: float
) -> None:
    """The arguments of ``Backend.requeue_dead`` that every backend refuses alike."""
    if payload_json is not None:
        if len({str(i) for i in selector.ids}) != 1:
            raise ValueError("a payload edit re-queues exactly one dead letter, by its id")
        try:
            json.loads(payload_json)
        except ValueError:
            raise ValueError(f"the new payload is not JSON: {payload_json[:80]!r}") from None
    if delay < 0 or spread < 0:
        raise ValueError("delay and spread must be >= 0 seconds")


# --- circuit breakers, rate limits, schedules (issue 5) ------------------------------------
#
# The columns of {prefix}queue_breakers / queue_rate_limits / queue_schedules, in table
# order, and conversions both ways.  ``*_values`` gives plain Python values (bools as
# bool, the schedule's payload as JSON text, ``last_task_id`` as the backend's id type):
# a backend whose driver wants 0/1 for a boolean converts those itself.

BREAKER_COLUMNS = (
    "name",
    "state",
    "failures",
    "window_start",
    "window_calls",
    "window_failures",
    "cooldown",
    "opened_at",
    "retry_at",
    "probe_by",
    "probe_until",
    "trips",
    "forced",
    "last_error",
    "updated",
    "version",
)
RATE_COLUMNS = ("name", "calls", "per", "burst", "tat", "updated", "version")
SCHEDULE_COLUMNS = (
    "name",
    "task_name",
    "queue",
    "payload",
    "priority",
    "cron",
    "every",
    "timezone",
    "missed",
    "next_tick",
    "last_tick",
    "last_task_id",
    "paused",
    "declared",
    "updated",
    "version",
)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _flag(value: Any) -> bool:
    """A boolean column: bool, 0/1 (SQLite, MySQL), or text from Redis ('0', '1', 'true')."""
    if isinstance(value, str | bytes):
        return (value.decode() if isinstance(value, bytes) else value).lower() in ("1", "true")
    return bool(value)


def breaker_from_row(r: Row) -> BreakerState:
    return BreakerState(
        name=str(r["name"]),
        state=str(r["state"] or "closed"),
        failures=int(r["failures"] or 0),
        window_start=float(r["window_start"] or 0.0),
        window_calls=int(r["window_calls"] or 0),
        window_failures=int(r["window_failures"] or 0),
        cooldown=float(r["cooldown"] or 0.0),
        opened_at=_float(r["opened_at"]),
        retry_at=_float(r["retry_at"]),
        probe_by=text(r["probe_by"]),
        probe_until=_float(r["probe_until"]),
        trips=int(r["trips"] or 0),
        forced=_flag(r["forced"]),
        last_error=text(r["last_error"]),
        updated=float(r["updated"] or 0.0),
        version=int(r["version"]),
    )


def breaker_values(state: BreakerState, version: int | None = None) -> dict[str, Any]:
    """The columns of ``state`` (``version`` given: stored with that version instead)."""
    out = {c: getattr(state, c) for c in BREAKER_COLUMNS}
    if version is not None:
        out["version"] = version
    return out


def rate_from_row(r: Row) -> RateState:
    return RateState(
        name=str(r["name"]),
        calls=int(r["calls"]),
        per=float(r["per"]),
        burst=int(r["burst"] or 1),
        tat=float(r["tat"] or 0.0),
        updated=float(r["updated"] or 0.0),
        version=int(r["version"]),
    )


def rate_values(state: RateState, version: int | None = None) -> dict[str, Any]:
    out = {c: getattr(state, c) for c in RATE_COLUMNS}
    if version is not None:
        out["version"] = version
    return out


def schedule_from_row(r: Row, task_id: Callable[[Any], Any] = lambda v: v) -> ScheduleState:
    """``task_id`` converts a stored ``last_task_id`` (Redis: ``str``; SQL: as read)."""
    payload = r["payload"]
    if payload is None:
        payload = "{}"
    elif isinstance(payload, bytes):
        payload = payload.decode()
    elif not isinstance(payload, str):  # a JSON column already decoded (PostgreSQL jsonb)
        payload = json.dumps(payload)
    last = r["last_task_id"]
    return ScheduleState(
        name=str(r["name"]),
        task_name=str(r["task_name"]),
        queue=str(r["queue"] or "default"),
        payload_json=payload,
        priority=int(r["priority"] or 0),
        cron=text(r["cron"]),
        every=_float(r["every"]),
        timezone=str(r["timezone"] or "UTC"),
        missed=str(r["missed"] or "once"),
        next_tick=_float(r["next_tick"]),
        last_tick=_float(r["last_tick"]),
        last_task_id=None if last is None or last == "" else task_id(last),
        paused=_flag(r["paused"]),
        declared=float(r["declared"] or 0.0),
        updated=float(r["updated"] or 0.0),
        version=int(r["version"]),
    )


def schedule_values(state: ScheduleState, version: int | None = None) -> dict[str, Any]:
    """The columns of ``state`` (``payload`` is the JSON text ``payload_json``)."""
    out = {c: getattr(state, c) for c in SCHEDULE_COLUMNS if c != "payload"}
    out["payload"] = state.payload_json
    if version is not None:
        out["version"] = version
    return {c: out[c] for c in SCHEDULE_COLUMNS}
