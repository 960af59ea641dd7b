"""The values that cross the backend boundary.

Every backend verb takes one small frozen dataclass and returns plain values or the
dataclasses below, so SQL and Redis backends implement the same thing.  Times are UTC:
``datetime`` objects (aware) in what users see, epoch seconds inside requests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

TaskId = int | str
"""Integers on SQL backends, strings on Redis."""

Status = Literal["pending", "processing", "done", "dead"]
STATUSES: tuple[Status, ...] = ("pending", "processing", "done", "dead")


def utc_from_epoch(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).isoformat()


# --- what users see ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskError:
    """One failed (or retried) attempt."""

    attempt: int
    at: datetime
    type: str
    message: str
    traceback: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "at": iso(self.at),
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
        }


@dataclass(frozen=True, slots=True)
class Task:
    """A task as stored.  ``status`` is ``dead`` when it sits in the dead letters."""

    id: TaskId
    queue: str
    task_name: str
    payload: Any
    priority: int
    status: str
    attempts: int
    max_attempts: int | None  # None: as the handler declares (5 if it declares nothing)
    next_run: datetime | None
    created: str | None
    updated: datetime | None = None
    locked_by: str | None = None
    locked_until: datetime | None = None
    last_error: str | None = None
    unique_key: str | None = None
    errors: tuple[TaskError, ...] = ()
    dead_letter_id: TaskId | None = None  # the dead letter it went to, or was re-queued from
    batch: str | None = None
    breaker: str | None = None
    rate_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task_name": self.task_name,
            "queue": self.queue,
            "payload": self.payload,
            "priority": self.priority,
            "status": self.status,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "next_run": iso(self.next_run),
            "created": self.created,
            "updated": iso(self.updated),
            "locked_by": self.locked_by,
            "locked_until": iso(self.locked_until),
            "last_error": self.last_error,
            "unique_key": self.unique_key,
            "dead_letter_id": self.dead_letter_id,
            "batch": self.batch,
            "breaker": self.breaker,
            "rate_key": self.rate_key,
            "errors": [e.to_json() for e in self.errors],
        }


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A task that used its attempts or was discarded, with its whole error history."""

    id: TaskId
    task_id: TaskId
    queue: str
    task_name: str
    payload: Any
    priority: int
    attempts: int
    max_attempts: int | None
    error: str
    reason: str
    fingerprint: str
    created: str | None
    died_at: datetime
    status: str = "dead"  # dead | requeued | discarded
    errors: tuple[TaskError, ...] = ()
    requeued_at: datetime | None = None
    review: str | None = None  # None (not reviewed) | "approved" | "rejected"
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    review_note: str | None = None
    requeue_at: datetime | None = None  # approved: when the worker re-queues it
    discarded_at: datetime | None = None

    def as_task(self) -> Task:
        """The dead-lettered task as ``get(task_id)`` shows it (status ``dead``)."""
        return Task(
            id=self.task_id,
            queue=self.queue,
            task_name=self.task_name,
            payload=self.payload,
            priority=self.priority,
            status=self.status,
            attempts=self.attempts,
            max_attempts=self.max_attempts,
            next_run=None,
            created=self.created,
            updated=self.died_at,
            last_error=self.error,
            errors=self.errors,
            dead_letter_id=self.id,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task_id": self.task_id,
            "task_name": self.task_name,
            "queue": self.queue,
            "payload": self.payload,
            "priority": self.priority,
            "error": self.error,
            "reason": self.reason,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "fingerprint": self.fingerprint,
            "status": self.status,
            "created": self.created,
            "died_at": iso(self.died_at),
            "requeued_at": iso(self.requeued_at),
            "discarded_at": iso(self.discarded_at),
            "review": self.review,
            "reviewed_by": self.reviewed_by,
            "reviewed_at": iso(self.reviewed_at),
            "review_note": self.review_note,
            "requeue_at": iso(self.requeue_at),
            "errors": [e.to_json() for e in self.errors],
        }


@dataclass(frozen=True, slots=True)
class DeadGroup:
    """Dead letters that share an error fingerprint (task name + exception type + the
    message with numbers, ids and quoted values normalised): one outage, one line."""

    fingerprint: str
    count: int
    task_name: str
    example: str  # one member's error message
    example_id: TaskId  # that member's dead-letter id
    first_seen: datetime
    last_seen: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "count": self.count,
            "task_name": self.task_name,
            "example": self.example,
            "example_id": self.example_id,
            "first_seen": iso(self.first_seen),
            "last_seen": iso(self.last_seen),
        }


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """A named batch's progress (``enqueue_many(..., batch=NAME)``).

    Member counts come from the task rows: ``pending`` includes members not yet due,
    ``dead`` the members in the dead letters (status ``dead``), ``cancelled`` the ones
    cancelled before they ran.  ``completed`` is set once no member is pending or
    processing (then the ``on_complete`` task, if any, was enqueued: ``followup_id``).
    """

    name: str
    total: int
    pending: int
    processing: int
    done: int
    dead: int
    cancelled: int
    created: datetime
    last_finished: datetime | None  # the newest done/dead member's finish time
    completed: datetime | None
    on_complete: str | None  # the follow-up task's name
    followup_id: TaskId | None

    @property
    def finished(self) -> int:
        return self.done + self.dead + self.cancelled

    def rate(self) -> float | None:
        """Members finished per second, from the batch's creation to its newest finish."""
        if not self.finished or self.last_finished is None:
            return None
        span = (self.last_finished - self.created).total_seconds()
        return self.finished / span if span > 0 else None

    def eta(self) -> float | None:
        """Seconds until the last member finishes at the rate so far (0 when complete)."""
        if self.completed is not None:
            return 0.0
        rate = self.rate()
        return (self.pending + self.processing) / rate if rate else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "total": self.total,
            "pending": self.pending,
            "processing": self.processing,
            "running": self.processing,
            "done": self.done,
            "dead": self.dead,
            "cancelled": self.cancelled,
            "created": iso(self.created),
            "last_finished": iso(self.last_finished),
            "completed": iso(self.completed),
            "on_complete": self.on_complete,
            "followup_id": self.followup_id,
            "rate": self.rate(),
            "eta_seconds": self.eta(),
        }


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    version: str
    queues: str
    concurrency: int
    running: int
    done: int
    started: datetime
    last_beat: datetime
    heartbeat_age: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
            "queues": self.queues,
            "concurrency": self.concurrency,
            "running": self.running,
            "done": self.done,
            "started": iso(self.started),
            "last_beat": iso(self.last_beat),
            "heartbeat_age": round(self.heartbeat_age, 3),
        }


# --- requests (what the worker and Queue pass to a backend) -------------------------


class NewTask(NamedTuple):
    """A task to insert.  ``payload_json`` is already encoded (and validated).

    A NamedTuple rather than a frozen dataclass: bulk enqueues make 100,000s of these.
    """

    task_name: str
    payload_json: str
    queue: str = "default"
    priority: int = 0
    max_attempts: int | None = None  # None: as the handler declares when it runs
    run_at: float | None = None  # epoch seconds; None = now (the backend's clock)
    delay: float = 0.0
    unique_key: str | None = None
    batch: str | None = None
    breaker: str | None = None  # the circuit breaker it goes through (claims skip it while open)
    rate_key: str | None = None  # the rate limit it waits for (claimed only by rate claims)


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """Passed with an ``enqueue`` whose tasks all carry ``batch=name``: creates the batch
    row (or adds ``total`` to an existing one) in the same transaction.  ``on_complete``
    is the follow-up task, enqueued once when the last member finishes or dies; an
    existing batch keeps the follow-up it has unless it had none."""

    name: str
    total: int
    on_complete_task: str | None = None
    on_complete_payload_json: str = "{}"
    on_complete_queue: str = "default"


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    worker_id: str
    limit: int
    lease: float
    queues: tuple[str, ...] | None = None  # None = every queue
    exclude: tuple[str, ...] = ()  # paused queues: never claimed (with any ``queues``)
    # A plain claim (both None) never takes a task with a ``rate_key``, nor one whose
    # ``breaker`` has a stored state other than ``closed``.  ``breaker``: a probe claim,
    # only tasks behind that breaker, whatever its state.  ``rate_key``: only tasks with
    # that rate key (still none behind a breaker that is not closed).
    breaker: str | None = None
    rate_key: str | None = None


class Claimed(NamedTuple):
    """A claimed task, as lean as the hot path wants it.  ``payload`` is raw JSON text.

    A NamedTuple: a claim makes hundreds at a time, and a row converts to one directly.
    """

    id: TaskId
    queue: str
    task_name: str
    payload: str
    attempts: int
    max_attempts: int | None
    breaker: str | None = None
    rate_key: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimResult:
    tasks: list[Claimed]
    rescued: int = 0  # expired leases made claimable again


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    id: TaskId
    delay: float
    error: TaskError


@dataclass(frozen=True, slots=True)
class BuryOutcome:
    id: TaskId
    reason: str
    error: TaskError
    fingerprint: str
    max_attempts: int  # the limit that applied (the row may hold NULL: "as the handler")


@dataclass(frozen=True, slots=True)
class DeferOutcome:
    """Not run: back to pending at now + ``delay`` with the attempt refunded and nothing
    recorded in its errors.  ``breaker`` / ``rate_key``, when given, are written into
    the row (a task enqueued without them, say by another program, gets them on its
    first claim, so later plain claims skip it while its breaker is open / leave it to
    its rate limit)."""

    id: TaskId
    delay: float = 0.0
    breaker: str | None = None
    rate_key: str | None = None


@dataclass(frozen=True, slots=True)
class CompleteBatch:
    """Everything a worker finished since its last acknowledgement, written at once."""

    worker_id: str
    done: Sequence[TaskId] = ()
    retries: Sequence[RetryOutcome] = ()
    burials: Sequence[BuryOutcome] = ()
    released: Sequence[TaskId] = ()  # unfinished at shutdown: back to pending, attempt refunded
    deferred: Sequence[DeferOutcome] = ()  # held back by a breaker or rate limit, not run

    def __len__(self) -> int:
        return (
            len(self.done)
            + len(self.retries)
            + len(self.burials)
            + len(self.released)
            + len(self.deferred)
        )


@dataclass(frozen=True, slots=True)
class RenewRequest:
    worker_id: str
    ids: Sequence[TaskId]
    lease: float


@dataclass(frozen=True, slots=True)
class Heartbeat:
    worker_id: str
    host: str
    pid: int
    version: str
    queues: str
    concurrency: int
    running: int
    done: int
    started: float


@dataclass(frozen=True, slots=True)
class TaskFilter:
    status: str | None = None
    queue: str | None = None
    task_name: str | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class DeadFilter:
    task_name: str | None = None
    queue: str | None = None
    error_contains: str | None = None
    include_all: bool = False  # also requeued / discarded records
    limit: int | None = 50
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class DeadSelector:
    """Which dead letters a requeue, discard or review acts on: ids, or every one
    matching the rest (``all`` alone: every one; ``task_name``/``queue``/``fingerprint``
    narrow it; several given: all must match).  Only letters with status ``dead``."""

    ids: Sequence[TaskId] = ()
    all: bool = False
    task_name: str | None = None
    queue: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class Review:
    """A person's verdict on dead letters.  Approved ones are re-queued by a worker at
    ``requeue_at`` (``after``, else now; with ``rate`` per second, the i-th of the
    selection, oldest first, at ``after + i / rate``); rejected ones stay as the record
    (still counted as dead).  A later review replaces an earlier one."""

    selector: DeadSelector
    approve: bool
    by: str
    note: str | None = None
    after: float | None = None  # epoch seconds
    rate: float | None = None  # re-queues per second


@dataclass(frozen=True, slots=True)
class CancelSelector:
    """Which tasks ``cancel`` acts on: ids, or every pending one of a task name / queue /
    batch (several given: all must match).  Only ``pending`` tasks change (running ones
    finish); they become ``cancelled``."""

    ids: Sequence[TaskId] = ()
    task_name: str | None = None
    queue: str | None = None
    batch: str | None = None


@dataclass(frozen=True, slots=True)
class PruneRequest:
    done_older_than: float  # seconds (done and cancelled tasks)
    workers_stale_after: float  # seconds without a heartbeat
    batch: int = 1000
    # dead letters re-queued, discarded or reviewed longer ago than this (None: keep)
    dead_older_than: float | None = None


@dataclass(slots=True)
class Counts:
    pending: int = 0
    processing: int = 0
    done: int = 0
    dead: int = 0
    by_queue: dict[str, dict[str, int]] = field(default_factory=dict)
    ready: int = 0
    scheduled: int = 0
    oldest_ready_age: float | None = None
    cancelled: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "pending": self.pending,
            "processing": self.processing,
            "done": self.done,
            "dead": self.dead,
        }


# --- circuit breakers, rate limits and schedules (stored state, compare-and-set) -------
#
# The backend only stores these rows and swaps them atomically (``put_*`` with the
# version the caller read); every decision (when a breaker opens, which slot a rate
# limit grants, which tick is due) is made by the pure code in lmq.breaker,
# lmq.ratelimit and lmq.schedule, identical for every backend.  ``version`` 0 means "not
# stored yet"; a stored row has version >= 1 and each successful put adds one.
# Times are epoch seconds from the workers' clocks (keep hosts NTP-synced).


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One circuit breaker as stored in ``{prefix}queue_breakers``."""

    name: str
    state: str = "closed"  # closed | open | half_open
    failures: int = 0  # consecutive counted failures while closed
    window_start: float = 0.0  # failure-ratio window: its start, calls and failures in it
    window_calls: int = 0
    window_failures: int = 0
    cooldown: float = 0.0  # the cool-down now in force (grows while probes fail)
    opened_at: float | None = None
    retry_at: float | None = None  # open: when a probe may run
    probe_by: str | None = None  # half_open: the worker running the probe
    probe_until: float | None = None  # half_open: after this another worker may probe
    trips: int = 0  # times it opened
    forced: bool = False  # opened by a person: no probes until a person closes it
    last_error: str | None = None
    updated: float = 0.0
    version: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "failures": self.failures,
            "window_calls": self.window_calls,
            "window_failures": self.window_failures,
            "cooldown": self.cooldown,
            "opened_at": iso(utc_from_epoch(self.opened_at)),
            "retry_at": iso(utc_from_epoch(self.retry_at)),
            "probe_by": self.probe_by,
            "probe_until": iso(utc_from_epoch(self.probe_until)),
            "trips": self.trips,
            "forced": self.forced,
            "last_error": self.last_error,
            "updated": iso(utc_from_epoch(self.updated)),
        }


@dataclass(frozen=True, slots=True)
class RateState:
    """One rate limit as stored in ``{prefix}queue_rate_limits``: ``calls`` per ``per``
    seconds; ``tat`` is the next free slot (a GCRA "theoretical arrival time")."""

    name: str
    calls: int
    per: float
    burst: int = 1
    tat: float = 0.0
    updated: float = 0.0
    version: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "calls": self.calls,
            "per": self.per,
            "burst": self.burst,
            "next_slot": iso(utc_from_epoch(self.tat)) if self.tat else None,
            "updated": iso(utc_from_epoch(self.updated)),
        }


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """One recurring task as stored in ``{prefix}queue_schedules``.

    Declared in code (``queue.schedule``) and synced by every worker on start; the
    stored ``next_tick`` is the one every worker races to fire by compare-and-set.
    """

    name: str
    task_name: str
    queue: str = "default"
    payload_json: str = "{}"
    priority: int = 0
    cron: str | None = None
    every: float | None = None  # seconds
    timezone: str = "UTC"
    missed: str = "once"  # once | all | skip: ticks missed while no worker ran
    next_tick: float | None = None  # epoch seconds of the next tick to enqueue
    last_tick: float | None = None
    last_task_id: TaskId | None = None
    paused: bool = False
    declared: float = 0.0  # when a worker last synced it from code
    updated: float = 0.0
    version: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task_name": self.task_name,
            "queue": self.queue,
            "payload": json.loads(self.payload_json),
            "priority": self.priority,
            "cron": self.cron,
            "every": self.every,
            "timezone": self.timezone,
            "missed": self.missed,
            "next_tick": iso(utc_from_epoch(self.next_tick)),
            "last_tick": iso(utc_from_epoch(self.last_tick)),
            "last_task_id": self.last_task_id,
            "paused": self.paused,
            "declared": iso(utc_from_epoch(self.declared)),
        }
