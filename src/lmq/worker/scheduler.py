"""The worker's scheduler: fires the app's recurring schedules on time, exactly once.

On start it syncs every declared schedule to the backend (:func:`lmq.schedule.sync`: a
new one starts after now, a changed one is recomputed, an unchanged one keeps its next
tick so missed ticks are seen).  Then it sleeps until the earliest next tick, fires it
with ``fire_schedule`` (compare-and-set on the row and the enqueue in one transaction:
with many workers one wins, the others re-read), and re-reads every row about once a
second (a person may pause, resume or change one).  Each fire is logged
(``schedule_fired``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import schedule as sm
from ..models import ScheduleState, TaskId

if TYPE_CHECKING:
    from .core import Worker

log = logging.getLogger("lmq.worker")

REREAD = 1.0  # seconds between reads of every stored schedule
_CAS_TRIES = 20


class Scheduler:
    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.queue = worker.queue
        self.backend = worker.backend
        self.declared = {s.name: s for s in self.queue.declared_schedules()}
        self.rows: dict[str, ScheduleState] = {}
        self.synced = asyncio.Event()
        for sched in self.declared.values():
            if sched.task_name not in self.queue.registry:
                log.warning(
                    "schedule %r enqueues %r, which this app does not handle: a worker "
                    "that does must run it (else it is dead-lettered)",
                    sched.name,
                    sched.task_name,
                    extra={
                        "event": "schedule_unhandled",
                        "schedule": sched.name,
                        "task_name": sched.task_name,
                    },
                )

    def parts(self) -> dict[str, Callable[[], Any]]:
        return {"scheduler": self._run} if self.declared else {}

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.w._loop.run_in_executor(self.w._sched_pool, fn, *args)

    async def _run(self) -> None:
        w = self.w
        await w._retrying("sync schedules", functools.partial(self._db, self._sync))
        self.synced.set()
        next_read = time.monotonic() + REREAD
        while True:
            now = time.time()
            ticks = [
                s.next_tick for s in self.rows.values() if not s.paused and s.next_tick is not None
            ]
            wait = min(next_read - time.monotonic(), min(ticks, default=now + REREAD) - now)
            if wait > 0:
                await asyncio.sleep(wait)
            if time.monotonic() >= next_read:
                next_read = time.monotonic() + REREAD
                await w._retrying("read schedules", functools.partial(self._db, self._read))
            now = time.time()
            if any(
                not s.paused and s.next_tick is not None and s.next_tick <= now
                for s in self.rows.values()
            ):
                await w._retrying("fire schedules", functools.partial(self._db, self._fire))

    async def burst_fire(self) -> bool:
        """A burst worker about to exit fires the ticks due now (it does not wait for
        later ones); True if that enqueued a task."""
        if not self.declared:
            return False
        await self.synced.wait()
        fired: int = await self.w._retrying(
            "fire schedules", functools.partial(self._db, self._fire)
        )
        return fired > 0

    # --- on the scheduler's thread ----------------------------------------------------------

    def _read(self) -> None:
        self.rows = {s.name: s for s in self.backend.schedules() if s.name in self.declared}

    def _sync(self) -> None:
        """Store each declared schedule (compare-and-set, retried on a lost race)."""
        for _ in range(_CAS_TRIES):
            stored = {s.name: s for s in self.backend.schedules()}
            lost = False
            for name, decl in self.declared.items():
                old = stored.get(name)
                new = sm.sync(decl, old, time.time())
                if new is None:
                    continue
                if self.backend.put_schedule(new, 0 if old is None else old.version):
                    what = "stored" if old is None else "updated"
                    log.info(
                        "schedule %r %s: %s, next tick %s",
                        name,
                        what,
                        f"cron {decl.cron!r} ({decl.timezone})"
                        if decl.cron
                        else f"every {decl.every:g}s",
                        sm.tick_iso(new.next_tick) if new.next_tick is not None else "never",
                        extra={
                            "event": "schedule_synced",
                            "schedule": name,
                            "next_tick": None
                            if new.next_tick is None
                            else sm.tick_iso(new.next_tick),
                        },
                    )
                else:
                    lost = True
            if not lost:
                break
        self._read()

    def _fire(self) -> int:
        """Fire every due schedule; a lost race re-reads the row and tries again.
        Returns the number of tasks enqueued."""
        enqueued = 0
        for name in list(self.rows):
            for _ in range(_CAS_TRIES):
                state = self.rows.get(name)
                if state is None:
                    break
                now = time.time()
                step = sm.due(state, now)
                if step is None:
                    break
                ticks, new = step
                tasks = [self.queue.schedule_task(state, sm.tick_key(name, tick)) for tick in ticks]
                ids = self.backend.fire_schedule(new, state.version, tasks)
                if ids is None:  # another worker fired it: read what it stored
                    rows = {s.name: s for s in self.backend.schedules()}
                    if name in rows:
                        self.rows[name] = rows[name]
                    else:
                        self.rows.pop(name, None)
                    continue
                self.rows[name] = self._fired(new, ticks, ids, now)
                enqueued += len(ids)
                break
        return enqueued

    def _fired(
        self, new: ScheduleState, ticks: list[float], ids: list[TaskId], now: float
    ) -> ScheduleState:
        for tick, task_id in zip(ticks, ids, strict=False):
            log.info(
                "schedule %r fired for %s: task #%s",
                new.name,
                sm.tick_iso(tick),
                task_id,
                extra={
                    "event": "schedule_fired",
                    "schedule": new.name,
                    "tick": sm.tick_iso(tick),
                    "task_id": task_id,
                    "late": round(now - tick, 3),
                },
            )
        if not ticks:
            log.info(
                "schedule %r: missed tick skipped (missed='skip'); next %s",
                new.name,
                sm.tick_iso(new.next_tick) if new.next_tick is not None else "never",
                extra={"event": "schedule_skipped", "schedule": new.name},
            )
        if ids:  # fire_schedule stored it with the row (lmq schedules list shows it)
            return dataclasses.replace(new, last_task_id=ids[-1])
        return new


__all__ = ["Scheduler"]
