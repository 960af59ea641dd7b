"""The library's front door: :class:`Queue`, ``@queue.task`` and enqueueing."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, ParamSpec, TypeVar, overload

from . import payload as payload_mod
from .backends import Backend, open_backend
from .breaker import Breaker
from .exceptions import ConfigError, NotFound
from .gates import (
    GatesAPI,
    ScheduleDecl,
    breaker_gate,
    check_gate_args,
    compute_key,
    rate_gate,
)
from .models import (
    BatchInfo,
    BatchSpec,
    CancelSelector,
    Counts,
    DeadFilter,
    DeadGroup,
    DeadLetter,
    DeadSelector,
    NewTask,
    Review,
    Task,
    TaskFilter,
    TaskId,
    WorkerInfo,
)
from .ratelimit import RateLimit
from .retry import DEFAULT_BACKOFF, Backoff
from .url import default_url, mask, parse_url

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class TaskOptions:
    name: str
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float | None = DEFAULT_TIMEOUT
    backoff: Backoff = DEFAULT_BACKOFF
    # as declared: a breaker name, a callable computing one from the payload, a Breaker
    breaker: str | Callable[[Mapping[str, Any]], str | None] | Breaker | None = None
    rate_limit: str | RateLimit | None = None  # a declared rate limit's name, or a RateLimit


class TaskFunction(Generic[P, R]):
    """A registered handler.  Call it to run it directly; ``.enqueue(...)`` to queue it."""

    def __init__(
        self, queue: Queue, fn: Callable[P, R] | Callable[P, Awaitable[R]], options: TaskOptions
    ) -> None:
        self.queue = queue
        self.fn = fn
        self.options = options
        self.name = options.name
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        self.accepts_any = any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in self.signature.parameters.values()
        )
        self.__name__ = getattr(fn, "__name__", options.name)
        self.__doc__ = fn.__doc__
        # the breaker / rate limit the tasks go through: (key spec, own policy or None:
        # the queue's declaration for the key, else the defaults); None when there is none
        self.breaker_gate = breaker_gate(options.name, options.breaker)
        self.rate_gate = rate_gate(options.name, options.rate_limit)
        self.gated = self.breaker_gate is not None or self.rate_gate is not None

    def keys(self, payload: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
        """The breaker and rate-limit keys of a task with this payload."""
        p = payload if payload is not None else {}
        b = self.breaker_gate
        r = self.rate_gate
        return (
            None if b is None else compute_key(self.name, "breaker", b[0], p),
            None if r is None else compute_key(self.name, "rate limit", r[0], p),
        )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.fn(*args, **kwargs)

    def check_payload(self, payload: Mapping[str, Any]) -> str | None:
        """Why this payload cannot be passed to the handler, or None if it can."""
        try:
            self.signature.bind(**payload)
        except TypeError as exc:
            return f"payload does not match {self.name}{self.signature}: {exc}"
        return None

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> TaskId:
        """Queue a run with these keyword arguments (JSON values only)."""
        if args:
            raise TypeError(
                f"{self.name}.enqueue() takes keyword arguments only (they are stored as JSON)"
            )
        problem = self.check_payload(kwargs)
        if problem:
            raise TypeError(problem)
        return self.queue.enqueue(self.name, kwargs)

    def __repr__(self) -> str:
        return f"<lmq task {self.name!r} queue={self.options.queue!r}>"


class Queue(GatesAPI):
    """A queue in one database.  ``Queue()`` uses ``$LMQ_URL``, else ``sqlite:///lmq.db``.

    The backend is opened on first use, so defining a Queue at import time is free and a
    worker can point the same app at another URL (``lmq worker --url``).
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        parse_url(self.url)  # fail early on a malformed URL
        self.registry: dict[str, TaskFunction[Any, Any]] = {}
        self._backend: Backend | None = None
        self._lock = threading.Lock()
        self._create = True
        self._breaker_policies: dict[str, Breaker] = {}  # queue.breaker(name, ...)
        self._rate_limits: dict[str, RateLimit] = {}  # queue.rate_limit(name, ...)
        self._schedules: dict[str, ScheduleDecl] = {}  # queue.schedule(name, ...)

    # --- backend ------------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        b = self._backend
        if b is None:
            with self._lock:
                if self._backend is None:
                    self._backend = open_backend(self.url, create=self._create)
                b = self._backend
        return b

    def use_url(self, url: str, *, create: bool = True) -> None:
        """Point this queue (and its registered tasks) at another database."""
        parse_url(url)
        with self._lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None
            self.url = url
            self._create = create

    def close(self) -> None:
        with self._lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<lmq.Queue {mask(self.url)}>"

    # --- tasks ----------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> TaskFunction[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = DEFAULT_TIMEOUT,
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
        breaker: str | Callable[[Mapping[str, Any]], str | None] | Breaker | None = None,
        rate_limit: str | RateLimit | None = None,
        backoff: Backoff | None = None,
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...

    def task(
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = DEFAULT_TIMEOUT,
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
        breaker: str | Callable[[Mapping[str, Any]], str | None] | Breaker | None = None,
        rate_limit: str | RateLimit | None = None,
        backoff: Backoff | None = None,
    ) -> TaskFunction[P, R] | Callable[[Callable[P, R]], TaskFunction[P, R]]:
        """Register a handler, with or without arguments.

        ``name`` defaults to the function's name; it is what producers (in any language)
        write into ``task_name``.  ``timeout`` is per attempt, in seconds (None: none).

        ``breaker``: the circuit breaker its tasks go through: a name (its policy from
        :meth:`breaker`, else the defaults), a callable computing the name from the
        payload (``lambda p: p["host"]``), or an :class:`lmq.Breaker`.  ``rate_limit``: a
        name declared with :meth:`rate_limit`, or an :class:`lmq.RateLimit`.
        """
        if max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if timeout is not None and timeout <= 0:
            raise ConfigError("timeout must be positive (or None for no timeout)")
        check_gate_args(breaker, rate_limit)

        def register(f: Callable[P, R]) -> TaskFunction[P, R]:
            task_name = name or f.__name__
            if task_name in self.registry and self.registry[task_name].fn is not f:
                raise ConfigError(f"a task named {task_name!r} is already registered")
            options = TaskOptions(
                name=task_name,
                queue=queue,
                priority=priority,
                max_attempts=max_attempts,
                timeout=timeout,
                backoff=backoff or DEFAULT_BACKOFF,
                breaker=breaker,
                rate_limit=rate_limit,
            )
            tf: TaskFunction[P, R] = TaskFunction(self, f, options)
            self.registry[task_name] = tf
            return tf

        return register(fn) if fn is not None else register

    @staticmethod
    def _when(delay: float, run_at: datetime | None, max_attempts: int | None) -> float | None:
        """Check the options shared by every task of a call; return run_at as epoch."""
        if delay < 0:
            raise ValueError("delay must be >= 0 seconds")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if run_at is None:
            return None
        if run_at.tzinfo is None:
            raise ValueError("run_at must be an aware datetime (lmq keeps time in UTC)")
        return run_at.timestamp()

    def _new_task(
        self,
        task_name: str,
        payload: Mapping[str, Any] | None,
        queue: str | None,
        priority: int | None,
        at: float | None,
        delay: float,
        unique_key: str | None,
        max_attempts: int | None,
        batch: str | None = None,
    ) -> NewTask:
        if type(task_name) is not str or not task_name:
            raise TypeError("task_name must be a non-empty string")
        handler = self.registry.get(task_name)
        breaker = rate_key = None
        if handler is not None:
            opts = handler.options
            queue = queue or opts.queue
            priority = opts.priority if priority is None else priority
            if handler.gated:
                breaker, rate_key = handler.keys(payload)
        return NewTask(
            task_name,
            payload_mod.encode_payload(payload),
            queue or DEFAULT_QUEUE,
            priority or 0,
            max_attempts,  # None: the handler's setting applies when it runs
            at,
            delay,
            unique_key,
            batch,
            breaker,
            rate_key,
        )

    def _new_tasks(
        self,
        items: Iterable[tuple[str, Mapping[str, Any] | None]],
        queue: str | None,
        priority: int | None,
        at: float | None,
        delay: float,
        max_attempts: int | None,
        batch: str | None,
    ) -> list[NewTask]:
        """``_new_task`` for each item, with the per-name work (the handler's queue,
        priority and gates) done once per task name: bulk enqueues make 100,000s."""
        encode = payload_mod.encode_payload
        make = tuple.__new__  # NewTask's own __new__ is a Python function: half the cost
        by_name: dict[str, tuple[str, int, TaskFunction[Any, Any] | None]] = {}
        out: list[NewTask] = []
        append = out.append
        for name, payload in items:
            if type(name) is not str or not name:
                raise TypeError("task_name must be a non-empty string")
            known = by_name.get(name)
            if known is None:
                handler = self.registry.get(name)
                q, prio = queue, priority
                if handler is not None:
                    q = q or handler.options.queue
                    prio = handler.options.priority if prio is None else prio
                gated = handler if handler is not None and handler.gated else None
                known = by_name[name] = (q or DEFAULT_QUEUE, prio or 0, gated)
            q, prio, gated = known
            breaker, rate_key = (None, None) if gated is None else gated.keys(payload)
            fields = (name, encode(payload), q, prio, max_attempts, at, delay, None, batch)
            append(make(NewTask, (*fields, breaker, rate_key)))
        return out

    def enqueue(
        self,
        task_name: str,
        payload: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float = 0,
        run_at: datetime | None = None,
        unique_key: str | None = None,
        max_attempts: int | None = None,
        connection: object | None = None,
    ) -> TaskId:
        """Store one task and return its id.

        ``connection``: the application's own database connection (sqlite3, psycopg,
        PyMySQL or a SQLAlchemy ``Connection``) on the queue's database.  The task is
        then written inside the application's open transaction and exists only if the
        application commits it; lmq never commits or rolls back that connection.

        Options left as None take the registered task's defaults (else queue
        ``default``, priority 0; attempts as the handler declares when it runs).  A
        payload JSON cannot hold raises ``TypeError``/``ValueError`` naming the key,
        and nothing is stored.  With a
        ``unique_key`` already pending or processing, the existing task's id is returned.
        """
        at = self._when(delay, run_at, max_attempts)
        new = self._new_task(
            task_name, payload, queue, priority, at, float(delay), unique_key, max_attempts
        )
        return self.backend.enqueue([new], connection)[0]

    def enqueue_many(
        self,
        items: Iterable[tuple[str, Mapping[str, Any] | None]],
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float = 0,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        connection: object | None = None,
        batch: str | None = None,
        on_complete: tuple[str, Mapping[str, Any] | None] | None = None,
    ) -> list[TaskId]:
        """Store many ``(task_name, payload)`` tasks in one transaction; return their ids.

        With ``connection`` (see :meth:`enqueue`) that transaction is the application's.

        ``batch`` names the tasks' batch (:meth:`batch` shows its progress; enqueueing
        again under the same name adds to it).  ``on_complete=("task_name", payload)``
        enqueues one follow-up task once every member has finished or died.

        Every payload is checked before anything is written: one bad payload stores none.
        """
        at = self._when(delay, run_at, max_attempts)
        delay = float(delay)
        spec = None
        if batch is not None or on_complete is not None:
            spec = self._batch_spec(batch, on_complete)
        new = self._new_tasks(items, queue, priority, at, delay, max_attempts, batch)
        if spec is None:
            return self.backend.enqueue(new, connection)
        return self.backend.enqueue(new, connection, batch=BatchSpec(**{**spec, "total": len(new)}))

    def _batch_spec(
        self, batch: str | None, on_complete: tuple[str, Mapping[str, Any] | None] | None
    ) -> dict[str, Any]:
        """Check ``batch=`` and ``on_complete=``; the BatchSpec's fields but ``total``."""
        if batch is None:
            raise ValueError("on_complete needs a batch name (batch=...)")
        if type(batch) is not str or not batch.strip():
            raise TypeError("batch must be a non-empty string")
        if len(batch) > 191:
            raise ValueError("batch names are at most 191 characters")
        spec: dict[str, Any] = {"name": batch}
        if on_complete is not None:
            if not isinstance(on_complete, tuple) or len(on_complete) != 2:
                raise TypeError('on_complete must be a ("task_name", payload) tuple')
            name, payload = on_complete
            if type(name) is not str or not name:
                raise TypeError("on_complete's task name must be a non-empty string")
            handler = self.registry.get(name)
            spec["on_complete_task"] = name
            try:
                spec["on_complete_payload_json"] = payload_mod.encode_payload(payload)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"on_complete {name!r}: {exc}") from None
            spec["on_complete_queue"] = handler.options.queue if handler else DEFAULT_QUEUE
        return spec

    # --- inspection -----------------------------------------------------------------------

    def get(self, task_id: TaskId) -> Task | None:
        """The task with this id (dead-lettered ones included, status ``dead``), or None."""
        return self.backend.get(task_id)

    def counts(self) -> dict[str, int]:
        """``{"pending": n, "processing": n, "done": n, "dead": n}`` over every queue."""
        return self.backend.counts().as_dict()

    def stats(self) -> Counts:
        """Counts per queue, with ready/scheduled split and the oldest ready task's age."""
        return self.backend.counts()

    def tasks(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        name: str | None = None,
        limit: int = 50,
    ) -> list[Task]:
        """Newest first."""
        return self.backend.list_tasks(TaskFilter(status, queue, name, limit))

    def workers(self) -> list[WorkerInfo]:
        return self.backend.workers()

    def migrate(self) -> list[int]:
        """Create or upgrade the tables (idempotent); return the migrations applied."""
        return self.backend.migrate()

    # --- control: cancel, pause, batches ---------------------------------------------------

    def cancel(
        self,
        id_or_ids: TaskId | Iterable[TaskId] | None = None,
        *,
        task_name: str | None = None,
        queue: str | None = None,
        batch: str | None = None,
    ) -> list[TaskId]:
        """Cancel tasks that have not started: one id, several, or every pending task of
        a task name / queue / batch (several given: all must match).

        Running and finished tasks are left alone (a running one finishes) and are not
        in the returned list of cancelled ids.  An unknown id raises NotFound, and then
        nothing is cancelled.
        """
        if id_or_ids is None:
            ids: tuple[TaskId, ...] = ()
        elif isinstance(id_or_ids, int | str):
            ids = (id_or_ids,)
        else:
            ids = tuple(id_or_ids)
        if ids and (task_name or queue or batch):
            raise ValueError("cancel ids, or task_name/queue/batch, not both")
        if not ids and not (task_name or queue or batch):
            raise ValueError("say which tasks to cancel: ids, task_name, queue or batch")
        return self.backend.cancel(CancelSelector(ids, task_name, queue, batch))

    def pause(self, name: str) -> bool:
        """Stop workers claiming tasks of queue ``name`` (running ones finish).  A queue
        with no tasks yet can be paused too.  True if it was not paused before."""
        name = self._queue_name(name)
        was = name in self.backend.paused_queues()
        self.backend.pause_queue(name, True)
        return not was

    def resume(self, name: str) -> bool:
        """Let workers claim queue ``name`` again.  True if it was paused."""
        name = self._queue_name(name)
        was = name in self.backend.paused_queues()
        self.backend.pause_queue(name, False)
        return was

    def paused_queues(self) -> dict[str, datetime]:
        """The paused queues and when each was paused."""
        return {
            name: datetime.fromtimestamp(at, UTC)
            for name, at in sorted(self.backend.paused_queues().items())
        }

    @staticmethod
    def _queue_name(name: str) -> str:
        if type(name) is not str or not name:
            raise TypeError("a queue name must be a non-empty string")
        return name

    def batch(self, name: str) -> BatchInfo:
        """A batch's progress (``enqueue_many(..., batch=name)``); NotFound if unknown."""
        info = self.backend.batch(name)
        if info is None:
            raise NotFound(f"no batch named {name!r}")
        return info

    def batches(self, limit: int = 50) -> list[BatchInfo]:
        """The newest batches first."""
        return self.backend.batches(limit)

    # --- dead letters ---------------------------------------------------------------------

    def dead_letters(
        self,
        *,
        task_name: str | None = None,
        queue: str | None = None,
        error_contains: str | None = None,
        group: str | None = None,
        include_all: bool = False,
        limit: int | None = 50,
    ) -> list[DeadLetter]:
        """Dead letters waiting for a person, newest first (``group``: one fingerprint;
        ``include_all``: also the re-queued and discarded records)."""
        return self.backend.dead_letters(
            DeadFilter(task_name, queue, error_contains, include_all, limit, group)
        )

    def dead_letter(self, dead_id: TaskId) -> DeadLetter:
        dead = self.backend.get_dead(dead_id)
        if dead is None:
            raise NotFound(f"no dead letter with id {dead_id}")
        return dead

    def dead_groups(
        self,
        *,
        task_name: str | None = None,
        queue: str | None = None,
        error_contains: str | None = None,
        group: str | None = None,
        limit: int | None = 50,
    ) -> list[DeadGroup]:
        """Waiting dead letters grouped by error fingerprint, largest group first: 5,000
        failures from one outage are one group (its ``fingerprint`` is what ``group=``
        takes elsewhere)."""
        groups = self.backend.dead_groups(
            DeadFilter(task_name, queue, error_contains, False, limit, group)
        )
        return groups if group is None else [g for g in groups if g.fingerprint == group]

    @staticmethod
    def _dead_selector(
        ids: TaskId | Sequence[TaskId],
        all: bool,
        task_name: str | None,
        queue: str | None,
        group: str | None,
    ) -> DeadSelector:
        chosen = (ids,) if isinstance(ids, int | str) else tuple(ids)
        if chosen and (all or task_name or queue or group):
            raise ValueError("give dead-letter ids, or all/task_name/queue/group, not both")
        if not chosen and not (all or task_name or queue or group):
            raise ValueError("say which dead letters: ids, all=True, task_name, queue or group")
        return DeadSelector(chosen, all, task_name, queue, group)

    def requeue_dead(
        self,
        ids: TaskId | Sequence[TaskId] = (),
        *,
        all: bool = False,
        task_name: str | None = None,
        queue: str | None = None,
        group: str | None = None,
        payload: Mapping[str, Any] | None = None,
        delay: float = 0,
        spread: float = 0,
    ) -> list[TaskId]:
        """Put dead letters back as pending tasks with their attempts reset; return the
        task ids (each task keeps ``dead_letter_id``, the link back to its letter).

        ``payload`` replaces the payload (one id only; checked like an enqueue's).  The
        i-th of n (oldest death first) is due at ``now + delay + spread * i / n``, so
        thousands return gradually.  An unknown (or no longer waiting) id raises
        NotFound, and then nothing is re-queued.
        """
        selector = self._dead_selector(ids, all, task_name, queue, group)
        if delay < 0 or spread < 0:
            raise ValueError("delay and spread are seconds >= 0")
        payload_json = None
        if payload is not None:
            if len(set(map(str, selector.ids))) != 1:
                raise ValueError("a payload edit re-queues exactly one dead letter, by id")
            payload_json = payload_mod.encode_payload(payload)
        return self.backend.requeue_dead(
            selector, payload_json=payload_json, delay=float(delay), spread=float(spread)
        )

    def discard_dead(
        self,
        ids: TaskId | Sequence[TaskId] = (),
        *,
        all: bool = False,
        task_name: str | None = None,
        queue: str | None = None,
        group: str | None = None,
    ) -> int:
        """Mark dead letters discarded: kept as a record, no longer counted or listed."""
        return self.backend.discard_dead(self._dead_selector(ids, all, task_name, queue, group))

    def review_dead(
        self,
        ids: TaskId | Sequence[TaskId] = (),
        *,
        approve: bool,
        note: str | None = None,
        by: str | None = None,
        group: str | None = None,
        task_name: str | None = None,
        queue: str | None = None,
        all: bool = False,
        after: datetime | float | None = None,
        rate: float | None = None,
    ) -> int:
        """Record a person's verdict on dead letters; return how many were reviewed.

        Approved letters are re-queued by the workers (about once a second) from
        ``after`` (an aware datetime, or seconds from now; default now), with ``rate``
        per second one after another (oldest death first); rejected ones stay as the
        record.  ``by`` defaults to the OS user.  A later review replaces an earlier one.
        """
        selector = self._dead_selector(ids, all, task_name, queue, group)
        if not isinstance(approve, bool):
            raise TypeError("approve must be True (approve) or False (reject)")
        if rate is not None and not rate > 0:
            raise ValueError("rate is re-queues per second, > 0")
        if (after is not None or rate is not None) and not approve:
            raise ValueError("after and rate apply to approved dead letters only")
        at: float | None
        if after is None:
            at = None
        elif isinstance(after, datetime):
            if after.tzinfo is None:
                raise ValueError("after must be an aware datetime (lmq keeps time in UTC)")
            at = after.timestamp()
        elif isinstance(after, int | float) and not isinstance(after, bool) and after >= 0:
            at = time.time() + float(after)
        else:
            raise ValueError("after is an aware datetime or seconds from now (>= 0)")
        review = Review(selector, approve, by or _os_user(), note, at, rate)
        return self.backend.review_dead(review)


def _os_user() -> str:
    """Who is reviewing: the OS user (``$USER`` and friends, else the uid)."""
    import getpass
    import os

    try:
        return getpass.getuser()
    except Exception:  # no name for the uid (a container without /etc/passwd entry)
        return f"uid {os.getuid()}"
