"""The Redis backend: ``redis://[:password@]host:6379/0?prefix=P`` (or ``rediss://``).

Every state change is one Lua script (``scripts.lua``), so it is atomic on the server,
and every time a script uses (next_run, leases, retries, rescue) is the Redis server's
clock (``redis.call('TIME')``), so workers on several hosts agree on lease expiry.
Redis 6.2+ (7 recommended) on a standalone server or a primary with replicas; Redis
Cluster is not supported (the scripts touch keys they build from the prefix).

URL options (anything else is refused):

``prefix``           every key and the wake-up channel start with it (default ``lmq:``);
                     several apps (or test runs) share one server under different ones.
                     Letters, digits and ``_ : . -``, up to 64 characters.
``socket_timeout``   seconds a command may take before the call fails with
                     BackendUnavailable (default 10; the longest script, an enqueue
                     of 10,000 tasks, takes well under a second on the server).
``connect_timeout``  seconds to wait for a connection (default 5).
``max_connections``  size of the connection pool (default: unbounded).

Keys, with ``P`` the prefix (schema version 3, kept in ``Pqueue:meta``):

====================================  ================================================
``Pqueue:tasks:<column>``             one hash per column of the task table, field =
                                      task id, so a batch of n tasks costs one
                                      HMGET/HSET per column, not n commands: head
                                      (queue, priority, task_name, max_attempts and a
                                      unique-key flag, NUL-separated), payload (JSON
                                      text), status, attempts, next_run, created,
                                      updated, lease (worker + head, only while
                                      processing), last_error, unique_key, errors (a
                                      JSON list), dead_letter_id, batch, breaker,
                                      rate_key.  A
                                      dead-lettered task keeps its row (status
                                      ``dead``); a cancelled one has status
                                      ``cancelled``.  The head's last field holds
                                      flags: 1 = unique key, 2 = batch member, 4 =
                                      breaker, 8 = rate key, so the hot path reads
                                      the batch, breaker and rate_key columns only
                                      for the tasks that have them.
``Pqueue:ids``                        counter (INCRBY) for task ids: strings of digits
``Pqueue:pending:<queue>:<priority>`` zset of pending tasks (ready and scheduled) of
                                      one queue and priority, scored by next_run;
                                      members are zero-padded ids, so equal times sort
                                      by id
``Pqueue:prio:<queue>``               zset of the priorities that have pending tasks
``Pqueue:active`` / ``Pqueue:queues`` set of queues with pending tasks / every queue
``Pqueue:rpending:<n>:<key>:<q>:<p>`` a rate key's pending tasks of one queue and
                                      priority (``n`` = the key's length): instead
                                      of the pending zset, so plain claims never see
                                      them; ``Pqueue:rlanes:<key>`` the set of its
                                      ``<priority>:<queue>`` zsets,
                                      ``Pqueue:rate_keys`` the keys with any
``Pqueue:bk:<n>:<breaker>:<queue>``   zset of the pending tasks behind a breaker, of
                                      one queue (by next_run), kept for every
                                      breaker name; ``Pqueue:bkq:<breaker>`` its
                                      queues
``Pqueue:breakers_blocked``           set of breakers whose stored state is not
                                      closed: their tasks are "parked", in their
                                      ``bk`` zsets only, out of the pending and rate
                                      zsets (``put_breaker`` moves them out when the
                                      breaker leaves closed and back when it closes)
``Pqueue:breaker:<name>``             hash: one breaker row (``Pqueue:breakers`` the
                                      set of names); ``ratelimit:<name>`` /
                                      ``ratelimits`` and ``schedule:<name>`` /
                                      ``schedules`` likewise, every field of the
                                      models.py dataclass, absent when None
``Pqueue:processing``                 zset of claimed ids scored by lease expiry (the
                                      only place the expiry is kept)
``Pqueue:done``                       list of done and cancelled ids in finishing
                                      order (pruning)
``Pqueue:unique``                     hash unique_key -> id of a pending/processing task
``Pqueue:n:<status>``                 hashes queue -> count of processing, done,
                                      dead, cancelled
``Pqueue:dead:<id>``                  hash: one dead letter (``Pqueue:dead_ids`` counts)
``Pqueue:dead_all`` / ``dead_live``   zsets of dead-letter ids: all / status ``dead``
``Pqueue:dead_fp:<fp>``               zset of the live letters of one fingerprint by
                                      died_at; ``Pqueue:dead_fps`` the set of those
                                      fingerprints (groups cost O(groups))
``Pqueue:dead_approved``              zset of approved live letters by requeue_at
``Pqueue:dead_rejected`` / ``_gone``  zsets of rejected letters by reviewed_at / of
                                      re-queued or discarded ones by when (pruning)
``Pqueue:batch:<name>``               hash: total, created, completed, on_complete_*,
                                      followup_id, last_finished, and member counters
                                      (pending, processing, done, dead, cancelled,
                                      discarded) kept by the scripts
``Pqueue:batches``                    zset of batch names by created;
                                      ``batches_open`` the set not yet completed,
                                      ``batches_done`` a zset of the rest by completed
``Pqueue:paused``                     hash: paused queue -> paused_at
``Pqueue:workers`` / ``Pqueue:beats`` hash id -> heartbeat JSON / zset by last beat
``Pqueue:meta``                       hash: ``schema_version``
``Pqueue:wake``                       pub/sub channel of wake-ups (see ``wake.py``)
====================================  ================================================

There is no SQL schema to migrate: ``migrate()`` writes ``schema_version`` (3, this
layout) into the meta hash; every other call on a prefix without it raises SchemaMissing
naming ``lmq migrate`` (checked once per backend object).  A prefix of schema 1 gets the
dead-letter indexes version 2 added (fingerprint groups, pruning order) from its
existing letters, in chunks of 1,000, then the new version (stop its workers first).
Version 3 (breakers, rate limits, schedules, task keys) only adds keys and head flags
that a layout-2 prefix has none of, so its upgrade writes the version.

Claims: a plain claim reads only the pending zsets, which hold no rate-keyed task and no
task behind a blocked breaker, so tasks without keys cost what they did before (a task
with a breaker also leaves its ``bk`` zset); a rate claim reads that key's zsets, a
probe claim the breaker's ``bk`` zsets.  ``has_ready`` and ``next_due`` read the pending
zsets (and expired leases), so they leave the same tasks out.

Paused queues are left out of a claim inside the claim script; without any paused
queue the claim's request and work are what they were before pauses existed.

A claim reads the priority index of each queue it serves and takes the ready heads of
the pending zsets (``ZRANGEBYSCORE -inf now LIMIT 0 n``, then ``ZREMRANGEBYRANK``): its
cost is O(log n) per task however many are pending, and delayed tasks need no promotion
step (they wait in the same zset with a future score).  Expired leases are rescued at
the start of every claim (up to 1,000 per call).  ``list_tasks`` reads ids newest
first, so a filter that matches only old tasks reads through the newer ones.

Durability: "nothing is lost" holds on Redis only when the server keeps what it
acknowledged: run it with ``appendonly yes`` and ``appendfsync always`` (``everysec``
may lose the last second of writes in a power cut or kernel crash).  Without AOF, a
restart loses everything since the last RDB snapshot.

``enqueue_many`` writes up to 10,000 tasks with one script, atomically; a longer list
goes in several scripts of 10,000 (each atomic), because a script holds the whole
server while it runs (10,000 tasks: about 0.1-0.2 s).  Transactional enqueue
(``connection=``) is refused: Redis has no transaction to join.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from ...exceptions import (
    BackendBusy,
    BackendError,
    BackendUnavailable,
    ConfigError,
    NotFound,
    SchemaMissing,
)
from ...models import (
    BatchInfo,
    BatchSpec,
    BreakerState,
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
    TaskFilter,
    TaskId,
    WorkerInfo,
)
from ...url import QueueURL, mask
from ..external import refuse_connection
from ..rows import check_requeue, error_line
from .connection import pool_from_url
from .rows import batch_from_hash, dead_from_hash, state_fields, state_from_hash, task_from_hash
from .wake import RedisWake

T = TypeVar("T")
S = TypeVar("S", BreakerState, RateState, ScheduleState)

SCHEMA_VERSION = 3
DEFAULT_PREFIX = "lmq:"
_PREFIX = re.compile(r"^[A-Za-z0-9_:.\-]{0,64}$")
_OPTIONS = {"prefix", "socket_timeout", "connect_timeout", "max_connections"}
_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"^--\s*include:\s*(\w+)\s*$", re.MULTILINE)
_SCAN_CHUNK = 500
ENQUEUE_CHUNK = 10_000
_STATUSES = ("pending", "processing", "done")
# the task columns, in the order the "rows" script answers (see scripts.lua), then the
# lease expiry
COLUMNS = (
    "head",
    "payload",
    "status",
    "attempts",
    "next_run",
    "created",
    "updated",
    "lease",
    "last_error",
    "unique_key",
    "errors",
    "dead_letter_id",
    "batch",
    "breaker",
    "rate_key",
    "locked_until",
)


def load_scripts() -> dict[str, str]:
    """The named blocks of scripts.lua, each with the ``common`` block in front (and the
    ``lib_*`` blocks it names in an ``-- include: lib_x`` line, after common)."""
    text = resources.files("lmq.backends.redis").joinpath("scripts.lua").read_text("utf-8")
    parts = _NAME.split(text)
    blocks = dict(zip(parts[1::2], parts[2::2], strict=True))
    common = blocks.pop("common")
    libs = {name: blocks.pop(name) for name in list(blocks) if name.startswith("lib_")}
    out = {}
    for name, body in blocks.items():
        used = "".join(libs[lib] + "\n" for lib in _INCLUDE.findall(body))
        out[name] = common + "\n" + used + body
    return out


def _number(url: QueueURL, name: str, default: float) -> float:
    raw = url.options.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"invalid {name}={raw!r} in {mask(url.raw)!r}: seconds > 0 expected")
    return value


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_loads = json.loads


def _queues(queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()) -> list[str]:
    args = ["0"] if not queues else [str(len(queues)), *queues]
    if exclude:
        args += [str(len(exclude)), *exclude]
    return args


def _opt(value: str | None) -> str:
    """An optional script argument: '-' for none, else '+' and the value."""
    return "-" if value is None else "+" + value


def _created() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


class RedisBackend:
    """See the module docstring."""

    def __init__(self, url: QueueURL) -> None:
        unknown = sorted(set(url.options) - _OPTIONS)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)} in {mask(url.raw)!r}; the Redis "
                f"backend takes {', '.join(sorted(_OPTIONS))}"
            )
        prefix = url.options.get("prefix", DEFAULT_PREFIX)
        if not _PREFIX.fullmatch(prefix):
            raise ConfigError(
                f"invalid key prefix {prefix!r}: use up to 64 letters, digits or _ : . -"
            )
        self.prefix = prefix
        self.url = mask(url.raw)
        self._path = url.path
        self.socket_timeout = _number(url, "socket_timeout", 10.0)
        self.connect_timeout = _number(url, "connect_timeout", 5.0)
        max_conn = url.options.get("max_connections")
        try:
            self.max_connections = None if max_conn is None else int(max_conn)
        except ValueError:
            raise ConfigError(f"invalid max_connections={max_conn!r}: an integer") from None
        try:
            self._pool = pool_from_url(
                url.path,
                socket_connect_timeout=self.connect_timeout,
                socket_timeout=self.socket_timeout,
                socket_keepalive=True,
                # no silent re-send: a script whose reply was lost may have run (an
                # enqueue twice); the caller gets BackendUnavailable and decides
                retry=Retry(NoBackoff(), 0),
                decode_responses=True,
                max_connections=self.max_connections,
                client_name=f"lmq-{prefix}",  # CLIENT LIST shows whose connection it is
            )
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {self.url!r}: {exc}") from None
        self._client = redis.Redis(connection_pool=self._pool)
        self._scripts: dict[str, Script] = {
            name: self._client.register_script(body) for name, body in load_scripts().items()
        }
        self._schema_checked = False
        self._schema_lock = threading.Lock()
        self._k = {
            name: f"{prefix}queue:{name}"
            for name in (
                "ids",
                "processing",
                "dead_all",
                "dead_live",
                "meta",
                "wake",
                "paused",
                "batches",
            )
        }

    # --- plumbing ------------------------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except redis.BusyLoadingError:
            raise BackendUnavailable(
                f"Redis at {self.url} is loading its data set; try again shortly"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise BackendUnavailable(f"cannot reach Redis at {self.url}: {exc}") from None
        except redis.ResponseError as exc:
            text = str(exc)
            if text.startswith("BUSY"):
                raise BackendBusy(f"Redis at {self.url} is busy: {text}") from None
            if text.startswith(("READONLY", "MASTERDOWN", "LOADING", "TRYAGAIN")):
                raise BackendUnavailable(f"Redis at {self.url}: {text}") from None
            raise BackendError(f"Redis at {self.url}: {text}") from None
        except redis.RedisError as exc:
            raise BackendError(f"Redis at {self.url}: {exc}") from None

    def _ensure_schema(self) -> None:
        with self._schema_lock:
            if self._schema_checked:
                return
            version = self.schema_version()
            if version is None or version < SCHEMA_VERSION:
                raise SchemaMissing(
                    f"Redis at {self.url} has no lmq data under the prefix "
                    f"{self.prefix!r} ({self._k['meta']} is missing); run `lmq migrate` first"
                )
            if version > SCHEMA_VERSION:
                raise SchemaMissing(
                    f"Redis at {self.url} has lmq schema {version} under {self.prefix!r}, "
                    f"newer than this lmq knows ({SCHEMA_VERSION}); upgrade lmq"
                )
            self._schema_checked = True

    def _run(self, name: str, args: list[Any]) -> Any:
        if not self._schema_checked:
            self._ensure_schema()
        script = self._scripts[name]
        return self._call(lambda: script(args=[self.prefix, *args]))

    def _read(self, fn: Callable[[], T]) -> T:
        if not self._schema_checked:
            self._ensure_schema()
        return self._call(fn)

    def _pipe(self, build: Callable[[Any], None]) -> list[Any]:
        if not self._schema_checked:
            self._ensure_schema()

        def go() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            build(pipe)
            result: list[Any] = pipe.execute()
            return result

        return self._call(go)

    def _dkey(self, dead_id: TaskId) -> str:
        return f"{self.prefix}queue:dead:{dead_id}"

    def close(self) -> None:
        self._pool.disconnect()

    # --- schema ------------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Write the schema version; a prefix of schema 1 first gets the indexes schema 2
        adds (dead-letter fingerprint groups and pruning order), in chunks."""
        before = self.schema_version()
        if before is not None and before > SCHEMA_VERSION:
            raise SchemaMissing(
                f"Redis at {self.url} has lmq schema {before} under {self.prefix!r}, "
                f"newer than this lmq knows ({SCHEMA_VERSION}); upgrade lmq"
            )
        if before == 1:
            chunk = self._scripts["migrate_2"]
            start = 0
            while True:
                args = [self.prefix, str(start), "1000"]
                n = int(self._call(lambda: chunk(args=args)))  # noqa: B023 (called at once)
                if n == 0:
                    break
                start += n
        script = self._scripts["migrate"]
        applied, stored = self._call(lambda: script(args=[self.prefix, str(SCHEMA_VERSION)]))
        if int(stored) > SCHEMA_VERSION:
            raise SchemaMissing(
                f"Redis at {self.url} has lmq schema {stored} under {self.prefix!r}, "
                f"newer than this lmq knows ({SCHEMA_VERSION}); upgrade lmq"
            )
        self._schema_checked = True
        if not int(applied):
            return []
        return list(range((before or 0) + 1, SCHEMA_VERSION + 1))

    def schema_version(self) -> int | None:
        raw = self._call(lambda: self._client.hget(self._k["meta"], "schema_version"))
        return None if raw is None else int(raw)

    # --- producer ----------------------------------------------------------------------

    def enqueue(
        self,
        tasks: Sequence[NewTask],
        connection: object | None = None,
        batch: BatchSpec | None = None,
    ) -> list[TaskId]:
        if connection is not None:
            raise refuse_connection("redis")
        if not tasks:
            return []
        created = _created()
        items = list(tasks)
        for t in items:  # NUL separates the fields of the packed "head" column
            if "\0" in t.task_name or "\0" in t.queue:
                raise ValueError(f"task and queue names cannot hold NUL: {t.task_name!r}")
        if batch is not None:
            items = [t if t.batch == batch.name else t._replace(batch=batch.name) for t in items]
        ids: list[TaskId] = []
        # one script per ENQUEUE_CHUNK tasks: atomic up to there, and the server is never
        # held long (every other client waits while a script runs); each chunk adds its
        # own tasks to the batch's total
        for start in range(0, len(items), ENQUEUE_CHUNK):
            chunk = items[start : start + ENQUEUE_CHUNK]
            spec = ""
            if batch is not None:
                total = len(chunk)
                if start + ENQUEUE_CHUNK >= len(items):  # the last: whatever total says
                    total += batch.total - len(items)
                spec = _dumps(
                    [
                        batch.name,
                        int(total),
                        batch.on_complete_task,
                        batch.on_complete_payload_json,
                        batch.on_complete_queue,
                    ]
                )
            # NewTask is a tuple: the C encoder turns the batch into one JSON argument
            reply: str = self._run("enqueue", [created, _dumps(chunk), spec])
            ids.extend(reply.split(","))
        return ids

    # --- worker ------------------------------------------------------------------------

    @staticmethod
    def _claim_req(request: ClaimRequest) -> list[Any]:
        req: list[Any] = [int(request.limit), float(request.lease), request.queues or None]
        if request.breaker is not None or request.rate_key is not None:
            req += [list(request.exclude), request.breaker, request.rate_key]
        elif request.exclude:  # only then: the claim's request is as it was without pauses
            req.append(list(request.exclude))
        return req

    @staticmethod
    def _claimed(reply: str) -> ClaimResult:
        rescued, rows = _loads(reply)
        tasks: list[Claimed] = []
        append, make = tasks.append, tuple.__new__  # Claimed is a NamedTuple: skip __new__
        for row in rows:
            if len(row) == 4:
                task_id, head, payload, attempts = row
                brk = rkey = None
            else:  # a task with a breaker or rate key
                task_id, head, payload, attempts, brk, rkey = row
            queue, _, name, limit, _ = head.split("\0")
            append(
                make(
                    Claimed,
                    (
                        task_id,
                        queue,
                        name,
                        payload,
                        attempts,
                        int(limit) if limit else None,
                        brk,
                        rkey,
                    ),
                )
            )
        return ClaimResult(tasks, rescued)

    def claim(self, request: ClaimRequest) -> ClaimResult:
        req = [request.worker_id, *self._claim_req(request)]
        return self._claimed(self._run("claim", [_dumps(req)]))

    def has_ready(self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()) -> bool:
        return bool(self._run("has_ready", _queues(queues, exclude)))

    def next_due(
        self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()
    ) -> float | None:
        due = self._run("next_due", _queues(queues, exclude))
        return None if due is None else float(due)

    def complete(
        self, batch: CompleteBatch, claim: ClaimRequest | None = None
    ) -> ClaimResult | None:
        if not len(batch):
            return self.claim(claim) if claim is not None else None
        req = [
            batch.worker_id,
            list(map(str, batch.done)),
            [
                [str(r.id), float(r.delay), error_line(r.error), _dumps(r.error.to_json())]
                for r in batch.retries
            ],
            [
                [
                    str(b.id),
                    b.reason,
                    error_line(b.error),
                    b.fingerprint,
                    int(b.max_attempts),
                    _dumps(b.error.to_json()),
                ]
                for b in batch.burials
            ],
            list(map(str, batch.released)),
            None if claim is None else self._claim_req(claim),
        ]
        if batch.deferred:
            req.append([[str(d.id), float(d.delay), d.breaker, d.rate_key] for d in batch.deferred])
        reply = self._run("complete", [_dumps(req)])
        return None if claim is None else self._claimed(reply)

    def renew(self, request: RenewRequest) -> list[TaskId]:
        if not request.ids:
            return []
        held: list[TaskId] = self._run(
            "renew", [request.worker_id, repr(float(request.lease)), *map(str, request.ids)]
        )
        return held

    def heartbeat(self, beat: Heartbeat) -> None:
        info = {
            "host": beat.host,
            "pid": beat.pid,
            "version": beat.version,
            "queues": beat.queues,
            "concurrency": beat.concurrency,
            "running": beat.running,
            "done": beat.done,
            "started": beat.started,
        }
        self._run("heartbeat", [beat.worker_id, json.dumps(info)])

    def remove_worker(self, worker_id: str) -> None:
        self._run("remove_worker", [worker_id])

    def prune(self, request: PruneRequest) -> int:
        removed = 0
        batch = max(1, int(request.batch))
        while True:  # small batches: each script holds the server only briefly
            n, more = self._run("prune_done", [repr(float(request.done_older_than)), str(batch)])
            removed += int(n)
            if not more:
                break
        if request.dead_older_than is not None:
            older = repr(float(request.dead_older_than))
            while True:
                n, more = self._run("prune_dead", [older, str(batch)])
                removed += int(n)
                if not more:
                    break
        removed += int(
            self._run("prune_batches", [repr(float(request.done_older_than)), str(batch)])
        )
        removed += int(self._run("prune_workers", [repr(float(request.workers_stale_after))]))
        return removed

    def prepare_worker(self) -> None:
        pass

    def wake_source(self) -> RedisWake:
        return RedisWake(
            self._path, self._k["wake"], self.connect_timeout, f"lmq-wake-{self.prefix}"
        )

    # --- inspection --------------------------------------------------------------------

    def _rows(self, ids: Sequence[str]) -> list[Task]:
        """The tasks of ``ids`` that exist, in that order."""
        if not ids:
            return []
        rows = _loads(self._run("rows", list(ids)))
        return [task_from_hash(r[0], dict(zip(COLUMNS, r[1:], strict=True))) for r in rows]

    def get(self, task_id: TaskId) -> Task | None:
        found = self._rows([str(task_id)])
        return found[0] if found else None

    def counts(self) -> Counts:
        nowf, pend, nproc, ndone, ndead, ncanc = self._run("counts", [])
        now = float(nowf)
        c = Counts()
        oldest: float | None = None

        def per(queue: str) -> dict[str, int]:
            return c.by_queue.setdefault(
                queue,
                {"pending": 0, "processing": 0, "done": 0, "dead": 0, "ready": 0, "scheduled": 0},
            )

        for i in range(0, len(pend), 4):
            queue, total, ready, first = pend[i : i + 4]
            n_total, n_ready = int(total), int(ready)
            if n_total:
                q = per(queue)
                q["pending"] += n_total
                q["ready"] += n_ready
                q["scheduled"] += n_total - n_ready
            c.pending += n_total
            c.ready += n_ready
            c.scheduled += n_total - n_ready
            if first != "" and (oldest is None or float(first) < oldest):
                oldest = float(first)
        for status, flat in (
            ("processing", nproc),
            ("done", ndone),
            ("dead", ndead),
            ("cancelled", ncanc),
        ):
            for i in range(0, len(flat), 2):
                n = int(flat[i + 1])
                if n > 0:
                    q = per(flat[i])
                    q[status] = q.get(status, 0) + n
                    setattr(c, status, getattr(c, status) + n)
        c.oldest_ready_age = None if oldest is None else max(0.0, now - oldest)
        return c

    def _hashes(self, keys: list[str]) -> list[dict[str, str]]:
        def build(p: Any) -> None:
            for k in keys:
                p.hgetall(k)

        return self._pipe(build) if keys else []

    def list_tasks(self, flt: TaskFilter) -> list[Task]:
        if flt.status == "dead":
            dead = self.dead_letters(
                DeadFilter(task_name=flt.task_name, queue=flt.queue, limit=flt.limit)
            )
            return [d.as_task() for d in dead]
        if flt.limit <= 0:
            return []
        statuses = _STATUSES if flt.status is None else (flt.status,)
        if flt.status == "processing":  # a small set: read it whole
            held = self._zrange(self._k["processing"], 0, -1)
            chunks: Iterable[list[str]] = [sorted(held, key=int, reverse=True)]
        else:
            top = int(self._read(lambda: self._client.get(self._k["ids"])) or 0)
            chunks = (
                [str(i) for i in range(hi, max(hi - _SCAN_CHUNK, 0), -1)]
                for hi in range(top, 0, -_SCAN_CHUNK)
            )
        out: list[Task] = []
        for ids in chunks:
            heads = _loads(self._run("heads", ids)) if ids else []
            wanted = []
            for i, status, head in heads:
                queue, _, name, _, _ = head.split("\0")
                if (
                    (status or "pending") in statuses
                    and (flt.queue is None or queue == flt.queue)
                    and (flt.task_name is None or name == flt.task_name)
                ):
                    wanted.append(i)
            wanted = wanted[: flt.limit - len(out)]
            out.extend(self._rows(wanted))
            if len(out) >= flt.limit:
                break
        return out

    def workers(self) -> list[WorkerInfo]:
        reply = self._run("workers", [])
        now = float(reply[0])
        out = []
        for i in range(1, len(reply), 3):
            wid, raw, beat = reply[i], json.loads(reply[i + 1]), float(reply[i + 2])
            out.append(
                WorkerInfo(
                    id=wid,
                    host=str(raw.get("host", "")),
                    pid=int(raw.get("pid", 0)),
                    version=str(raw.get("version", "")),
                    queues=str(raw.get("queues", "")),
                    concurrency=int(raw.get("concurrency", 0)),
                    running=int(raw.get("running", 0)),
                    done=int(raw.get("done", 0)),
                    started=datetime.fromtimestamp(float(raw.get("started", 0)), UTC),
                    last_beat=datetime.fromtimestamp(beat, UTC),
                    heartbeat_age=max(0.0, now - beat),
                )
            )
        out.sort(key=lambda w: (w.started, w.id))
        return out

    # --- dead letters ------------------------------------------------------------------

    def dead_letters(self, flt: DeadFilter) -> list[DeadLetter]:
        if flt.fingerprint is not None and not flt.include_all:
            key = f"{self.prefix}queue:dead_fp:{flt.fingerprint}"  # scored by died_at
        else:
            key = self._k["dead_all" if flt.include_all else "dead_live"]
        text = flt.error_contains.lower() if flt.error_contains else None
        out: list[DeadLetter] = []
        start = 0
        while flt.limit is None or len(out) < flt.limit:
            ids = self._zrange(key, start, start + _SCAN_CHUNK - 1, desc=True)
            if not ids:
                break
            start += len(ids)
            for i, h in zip(ids, self._hashes([self._dkey(i) for i in ids]), strict=True):
                if not h:
                    continue
                d = dead_from_hash(i, h)
                if (
                    (flt.task_name is None or d.task_name == flt.task_name)
                    and (flt.queue is None or d.queue == flt.queue)
                    and (flt.fingerprint is None or d.fingerprint == flt.fingerprint)
                    and (text is None or text in d.error.lower())
                ):
                    out.append(d)
                    if flt.limit is not None and len(out) >= flt.limit:
                        break
        return out

    def _zrange(self, key: str, start: int, stop: int, *, desc: bool = False) -> list[str]:
        def go() -> list[str]:
            got: Any = self._client.zrange(key, start, stop, desc=desc)
            return list(got)

        return self._read(go)

    def get_dead(self, dead_id: TaskId) -> DeadLetter | None:
        did = str(dead_id)
        h: dict[str, str] = self._pipe(lambda p: p.hgetall(self._dkey(did)))[0]
        return dead_from_hash(did, h) if h else None

    def dead_groups(self, flt: DeadFilter) -> list[DeadGroup]:
        if flt.queue is None and flt.error_contains is None:
            # the fingerprint indexes: O(groups), every member counted by the server
            fps = [] if flt.fingerprint is None else [flt.fingerprint]
            rows = _loads(self._run("dead_groups", fps))
            groups = [
                DeadGroup(
                    fingerprint=fp,
                    count=int(n),
                    task_name=name,
                    example=example,
                    example_id=str(example_id),
                    first_seen=datetime.fromtimestamp(float(first), UTC),
                    last_seen=datetime.fromtimestamp(float(last), UTC),
                )
                for fp, n, name, example, example_id, first, last in rows
            ]
            if flt.task_name is not None:  # a fingerprint belongs to one task name
                groups = [g for g in groups if g.task_name == flt.task_name]
        else:
            found: dict[str, list[DeadLetter]] = {}
            for d in self.dead_letters(
                DeadFilter(
                    task_name=flt.task_name,
                    queue=flt.queue,
                    error_contains=flt.error_contains,
                    include_all=False,
                    limit=None,
                    fingerprint=flt.fingerprint,
                )
            ):
                found.setdefault(d.fingerprint, []).append(d)
            groups = []
            for fp, letters in found.items():
                newest = max(letters, key=lambda d: (d.died_at, int(d.id)))
                groups.append(
                    DeadGroup(
                        fingerprint=fp,
                        count=len(letters),
                        task_name=newest.task_name,
                        example=newest.error,
                        example_id=newest.id,
                        first_seen=min(d.died_at for d in letters),
                        last_seen=newest.died_at,
                    )
                )
        groups.sort(key=lambda g: (-g.count, -g.last_seen.timestamp(), g.fingerprint))
        return groups if flt.limit is None else groups[: max(0, flt.limit)]

    @staticmethod
    def _selector(selector: DeadSelector) -> list[str]:
        if selector.ids:
            return ["ids", *map(str, selector.ids)]
        if not (selector.all or selector.task_name or selector.queue or selector.fingerprint):
            raise ValueError("say which dead letters: ids, all, a task name, queue or group")
        return [
            "filter",
            _opt(selector.task_name),
            _opt(selector.queue),
            _opt(selector.fingerprint),
        ]

    def requeue_dead(
        self,
        selector: DeadSelector,
        *,
        payload_json: str | None = None,
        delay: float = 0.0,
        spread: float = 0.0,
    ) -> list[TaskId]:
        check_requeue(selector, payload_json, delay, spread)
        args = self._selector(selector)
        reply = self._run(
            "requeue_dead", [_opt(payload_json), repr(float(delay)), repr(float(spread)), *args]
        )
        if reply[0] == "missing":
            raise NotFound(f"no dead letter {reply[1]} waiting to be re-queued")
        ids: list[TaskId] = reply[1:]
        return ids

    def review_dead(self, review: Review) -> int:
        if review.rate is not None and review.rate <= 0:
            raise ValueError("rate is re-queues per second, > 0")
        args = self._selector(review.selector)
        reply = self._run(
            "review_dead",
            [
                "1" if review.approve else "0",
                review.by,
                _opt(review.note),
                "" if review.after is None else repr(float(review.after)),
                "" if review.rate is None else repr(float(review.rate)),
                *args,
            ],
        )
        if reply[0] == "missing":
            raise NotFound(f"no dead letter {reply[1]} waiting for a review")
        return int(reply[1])

    def requeue_approved(self, limit: int = 500) -> list[TaskId]:
        if limit <= 0:
            return []
        ids: list[TaskId] = self._run("requeue_approved", [str(int(limit))])
        return ids

    def discard_dead(self, selector: DeadSelector) -> int:
        args = self._selector(selector)
        reply = self._run("discard_dead", args)
        if reply[0] == "missing":
            raise NotFound(f"no dead letter {reply[1]} waiting to be discarded")
        return int(reply[1])

    # --- control -----------------------------------------------------------------------

    def cancel(self, selector: CancelSelector) -> list[TaskId]:
        if selector.ids:
            args = ["ids", *map(str, selector.ids)]
        elif selector.task_name or selector.queue or selector.batch:
            args = ["filter", _opt(selector.task_name), _opt(selector.queue), _opt(selector.batch)]
        else:
            raise ValueError("say which tasks to cancel: ids, a task name, queue or batch")
        reply = self._run("cancel", args)
        if reply[0] == "missing":
            raise NotFound(f"no task with id {reply[1]}")
        ids: list[TaskId] = reply[1:]
        return ids

    def pause_queue(self, queue: str, paused: bool) -> None:
        self._run("pause", [queue, "1" if paused else "0"])

    def paused_queues(self) -> dict[str, float]:
        got: Any = self._read(lambda: self._client.hgetall(self._k["paused"]))
        return {str(name): float(at) for name, at in got.items()}

    # --- batches -----------------------------------------------------------------------

    def _bkey(self, name: str) -> str:
        return f"{self.prefix}queue:batch:{name}"

    def batch(self, name: str) -> BatchInfo | None:
        h: dict[str, str] = self._pipe(lambda p: p.hgetall(self._bkey(name)))[0]
        return batch_from_hash(name, h) if h.get("created") else None

    def batches(self, limit: int = 50) -> list[BatchInfo]:
        if limit <= 0:
            return []
        names = self._zrange(self._k["batches"], 0, limit - 1, desc=True)
        out = []
        for name, h in zip(names, self._hashes([self._bkey(n) for n in names]), strict=True):
            if h.get("created"):
                out.append(batch_from_hash(name, h))
        return out

    def settle_batches(self) -> list[tuple[str, TaskId | None]]:
        reply = _loads(self._run("settle_batches", [_created()]))
        return [(name, None if fid is None else str(fid)) for name, fid in reply]

    # --- circuit breakers, rate limits, schedules --------------------------------------

    def _get_rows(self, family: str, cls: type[S], names: Sequence[str] | None) -> list[S]:
        if names is not None and not names:
            return []
        reply = self._run("get_rows", [family, *dict.fromkeys(names or ())])
        return sorted(
            (state_from_hash(cls, name, flat) for name, flat in reply), key=lambda r: r.name
        )

    def breakers(self, names: Sequence[str] | None = None) -> list[BreakerState]:
        return self._get_rows("breaker", BreakerState, names)

    def put_breaker(self, state: BreakerState, expected_version: int) -> bool:
        args = [state.name, str(int(expected_version)), state.state, _dumps(state_fields(state))]
        return bool(self._run("put_breaker", args))

    def delete_breaker(self, name: str) -> bool:
        return bool(self._run("delete_breaker", [name]))

    def rate_limits(self, names: Sequence[str] | None = None) -> list[RateState]:
        return self._get_rows("ratelimit", RateState, names)

    def put_rate_limit(self, state: RateState, expected_version: int) -> bool:
        args = ["ratelimit", state.name, str(int(expected_version)), _dumps(state_fields(state))]
        return bool(self._run("put_row", args))

    def rate_keys_ready(
        self, queues: tuple[str, ...] | None, exclude: tuple[str, ...] = ()
    ) -> dict[str, tuple[float, str]]:
        flat = self._run("rate_keys_ready", _queues(queues, exclude))
        return {flat[i]: (float(flat[i + 1]), flat[i + 2]) for i in range(0, len(flat), 3)}

    def schedules(self) -> list[ScheduleState]:
        return self._get_rows("schedule", ScheduleState, None)

    def put_schedule(self, state: ScheduleState, expected_version: int) -> bool:
        args = ["schedule", state.name, str(int(expected_version)), _dumps(state_fields(state))]
        return bool(self._run("put_row", args))

    def delete_schedule(self, name: str) -> bool:
        return bool(self._run("delete_row", ["schedule", name]))

    def fire_schedule(
        self, state: ScheduleState, expected_version: int, tasks: Sequence[NewTask]
    ) -> list[TaskId] | None:
        items = list(tasks)
        for t in items:
            if "\0" in t.task_name or "\0" in t.queue:
                raise ValueError(f"task and queue names cannot hold NUL: {t.task_name!r}")
        if len(items) > ENQUEUE_CHUNK:  # one script, so one bounded chunk
            raise ValueError(f"at most {ENQUEUE_CHUNK} tasks per schedule fire")
        reply = self._run(
            "fire_schedule",
            [
                state.name,
                str(int(expected_version)),
                _created(),
                _dumps(state_fields(state)),
                _dumps(items),
            ],
        )
        if reply is None:
            return None
        ids: list[TaskId] = reply.split(",") if reply else []
        return ids

    def parse_id(self, text: str) -> TaskId:
        value = str(text).strip()
        if not value.isdigit() or not value.isascii():
            raise ValueError(f"task ids are strings of digits on Redis, got {text!r}")
        return str(int(value))


__all__ = ["RedisBackend", "load_scripts"]
