"""The worker (``lmq worker``): an asyncio supervisor, and a process parent for -p N."""

from .core import Stats, Worker, WorkerSettings

__all__ = ["Stats", "Worker", "WorkerSettings"]
