"""Rows of the PostgreSQL tables (dicts from psycopg's ``dict_row``) as lmq's models."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ...models import DeadLetter, Task, TaskError, utc_from_epoch
from ...payload import loads_lenient


def error_line(error: TaskError) -> str:
    return f"{error.type}: {error.message}" if error.message else error.type


def parse_errors(value: Any) -> tuple[TaskError, ...]:
    """The ``errors`` column (jsonb, already decoded by psycopg; text is accepted too)."""
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
        try:
            at = datetime.fromisoformat(e["at"])
        except (KeyError, TypeError, ValueError):
            at = datetime.fromtimestamp(0, UTC)
        out.append(
            TaskError(
                attempt=int(e.get("attempt") or 0),
                at=at,
                type=str(e.get("type", "")),
                message=str(e.get("message", "")),
                traceback=e.get("traceback"),
            )
        )
    return tuple(out)


def text(value: Any) -> str | None:
    return None if value is None else str(value)


def task_from_row(r: dict[str, Any]) -> Task:
    return Task(
        id=r["id"],
        queue=r["queue"],
        task_name=r["task_name"],
        payload=loads_lenient(r["payload"]),
        priority=r["priority"],
        status=r["status"],
        attempts=r["attempts"],
        max_attempts=r["max_attempts"],
        next_run=utc_from_epoch(r["next_run"]),
        created=text(r["created"]),
        updated=utc_from_epoch(r["updated"]),
        locked_by=r["locked_by"],
        locked_until=utc_from_epoch(r["locked_until"]),
        last_error=r["last_error"],
        unique_key=r["unique_key"],
        errors=parse_errors(r["errors"]),
        dead_letter_id=r["dead_letter_id"],
    )


def dead_from_row(r: dict[str, Any]) -> DeadLetter:
    died = utc_from_epoch(r["died_at"])
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
        created=text(r["created"]),
        died_at=died,
        status=r["status"],
        errors=parse_errors(r["errors"]),
        requeued_at=utc_from_epoch(r["requeued_at"]),
    )
