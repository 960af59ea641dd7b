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

from ..exceptions import NotFound
from ..models import (
    BuryOutcome,
    Claimed,
    ClaimRequest,
    ClaimResult,
    CompleteBatch,
    Counts,
    DeadFilter,
    DeadLetter,
    DeadSelector,
    Heartbeat,
    NewTask,
    PruneRequest,
    RenewRequest,
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


@dataclass
class _Store:
    lock: threading.Lock = field(default_factory=threading.Lock)
    tasks: dict[int, _Row] = field(default_factory=dict)
    dead: dict[int, DeadLetter] = field(default_factory=dict)
    workers: dict[str, tuple[Heartbeat, float]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    dead_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    listeners: list[Callable[[], None]] = field(default_factory=list)
    # a dead letter's stored payload text and unique key, to re-queue it unchanged
    raw: dict[int, tuple[str, str | None]] = field(default_factory=dict)


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
        return 1

    def enqueue(
        self, tasks: Sequence[NewTask], connection: object | None = None
    ) -> list[TaskId]:
        if connection is not None:
            raise refuse_connection("memory")
        now = time.time()
        created = _dt(now).strftime("%Y-%m-%d %H:%M:%S")
        ids: list[TaskId] = []
        with self.store.lock:
            for t in tasks:
                if t.unique_key is not None:
                    existing = next(
                        (
                            r.id
                            for r in self.store.tasks.values()
                            if r.unique_key == t.unique_key
                            and r.status in ("pending", "processing")
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
                )
                self.store.tasks[row.id] = row
                ids.append(row.id)
        self._notify()
        return ids

    def _ready(self, now: float, queues: tuple[str, ...] | None) -> list[_Row]:
        return [
            r
            for r in self.store.tasks.values()
            if r.status == "pending" and r.next_run <= now and (not queues or r.queue in queues)
        ]

    def claim(self, request: ClaimRequest) -> ClaimResult:
        now = time.time()
        with self.store.lock:
            rescued = self._rescue(now)
            ready = sorted(
                self._ready(now, request.queues), key=lambda r: (-r.priority, r.next_run, r.id)
            )[: request.limit]
            out = []
            for r in ready:
                r.status, r.attempts = "processing", r.attempts + 1
                r.locked_by, r.locked_until, r.updated = request.worker_id, now + request.lease, now
                out.append(
                    Claimed(r.id, r.queue, r.task_name, r.payload, r.attempts, r.max_attempts)
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
        self.store.raw[dead_id] = (r.payload, r.unique_key)
        del self.store.tasks[r.id]

    def has_ready(self, queues: tuple[str, ...] | None) -> bool:
        now = time.time()
        with self.store.lock:
            return bool(self._ready(now, queues)) or any(
                r.status == "processing" and (r.locked_until or 0) <= now
                for r in self.store.tasks.values()
            )

    def next_due(self, queues: tuple[str, ...] | None) -> float | None:
        now = time.time()
        with self.store.lock:
            times = [
                r.next_run if r.status == "pending" else (r.locked_until or now)
                for r in self.store.tasks.values()
                if r.status == "processing"
                or (r.status == "pending" and (not queues or r.queue in queues))
            ]
        return max(0.0, min(times) - now) if times else None

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
        if batch.retries or batch.released:
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
            old = [
                r.id
                for r in self.store.tasks.values()
                if r.status == "done"
                and r.updated < now - request.done_older_than
                and r.id != newest
            ]
            for tid in old:
                del self.store.tasks[tid]
            stale = [
                w
                for w, (_, at) in self.store.workers.items()
                if at < now - request.workers_stale_after
            ]
            for w in stale:
                del self.store.workers[w]
        return len(old) + len(stale)

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
        )

    def get(self, task_id: TaskId) -> Task | None:
        with self.store.lock:
            r = self.store.tasks.get(int(task_id))
            if r is not None:
                return self._task(r)
            dead = [d for d in self.store.dead.values() if d.task_id == int(task_id)]
        if not dead:
            return None
        return max(dead, key=lambda d: int(d.id)).as_task()

    def counts(self) -> Counts:
        now = time.time()
        c = Counts()
        oldest: float | None = None
        with self.store.lock:
            for r in self.store.tasks.values():
                per = c.by_queue.setdefault(
                    r.queue, {"pending": 0, "processing": 0, "done": 0, "dead": 0}
                )
                per[r.status] += 1
                setattr(c, r.status, getattr(c, r.status) + 1)
                if r.status == "pending":
                    if r.next_run <= now:
                        c.ready += 1
                        oldest = r.next_run if oldest is None else min(oldest, r.next_run)
                    else:
                        c.scheduled += 1
            for d in self.store.dead.values():
                if d.status == "dead":
                    c.by_queue.setdefault(
                        d.queue, {"pending": 0, "processing": 0, "done": 0, "dead": 0}
                    )["dead"] += 1
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
        ]
        return items if flt.limit is None else items[: flt.limit]

    def get_dead(self, dead_id: TaskId) -> DeadLetter | None:
        with self.store.lock:
            return self.store.dead.get(int(dead_id))

    def _select(self, sel: DeadSelector) -> list[int]:
        if sel.ids:
            return [int(i) for i in sel.ids]
        if not (sel.all or sel.task_name or sel.queue):
            return []
        return sorted(
            int(d.id)
            for d in self.store.dead.values()
            if d.status == "dead"
            and (sel.task_name is None or d.task_name == sel.task_name)
            and (sel.queue is None or d.queue == sel.queue)
        )

    def _check_waiting(self, selector: DeadSelector, verb: str) -> None:
        """Named ids must all be waiting dead letters: all or nothing, as in one transaction."""
        for dead_id in selector.ids:
            d = self.store.dead.get(int(dead_id))
            if d is None or d.status != "dead":
                raise NotFound(f"no dead letter {dead_id} waiting to be {verb}")

    def requeue_dead(self, selector: DeadSelector) -> list[TaskId]:
        now = time.time()
        out: list[TaskId] = []
        with self.store.lock:
            self._check_waiting(selector, "re-queued")
            for dead_id in self._select(selector):
                d = self.store.dead.get(dead_id)
                if d is None or d.status != "dead":
                    if selector.ids:
                        raise NotFound(f"no dead letter {dead_id} waiting to be re-queued")
                    continue
                self.store.dead[dead_id] = replace(d, status="requeued", requeued_at=_dt(now))
                payload, ukey = self.store.raw.get(dead_id, (json.dumps(d.payload), None))
                self.store.tasks[int(d.task_id)] = _Row(
                    id=int(d.task_id),
                    queue=d.queue,
                    task_name=d.task_name,
                    payload=payload,
                    priority=d.priority,
                    max_attempts=d.max_attempts,
                    next_run=now,
                    created=d.created or "",
                    updated=now,
                    unique_key=ukey,
                    errors=list(d.errors),
                    dead_letter_id=dead_id,
                )
                out.append(d.task_id)
        self._notify()
        return out

    def discard_dead(self, selector: DeadSelector) -> int:
        n = 0
        with self.store.lock:
            self._check_waiting(selector, "discarded")
            for dead_id in self._select(selector):
                d = self.store.dead.get(dead_id)
                if d is None or d.status != "dead":
                    if selector.ids:
                        raise NotFound(f"no dead letter {dead_id} waiting to be discarded")
                    continue
                self.store.dead[dead_id] = replace(d, status="discarded")
                n += 1
        return n

    def parse_id(self, text: str) -> TaskId:
        return int(text)

    def close(self) -> None:
        pass


def _line(error: TaskError) -> str:
    return f"{error.type}: {error.message}" if error.message else error.type


__all__ = ["MemoryBackend"]
