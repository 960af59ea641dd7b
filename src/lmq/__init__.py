"""lmq: a local message queue for background work.

    import lmq
    queue = lmq.Queue()                  # $LMQ_URL, else sqlite:///lmq.db

    @queue.task(max_attempts=5, timeout=30)
    def sync_product(product_id: int, sku: str) -> None: ...

    sync_product.enqueue(product_id=1, sku="A-1")

Then run ``lmq worker --app yourmodule``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .breaker import Breaker
from .exceptions import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    Discard,
    LmqError,
    NotFound,
    PayloadError,
    Retry,
    SchemaMissing,
    TaskTimeout,
)
from .models import (
    BreakerState,
    DeadLetter,
    RateState,
    ScheduleState,
    Task,
    TaskError,
    WorkerInfo,
)
from .queue import Queue, TaskFunction
from .ratelimit import RateLimit
from .retry import Backoff
from .worker import Worker, WorkerSettings

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "Backoff",
    "Breaker",
    "BreakerState",
    "ConfigError",
    "DeadLetter",
    "Discard",
    "LmqError",
    "NotFound",
    "PayloadError",
    "Queue",
    "RateLimit",
    "RateState",
    "Retry",
    "ScheduleState",
    "SchemaMissing",
    "Task",
    "TaskError",
    "TaskFunction",
    "TaskTimeout",
    "Worker",
    "WorkerInfo",
    "WorkerSettings",
    "__version__",
]
