"""Small helpers shared by the conformance tests (backend-neutral)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import lmq
from lmq.backends import Backend
from lmq.models import (
    BuryOutcome,
    Claimed,
    ClaimRequest,
    CompleteBatch,
    RetryOutcome,
    TaskError,
    TaskId,
)
from lmq.retry import fingerprint

EMPTY = {"pending": 0, "processing": 0, "done": 0, "dead": 0}


def claim(
    backend: Backend,
    worker: str = "w1",
    limit: int = 100,
    lease: float = 60.0,
    queues: tuple[str, ...] | None = None,
) -> list[Claimed]:
    return backend.claim(ClaimRequest(worker, limit, lease, queues)).tasks


def ids(tasks: list[Claimed]) -> list[TaskId]:
    return [t.id for t in tasks]


def error(message: str = "boom", etype: str = "ValueError", attempt: int = 1) -> TaskError:
    return TaskError(attempt, datetime.now(UTC), etype, message, f"Traceback: {message}")


def retry(
    task_id: TaskId, delay: float = 0.0, message: str = "boom", attempt: int = 1
) -> RetryOutcome:
    return RetryOutcome(task_id, delay, error(message, attempt=attempt))


def burial(
    task_id: TaskId,
    message: str = "boom",
    etype: str = "ValueError",
    task_name: str = "t",
    attempt: int = 1,
    max_attempts: int = 5,
) -> BuryOutcome:
    return BuryOutcome(
        task_id,
        f"attempts used up ({attempt}/{max_attempts})",
        error(message, etype, attempt),
        fingerprint(task_name, etype, message),
        max_attempts,
    )


def complete(backend: Backend, worker: str = "w1", **outcomes: Any) -> None:
    backend.complete(CompleteBatch(worker, **outcomes))


def kill(
    q: lmq.Queue,
    task_name: str = "t",
    message: str = "boom",
    etype: str = "ValueError",
    **enqueue: Any,
) -> tuple[TaskId, lmq.DeadLetter]:
    """Enqueue one task, claim it and bury it; return its id and its dead letter.

    Other tasks the claim happens to take are released (back to pending, attempt refunded).
    """
    task_id = q.enqueue(task_name, **enqueue)
    backend = q.backend
    claimed = claim(backend, "killer")
    (got,) = [c for c in claimed if c.id == task_id]
    others = [c.id for c in claimed if c.id != task_id]
    complete(
        backend, "killer", burials=[burial(got.id, message, etype, task_name)], released=others
    )
    task = q.get(task_id)
    assert task is not None and task.dead_letter_id is not None
    return task_id, q.dead_letter(task.dead_letter_id)


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll until ``predicate()`` is truthy; return its value (fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def run_burst(queue: lmq.Queue, **settings: Any) -> int:
    options: dict[str, Any] = {
        "burst": True,
        "install_signal_handlers": False,
        "idle_poll": 0.05,
        "concurrency": 4,
        # in-process runs use asyncio's own loop; the integration tests' `lmq worker`
        # processes take the default (uvloop, installed with the test extra)
        "loop": "asyncio",
    }
    options.update(settings)
    return lmq.Worker(queue, lmq.WorkerSettings(**options)).run()
