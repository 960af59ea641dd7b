"""The worker: one asyncio supervisor and its watched side tasks.

* **fetcher** claims as many tasks as there are free slots and starts them: ``async
  def`` handlers as tasks on the loop, ``def`` handlers in :class:`SyncPool`;
* **completer** acknowledges finished tasks in batches (one transaction for done,
  retried and buried tasks together) as soon as any are waiting, so a result is
  written within milliseconds; a slot is free again only once its result is written,
  so a worker never holds more unacknowledged results than its concurrency;
* **lease renewer** extends the leases of held tasks every ``lease / 3`` seconds;
* **heartbeat** upserts the worker's row (written before the first claim);
* **pruner** deletes finished tasks past their retention and stale worker rows;
* **housekeeping** (about once a second) refreshes the paused queues (excluded from
  claims), completes finished batches (enqueueing their follow-ups) and re-queues
  approved dead letters that are due;
* **breakers**, **rate limits** and the **scheduler**, only when the app declares
  them (see :mod:`lmq.worker.gates` and :mod:`lmq.worker.scheduler`).

If a side task dies the worker stops loudly (exit status 1).  Storage calls run on
two dedicated threads (one for the hot path, one for the side tasks), never on the loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from .. import __version__
from ..exceptions import BackendError, Discard, Retry, TaskTimeout
from ..models import (
    BuryOutcome,
    Claimed,
    ClaimRequest,
    ClaimResult,
    CompleteBatch,
    DeferOutcome,
    Heartbeat,
    PruneRequest,
    RenewRequest,
    RetryOutcome,
    TaskError,
    TaskId,
)
from ..payload import MalformedPayload, decode_payload
from ..queue import DEFAULT_MAX_ATTEMPTS, Queue, TaskFunction
from ..retry import fingerprint
from ..url import mask
from .gates import Gates
from .pool import Result, SyncPool
from .running import Resume, loop_factory, one_line, task_error
from .scheduler import Scheduler

log = logging.getLogger("lmq.worker")
T = TypeVar("T")
_INLINE_AFTER_LOSS = 60.0  # seconds after a lost backend before claims run on the loop


@dataclass
class WorkerSettings:
    queues: tuple[str, ...] | None = None  # None: every queue
    concurrency: int = 10
    lease: float = 30.0
    burst: bool = False
    grace: float = 10.0
    heartbeat_interval: float = 5.0
    keep_done: float = 86400.0  # seconds a finished task is kept (0: deleted at once)
    # seconds a dead letter is kept once resolved (re-queued, discarded or rejected);
    # None keeps them; unreviewed ones are always kept
    keep_dead: float | None = 7 * 86400.0
    prune_interval: float = 60.0  # (1 s when keep_done is 0)
    stale_worker_after: float = 3600.0  # heartbeat rows older than this are removed
    idle_poll: float = 1.0  # longest idle wait without a wake-up
    housekeeping_interval: float = 1.0  # paused queues, batches, approved re-queues
    install_signal_handlers: bool = True
    loop: str = "auto"  # auto (uvloop when installed) | asyncio | uvloop

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.lease < 1:
            raise ValueError("lease must be at least 1 second")
        if self.grace < 0:
            raise ValueError("grace must be >= 0 seconds")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise ValueError("loop must be auto, asyncio or uvloop")


@dataclass(slots=True)
class _Running:
    claimed: Claimed
    handler: TaskFunction[Any, Any] | None
    started: float
    max_attempts: int  # the row's, else the handler's
    task: asyncio.Task[None] | None = None  # async handlers
    timed_out: bool = False
    deadline: float = math.inf  # monotonic time its timeout runs out
    settled: bool = False  # an outcome is recorded (maybe not yet written)
    finished: bool = True  # its code has returned (False while a sync thread still runs)
    breaker: str | None = None  # the breaker its outcome is reported to
    probe: bool = False  # it probes a half-open breaker


@dataclass
class Stats:
    claimed: int = 0
    succeeded: int = 0
    retried: int = 0
    dead: int = 0
    rescued: int = 0
    started: float = field(default_factory=time.time)


class Worker:
    """Runs tasks of a :class:`~lmq.Queue`.  ``run()`` blocks; ``arun()`` is the coroutine.

    Embed it with ``install_signal_handlers=False`` and call :meth:`stop` to shut down.
    """

    def __init__(self, queue: Queue, settings: WorkerSettings | None = None) -> None:
        self.queue = queue
        self.settings = s = settings or WorkerSettings()
        self.backend = queue.backend
        self.registry = queue.registry
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stats = Stats()
        self.exit_code = 0
        self._running: dict[TaskId, _Running] = {}
        self._done: list[TaskId] = []
        self._retries: list[RetryOutcome] = []
        self._burials: list[BuryOutcome] = []
        self._released: list[TaskId] = []
        self._deferred: list[DeferOutcome] = []  # not run: held back by a breaker / rate limit
        self._to_free: list[_Running] = []  # settled outcomes waiting for their write
        self._inflight = 0  # claimed and not yet acknowledged (or thread still running)
        self._bind_cache: dict[tuple[str, frozenset[str]], str | None] = {}
        self._stopping = False
        self._signals = 0
        self._claim = functools.partial(
            ClaimRequest, worker_id=self.id, lease=s.lease, queues=s.queues
        )
        self._paused: tuple[str, ...] = ()  # paused queues this worker would claim
        self._ready_args: tuple[Any, ...] = (s.queues,)  # has_ready / next_due arguments
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._batch = max(1, (s.concurrency + 1) // 2)
        self._reserved = 0  # slots promised to a claim under way
        self._probe_hold = 0  # 1: a breaker probe waits for the next free slot
        self._more = False  # the last claim was full: more tasks are probably ready
        self._announced = False  # a wake-up said tasks were just made ready
        self._lost_at = -_INLINE_AFTER_LOSS  # when a storage step last lost the backend
        # a backend without wake-ups may ask idle workers to look more often (MySQL)
        self._idle_poll = min(s.idle_poll, getattr(self.backend, "poll_interval", s.idle_poll))
        self._flushing = False  # the completer is writing (and maybe claiming)
        queue.check_gates()
        gates = Gates(self)
        self._gates: Gates | None = gates if (gates.uses_breakers or gates.uses_rates) else None
        self._rate_wake: Callable[[], None] | None = (
            gates.wake if self._gates is not None and gates.uses_rates else None
        )
        self._scheduler = Scheduler(self)

    # --- public ---------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped (or, with ``burst``, until nothing is ready); the exit status."""
        with asyncio.Runner(loop_factory=loop_factory(self.settings.loop)) as runner:
            return runner.run(self.arun())

    def stop(self) -> None:
        """Ask the worker to shut down gracefully (thread-safe)."""
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._begin_stop, "stop requested")

    async def arun(self) -> int:
        s = self.settings
        self._loop = loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._ack_event = asyncio.Event()
        self._slot_event = asyncio.Event()
        self._timed = asyncio.Event()  # a task with a timeout started (see _timeouts)
        self._db_pool = ThreadPoolExecutor(1, thread_name_prefix="lmq-db")
        self._side_pool = ThreadPoolExecutor(1, thread_name_prefix="lmq-db-side")
        self._sync = SyncPool(loop, s.concurrency, self._on_sync_results)
        # breakers and rate limits, and schedules, each on a thread of their own
        self._gates_pool = ThreadPoolExecutor(1, thread_name_prefix="lmq-db-gates")
        self._sched_pool = ThreadPoolExecutor(1, thread_name_prefix="lmq-db-schedules")
        wake = None
        try:
            self.backend.prepare_worker()
            await self._side(self.backend.heartbeat, self._beat())  # before the first claim
            self._set_paused(await self._side(self.backend.paused_queues))
            if self._gates is not None and self._gates.uses_breakers:
                self._gates.view = {b.name: b for b in await self._side(self.backend.breakers)}
            log.info(
                "worker %s started: %s, queues=%s, concurrency=%d, lease=%gs, tasks=%s",
                self.id,
                self.backend.url,
                ",".join(s.queues) if s.queues else "*",
                s.concurrency,
                s.lease,
                ",".join(sorted(self.registry)) or "(none)",
                extra={
                    "event": "worker_started",
                    "worker": self.id,
                    "url": self.backend.url,
                    "pid": os.getpid(),
                    "version": __version__,
                    "queues": list(s.queues) if s.queues else None,
                    "concurrency": s.concurrency,
                    "lease": s.lease,
                    "grace": s.grace,
                },
            )
            if s.install_signal_handlers:
                self._install_signals()
            wake = self.backend.wake_source()
            if wake is not None:
                announces = bool(getattr(wake, "announces_work", False))

                rate_wake = self._rate_wake

                def woken() -> None:  # on the loop
                    self._announced = self._announced or announces
                    self._wake.set()
                    if rate_wake is not None:
                        rate_wake()

                def poke() -> None:  # called from the backend's watcher thread
                    loop.call_soon_threadsafe(woken)

                wake.start(poke)
            parts: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
                "fetcher": self._fetcher,
                "completer": self._completer,
                "lease renewer": self._renewer,
                "heartbeat": self._heartbeater,
                "pruner": self._pruner,
                "timeouts": self._timeouts,
                "housekeeping": self._housekeeping,
            }
            if self._gates is not None:
                parts.update(self._gates.parts())
            parts.update(self._scheduler.parts())
            side: dict[asyncio.Task[Any], str] = {
                loop.create_task(fn(), name=f"lmq {name}"): name for name, fn in parts.items()
            }
            stop_wait = loop.create_task(self._stop_event.wait())
            done, _ = await asyncio.wait([*side, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is stop_wait or t.cancelled():
                    continue
                exc = t.exception()
                name = side[t]
                if exc is not None:
                    log.error(
                        "worker component %r died: %r; stopping",
                        name,
                        exc,
                        exc_info=exc,
                        extra={"event": "component_died"},
                    )
                    self.exit_code = 1
                elif name != "fetcher":
                    log.error("worker component %r ended unexpectedly; stopping", name)
                    self.exit_code = 1
            await self._shutdown(side)
        finally:
            if wake is not None:
                wake.stop()
            self._sync.shutdown()
            self._db_pool.shutdown(wait=False)
            self._side_pool.shutdown(wait=False)
            self._gates_pool.shutdown(wait=False)
            self._sched_pool.shutdown(wait=False)
        return self.exit_code

    # --- plumbing -------------------------------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._loop.run_in_executor(self._db_pool, fn, *args)

    async def _here(self, fn: Callable[..., T], *args: Any) -> T:
        """A storage step on the loop's own thread (see the fetcher: only when idle)."""
        return fn(*args)

    async def _side(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._loop.run_in_executor(self._side_pool, fn, *args)

    def _beat(self) -> Heartbeat:
        s = self.settings
        return Heartbeat(
            worker_id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            queues=",".join(s.queues) if s.queues else "*",
            concurrency=s.concurrency,
            running=self._inflight,
            done=self.stats.succeeded,
            started=self.stats.started,
        )

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                return

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning(
                "second %s: exiting at once; unfinished tasks return when their leases expire",
                sig.name,
                extra={"event": "worker_killed", "signal": sig.name, "worker": self.id},
            )
            logging.shutdown()
            os._exit(1)
        # DEBUG: the console already says "SIGTERM received: stopping…" (worker_stopping)
        log.debug(
            "%s received",
            sig.name,
            extra={"event": "signal", "signal": sig.name, "worker": self.id},
        )
        self._begin_stop(f"{sig.name} received")

    def _begin_stop(self, why: str) -> None:
        if not self._stopping:
            self._stopping = True
            log.info(
                "%s: stopping; running tasks get %gs to finish",
                why,
                self.settings.grace,
                extra={"event": "worker_stopping", "reason": why},
            )
            self._wake.set()
            self._slot_event.set()
            self._stop_event.set()

    async def _retrying(self, name: str, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run one storage step, waiting out a lost backend instead of dying."""
        delay, lost = 0.1, 0.0
        while True:
            try:
                result = await fn()
            except BackendError as exc:
                self._lost_at = time.monotonic()
                if not lost:
                    log.warning(
                        "%s: lost the backend (%s); retrying",
                        name,
                        exc,
                        extra={"event": "backend_lost", "step": name, "error": str(exc)},
                    )
                    lost = time.monotonic()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if lost:
                down = time.monotonic() - lost
                log.info(
                    "%s: backend is back after %.1fs",
                    name,
                    down,
                    extra={"event": "backend_back", "step": name, "down": round(down, 3)},
                )
            return result

    # --- fetcher --------------------------------------------------------------------------

    async def _fetcher(self) -> None:
        """Claims when slots are free and the completer is not refilling them.

        While tasks flow (the last claim was full), the completer claims in the same
        transaction that acknowledges, so the fetcher mostly handles the start, wake-ups
        after idling, and burst-mode draining.
        """
        s = self.settings
        claim, backend, wake = self.backend.claim, self.backend, self._wake
        while not self._stopping:
            free = s.concurrency - self._inflight - self._reserved - self._probe_hold
            # while tasks flow, the completer refills the slots its acknowledgement frees
            completer_refills = self._more and (self._flushing or bool(self._to_free))
            if free <= 0 or (completer_refills and free < self._batch):
                self._slot_event.clear()
                await self._slot_event.wait()
                continue
            wake.clear()
            announced, self._announced = self._announced, False
            if (
                not self._more
                and not s.burst
                and not announced  # the backend said so: claim without asking first
                and not await self._retrying(
                    "check", functools.partial(self._db, backend.has_ready, *self._ready_args)
                )
            ):
                # idle: a cheap read instead of a write transaction on every wake-up
                await self._wait_idle(await self._idle_timeout())
                continue
            # at most half the slots per claim: the next claim overlaps the running batch
            limit = min(free, self._batch)
            # Woken by an announced task with nothing else to do: the claim runs on the
            # loop itself, sparing the two thread hand-offs (about half a millisecond of
            # pickup on a 2-core VM).  Nothing is running whose loop time it could take;
            # never while the backend was lost lately (a claim waiting on an unreachable
            # server would hold the loop for its connect timeout).
            inline = (
                announced
                and self._inflight == 0
                and self._reserved == 0
                and not self._flushing
                and not self._to_free
                and time.monotonic() - self._lost_at > _INLINE_AFTER_LOSS
            )
            self._reserved += limit
            try:
                result = await self._retrying(
                    "claim",
                    functools.partial(
                        self._here if inline else self._db, claim, self._claim(limit=limit)
                    ),
                )
            finally:
                self._reserved -= limit
            self._claimed(result, limit)
            if self._more:
                continue  # there may be more ready: claim again as slots free up
            # fewer than asked: the ready set is empty right now; wait for a change
            if self._stopping:
                break
            if s.burst:
                drained = not result.tasks and self._inflight == 0
                if drained and await self._burst_settle():
                    continue  # a batch's follow-up task was just enqueued
                if drained and not await self._db(backend.has_ready, *self._ready_args):
                    if not await self._gates_busy():
                        log.info("burst: nothing ready; stopping", extra={"event": "burst_done"})
                        self._begin_stop("burst finished")
                        return
                    await self._wait_idle(0.05)  # rate-limited tasks wait for their slots
                    continue
                if result.tasks or self._inflight:
                    await self._wait_idle(0.05)
                continue
            await self._wait_idle(await self._idle_timeout())

    async def _gates_busy(self) -> bool:
        """Burst mode: rate-limited tasks ready or waiting for their slot?"""
        gates = self._gates
        if gates is None or not gates.uses_rates:
            return False
        if gates.waiting or self._reserved:
            return True
        return bool(await self._retrying("rate keys", lambda: self._side(gates.burst_busy)))

    def _claimed(self, result: ClaimResult, limit: int) -> None:
        if result.rescued:
            self.stats.rescued += result.rescued
            log.warning(
                "rescued %d task(s) whose worker stopped renewing the lease (died or hung)",
                result.rescued,
                extra={"event": "rescued", "rescued": result.rescued},
            )
        self._more = len(result.tasks) == limit
        if result.tasks:
            self._start_all(result.tasks)
        if not self._more:
            self._slot_event.set()  # the fetcher takes over claiming

    async def _idle_timeout(self) -> float:
        try:
            due = await self._db(self.backend.next_due, *self._ready_args)
        except BackendError:
            return self._idle_poll
        poll = self._idle_poll
        return poll if due is None else min(poll, max(due, 0.001))

    async def _wait_idle(self, timeout: float) -> None:
        """Sleep until the backend signals a change, a slot frees up, or ``timeout``."""
        if self._wake.is_set():
            return
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _start_all(self, tasks: list[Claimed]) -> None:
        self.stats.claimed += len(tasks)
        self._inflight += len(tasks)
        now, debug = time.monotonic(), self._debug
        start_async = self._start_async
        for c in tasks:
            tf = self.registry.get(c.task_name)
            limit = c.max_attempts or (tf.options.max_attempts if tf else DEFAULT_MAX_ATTEMPTS)
            rt = _Running(c, tf, now, limit)
            self._running[c.id] = rt
            if debug:
                log.debug(
                    "claimed %s #%s (attempt %d/%d)",
                    c.task_name,
                    c.id,
                    c.attempts,
                    limit,
                    extra={
                        "event": "claimed",
                        "task_id": c.id,
                        "task_name": c.task_name,
                        "queue": c.queue,
                        "attempt": c.attempts,
                    },
                )
            if c.attempts > limit:  # its earlier attempts' workers died holding it
                why = (
                    f"attempts used up ({c.attempts - 1}/{limit}): the worker running its last "
                    "attempt stopped renewing the lease (killed, crashed or hung)"
                )
                self._bury(rt, "LeaseExpired", why, why)
                continue
            if tf is None:
                self._bury(
                    rt,
                    "UnknownTask",
                    f"no handler registered for {c.task_name!r}",
                    f"no handler registered for {c.task_name!r}",
                )
                continue
            try:
                kwargs = decode_payload(c.payload)
            except MalformedPayload as exc:
                self._bury(rt, "MalformedPayload", str(exc), str(exc))
                continue
            if not tf.is_async and not tf.accepts_any:
                # (an async handler's arguments are checked by the call that makes its
                # coroutine, before any of its code runs: see _start_async)
                key = (c.task_name, frozenset(kwargs))
                problem = self._bind_cache.get(key, "?")
                if problem == "?":
                    if len(self._bind_cache) > 10_000:  # payloads with ever-new keys
                        self._bind_cache.clear()
                    problem = self._bind_cache[key] = tf.check_payload(kwargs)
                if problem is not None:
                    self._bury(rt, "PayloadMismatch", problem, problem)
                    continue
            if c.breaker is not None or tf.gated:
                gates = self._gates
                deferral = None if gates is None else gates.admit(rt, tf, kwargs)
                if deferral is not None:
                    self._defer(rt, deferral)
                    continue
            if tf.options.timeout is not None:
                rt.deadline = now + tf.options.timeout
                self._timed.set()
            if tf.is_async:
                start_async(rt, tf.fn, kwargs)
            else:
                rt.finished = False
                self._sync.submit(rt, tf.fn, kwargs)

    # --- running --------------------------------------------------------------------------

    def _start_async(self, rt: _Running, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        """Run an async handler's first step now, and make a Task only if it suspends.

        Handlers that finish without waiting (cache hits, no-ops) cost no Task at all;
        the rest continue in a Task that drives the same coroutine (what Python 3.12's
        eager task factory does).  The first step runs in its own copy of the context,
        as a Task's would.
        """
        try:
            coro = fn(**kwargs)
        except TypeError as exc:  # the payload does not fit: no handler code has run
            problem = rt.handler.check_payload(kwargs) if rt.handler else None
            if problem is not None:
                self._bury(rt, "PayloadMismatch", problem, problem)
            else:
                self._failed(rt, exc)
            return
        ctx = contextvars.copy_context()
        try:
            first = ctx.run(coro.send, None)
        except StopIteration:
            self._succeeded(rt)
            return
        except BaseException as exc:
            self._failed(rt, exc)
            return
        rt.task = self._loop.create_task(self._finish_async(rt, Resume(coro, first)), context=ctx)

    async def _finish_async(self, rt: _Running, resume: Resume) -> None:
        try:
            await resume
        except asyncio.CancelledError:
            if rt.timed_out:
                self._failed(rt, self._timeout_error(rt, "cancelled"), with_traceback=False)
            else:
                self._release(rt)  # the worker is shutting down past its grace period
        except BaseException as exc:
            self._failed(rt, exc)
        else:
            self._succeeded(rt)

    def _on_sync_results(self, results: list[Result]) -> None:
        for rt, error, _seconds in results:
            rt.finished = True
            if rt.settled:  # timed out earlier: its slot is given back only now
                if rt.claimed.id not in self._running:  # and its outcome is written
                    self._inflight -= 1
                    self._slot_event.set()
                continue
            if error is None:
                self._succeeded(rt)
            else:
                self._failed(rt, error)

    async def _timeouts(self) -> None:
        """Fail tasks that run past their ``timeout`` (checked every 0.1 s).

        A scan of the held tasks (at most ``concurrency``) costs nothing per task, unlike
        a timer per task.  An async handler is cancelled; a sync one cannot be stopped,
        so its task is failed as timed out at once while its slot stays taken until the
        thread returns.
        """
        while True:
            if not self._running:  # nothing to watch: sleep until a task starts
                self._timed.clear()
                await self._timed.wait()
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for rt in list(self._running.values()):
                if rt.settled or rt.timed_out or rt.deadline > now:
                    continue
                rt.timed_out = True
                if rt.task is not None:
                    rt.task.cancel()
                else:
                    msg = "the thread runs on; its slot is held until it returns"
                    self._failed(rt, self._timeout_error(rt, msg), with_traceback=False)

    def _timeout_error(self, rt: _Running, detail: str) -> TaskTimeout:
        timeout = rt.handler.options.timeout if rt.handler else None
        return TaskTimeout(f"timed out after {timeout:g}s ({detail})")

    # --- outcomes (loop thread) -----------------------------------------------------------

    def _settle(self, rt: _Running) -> None:
        rt.settled = True
        self._to_free.append(rt)
        self._ack_event.set()

    def _succeeded(self, rt: _Running) -> None:
        self._done.append(rt.claimed.id)
        self.stats.succeeded += 1
        if rt.breaker is not None:
            self._gates.outcome(rt, None)  # type: ignore[union-attr]  # set by the gates
        if self._debug:
            took = time.monotonic() - rt.started
            log.debug(
                "succeeded %s #%s in %.3fs",
                rt.claimed.task_name,
                rt.claimed.id,
                took,
                extra={
                    "event": "succeeded",
                    "task_id": rt.claimed.id,
                    "task_name": rt.claimed.task_name,
                    "attempt": rt.claimed.attempts,
                    "duration": round(took, 6),
                },
            )
        self._settle(rt)

    def _release(self, rt: _Running) -> None:
        if not rt.settled:
            self._released.append(rt.claimed.id)
            self._settle(rt)

    def _defer(self, rt: _Running, deferral: DeferOutcome) -> None:
        """Not run now (its breaker is open, or it waits for its rate limit): back to
        pending with the attempt refunded and its keys written."""
        self._deferred.append(deferral)
        if self._debug:
            c = rt.claimed
            log.debug(
                "deferred %s #%s (breaker %s, rate limit %s)",
                c.task_name,
                c.id,
                deferral.breaker,
                deferral.rate_key,
                extra={
                    "event": "deferred",
                    "task_id": c.id,
                    "task_name": c.task_name,
                    "breaker": deferral.breaker,
                    "rate_key": deferral.rate_key,
                },
            )
        self._settle(rt)

    def _hold_back(self, c: Claimed) -> None:
        """A claimed task that never started (shutting down while it waited for its rate
        slot): released, as if it had started and been stopped."""
        rt = _Running(c, self.registry.get(c.task_name), time.monotonic(), 0)
        self._running[c.id] = rt
        self._inflight += 1
        self._release(rt)

    def _failed(self, rt: _Running, exc: BaseException, with_traceback: bool = True) -> None:
        if rt.settled:
            return
        if rt.breaker is not None:
            self._gates.outcome(rt, exc)  # type: ignore[union-attr]  # set by the gates
        c = rt.claimed
        error = task_error(c.attempts, exc, with_traceback)
        if "://" in error.message or "://" in (error.traceback or ""):
            # the stored error (lmq show, dead show) never holds a URL's password either
            tb = mask(error.traceback) if error.traceback else None
            error = TaskError(error.attempt, error.at, error.type, mask(error.message), tb)
        if isinstance(exc, Discard):
            self._bury(
                rt, error.type, error.message, f"discarded by the handler: {exc.reason}", error
            )
            return
        if c.attempts >= rt.max_attempts:
            self._bury(
                rt,
                error.type,
                error.message,
                f"attempts used up ({c.attempts}/{rt.max_attempts})",
                error,
            )
            return
        if isinstance(exc, Retry):
            delay = exc.delay
        else:
            backoff = rt.handler.options.backoff if rt.handler else None
            delay = backoff.delay(c.attempts) if backoff else 1.0
        self._retries.append(RetryOutcome(c.id, delay, error))
        self.stats.retried += 1
        log.warning(
            "%s #%s failed (attempt %d/%d): %s; retrying in %.1fs",
            c.task_name,
            c.id,
            c.attempts,
            rt.max_attempts,
            one_line(error),
            delay,
            extra={
                "event": "failed",
                "task_id": c.id,
                "task_name": c.task_name,
                "attempt": c.attempts,
                "error": one_line(error),
                "retry_in": round(delay, 3),
                "next_run": datetime.fromtimestamp(time.time() + delay, UTC).isoformat(),
                "duration": round(time.monotonic() - rt.started, 6),
            },
        )
        self._settle(rt)

    def _bury(
        self, rt: _Running, etype: str, message: str, reason: str, error: TaskError | None = None
    ) -> None:
        c = rt.claimed
        error = error or TaskError(c.attempts, datetime.now(UTC), etype, message)
        self._burials.append(
            BuryOutcome(
                c.id, reason, error, fingerprint(c.task_name, etype, message), rt.max_attempts
            )
        )
        self.stats.dead += 1
        log.error(
            "%s #%s moved to the dead letters: %s",
            c.task_name,
            c.id,
            reason,
            extra={
                "event": "dead",
                "task_id": c.id,
                "task_name": c.task_name,
                "attempt": c.attempts,
                "reason": reason,
                "error": one_line(error),
            },
        )
        self._settle(rt)

    # --- completer ------------------------------------------------------------------------

    def _take_batch(self) -> tuple[CompleteBatch, list[_Running]]:
        batch = CompleteBatch(
            self.id, self._done, self._retries, self._burials, self._released, self._deferred
        )
        freed = self._to_free
        self._done, self._retries, self._burials, self._released = [], [], [], []
        self._deferred = []
        self._to_free = []
        return batch, freed

    async def _completer(self) -> None:
        while True:
            await self._ack_event.wait()
            self._ack_event.clear()
            await self._flush()

    async def _flush(self) -> None:
        batch, freed = self._take_batch()
        if not freed:
            return
        # refill the slots this batch frees in the same transaction, while tasks flow
        limit = 0
        if self._more and not self._stopping:
            free = self.settings.concurrency - self._inflight - self._reserved
            free -= self._probe_hold
            free += sum(1 for rt in freed if rt.finished)
            limit = min(free, self._batch)
        request = self._claim(limit=limit) if limit > 0 else None
        gates = self._gates
        self._reserved += limit
        self._flushing = True
        try:
            if gates is not None and gates.outcomes:
                # The breakers first: the refill claim below (and every claim after these
                # slots are freed) must see the failures of the calls that held them, or
                # it would start more calls behind a breaker these very outcomes open.
                pending = gates.take_outcomes()
                await self._retrying(
                    "record breaker outcomes",
                    functools.partial(self._db, gates.record, pending),
                )
            result = await self._retrying(
                "acknowledge", functools.partial(self._db, self.backend.complete, batch, request)
            )
        finally:
            self._reserved -= limit
            self._flushing = False
        self._free_slots(freed)
        if result is not None:
            self._claimed(result, limit)

    def _free_slots(self, freed: list[_Running]) -> None:
        n = 0
        for rt in freed:
            if self._running.pop(rt.claimed.id, None) is not None and rt.finished:
                n += 1  # a timed-out sync task keeps its slot until its thread returns
        self._inflight -= n
        self._slot_event.set()
        self._wake.set()
        if self._rate_wake is not None:
            self._rate_wake()

    # --- lease renewer, heartbeat, pruner -------------------------------------------------

    async def _renewer(self) -> None:
        s = self.settings
        interval = s.lease / 3
        while True:
            await asyncio.sleep(interval)
            ids = list(self._running)  # claimed and not yet acknowledged
            if not ids:
                continue
            request = RenewRequest(self.id, ids, s.lease)
            held = await self._retrying(
                "renew leases", functools.partial(self._side, self.backend.renew, request)
            )
            # a task settled meanwhile is being acknowledged, not lost
            lost = {
                i
                for i in set(ids).difference(held)
                if (rt := self._running.get(i)) is not None and not rt.settled
            }
            if lost:
                log.warning(
                    "lost the lease on %d task(s) (%s): another worker may run them",
                    len(lost),
                    ", ".join(map(str, sorted(lost, key=str)[:10])),
                    extra={"event": "lease_lost", "task_ids": sorted(lost, key=str)},
                )

    async def _heartbeater(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            await self._retrying(
                "heartbeat", lambda: self._side(self.backend.heartbeat, self._beat())
            )

    async def _pruner(self) -> None:
        s = self.settings
        request = PruneRequest(s.keep_done, s.stale_worker_after, dead_older_than=s.keep_dead)
        # --keep-done 0: finished rows go within about a second, not at the next minute
        interval = min(s.prune_interval, 1.0) if s.keep_done == 0 else s.prune_interval
        while True:
            await asyncio.sleep(interval)
            n = await self._retrying("prune", lambda: self._side(self.backend.prune, request))
            if n:
                log.info(
                    "pruned %d finished task(s) and stale worker row(s)",
                    n,
                    extra={"event": "pruned", "rows": n},
                )

    async def _housekeeping(self) -> None:
        """About once a second: refresh the paused queues, complete finished batches
        (enqueueing their follow-ups) and re-queue approved dead letters that are due."""
        backend = self.backend
        while True:
            await asyncio.sleep(self.settings.housekeeping_interval)
            paused = await self._retrying(
                "paused queues", functools.partial(self._side, backend.paused_queues)
            )
            self._set_paused(paused)
            settled = await self._retrying(
                "settle batches", functools.partial(self._side, self._settle_batches)
            )
            requeued = await self._retrying(
                "requeue approved", functools.partial(self._side, self._requeue_approved)
            )
            if settled or requeued:
                self._wake.set()  # new tasks are ready

    def _set_paused(self, paused: dict[str, float]) -> None:
        """Exclude the paused queues from claims (only those this worker would claim)."""
        queues = self.settings.queues
        now = tuple(sorted(q for q in paused if queues is None or q in queues))
        if now == self._paused:
            return
        for q in sorted(set(now) - set(self._paused)):
            log.info(
                "queue %r is paused: not claiming its tasks",
                q,
                extra={"event": "queue_paused", "queue": q},
            )
        for q in sorted(set(self._paused) - set(now)):
            log.info("queue %r resumed", q, extra={"event": "queue_resumed", "queue": q})
        self._paused = now
        s = self.settings
        self._claim = functools.partial(
            ClaimRequest, worker_id=self.id, lease=s.lease, queues=s.queues, exclude=now
        )
        self._ready_args = (s.queues, now) if now else (s.queues,)
        self._wake.set()  # resumed: maybe claimable now

    async def _burst_settle(self) -> bool:
        """Before a burst worker exits: complete finished batches, re-queue approved
        dead letters that are due and fire the schedules' due ticks; True if that made
        any task."""
        settled = await self._retrying(
            "settle batches", functools.partial(self._side, self._settle_batches)
        )
        requeued = await self._retrying(
            "requeue approved", functools.partial(self._side, self._requeue_approved)
        )
        fired = await self._scheduler.burst_fire()  # ticks due now (later ones: not waited for)
        return bool(settled or requeued or fired)

    def _requeue_approved(self) -> list[TaskId]:
        """Re-queue approved dead letters that are due (on the side thread); log them."""
        requeued = self.backend.requeue_approved()
        if requeued:
            log.info(
                "re-queued %d approved dead letter(s)",
                len(requeued),
                extra={"event": "requeued", "count": len(requeued), "task_ids": requeued},
            )
        return requeued

    def _settle_batches(self) -> list[tuple[str, TaskId | None]]:
        """Complete the finished batches (on the side thread); log each one."""
        settled = self.backend.settle_batches()
        for name, followup in settled:
            log.info(
                "batch %r complete%s",
                name,
                f": follow-up task #{followup} enqueued" if followup is not None else "",
                extra={"event": "batch_complete", "batch": name, "followup_id": followup},
            )
        return settled

    # --- shutdown -------------------------------------------------------------------------

    async def _shutdown(self, side: dict[asyncio.Task[Any], str]) -> None:
        s = self.settings
        self._stopping = True
        if self._gates is not None:
            self._gates.release_waiting()  # not started yet: back to pending
        fetcher = next(t for t, name in side.items() if name == "fetcher")
        if not fetcher.done():
            fetcher.cancel()
        deadline = self._loop.time() + s.grace
        while self._unfinished() and self._loop.time() < deadline:
            await asyncio.sleep(0.01)
        left = self._unfinished()
        if left:
            log.warning(
                "grace period over: %d task(s) unfinished; releasing them",
                len(left),
                extra={"event": "grace_expired", "task_ids": [r.claimed.id for r in left]},
            )
            for rt in left:
                if rt.task is not None:
                    rt.task.cancel()
                else:
                    self._release(rt)
            await asyncio.sleep(0)  # let cancelled tasks record their release
        # acknowledge everything (the completer may be mid-write: let it finish first)
        for t, name in side.items():
            if name != "completer":
                t.cancel()
        completer = next(t for t, name in side.items() if name == "completer")
        while (self._to_free or self._flushing) and not completer.done():
            self._ack_event.set()
            await asyncio.sleep(0.005)
        completer.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        if self._to_free:
            try:
                await self._flush()
            except BackendError as exc:
                log.error(
                    "could not acknowledge %d task(s) at exit: %s (they run again once "
                    "their leases expire)",
                    len(self._to_free),
                    exc,
                )
        try:
            await self._side(self.backend.remove_worker, self.id)
        except BackendError as exc:
            log.warning("could not remove the heartbeat row: %s", exc)
        st = self.stats
        log.info(
            "worker %s stopped: %d succeeded, %d retried, %d dead",
            self.id,
            st.succeeded,
            st.retried,
            st.dead,
            extra={
                "event": "worker_stopped",
                "worker": self.id,
                "succeeded": st.succeeded,
                "retried": st.retried,
                "dead": st.dead,
            },
        )

    def _unfinished(self) -> list[_Running]:
        return [rt for rt in self._running.values() if not rt.settled]


__all__ = ["Stats", "Worker", "WorkerSettings"]
