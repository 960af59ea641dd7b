"""An in-memory backend for users' unit tests: ``lmq.Queue("memory://")``.

It keeps the same semantics as the SQL backends (leases, retries, dead letters, unique
keys, ordering) inside one process, guarded by one lock.  Nothing survives the process,
so it is for tests and experiments only; ``memory://name`` shares one store between
Queue objects of the same process.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TypeVar

from ..exceptions import NotFound
from ..models import (
    BatchInfo,
    BatchSpec,
    BreakerState,
    BuryOutcome,
    CancelSelector,
    Claimed,
    ClaimRequest,
    ClaimResult,
    CompleteBatch,
    Counts,
    DeadFilter,
    DeadGroup,
    DeadLetter,
    DeadSelector,
    Heartbeat,
    NewTask,
    PruneRequest,
    RateState,
    RenewRequest,
    Review,
    ScheduleState,
    Task,
    TaskError,
    TaskFilter,
    TaskId,
    WorkerInfo,
    utc_from_epoch,
)
from ..payload import loads_lenient
from ..url import QueueURL
from .external import refuse_connection
from .rows import check_requeue

T = TypeVar("T", BreakerState, RateState, ScheduleState)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass
class _Row:
    id: int
    queue: str
    task_name: str
    payload: str
    priority: int
    max_attempts: int | None
    next_run: float
    created: str
    status: str = "pending"
    attempts: int = 0
    updated: float = 0.0
    locked_by: str | None = None
    locked_until: float | None = None
    last_error: str | None = None
    unique_key: str | None = None
    errors: list[TaskError] = field(default_factory=list)
    dead_letter_id: int | None = None
    batch: str | None = None
    breaker: str | None = None
    rate_key: str | None = None


@dataclass
class _Batch:
    name: str
    total: int
    created: float
    completed: float | None = None
    on_complete_task: str | None = None
    on_complete_payload: str | None = None
    on_complete_queue: str | None = None
    followup_id: int | None = None


@dataclass
class _Store:
    lock: threading.Lock = field(default_factory=threading.Lock)
    tasks: dict[int, _Row] = field(default_factory=dict)
    dead: dict[int, DeadLetter] = field(default_factory=dict)
    workers: dict[str, tuple[Heartbeat, float]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    dead_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    listeners: list[Callable[[], None]] = field(default_factory=list)
    # a dead letter's stored payload text, unique key, batch, breaker and rate key, to
    # re-queue it unchanged
    raw: dict[int, tuple[str, str | None, str | None, str | None, str | None]] = field(
        default_factory=dict
    )
    batches: dict[str, _Batch] = field(default_factory=dict)
    paused: dict[str, float] = field(default_factory=dict)
    breakers: dict[str, BreakerState] = field(default_factory=dict)
    rates: dict[str, RateState] = field(default_factory=dict)
    schedules: dict[str, ScheduleState] = field(default_factory=dict)


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


class _Wake:
    def __init__(self, store: _Store) -> None:
        self.store = store
        self.callback: Callable[[], None] | None = None

    def start(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        with self.store.lock:
            self.store.listeners.append(callback)

    def stop(self) -> None:
        with self.store.lock:
            if self.callback in self.store.listeners:
                self.store.listeners.remove(self.callback)


class MemoryBackend:
    def __init__(self, url: QueueURL) -> None:
        self.url = url.raw
        name = url.raw.split("://", 1)[1].split("?", 1)[0]
        if name:
            with _STORES_LOCK:
                self.store = _STORES.setdefault(name, _Store())
        else:
            self.store = _Store()

    def _notify(self) -> None:
        for cb in list(self.store.listeners):
            cb()

    def migrate(self) -> list[int]:
        return []

    def schema_version(self) -> int | None:
        return 3

    def enqueue(
        self,
        tasks: Sequence[NewTask],
        connection: object | None = None,
        batch: BatchSpec | None = None,
    ) -> list[TaskId]:
        if connection is not None:
            raise refuse_connection("memory")
        now = time.time()
        with self.store.lock:
            if batch is not None:
                self._add_to_batch(batch, now)
            ids = self._insert(tasks, now, batch)
        self._notify()
        return ids

    def _insert(
        self, tasks: Sequence[NewTask], now: float, batch: BatchSpec | None = None
    ) -> list[TaskId]:
        """Insert ``tasks`` (the store's lock held)."""
        created = _dt(now).strftime("%Y-%m-%d %H:%M:%S")
        ids: list[TaskId] = []
        for t in tasks:
            if t.unique_key is not None:
                existing = next(
                    (
                        r.id
                        for r in self.store.tasks.values()
                        if r.unique_key == t.unique_key and r.status in ("pending", "processing")
                    ),
                    None,
                )
                if existing is not None:
                    ids.append(existing)
                    continue
            row = _Row(
                id=next(self.store.ids),
                queue=t.queue,
                task_name=t.task_name,
                payload=t.payload_json,
                priority=t.priority,
                max_attempts=t.max_attempts,
                next_run=(t.run_at if t.run_at is not None else now) + t.delay,
                created=created,
                updated=now,
                unique_key=t.unique_key,
                batch=t.batch if batch is None else batch.name,
                breaker=t.breaker,
                rate_key=t.rate_key,
            )
            self.store.tasks[row.id] = row
            ids.append(row.id)
        return ids

    def _add_to_batch(self, spec: BatchSpec, now: float) -> None:
        b = self.store.batches.get(spec.name)
        if b is None:
            self.store.batches[spec.name] = _Batch(
                spec.name,
                spec.total,
                now,
                on_complete_task=spec.on_complete_task,
                on_complete_payload=spec.on_complete_payload_json,
                on_complete_queue=spec.on_complete_queue,
            )
            return
        b.total += spec.total
        if b.on_complete_task is None and spec.on_complete_task is not None:
            b.on_complete_task = spec.on_complete_task
            b.on_complete_payload = spec.on_complete_payload_json
            b.on_complete_queue = spec.on_complete_queue

    @staticmethod
    def _wanted(r: _Row, queues: tuple[str, ...] | None, exclude: tuple[str, ...]) -> bool:
        return (not queues or r.queue in queues) and r.queue not in exclude

    def _blocked(self, breaker: str | None) -> bool:
        """Behind a breaker whose stored state is not ``closed``."""
        if breaker is None:
            return False
        state = self.store.breakers.get(breaker)
        return state is not None and state.state != "closed"

    def _gate(self, r: _Row, breaker: str | None = None, rate_key: str | None = None) -> bool:
        """May a claim of this kind take ``r``?  Plain (both None): no rate key and not
        behind a blocked breaker; probe (``breaker``): that breaker's tasks, whatever its
        state; rate (``rate_key``): that key's tasks not behind a blocked breaker."""
        ok = r.breaker == breaker if breaker is not None else not self._blocked(r.breaker)
        if rate_key is not None:
            return ok and r.rate_key == rate_key
        return ok and (breaker is not None or r.rate_key is None)

    def _ready(
        self,
        now: float,
        queues: tuple[str, ...] | None,
        exclude: tuple[str, ...] = (),
        breaker: str | None = None,
        rate_key: str | None = None,
    ) -> list[_Row]:
        return [
            r
            for r in self.store.tasks.values()
            if r.status == "pending"
            and r.next_run <= now
            and self._wanted(r, queues, exclude)
            and self._gate(r, breaker, rate_key)
        ]

    def claim(self, request: ClaimRequest) -> ClaimResult:
        now = time.time()
        with self.store.lock:
            rescued = self._rescue(now)
            ready = sorted(
                self._ready(
                    now, request.queues, request.exclude, request.breaker, request.rate_key
                ),
                key=lambda r: (-r.priority, r.next_run, r.id),
            )[: request.limit]
            out = []
            for r in ready:
                r.status, r.attempts = "processing", r.attempts + 1
                r.locked_by, r.locked_until, r.updated = request.worker_id, now + request.lease, now
                out.append(
                    Claimed(
                        r.id,
                        r.queue,
                        r.task_name,
                        r.payload,
                        r.attempts,
                        r.max_attempts,
                        r.breaker,
                        r.rate_key,
                    )
                )
        return ClaimResult(out, rescued)

    def _rescue(self, now: float) -> int:
        rescued = 0
        for r in list(self.store.tasks.values()):
            if r.status != "processing" or r.locked_until is None or r.locked_until > now:
                continue
            message = f"lease expired: worker {r.locked_by} stopped renewing it (died or hung)"
            r.status, r.locked_by, r.locked_until, r.next_run = "pending", None, None, now
            r.last_error = message
            r.errors.append(TaskError(r.attempts, _dt(now), "LeaseExpired", message))
            rescued += 1
        return rescued

    def _bury(self, r: _Row, b: BuryOutcome, now: float) -> None:
        error = b.error
        r.errors.append(error)
        dead_id = next(self.store.dead_ids)
        self.store.dead[dead_id] = DeadLetter(
            id=dead_id,
            task_id=r.id,
            queue=r.queue,
            task_name=r.task_name,
            payload=loads_lenient(r.payload),
            priority=r.priority,
            attempts=r.attempts,
            max_attempts=r.max_attempts or b.max_attempts,
            error=_line(error),
            reason=b.reason,
            fingerprint=b.fingerprint,
            created=r.created,
            died_at=_dt(now),
            errors=tuple(r.errors),
        )
        self.store.raw[dead_id] = (r.payload, r.unique_key, r.batch, r.breaker, r.rate_key)
        del self.store.tasks[r.id]

    def has_ready(self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()) -> bool:
        now = time.time()
        with self.store.lock:
            return bool(self._ready(now, queues, exclude)) or any(
                r.status == "processing"
                and (r.locked_until or 0) <= now
                and r.queue not in exclude
                and self._gate(r)
                for r in self.store.tasks.values()
            )

    def next_due(
        self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()
    ) -> float | None:
        now = time.time()
        with self.store.lock:
            times = [
                r.next_run if r.status == "pending" else (r.locked_until or now)
                for r in self.store.tasks.values()
                if r.queue not in exclude
                and (
                    r.status == "processing"
                    or (r.status == "pending" and (not queues or r.queue in queues))
                )
                and self._gate(r)
            ]
        return max(0.0, min(times) - now) if times else None

    def rate_keys_ready(
        self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()
    ) -> dict[str, tuple[float, str]]:
        now = time.time()
        found: dict[str, tuple[float, str]] = {}
        with self.store.lock:
            for r in self.store.tasks.values():
                if r.rate_key is None or not self._wanted(r, queues, exclude):
                    continue
                if r.status == "pending":
                    wait = max(0.0, r.next_run - now)
                elif r.status == "processing" and (r.locked_until or 0) <= now:
                    wait = 0.0  # an expired lease: claimable now
                else:
                    continue
                if self._blocked(r.breaker):
                    continue
                best = found.get(r.rate_key)
                if best is None or wait < best[0]:
                    found[r.rate_key] = (wait, r.task_name)
        first = sorted(found.items(), key=lambda kv: (kv[1][0], kv[0]))[:100]
        return dict(first)

    def _held(self, task_id: TaskId, worker: str) -> _Row | None:
        r = self.store.tasks.get(int(task_id))
        if r is None or r.status != "processing" or r.locked_by != worker:
            return None
        return r

    def complete(
        self, batch: CompleteBatch, claim: ClaimRequest | None = None
    ) -> ClaimResult | None:
        now = time.time()
        with self.store.lock:
            for tid in batch.done:
                if r := self._held(tid, batch.worker_id):
                    r.status, r.locked_by, r.locked_until, r.updated = "done", None, None, now
            for rt in batch.retries:
                if r := self._held(rt.id, batch.worker_id):
                    r.status, r.locked_by, r.locked_until = "pending", None, None
                    r.next_run, r.updated, r.last_error = now + rt.delay, now, _line(rt.error)
                    r.errors.append(rt.error)
            for b in batch.burials:
                if r := self._held(b.id, batch.worker_id):
                    self._bury(r, b, now)
            for tid in batch.released:
                if r := self._held(tid, batch.worker_id):
                    r.status, r.locked_by, r.locked_until = "pending", None, None
                    r.attempts, r.next_run = max(r.attempts - 1, 0), now
            for d in batch.deferred:
                if r := self._held(d.id, batch.worker_id):
                    r.status, r.locked_by, r.locked_until = "pending", None, None
                    r.attempts, r.next_run = max(r.attempts - 1, 0), now + d.delay
                    r.updated = now
                    if d.breaker is not None:
                        r.breaker = d.breaker
                    if d.rate_key is not None:
                        r.rate_key = d.rate_key
        if batch.retries or batch.released or batch.deferred:
            self._notify()
        return self.claim(claim) if claim is not None else None

    def renew(self, request: RenewRequest) -> list[TaskId]:
        now = time.time()
        held: list[TaskId] = []
        with self.store.lock:
            for tid in request.ids:
                if r := self._held(tid, request.worker_id):
                    r.locked_until = now + request.lease
                    held.append(r.id)
        return held

    def heartbeat(self, beat: Heartbeat) -> None:
        with self.store.lock:
            self.store.workers[beat.worker_id] = (beat, time.time())

    def remove_worker(self, worker_id: str) -> None:
        with self.store.lock:
            self.store.workers.pop(worker_id, None)

    def prune(self, request: PruneRequest) -> int:
        now = time.time()
        with self.store.lock:
            newest = max(self.store.tasks, default=None)  # kept, as SQLite keeps it
            cutoff = now - request.done_older_than
            old = [
                r.id
                for r in self.store.tasks.values()
                if r.status in ("done", "cancelled") and r.updated < cutoff and r.id != newest
            ]
            for tid in old:
                del self.store.tasks[tid]
            letters: list[int] = []
            if request.dead_older_than is not None:
                dead_cutoff = _dt(now - request.dead_older_than)
                letters = [
                    int(d.id) for d in self.store.dead.values() if _resolved_before(d, dead_cutoff)
                ]
                for dead_id in letters:
                    del self.store.dead[dead_id]
                    self.store.raw.pop(dead_id, None)
            live = {r.batch for r in self.store.tasks.values() if r.batch is not None}
            for d in self.store.dead.values():
                raw = self.store.raw.get(int(d.id))
                if d.status == "dead" and raw is not None and raw[2] is not None:
                    live.add(raw[2])
            empty = [
                b.name
                for b in self.store.batches.values()
                if b.completed is not None and b.completed < cutoff and b.name not in live
            ]
            for name in empty:
                del self.store.batches[name]
            stale = [
                w
                for w, (_, at) in self.store.workers.items()
                if at < now - request.workers_stale_after
            ]
            for w in stale:
                del self.store.workers[w]
        return len(old) + len(letters) + len(empty) + len(stale)

    def prepare_worker(self) -> None:
        pass

    def wake_source(self) -> _Wake:
        return _Wake(self.store)

    def _task(self, r: _Row) -> Task:
        return Task(
            id=r.id,
            queue=r.queue,
            task_name=r.task_name,
            payload=loads_lenient(r.payload),
            priority=r.priority,
            status=r.status,
            attempts=r.attempts,
            max_attempts=r.max_attempts,
            next_run=_dt(r.next_run),
            created=r.created,
            updated=_dt(r.updated),
            locked_by=r.locked_by,
            locked_until=utc_from_epoch(r.locked_until),
            last_error=r.last_error,
            unique_key=r.unique_key,
            errors=tuple(r.errors),
            dead_letter_id=r.dead_letter_id,
            batch=r.batch,
            breaker=r.breaker,
            rate_key=r.rate_key,
        )

    def get(self, task_id: TaskId) -> Task | None:
        with self.store.lock:
            r = self.store.tasks.get(int(task_id))
            if r is not None:
                return self._task(r)
            dead = [d for d in self.store.dead.values() if d.task_id == int(task_id)]
            if not dead:
                return None
            last = max(dead, key=lambda d: int(d.id))
            batch = self.store.raw.get(int(last.id), ("", None, None))[2]
        return replace(last.as_task(), batch=batch)

    def counts(self) -> Counts:
        now = time.time()
        c = Counts()
        oldest: float | None = None
        with self.store.lock:
            empty = {
                "pending": 0,
                "processing": 0,
                "done": 0,
                "dead": 0,
                "ready": 0,
                "scheduled": 0,
            }
            for r in self.store.tasks.values():
                per = c.by_queue.setdefault(r.queue, dict(empty))
                per[r.status] = per.get(r.status, 0) + 1
                setattr(c, r.status, getattr(c, r.status) + 1)
                if r.status == "pending":
                    if r.next_run <= now:
                        c.ready += 1
                        per["ready"] += 1
                        oldest = r.next_run if oldest is None else min(oldest, r.next_run)
                    else:
                        c.scheduled += 1
                        per["scheduled"] += 1
            for d in self.store.dead.values():
                if d.status == "dead":
                    c.by_queue.setdefault(d.queue, dict(empty))["dead"] += 1
                    c.dead += 1
        c.oldest_ready_age = None if oldest is None else now - oldest
        return c

    def list_tasks(self, flt: TaskFilter) -> list[Task]:
        if flt.status == "dead":
            return [
                t
                for d in self.dead_letters(DeadFilter(flt.task_name, flt.queue, limit=flt.limit))
                if (t := self.get(d.task_id)) is not None
            ]
        with self.store.lock:
            rows = sorted(self.store.tasks.values(), key=lambda r: -r.id)
            rows = [
                r
                for r in rows
                if (flt.status is None or r.status == flt.status)
                and (flt.queue is None or r.queue == flt.queue)
                and (flt.task_name is None or r.task_name == flt.task_name)
            ][: flt.limit]
            return [self._task(r) for r in rows]

    def workers(self) -> list[WorkerInfo]:
        now = time.time()
        with self.store.lock:
            return [
                WorkerInfo(
                    b.worker_id,
                    b.host,
                    b.pid,
                    b.version,
                    b.queues,
                    b.concurrency,
                    b.running,
                    b.done,
                    _dt(b.started),
                    _dt(at),
                    now - at,
                )
                for b, at in self.store.workers.values()
            ]

    def dead_letters(self, flt: DeadFilter) -> list[DeadLetter]:
        with self.store.lock:
            items = sorted(self.store.dead.values(), key=lambda d: (d.died_at, d.id), reverse=True)
        items = [
            d
            for d in items
            if (flt.include_all or d.status == "dead")
            and (flt.task_name is None or d.task_name == flt.task_name)
            and (flt.queue is None or d.queue == flt.queue)
            and (flt.error_contains is None or flt.error_contains.lower() in d.error.lower())
            and (flt.fingerprint is None or d.fingerprint == flt.fingerprint)
        ]
        return items if flt.limit is None else items[: flt.limit]

    def dead_groups(self, flt: DeadFilter) -> list[DeadGroup]:
        waiting = replace(flt, include_all=False, limit=None)
        groups: dict[str, list[DeadLetter]] = {}
        for d in self.dead_letters(waiting):  # newest first
            groups.setdefault(d.fingerprint, []).append(d)
        out = [
            DeadGroup(
                fingerprint=fp,
                count=len(members),
                task_name=members[0].task_name,
                example=members[0].error,
                example_id=members[0].id,
                first_seen=min(d.died_at for d in members),
                last_seen=max(d.died_at for d in members),
            )
            for fp, members in groups.items()
        ]
        out.sort(key=lambda g: (-g.count, -g.last_seen.timestamp(), g.fingerprint))
        return out if flt.limit is None else out[: max(0, flt.limit)]

    def get_dead(self, dead_id: TaskId) -> DeadLetter | None:
        with self.store.lock:
            return self.store.dead.get(int(dead_id))

    def _select(self, sel: DeadSelector, verb: str) -> list[DeadLetter]:
        """The status-'dead' letters ``sel`` names or matches, oldest death first.

        Ids given one by one must all be waiting dead letters (else NotFound, and the
        caller changes nothing: all or nothing, as in one transaction)."""
        if sel.ids:
            chosen: dict[int, DeadLetter] = {}
            for dead_id in sel.ids:
                try:
                    d = self.store.dead.get(int(dead_id))
                except (TypeError, ValueError):
                    d = None
                if d is None or d.status != "dead":
                    raise NotFound(f"no dead letter {dead_id} waiting to be {verb}")
                chosen[int(d.id)] = d
            items = list(chosen.values())
        elif not (sel.all or sel.task_name or sel.queue or sel.fingerprint):
            raise ValueError(
                "say which dead letters: ids, all, or a task name, queue or fingerprint"
            )
        else:
            items = [
                d
                for d in self.store.dead.values()
                if d.status == "dead"
                and (sel.task_name is None or d.task_name == sel.task_name)
                and (sel.queue is None or d.queue == sel.queue)
                and (sel.fingerprint is None or d.fingerprint == sel.fingerprint)
            ]
        return sorted(items, key=lambda d: (d.died_at, int(d.id)))

    def _requeue(
        self, items: Sequence[DeadLetter], dues: Sequence[float], payload_json: str | None = None
    ) -> list[TaskId]:
        """Put waiting dead letters back as pending tasks due at ``dues`` (epoch)."""
        now = time.time()
        out: list[TaskId] = []
        for d, due in zip(items, dues, strict=True):
            dead_id = int(d.id)
            self.store.dead[dead_id] = replace(d, status="requeued", requeued_at=_dt(now))
            raw = self.store.raw.get(dead_id, (json.dumps(d.payload), None, None, None, None))
            payload, ukey, batch, breaker, rate_key = raw
            if ukey is not None and any(
                r.unique_key == ukey and r.status in ("pending", "processing")
                for r in self.store.tasks.values()
            ):
                ukey = None  # a live task already holds the key: this re-run goes without
            self.store.tasks[int(d.task_id)] = _Row(
                id=int(d.task_id),
                queue=d.queue,
                task_name=d.task_name,
                payload=payload if payload_json is None else payload_json,
                priority=d.priority,
                max_attempts=d.max_attempts,
                next_run=due,
                created=d.created or "",
                updated=now,
                unique_key=ukey,
                errors=list(d.errors),
                dead_letter_id=dead_id,
                batch=batch,
                breaker=breaker,
                rate_key=rate_key,
            )
            out.append(d.task_id)
        return out

    def requeue_dead(
        self,
        selector: DeadSelector,
        *,
        payload_json: str | None = None,
        delay: float = 0.0,
        spread: float = 0.0,
    ) -> list[TaskId]:
        check_requeue(selector, payload_json, delay, spread)
        now = time.time()
        with self.store.lock:
            items = self._select(selector, "re-queued")
            n = len(items)
            dues = [now + delay + spread * i / n for i in range(n)]
            out = self._requeue(items, dues, payload_json)
        self._notify()
        return out

    def review_dead(self, review: Review) -> int:
        if review.rate is not None and not review.rate > 0:
            raise ValueError("rate must be > 0 re-queues per second")
        now = time.time()
        with self.store.lock:
            items = self._select(review.selector, "reviewed")
            base = review.after if review.after is not None else now
            for i, d in enumerate(items):
                at: float | None = None
                if review.approve:
                    at = base + (i / review.rate if review.rate else 0.0)
                self.store.dead[int(d.id)] = replace(
                    d,
                    review="approved" if review.approve else "rejected",
                    reviewed_by=review.by,
                    reviewed_at=_dt(now),
                    review_note=review.note,
                    requeue_at=utc_from_epoch(at),
                )
        return len(items)

    def requeue_approved(self, limit: int = 500) -> list[TaskId]:
        now = time.time()
        with self.store.lock:
            due = sorted(
                (
                    d
                    for d in self.store.dead.values()
                    if d.status == "dead"
                    and d.review == "approved"
                    and d.requeue_at is not None
                    and d.requeue_at.timestamp() <= now
                ),
                key=lambda d: (d.requeue_at, d.died_at, int(d.id)),
            )[: max(0, limit)]
            out = self._requeue(due, [now] * len(due))
        if out:
            self._notify()
        return out

    def discard_dead(self, selector: DeadSelector) -> int:
        now = _dt(time.time())
        with self.store.lock:
            items = self._select(selector, "discarded")
            for d in items:
                self.store.dead[int(d.id)] = replace(d, status="discarded", discarded_at=now)
        return len(items)

    # --- control --------------------------------------------------------------------

    def cancel(self, selector: CancelSelector) -> list[TaskId]:
        now = time.time()
        with self.store.lock:
            if selector.ids:
                rows: list[_Row] = []
                dead_tasks = {int(d.task_id) for d in self.store.dead.values()}
                for tid in selector.ids:
                    try:
                        key = int(tid)
                    except (TypeError, ValueError):
                        raise NotFound(f"no task {tid}") from None
                    r = self.store.tasks.get(key)
                    if r is None and key not in dead_tasks:
                        raise NotFound(f"no task {tid}")
                    if r is not None and r.status == "pending" and r not in rows:
                        rows.append(r)
            elif not (selector.task_name or selector.queue or selector.batch):
                raise ValueError("say which tasks to cancel: ids, or a task name, queue or batch")
            else:
                rows = sorted(
                    (
                        r
                        for r in self.store.tasks.values()
                        if r.status == "pending"
                        and (selector.task_name is None or r.task_name == selector.task_name)
                        and (selector.queue is None or r.queue == selector.queue)
                        and (selector.batch is None or r.batch == selector.batch)
                    ),
                    key=lambda r: r.id,
                )
            for r in rows:
                r.status, r.updated = "cancelled", now
        return [r.id for r in rows]

    def pause_queue(self, queue: str, paused: bool) -> None:
        with self.store.lock:
            if paused:
                self.store.paused.setdefault(queue, time.time())
            else:
                self.store.paused.pop(queue, None)
        if not paused:
            self._notify()

    def paused_queues(self) -> dict[str, float]:
        with self.store.lock:
            return dict(self.store.paused)

    # --- batches --------------------------------------------------------------------

    def _batch_info(self, b: _Batch) -> BatchInfo:
        n = dict.fromkeys(("pending", "processing", "done", "cancelled"), 0)
        finished: list[float] = []
        for r in self.store.tasks.values():
            if r.batch == b.name and r.status in n:
                n[r.status] += 1
                if r.status == "done":
                    finished.append(r.updated)
        dead = 0
        for d in self.store.dead.values():
            raw = self.store.raw.get(int(d.id))
            if d.status == "dead" and raw is not None and raw[2] == b.name:
                dead += 1
                finished.append(d.died_at.timestamp())
        return BatchInfo(
            name=b.name,
            total=b.total,
            pending=n["pending"],
            processing=n["processing"],
            done=n["done"],
            dead=dead,
            cancelled=n["cancelled"],
            created=_dt(b.created),
            last_finished=utc_from_epoch(max(finished)) if finished else None,
            completed=utc_from_epoch(b.completed),
            on_complete=b.on_complete_task,
            followup_id=b.followup_id,
        )

    def batch(self, name: str) -> BatchInfo | None:
        with self.store.lock:
            b = self.store.batches.get(name)
            return None if b is None else self._batch_info(b)

    def batches(self, limit: int = 50) -> list[BatchInfo]:
        with self.store.lock:
            newest = sorted(self.store.batches.values(), key=lambda b: (-b.created, b.name))
            return [self._batch_info(b) for b in newest[: max(0, limit)]]

    def settle_batches(self) -> list[tuple[str, TaskId | None]]:
        out: list[tuple[str, TaskId | None]] = []
        with self.store.lock:
            open_ = [b for b in self.store.batches.values() if b.completed is None]
            if not open_:
                return out
            busy = {
                r.batch
                for r in self.store.tasks.values()
                if r.batch is not None and r.status in ("pending", "processing")
            }
            now = time.time()
            for b in sorted(open_, key=lambda b: (b.created, b.name)):
                if b.name in busy:
                    continue
                b.completed = now
                if b.on_complete_task is not None:
                    row = _Row(
                        id=next(self.store.ids),
                        queue=b.on_complete_queue or "default",
                        task_name=b.on_complete_task,
                        payload=b.on_complete_payload or "{}",
                        priority=0,
                        max_attempts=None,
                        next_run=now,
                        created=_dt(now).strftime("%Y-%m-%d %H:%M:%S"),
                        updated=now,
                    )
                    self.store.tasks[row.id] = row
                    b.followup_id = row.id
                out.append((b.name, b.followup_id))
        if any(f is not None for _, f in out):
            self._notify()
        return out

    # --- circuit breakers, rate limits, schedules (compare-and-set rows) ------------------

    @staticmethod
    def _named(rows: dict[str, T], names: Sequence[str] | None) -> list[T]:
        keys = sorted(rows) if names is None else sorted(set(names) & rows.keys())
        return [rows[k] for k in keys]

    @staticmethod
    def _cas(rows: dict[str, T], name: str, state: T, expected: int) -> bool:
        stored = rows.get(name)
        if (0 if stored is None else stored.version) != expected:
            return False
        rows[name] = replace(state, version=expected + 1)
        return True

    def breakers(self, names: Sequence[str] | None = None) -> list[BreakerState]:
        with self.store.lock:
            return self._named(self.store.breakers, names)

    def put_breaker(self, state: BreakerState, expected_version: int) -> bool:
        with self.store.lock:
            done = self._cas(self.store.breakers, state.name, state, expected_version)
        if done and state.state == "closed":
            self._notify()  # its tasks may be claimable again
        return done

    def delete_breaker(self, name: str) -> bool:
        with self.store.lock:
            gone = self.store.breakers.pop(name, None) is not None
        if gone:
            self._notify()
        return gone

    def rate_limits(self, names: Sequence[str] | None = None) -> list[RateState]:
        with self.store.lock:
            return self._named(self.store.rates, names)

    def put_rate_limit(self, state: RateState, expected_version: int) -> bool:
        with self.store.lock:
            return self._cas(self.store.rates, state.name, state, expected_version)

    def schedules(self) -> list[ScheduleState]:
        with self.store.lock:
            return self._named(self.store.schedules, None)

    def put_schedule(self, state: ScheduleState, expected_version: int) -> bool:
        with self.store.lock:
            return self._cas(self.store.schedules, state.name, state, expected_version)

    def delete_schedule(self, name: str) -> bool:
        with self.store.lock:
            return self.store.schedules.pop(name, None) is not None

    def fire_schedule(
        self, state: ScheduleState, expected_version: int, tasks: Sequence[NewTask]
    ) -> list[TaskId] | None:
        with self.store.lock:
            if not self._cas(self.store.schedules, state.name, state, expected_version):
                return None
            ids = self._insert(tasks, time.time())
            if ids:
                stored = self.store.schedules[state.name]
                self.store.schedules[state.name] = replace(stored, last_task_id=ids[-1])
        if ids:
            self._notify()
        return ids

    def parse_id(self, text: str) -> TaskId:
        return int(text)

    def close(self) -> None:
        pass


def _resolved_before(d: DeadLetter, cutoff: datetime) -> bool:
    """A dead letter handled (re-queued, discarded or rejected) before ``cutoff``."""
    if d.status == "requeued":
        return d.requeued_at is not None and d.requeued_at < cutoff
    if d.status == "discarded":
        return d.discarded_at is not None and d.discarded_at < cutoff
    return d.review == "rejected" and d.reviewed_at is not None and d.reviewed_at < cutoff


def _line(error: TaskError) -> str:
    return f"{error.type}: {error.message}" if error.message else error.type


__all__ = ["MemoryBackend"]
