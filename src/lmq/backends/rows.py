"""What every backend's rows have in common: error histories, error lines, schema files,
and tasks and dead letters built from a mapping of their columns.

Each backend reads its rows into something indexable by column name (``sqlite3.Row``,
psycopg's ``dict_row``, a PyMySQL dict) and passes it here with the one conversion that
differs, the ``created`` column (text on SQLite and PostgreSQL, a DATETIME on MySQL).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..models import DeadLetter, DeadSelector, Task, TaskError, utc_from_epoch
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
