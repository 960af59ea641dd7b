"""The worker's circuit breakers and rate limits.

* **breakers** (only when the app declares one): a view of every stored breaker,
  refreshed about every 0.5 s; the outcomes of tasks behind a breaker, written by
  compare-and-set in the completer's flush BEFORE the acknowledgement that frees their
  slots and claims their refill (nothing written when nothing changes), so no slot a
  failed call held is refilled before the stored row counts that failure; probes: an
  open breaker whose cool-down is over is moved to half_open by CAS (one worker wins),
  then one task is claimed with a probe claim (back to open if there is none);
* **rate limits** (only when the app declares one): for each rate key with ready tasks
  the slots of the next ~0.5 s are reserved by CAS (at most the free slots), that many
  tasks are claimed with a rate claim and each starts at its slot time; unused slots are
  given back.

Probe and rate claims share the worker's slot accounting with the fetcher (``_inflight``
and ``_reserved``).  Storage calls run on the worker's gates thread(s).  Every transition
is logged (``breaker_opened``, ``breaker_half_open``, ``breaker_closed``,
``breaker_reopened``); rate waits at DEBUG.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import breaker as bm
from .. import ratelimit as rl
from ..models import BreakerState, Claimed, DeferOutcome, RateState, TaskId
from ..queue import TaskFunction

if TYPE_CHECKING:
    from .core import Worker, _Running

log = logging.getLogger("lmq.worker")

REFRESH = 0.5  # seconds between reads of the stored breakers
_CAS_TRIES = 20


@dataclass(slots=True)
class _Outcome:
    key: str
    failed: bool  # a counted failure
    probe: bool
    error: str | None
    handler: TaskFunction[Any, Any] | None


class Gates:
    """Breakers and rate limits for one :class:`~lmq.worker.Worker` (on its loop)."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.queue = worker.queue
        self.backend = worker.backend
        self.uses_breakers = self.queue.declares_breakers
        self.uses_rates = bool(self.queue._rate_limits) or any(
            tf.rate_gate is not None for tf in self.queue.registry.values()
        )
        self.view: dict[str, BreakerState] = {}
        self.outcomes: list[_Outcome] = []
        self.probing: set[TaskId] = set()  # probe tasks claimed, not yet started
        self.waiting: dict[TaskId, tuple[Claimed, asyncio.TimerHandle]] = {}  # rate slots
        self.rate_event = asyncio.Event()
        self._unknown_keys: set[str] = set()

    # --- components -----------------------------------------------------------------------

    def parts(self) -> dict[str, Callable[[], Any]]:
        parts: dict[str, Callable[[], Any]] = {}
        if self.uses_breakers:
            parts["breakers"] = self._breakers
        if self.uses_rates:
            parts["rate limits"] = self._rates
        return parts

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.w._loop.run_in_executor(self.w._gates_pool, fn, *args)

    def wake(self) -> None:
        """Something may have become claimable (a wake-up, a slot freed)."""
        self.rate_event.set()

    # --- admission (from the worker's _start_all, for tasks with a key or a gated handler)

    def admit(
        self, rt: _Running, tf: TaskFunction[Any, Any], kwargs: Mapping[str, Any]
    ) -> DeferOutcome | None:
        """Decide about a claimed task with a breaker key or a gated handler: None to run
        it now (``rt.breaker`` / ``rt.probe`` set for the outcome), or the deferral that
        sends it back (a row without its keys, held by a rate limit or an open breaker)."""
        c = rt.claimed
        breaker = c.breaker
        if c.id in self.probing:
            self.probing.discard(c.id)
            rt.probe = True
            rt.breaker = breaker
            return None
        rate_key = c.rate_key
        computed = False
        if breaker is None and tf.breaker_gate is not None:
            breaker = self._key(tf, kwargs, 0)
            computed = breaker is not None
        if rate_key is None and tf.rate_gate is not None:
            rate_key = self._key(tf, kwargs, 1)
            if rate_key is not None:
                # claimed by a plain claim (its row lacks the key): wait for its turn
                return DeferOutcome(c.id, 0.0, breaker, rate_key)
        if computed:
            # Claimed by a plain claim that could not see its breaker (its row lacks the
            # key): back it goes, unstarted, with the key written, so the claim that runs
            # it is one that checked the stored breaker row.  This worker's view of the
            # breaker (read every 0.5 s) is not enough: it may not show an open yet.
            return DeferOutcome(c.id, 0.0, breaker, None)
        if breaker is not None:
            # Not closed in this worker's view: a claim that read the stored row just
            # before another worker's write opened it.  Back it goes, unstarted.
            state = self.view.get(breaker)
            if state is not None and state.state != bm.CLOSED:
                return DeferOutcome(c.id, 0.0, None, None)
        if self.uses_breakers:  # (else nobody would write the outcomes)
            rt.breaker = breaker
        return None

    @staticmethod
    def _key(tf: TaskFunction[Any, Any], kwargs: Mapping[str, Any], which: int) -> str | None:
        try:
            return tf.keys(kwargs)[which]
        except (TypeError, ValueError) as exc:
            log.warning(
                "%s: %s; running it without that gate",
                tf.name,
                exc,
                extra={"event": "gate_key_failed", "task_name": tf.name, "error": str(exc)},
            )
            return None

    def outcome(self, rt: _Running, exc: BaseException | None) -> None:
        """A task behind a breaker finished (``exc`` None: it succeeded)."""
        key = rt.breaker
        assert key is not None
        tf = rt.handler
        failed = False
        if exc is not None:
            try:
                failed = self.queue.breaker_policy(key, tf).counted(exc)
            except Exception:  # the app's counts= itself failed: count it
                log.exception("breaker %r: counts() raised; counting the failure", key)
                failed = True
        error = None if exc is None else f"{type(exc).__name__}: {exc}"[:500]
        self.outcomes.append(_Outcome(key, failed, rt.probe, error, tf))

    def take_outcomes(self) -> dict[str, list[_Outcome]]:
        """The outcomes settled since the last flush, per breaker key in order (for
        :meth:`record`, which the completer runs before it acknowledges them)."""
        by_key: dict[str, list[_Outcome]] = collections.defaultdict(list)
        for o in self.outcomes:
            by_key[o.key].append(o)
        self.outcomes = []
        return by_key

    # --- breakers ---------------------------------------------------------------------------

    async def _breakers(self) -> None:
        w = self.w
        next_read = 0.0
        while True:
            await asyncio.sleep(max(0.0, next_read - time.monotonic()))
            rows = await w._retrying(
                "read breakers", functools.partial(self._db, self.backend.breakers)
            )
            self._set_view(rows)
            started = await self._probe()
            # read again in REFRESH seconds, or when a cool-down ends if sooner (soon
            # when a probe waits for a slot)
            wait = min([REFRESH, *(t - time.time() for t in self._probe_times())])
            next_read = time.monotonic() + (max(0.01, wait) if started else 0.02)

    def _probe_times(self) -> list[float]:
        """When each breaker in the view may be probed next."""
        times = []
        for b in self.view.values():
            if b.state == bm.OPEN and not b.forced and b.retry_at is not None:
                times.append(b.retry_at)
            elif b.state == bm.HALF_OPEN and b.probe_until is not None:
                times.append(b.probe_until)
        return times

    def _set_view(self, rows: list[BreakerState]) -> None:
        old, self.view = self.view, {b.name: b for b in rows}
        freed = any(
            b.state != bm.CLOSED and (n not in self.view or self.view[n].state == bm.CLOSED)
            for n, b in old.items()
        )
        if freed:
            self.w._wake.set()  # tasks behind a breaker that closed are claimable again

    def record(self, pending: dict[str, list[_Outcome]]) -> None:
        """Write the outcomes of :meth:`take_outcomes` by CAS, each key's in order (on the
        worker's storage thread).  A key is dropped from ``pending`` once written, so a
        retry after a lost connection writes only the rest (never one twice)."""
        stored = {b.name: b for b in self.backend.breakers(list(pending))}
        now = time.time()
        for key, items in list(pending.items()):
            state = stored.get(key) or BreakerState(key)
            policy = self.queue.breaker_policy(key, items[-1].handler)
            for _ in range(_CAS_TRIES):
                new = self._apply(state, policy, items, now)
                if new is None:
                    break
                if self.backend.put_breaker(new, state.version):
                    self._log_transition(state, new)
                    self.view[key] = new
                    break
                rows = self.backend.breakers([key])
                state = rows[0] if rows else BreakerState(key)
            del pending[key]

    @staticmethod
    def _apply(
        state: BreakerState, policy: bm.Breaker, items: list[_Outcome], now: float
    ) -> BreakerState | None:
        current: BreakerState | None = None
        for o in items:
            base = current or state
            if o.probe:
                new = bm.probe_result(base, policy, o.failed, now, o.error)
            else:
                errors = o.error if o.failed else None
                new = bm.record(base, policy, [o.failed], now, errors)
            if new is not None:
                current = new
        if current is None:
            return None
        # several changes in one write: one version step from the stored row
        return dataclasses.replace(current, version=state.version + 1)

    async def _probe(self) -> bool:
        """Start a probe for each breaker whose cool-down is over (one worker wins each).
        False when one waits for a free slot (then the fetcher and the rate dispatcher
        leave the next free slot to it: ``_probe_hold``)."""
        w = self.w
        now = time.time()
        w._probe_hold = 0
        for state in list(self.view.values()):
            if w._stopping or not bm.probe_due(state, now):
                continue
            if w.settings.concurrency - w._inflight - w._reserved <= 0:
                w._probe_hold = 1
                return False
            w._reserved += 1
            try:
                claimed = await w._retrying(
                    "probe", functools.partial(self._db, self._probe_one, state)
                )
            finally:
                w._reserved -= 1
            if claimed is not None:
                self.probing.add(claimed.id)
                w._start_all([claimed])
        return True

    def _probe_one(self, state: BreakerState) -> Claimed | None:
        """CAS open -> half_open, then claim one task behind it; back to open if none
        (on the gates thread)."""
        w = self.w
        now = time.time()
        half = bm.start_probe(state, w.id, now, w.settings.lease)
        if half is None or not self.backend.put_breaker(half, state.version):
            return None
        self._log_transition(state, half)
        self.view[state.name] = half
        result = self.backend.claim(w._claim(limit=1, breaker=state.name))
        if result.tasks:
            return result.tasks[0]
        back = bm.no_probe(half, time.time())
        if back is not None and self.backend.put_breaker(back, half.version):
            self.view[state.name] = back
            log.debug(
                "breaker %r: no task to probe with; open until one comes",
                state.name,
                extra={"event": "breaker_no_probe", "breaker": state.name},
            )
        return None

    def _log_transition(self, old: BreakerState, new: BreakerState) -> None:
        event = bm.transition_event(old, new)
        if event is None:
            return
        extra = {
            "event": event,
            "breaker": new.name,
            "cooldown": new.cooldown,
            "failures": new.failures,
        }
        if event == "breaker_opened":
            log.warning(
                "breaker %r opened after %d failure(s): its tasks wait %gs for a probe (%s)",
                new.name,
                new.failures,
                new.cooldown,
                new.last_error or "no error recorded",
                extra={**extra, "error": new.last_error},
            )
        elif event == "breaker_reopened":
            log.warning(
                "breaker %r re-opened: the probe failed (%s); next probe in %gs",
                new.name,
                new.last_error or "no error recorded",
                new.cooldown,
                extra={**extra, "error": new.last_error},
            )
        elif event == "breaker_half_open":
            log.info("breaker %r half-open: probing with one task", new.name, extra=extra)
        else:
            log.info("breaker %r closed: its tasks run again", new.name, extra=extra)
            self.w._loop.call_soon_threadsafe(self.w._wake.set)

    # --- rate limits ------------------------------------------------------------------------

    async def _rates(self) -> None:
        w = self.w
        while True:
            if w._stopping:
                await asyncio.sleep(3600)
                continue
            self.rate_event.clear()
            ready: dict[str, tuple[float, str]] = await w._retrying(
                "rate keys",
                functools.partial(self._db, self.backend.rate_keys_ready, *w._ready_args),
            )
            sleep = w._idle_poll
            for key, (due, task_name) in ready.items():
                if due > 0:
                    sleep = min(sleep, due)
                    continue
                free = w.settings.concurrency - w._inflight - w._reserved - w._probe_hold
                if free <= 0:
                    break  # a freed slot wakes us (rate_event)
                limit = self._limit(key, task_name)
                if limit is None:
                    continue
                w._reserved += free
                try:
                    got = await w._retrying(
                        "rate claim",
                        functools.partial(self._db, self._rate_claim, key, limit, free),
                    )
                finally:
                    w._reserved -= free
                tasks, slots, wait, unslotted = got
                for c in unslotted:
                    w._hold_back(c)
                if tasks:
                    self._start_at(tasks, slots, limit.spacing)
                    # reserve again as this reservation's last slot comes up
                    sleep = min(sleep, max(0.02, slots[len(tasks) - 1] - time.time()))
                elif wait is not None:
                    sleep = min(sleep, max(0.01, wait))
                    if w._debug:
                        log.debug(
                            "rate limit %r: next slot in %.3fs",
                            key,
                            wait,
                            extra={"event": "rate_wait", "rate_key": key, "wait": wait},
                        )
            try:
                async with asyncio.timeout(sleep):
                    await self.rate_event.wait()
            except TimeoutError:
                pass

    def _limit(self, key: str, task_name: str) -> rl.RateLimit | None:
        limit = self.queue.rate_policy(key, self.queue.registry.get(task_name))
        if limit is not None:
            return limit
        # a key this app does not declare (another app's handler): the stored policy
        rows = self.backend.rate_limits([key])
        if rows:
            r = rows[0]
            return rl.RateLimit(r.calls, r.per, r.burst, key)
        if key not in self._unknown_keys:
            self._unknown_keys.add(key)
            log.warning(
                "rate key %r (task %s) has no declared rate limit here: leaving its tasks",
                key,
                task_name,
                extra={"event": "rate_unknown", "rate_key": key, "task_name": task_name},
            )
        return None

    def _rate_claim(
        self, key: str, limit: rl.RateLimit, free: int
    ) -> tuple[list[Claimed], list[float], float | None, list[Claimed]]:
        """Claim as many tasks as the stored row says the next ~0.5 s has slots for (at
        most ``free``), THEN reserve their slots by CAS from the time the claim returned,
        and release the ones no slot was left for (on the gates thread).  Reserving after
        the claim keeps every slot in the future: a slow claim (a write lock, a busy
        server) must not leave slots in the past that would then start together.
        Returns (tasks, their slot times, seconds until a slot if none, tasks to release)."""
        backend, w = self.backend, self.w
        rows = backend.rate_limits([key])
        state: RateState = rows[0] if rows else rl.fresh(key, limit)
        now = time.time()
        estimate, _ = rl.reserve(state, limit, now, free)
        if not estimate:
            return [], [], rl.next_free(state, limit, now), []
        result = backend.claim(w._claim(limit=len(estimate), rate_key=key))
        tasks = result.tasks
        if not tasks:
            return [], [], None, []
        slots: list[float] = []
        for attempt in range(_CAS_TRIES):
            if attempt:
                rows = backend.rate_limits([key])
                state = rows[0] if rows else rl.fresh(key, limit)
            slots, new = rl.reserve(state, limit, time.time(), len(tasks))
            if new is None or backend.put_rate_limit(new, state.version):
                break
        else:
            slots = []
        # the rest go back unstarted: another worker took those slots meanwhile
        return tasks[: len(slots)], slots, None, tasks[len(slots) :]

    def _start_at(self, tasks: list[Claimed], slots: list[float], spacing: float) -> None:
        """Hold a slot for each task and start it at its slot time."""
        w = self.w
        loop = w._loop
        now = time.time()
        for c, slot in zip(tasks, slots, strict=False):
            w._reserved += 1
            delay = slot - now
            if delay <= 0.001:
                self._start_one(c.id, c, slot, spacing)
                continue
            handle = loop.call_later(delay, self._start_one, c.id, c, slot, spacing)
            self.waiting[c.id] = (c, handle)

    def _start_one(self, task_id: TaskId, c: Claimed, slot: float, spacing: float) -> None:
        self.waiting.pop(task_id, None)
        w = self.w
        w._reserved -= 1
        late = time.time() - slot
        if late > spacing:
            # The loop was held up past the next slot: starting now would bunch this
            # call with the next one and let a window see more than the limit allows.
            # The slot is forfeited; the task goes back unstarted for a later one.
            if w._debug:
                log.debug(
                    "rate slot of #%s missed by %.3fs: back to pending",
                    task_id,
                    late,
                    extra={"event": "rate_slot_missed", "task_id": task_id, "late": late},
                )
            w._hold_back(c)
            self.rate_event.set()
            return
        w._start_all([c])

    def release_waiting(self) -> None:
        """Shutting down: the tasks waiting for their slot go back unstarted."""
        w = self.w
        for task_id, (c, handle) in list(self.waiting.items()):
            handle.cancel()
            del self.waiting[task_id]
            w._reserved -= 1
            w._hold_back(c)

    def burst_busy(self) -> bool:
        """Is rate-limited work ready or waiting for its slot (a burst worker waits for
        it)?  On the gates thread."""
        if self.waiting:
            return True
        if not self.uses_rates:
            return False
        ready = self.backend.rate_keys_ready(*self.w._ready_args)
        return any(
            due <= 0 and self.queue.rate_policy(key, self.queue.registry.get(name))
            for key, (due, name) in ready.items()
        )


__all__ = ["Gates"]
