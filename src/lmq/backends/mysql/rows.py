"""Rows of the MySQL tables as lmq's models, and the schema-file splitter."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ...models import DeadLetter, Task, TaskError, utc_from_epoch
from ...payload import loads_lenient


def split_sql(sql: str) -> list[str]:
    """Statements of a schema file: comment lines dropped first (they may hold a ';')."""
    code = "\n".join(ln for ln in sql.splitlines() if not ln.strip().startswith("--"))
    return [text for chunk in code.split(";") if (text := chunk.strip())]


def error_line(error: TaskError) -> str:
    return f"{error.type}: {error.message}" if error.message else error.type


def error_json(error: TaskError) -> str:
    return json.dumps(error.to_json(), ensure_ascii=False)


def parse_errors(text: str | None) -> tuple[TaskError, ...]:
    if not text:
        return ()
    try:
        items = json.loads(text)
    except ValueError:
        return ()
    out = []
    for e in items if isinstance(items, list) else []:
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
    """`created` as text: a DATETIME comes back as a datetime (or, if invalid, a str)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _epoch(value: Any) -> datetime | None:
    return utc_from_epoch(None if value is None else float(value))


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
        next_run=_epoch(r["next_run"]),
        created=text(r["created"]),
        updated=_epoch(r["updated"]),
        locked_by=r["locked_by"],
        locked_until=_epoch(r["locked_until"]),
        last_error=r["last_error"],
        unique_key=r["unique_key"],
        errors=parse_errors(r["errors"]),
        dead_letter_id=r["dead_letter_id"],
    )


def dead_from_row(r: dict[str, Any]) -> DeadLetter:
    died = _epoch(r["died_at"])
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
        requeued_at=_epoch(r["requeued_at"]),
    )
