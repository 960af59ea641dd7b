"""Running handlers: the eager-start wrapper, the event loop choice, error records."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable, Coroutine, Generator
from datetime import UTC, datetime
from typing import Any

from ..exceptions import ConfigError, Discard, Retry
from ..models import TaskError

TRACEBACK_LIMIT = 8000


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when asked for (or, with ``auto``, when it is installed)."""
    if kind == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise ConfigError("--loop uvloop needs uvloop: pip install 'lmq[uvloop]'") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class Resume:
    """Awaitable that continues a coroutine already started by ``_start_async``.

    It hands every future the coroutine yields to the driving Task unchanged and passes
    results, exceptions and cancellation back in, so the coroutine cannot tell it was
    started outside a Task.
    """

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.first
        self.first = None
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # cancellation (or a thrown error): pass it in
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def type_name(exc: BaseException) -> str:
    cls = type(exc)
    mod = cls.__module__
    if mod in ("builtins", "lmq.exceptions"):
        return cls.__qualname__
    return f"{mod}.{cls.__qualname__}"


def task_error(attempt: int, exc: BaseException, with_traceback: bool) -> TaskError:
    tb = None
    if with_traceback and not isinstance(exc, (Retry, Discard)):
        tb = "".join(traceback.format_exception(exc))
        if len(tb) > TRACEBACK_LIMIT:
            tb = "…" + tb[-TRACEBACK_LIMIT:]
    return TaskError(attempt, datetime.now(UTC), type_name(exc), str(exc), tb)


def one_line(error: TaskError) -> str:
    text = f"{error.type}: {error.message}" if error.message else error.type
    return text.replace("\n", " ")[:500]


__all__ = ["TRACEBACK_LIMIT", "Resume", "loop_factory", "one_line", "task_error", "type_name"]
