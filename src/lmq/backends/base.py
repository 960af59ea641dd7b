"""The backend protocol: the queue's own verbs, each taking one small frozen dataclass.

A backend stores tasks and changes their state atomically; all queue logic that is not
about storage (retry policy, handler lookup, timeouts, shutdown) lives in the worker and
in :class:`lmq.Queue`.  The methods are synchronous: producers call them from ordinary
(web) threads, and the worker calls them from one dedicated thread so the event loop
never blocks on I/O.  Implementations must be safe to call from several threads.

State changes (see docs/state-machine.md):

============  =====================================================================
verb          effect
============  =====================================================================
enqueue       insert tasks as ``pending`` (one transaction for the whole sequence);
              a ``unique_key`` already pending/processing returns the existing id
claim         take up to ``limit`` ready tasks (pending and due, or processing with an
              expired lease) in priority, next_run, id order: ``processing``,
              ``attempts + 1``, leased to the worker.  Atomic: no two claims get one
              task.  Expired leases whose attempts are used up go to the dead letters.
complete      one transaction for a batch of outcomes: done, retry (back to pending
              at now + delay, error recorded), bury (moved to the dead letters with
              its history), release (back to pending, attempt refunded).  Only rows
              still leased to that worker are touched.  It may claim in the same
              transaction (a busy worker refilling its slots).
renew         extend the leases of tasks the worker still holds; returns those ids
heartbeat     upsert the worker's row; ``remove_worker`` deletes it on clean exit
============  =====================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from ..models import (
    BatchInfo,
    BatchSpec,
    BreakerState,
    CancelSelector,
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
    TaskFilter,
    TaskId,
    WorkerInfo,
)


class WakeSource(Protocol):
    """Tells a waiting worker that something may have become claimable.

    ``start(callback)`` begins watching; ``callback`` may be called from any thread and
    must be cheap.  Spurious calls are fine: the worker just tries a claim.

    A source whose class sets ``announces_work = True`` calls back only when tasks were
    made ready (a NOTIFY or PUBLISH sent with the insert): the worker then claims at once
    instead of first checking with a read, saving a round trip of pickup latency.  Others
    (a file watcher that fires on any commit) leave it out.
    """

    def start(self, callback: Callable[[], None]) -> None: ...

    def stop(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """Storage for one queue database (see the module docstring for the semantics)."""

    url: str
    """The URL with any password masked, for messages and logs."""

    # --- schema -----------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Create or upgrade the tables; return the migration numbers applied."""
        ...

    def schema_version(self) -> int | None:
        """The applied schema version, or None when lmq's tables are absent."""
        ...

    # --- producer ---------------------------------------------------------------
    def enqueue(
        self,
        tasks: Sequence[NewTask],
        connection: object | None = None,
        batch: BatchSpec | None = None,
    ) -> list[TaskId]:
        """Insert ``tasks`` in one transaction and return their ids, in order.

        With ``batch``, the batch row is created (or its ``total`` grows) in the same
        transaction; every task then carries ``batch=batch.name``.

        With ``connection`` (the application's own sqlite3 / psycopg / PyMySQL /
        SQLAlchemy connection, see :mod:`lmq.backends.external`), the rows are written
        with it, inside the application's open transaction, and lmq neither commits nor
        rolls back: the tasks exist only if the application commits.  Backends without
        transactions raise ConfigError.
        """
        ...

    # --- worker -----------------------------------------------------------------
    def claim(self, request: ClaimRequest) -> ClaimResult: ...

    def has_ready(self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()) -> bool:
        """A cheap read: is any task claimable now?  Lets idle workers skip a write.
        ``exclude``: paused queues, never claimable."""
        ...

    def next_due(
        self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()
    ) -> float | None:
        """Seconds until the earliest pending task is due (0 if one is), or None."""
        ...

    def complete(
        self, batch: CompleteBatch, claim: ClaimRequest | None = None
    ) -> ClaimResult | None:
        """Write a batch of outcomes; with ``claim``, claim more in the same transaction.

        Acknowledging and refilling the freed slots at once halves a busy worker's
        transactions.  Returns the claim's result (None without ``claim``).
        """
        ...

    def renew(self, request: RenewRequest) -> list[TaskId]: ...

    def heartbeat(self, beat: Heartbeat) -> None: ...

    def remove_worker(self, worker_id: str) -> None: ...

    def prune(self, request: PruneRequest) -> int:
        """Delete finished rows and stale worker rows in small batches; return rows removed."""
        ...

    def wake_source(self) -> WakeSource | None:
        """A source of wake-ups for idle workers, or None to rely on polling.

        A backend that relies on polling may set a ``poll_interval`` attribute (seconds):
        idle workers then check at least that often (MySQL: 0.1 s by default).
        """
        ...

    def prepare_worker(self) -> None:
        """Called once by a worker before it starts: tune for draining (may do nothing)."""
        ...

    # --- inspection -------------------------------------------------------------
    def get(self, task_id: TaskId) -> Task | None: ...

    def counts(self) -> Counts: ...

    def list_tasks(self, flt: TaskFilter) -> list[Task]: ...

    def workers(self) -> list[WorkerInfo]: ...

    # --- dead letters -----------------------------------------------------------
    def dead_letters(self, flt: DeadFilter) -> list[DeadLetter]: ...

    def get_dead(self, dead_id: TaskId) -> DeadLetter | None: ...

    def dead_groups(self, flt: DeadFilter) -> list[DeadGroup]:
        """Dead letters grouped by fingerprint, largest group first (``flt.limit`` groups)."""
        ...

    def requeue_dead(
        self,
        selector: DeadSelector,
        *,
        payload_json: str | None = None,
        delay: float = 0.0,
        spread: float = 0.0,
    ) -> list[TaskId]:
        """Put dead letters back as pending tasks (same task id, attempts reset).

        The task keeps ``dead_letter_id`` (the link back); the letter becomes
        ``requeued``.  ``payload_json`` replaces the payload (only with exactly one id in
        ``selector.ids``, else ValueError).  The i-th of n re-queued (oldest death first)
        is due at ``now + delay + spread * i / n``, so thousands return gradually.
        Ids given one by one that are unknown or not waiting raise NotFound, and then
        nothing changes.
        """
        ...

    def review_dead(self, review: Review) -> int:
        """Record a person's verdict on the selected dead letters; return how many."""
        ...

    def requeue_approved(self, limit: int = 500) -> list[TaskId]:
        """Re-queue approved dead letters whose ``requeue_at`` has come (at most
        ``limit``, oldest ``requeue_at`` first); atomic, so concurrent workers never
        re-queue one twice.  Called by workers about once a second."""
        ...

    def discard_dead(self, selector: DeadSelector) -> int:
        """Mark dead letters discarded (kept as a record, no longer counted)."""
        ...

    # --- control ----------------------------------------------------------------
    def cancel(self, selector: CancelSelector) -> list[TaskId]:
        """Make the selected ``pending`` tasks ``cancelled``; return their ids.  Ids given
        one by one that are unknown raise NotFound (nothing changes); ones not pending
        (running, finished) are left alone and not returned."""
        ...

    def pause_queue(self, queue: str, paused: bool) -> None:
        """Pause (workers stop claiming its tasks) or resume a queue by name."""
        ...

    def paused_queues(self) -> dict[str, float]:
        """Paused queue names and when each was paused (epoch seconds)."""
        ...

    # --- batches ----------------------------------------------------------------
    def batch(self, name: str) -> BatchInfo | None: ...

    def batches(self, limit: int = 50) -> list[BatchInfo]:
        """Newest first."""
        ...

    def settle_batches(self) -> list[tuple[str, TaskId | None]]:
        """Mark complete every open batch with no member pending or processing, and
        enqueue its ``on_complete`` task in the same transaction (exactly once however
        many workers call this); return ``(name, follow-up id or None)`` for each."""
        ...

    # --- circuit breakers, rate limits, schedules (issue 5) -----------------------------
    # Storage only: rows swapped by compare-and-set on ``version`` (see models.py); the
    # decisions are made by lmq.breaker / lmq.ratelimit / lmq.schedule.  ``put_*`` stores
    # ``state`` (whose version is ``expected_version + 1``) only if the stored row's
    # version is ``expected_version`` (0: no row yet) and returns whether it did.

    def breakers(self, names: Sequence[str] | None = None) -> list[BreakerState]:
        """Stored breakers (all, or those named), by name."""
        ...

    def put_breaker(self, state: BreakerState, expected_version: int) -> bool: ...

    def delete_breaker(self, name: str) -> bool: ...

    def rate_limits(self, names: Sequence[str] | None = None) -> list[RateState]: ...

    def put_rate_limit(self, state: RateState, expected_version: int) -> bool: ...

    def rate_keys_ready(
        self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()
    ) -> dict[str, tuple[float, str]]:
        """Each rate key with claimable tasks (not behind a breaker that is not closed):
        ``(seconds until its earliest is due, 0 if one is; the task_name of one of its
        tasks)``, so a worker finds computed keys and their handler's policy.  At most
        100 keys."""
        ...

    def schedules(self) -> list[ScheduleState]: ...

    def put_schedule(self, state: ScheduleState, expected_version: int) -> bool: ...

    def delete_schedule(self, name: str) -> bool: ...

    def fire_schedule(
        self, state: ScheduleState, expected_version: int, tasks: Sequence[NewTask]
    ) -> list[TaskId] | None:
        """In one transaction: compare-and-set the schedule row to ``state``, enqueue
        ``tasks`` (one per tick fired) and store the last one's id as the row's
        ``last_task_id`` (no further version step: the row's version is
        ``expected_version + 1``).  None, with nothing enqueued, when the stored version is
        not ``expected_version`` (another worker fired the tick)."""
        ...

    def parse_id(self, text: str) -> TaskId:
        """Turn a command-line id into this backend's id type (or raise ValueError)."""
        ...

    def close(self) -> None: ...
