"""Rows of the MySQL tables as lmq's models: the shared conversions (``..rows``, which read
schema 3's breaker and rate_key too), with ``created`` read from a DATETIME column, plus
the columns of schema 2 (a task's batch, the dead letters' review fields)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from ...models import DeadLetter, Task
from .. import rows as shared


def created_text(value: Any) -> str | None:
    """`created` as text: a DATETIME comes back as a datetime (or, if invalid, a str)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def task_from_row(r: dict[str, Any]) -> Task:
    task = shared.task_from_row(r, created=created_text)
    batch = r.get("batch")
    return task if task.batch == batch else dataclasses.replace(task, batch=batch)


def dead_from_row(r: dict[str, Any]) -> DeadLetter:
    dead = shared.dead_from_row(r, created=created_text)
    return dataclasses.replace(
        dead,
        review=r.get("review"),
        reviewed_by=r.get("reviewed_by"),
        reviewed_at=shared.epoch(r.get("reviewed_at")),
        review_note=r.get("review_note"),
        requeue_at=shared.epoch(r.get("requeue_at")),
        discarded_at=shared.epoch(r.get("discarded_at")),
    )
