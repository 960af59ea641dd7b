"""Rows of the MySQL tables as lmq's models: the shared conversions (``..rows``), with
``created`` read from a DATETIME column."""

from __future__ import annotations

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
    return shared.task_from_row(r, created=created_text)


def dead_from_row(r: dict[str, Any]) -> DeadLetter:
    return shared.dead_from_row(r, created=created_text)
