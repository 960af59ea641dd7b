"""A thread pool for ``def`` handlers, lighter than ``run_in_executor``.

``loop.run_in_executor`` makes two futures per call and wakes the loop once per result.
Here a job is a plain tuple on a ``SimpleQueue``; finished jobs go into a deque and the
loop is woken once for however many have finished since it last looked.

Threads are started only as jobs need them, up to ``size`` (the worker's concurrency):
when a thread takes a job and more are waiting with no thread idle, it starts another.
Quick handlers so run on a few threads (less GIL contention); slow ones (blocking HTTP)
soon get one thread each.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

Result = tuple[Any, BaseException | None, float]  # (token, error or None, seconds)


class SyncPool:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        size: int,
        on_results: Callable[[list[Result]], None],
    ) -> None:
        self._loop = loop
        self._size = size
        self._on_results = on_results
        self._jobs: queue.SimpleQueue[tuple[Any, Callable[..., Any], dict[str, Any]] | None] = (
            queue.SimpleQueue()
        )
        self._results: collections.deque[Result] = collections.deque()
        self._scheduled = False
        self._threads: list[threading.Thread] = []
        self._outstanding = 0  # submitted and not yet reported (loop thread only)
        self._idle = 0  # threads waiting for a job
        self._lock = threading.Lock()

    def submit(self, token: Any, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        self._outstanding += 1
        self._jobs.put((token, fn, kwargs))
        if not self._threads:
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            if len(self._threads) >= self._size:
                return
            t = threading.Thread(
                target=self._work, name=f"lmq-sync-{len(self._threads)}", daemon=True
            )
            self._threads.append(t)
        t.start()

    def _work(self) -> None:
        jobs, results, perf = self._jobs, self._results, time.perf_counter
        lock = self._lock
        while True:
            with lock:
                self._idle += 1
            job = jobs.get()
            with lock:
                self._idle -= 1
                busy = self._idle <= 0 and not jobs.empty()
            if job is None:
                return
            if busy and len(self._threads) < self._size:
                self._spawn()  # jobs are waiting and nobody is free to take them
            token, fn, kwargs = job
            start = perf()
            try:
                fn(**kwargs)
                error: BaseException | None = None
            except BaseException as exc:  # the handler's failure is the task's outcome
                error = exc
            results.append((token, error, perf() - start))
            del job, token, fn, kwargs, error
            if not self._scheduled:
                self._scheduled = True
                try:
                    self._loop.call_soon_threadsafe(self._drain)
                except RuntimeError:  # loop closed: the worker is gone, nothing to report
                    return

    def _drain(self) -> None:
        self._scheduled = False  # before popping: a result appended later schedules again
        batch: list[Result] = []
        pop = self._results.popleft
        while self._results:
            batch.append(pop())
        if batch:
            self._outstanding -= len(batch)
            self._on_results(batch)

    @property
    def busy(self) -> int:
        return self._outstanding

    def shutdown(self) -> None:
        """Ask idle threads to exit; running ones are daemons and die with the process."""
        for _ in self._threads:
            self._jobs.put(None)
