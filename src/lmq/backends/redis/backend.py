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

Keys, with ``P`` the prefix (schema version 1, kept in ``Pqueue:meta``):

====================================  ================================================
``Pqueue:tasks:<column>``             one hash per column of the task table, field =
                                      task id, so a batch of n tasks costs one
                                      HMGET/HSET per column, not n commands: head
                                      (queue, priority, task_name, max_attempts and a
                                      unique-key flag, NUL-separated), payload (JSON
                                      text), status, attempts, next_run, created,
                                      updated, lease (worker + head, only while
                                      processing), last_error, unique_key, errors (a
                                      JSON list), dead_letter_id.  A dead-lettered task
                                      keeps its row (status ``dead``).
``Pqueue:ids``                        counter (INCRBY) for task ids: strings of digits
``Pqueue:pending:<queue>:<priority>`` zset of pending tasks (ready and scheduled) of
                                      one queue and priority, scored by next_run;
                                      members are zero-padded ids, so equal times sort
                                      by id
``Pqueue:prio:<queue>``               zset of the priorities that have pending tasks
``Pqueue:active`` / ``Pqueue:queues`` set of queues with pending tasks / every queue
``Pqueue:processing``                 zset of claimed ids scored by lease expiry (the
                                      only place the expiry is kept)
``Pqueue:done``                       list of finished ids in finishing order (pruning)
``Pqueue:unique``                     hash unique_key -> id of a pending/processing task
``Pqueue:n:<status>``                 hashes queue -> count of processing, done, dead
``Pqueue:dead:<id>``                  hash: one dead letter (``Pqueue:dead_ids`` counts)
``Pqueue:dead_all`` / ``dead_live``   zsets of dead-letter ids: all / status ``dead``
``Pqueue:workers`` / ``Pqueue:beats`` hash id -> heartbeat JSON / zset by last beat
``Pqueue:meta``                       hash: ``schema_version``
``Pqueue:wake``                       pub/sub channel of wake-ups (see ``wake.py``)
====================================  ================================================

There is no SQL schema to migrate: ``migrate()`` writes ``schema_version`` (1, this
layout) into the meta hash; every other call on a prefix without it raises SchemaMissing
naming ``lmq migrate`` (checked once per backend object).

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
    TaskFilter,
    TaskId,
    WorkerInfo,
)
from ...url import QueueURL, mask
from ..external import refuse_connection
from ..rows import error_line
from .connection import pool_from_url
from .rows import dead_from_hash, task_from_hash
from .wake import RedisWake

T = TypeVar("T")

SCHEMA_VERSION = 1
DEFAULT_PREFIX = "lmq:"
_PREFIX = re.compile(r"^[A-Za-z0-9_:.\-]{0,64}$")
_OPTIONS = {"prefix", "socket_timeout", "connect_timeout", "max_connections"}
_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
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
    "locked_until",
)


def load_scripts() -> dict[str, str]:
    """The named blocks of scripts.lua, each with the ``common`` block in front."""
    text = resources.files("lmq.backends.redis").joinpath("scripts.lua").read_text("utf-8")
    parts = _NAME.split(text)
    blocks = dict(zip(parts[1::2], parts[2::2], strict=True))
    common = blocks.pop("common")
    return {name: common + "\n" + body for name, body in blocks.items()}


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


def _queues(queues: tuple[str, ...] | None) -> list[str]:
    return ["0"] if not queues else [str(len(queues)), *queues]


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
            for name in ("ids", "processing", "dead_all", "dead_live", "meta", "wake")
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
        script = self._scripts["migrate"]
        applied, stored = self._call(lambda: script(args=[self.prefix, str(SCHEMA_VERSION)]))
        if int(stored) > SCHEMA_VERSION:
            raise SchemaMissing(
                f"Redis at {self.url} has lmq schema {stored} under {self.prefix!r}, "
                f"newer than this lmq knows ({SCHEMA_VERSION}); upgrade lmq"
            )
        self._schema_checked = True
        return [SCHEMA_VERSION] if int(applied) else []

    def schema_version(self) -> int | None:
        raw = self._call(lambda: self._client.hget(self._k["meta"], "schema_version"))
        return None if raw is None else int(raw)

    # --- producer ----------------------------------------------------------------------

    def enqueue(self, tasks: Sequence[NewTask], connection: object | None = None) -> list[TaskId]:
        if connection is not None:
            raise refuse_connection("redis")
        if not tasks:
            return []
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        items = list(tasks)
        for t in items:  # NUL separates the fields of the packed "head" column
            if "\0" in t.task_name or "\0" in t.queue:
                raise ValueError(f"task and queue names cannot hold NUL: {t.task_name!r}")
        ids: list[TaskId] = []
        # one script per ENQUEUE_CHUNK tasks: atomic up to there, and the server is never
        # held long (every other client waits while a script runs)
        for start in range(0, len(items), ENQUEUE_CHUNK):
            chunk = items[start : start + ENQUEUE_CHUNK]
            # NewTask is a tuple: the C encoder turns the batch into one JSON argument
            reply: str = self._run("enqueue", [created, _dumps(chunk)])
            ids.extend(reply.split(","))
        return ids

    # --- worker ------------------------------------------------------------------------

    @staticmethod
    def _claim_req(request: ClaimRequest) -> list[Any]:
        return [int(request.limit), float(request.lease), request.queues or None]

    @staticmethod
    def _claimed(reply: str) -> ClaimResult:
        rescued, rows = _loads(reply)
        tasks: list[Claimed] = []
        append, make = tasks.append, tuple.__new__  # Claimed is a NamedTuple: skip __new__
        for task_id, head, payload, attempts in rows:
            queue, _, name, limit, _ = head.split("\0")
            append(
                make(
                    Claimed,
                    (task_id, queue, name, payload, attempts, int(limit) if limit else None),
                )
            )
        return ClaimResult(tasks, rescued)

    def claim(self, request: ClaimRequest) -> ClaimResult:
        req = [request.worker_id, *self._claim_req(request)]
        return self._claimed(self._run("claim", [_dumps(req)]))

    def has_ready(self, queues: tuple[str, ...] | None) -> bool:
        return bool(self._run("has_ready", _queues(queues)))

    def next_due(self, queues: tuple[str, ...] | None) -> float | None:
        due = self._run("next_due", _queues(queues))
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
        nowf, pend, nproc, ndone, ndead = self._run("counts", [])
        now = float(nowf)
        c = Counts()
        oldest: float | None = None

        def per(queue: str) -> dict[str, int]:
            return c.by_queue.setdefault(
                queue, {"pending": 0, "processing": 0, "done": 0, "dead": 0}
            )

        for i in range(0, len(pend), 4):
            queue, total, ready, first = pend[i : i + 4]
            if int(total):
                per(queue)["pending"] += int(total)
            c.pending += int(total)
            c.ready += int(ready)
            c.scheduled += int(total) - int(ready)
            if first != "" and (oldest is None or float(first) < oldest):
                oldest = float(first)
        for status, flat in (("processing", nproc), ("done", ndone), ("dead", ndead)):
            for i in range(0, len(flat), 2):
                n = int(flat[i + 1])
                if n > 0:
                    per(flat[i])[status] += n
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

    @staticmethod
    def _selector(selector: DeadSelector) -> list[str] | None:
        if selector.ids:
            return ["ids", *map(str, selector.ids)]
        if not (selector.all or selector.task_name or selector.queue):
            return None
        return [
            "filter",
            "-" if selector.task_name is None else "+" + selector.task_name,
            "-" if selector.queue is None else "+" + selector.queue,
        ]

    def requeue_dead(self, selector: DeadSelector) -> list[TaskId]:
        args = self._selector(selector)
        if args is None:
            return []
        reply = self._run("requeue_dead", args)
        if reply[0] == "missing":
            raise NotFound(f"no dead letter {reply[1]} waiting to be re-queued")
        ids: list[TaskId] = reply[1:]
        return ids

    def discard_dead(self, selector: DeadSelector) -> int:
        args = self._selector(selector)
        if args is None:
            return 0
        reply = self._run("discard_dead", args)
        if reply[0] == "missing":
            raise NotFound(f"no dead letter {reply[1]} waiting to be discarded")
        return int(reply[1])

    def parse_id(self, text: str) -> TaskId:
        value = str(text).strip()
        if not value.isdigit() or not value.isascii():
            raise ValueError(f"task ids are strings of digits on Redis, got {text!r}")
        return str(int(value))


__all__ = ["RedisBackend", "load_scripts"]
