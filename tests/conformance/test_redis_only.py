"""Redis-only behaviour: key prefixes, wake-ups over pub/sub, script reloading, schema
checks, connection errors and concurrent claims through the worker's hot path.

Runs when ``LMQ_TEST_REDIS_URL`` names a server (``.ci/run`` sets it); every test works
under a fresh prefix of its own and drops it afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import lmq
from lmq.models import (
    BatchSpec,
    BreakerState,
    CancelSelector,
    ClaimRequest,
    CompleteBatch,
    DeadFilter,
    DeadSelector,
    DeferOutcome,
    Heartbeat,
    NewTask,
    PruneRequest,
    RateState,
    Review,
    ScheduleState,
    TaskFilter,
    TaskId,
)
from lmq_testservers import drop_prefix

from .helpers import burial, claim, complete, ids, retry, wait_for

REDIS_URL = os.environ.get("LMQ_TEST_REDIS_URL", "")
pytestmark = pytest.mark.skipif(not REDIS_URL, reason="set LMQ_TEST_REDIS_URL to a Redis URL")


def _with(url: str, **options: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


def _base(db: int | None = None) -> str:
    base = REDIS_URL.split("?", 1)[0]
    if db is not None:
        base = base.rsplit("/", 1)[0] + f"/{db}"
    return base


def _raw(db: int | None = None) -> Any:
    import redis

    return redis.Redis.from_url(_base(db), decode_responses=True, socket_timeout=5)


@pytest.fixture
def prefix() -> Iterator[str]:
    p = f"r{uuid.uuid4().hex[:8]}_"
    try:
        yield p
    finally:
        drop_prefix(_base(), p)


@pytest.fixture
def rq(prefix: str) -> Iterator[lmq.Queue]:
    with lmq.Queue(_with(_base(), prefix=prefix)) as q:
        q.migrate()
        yield q


# --- keys and prefixes ----------------------------------------------------------------------


def _exercise(q: lmq.Queue) -> None:
    """Touch every kind of key the backend writes."""
    b = q.backend
    done, retried, buried, held = q.enqueue_many([("t", {"i": i}) for i in range(4)])
    q.enqueue("t", unique_key="u1", queue="other", priority=3)
    q.enqueue("t", delay=3600)
    got = ids(claim(b, "w1", limit=4, queues=("default",)))
    assert set(got) == {done, retried, buried, held}
    complete(b, "w1", done=[done], retries=[retry(retried, 60)], burials=[burial(buried)])
    b.heartbeat(Heartbeat("w1", "h", 1, lmq.__version__, "*", 4, 1, 3, time.time()))
    (dead,) = q.dead_letters()
    assert b.dead_groups(DeadFilter())[0].count == 1
    b.review_dead(Review(DeadSelector(ids=[dead.id]), approve=True, by="me"))
    assert b.requeue_approved() == [buried]
    assert q.dead_letters() == []
    # batches, cancel, pauses and the pruning of all of them
    members = q.enqueue_many([("t", {}), ("t", {})], batch="b", on_complete=("after", {}))
    b.cancel(CancelSelector(ids=[members[0]]))
    b.pause_queue("default", True)
    b.claim(ClaimRequest("w1", 10, 60, exclude=("default",)))
    b.pause_queue("default", False)
    b.cancel(CancelSelector(batch="b"))
    assert b.settle_batches()
    b.prune(PruneRequest(done_older_than=3600, workers_stale_after=3600, dead_older_than=3600))
    q.counts()
    q.tasks()
    b.workers()
    b.batches()
    # breakers (a parked task), rate keys, rate limits and schedules
    t = time.time()
    b.enqueue([NewTask("t", "{}", breaker="br", rate_key="rk"), NewTask("t", "{}", breaker="br")])
    assert b.put_breaker(BreakerState("br", "open", updated=t, version=1), 0)
    assert b.put_rate_limit(RateState("rk", 5, 1.0, version=1), 0)
    assert b.put_schedule(ScheduleState("s", "t", version=1), 0)
    assert b.fire_schedule(ScheduleState("s", "t", version=2), 1, [NewTask("t", "{}")])
    assert b.rate_keys_ready(None) == {}
    assert b.breakers() and b.rate_limits() and b.schedules()


def test_every_key_starts_with_the_prefix(prefix: str) -> None:
    db = 15  # a database of its own, so the test sees only what it writes itself
    raw = _raw(db)
    try:
        before = set(raw.keys("*"))
        with lmq.Queue(_with(_base(db), prefix=prefix)) as q:
            q.migrate()
            _exercise(q)
            wake = q.backend.wake_source()
            assert wake is not None
            wake.start(lambda: None)
            try:
                channels = wait_for(lambda: raw.pubsub_channels(f"*{prefix}*"), timeout=5)
                assert channels == [f"{prefix}queue:wake"]
            finally:
                wake.stop()
        new = set(raw.keys("*")) - before
        assert new, "the backend wrote no keys"
        assert [k for k in new if not k.startswith(prefix)] == []
        for name in ("meta", "ids", "tasks:payload", "pending:default:0", "processing", "done"):
            assert f"{prefix}queue:{name}" in new, name
    finally:
        drop_prefix(_base(db), prefix)
        raw.close()


def test_default_prefix_is_lmq() -> None:
    with lmq.Queue(_base()) as q:
        backend: Any = q.backend
        assert backend.prefix == "lmq:"


def test_two_prefixes_on_one_server_do_not_see_each_other(prefix: str) -> None:
    other = f"r{uuid.uuid4().hex[:8]}_"
    try:
        with (
            lmq.Queue(_with(_base(), prefix=prefix)) as a,
            lmq.Queue(_with(_base(), prefix=other)) as b,
        ):
            a.migrate()
            b.migrate()
            a_ids = a.enqueue_many([("t", {}) for _ in range(3)])
            b_id = b.enqueue("t", unique_key="same")
            a_ids.append(a.enqueue("t", unique_key="same"))  # unique keys are per prefix too
            assert a.counts()["pending"] == 4
            assert b.counts()["pending"] == 1
            assert b.get(a_ids[2]) is None  # ids restart per prefix: B has only its first
            assert ids(claim(b.backend, limit=10)) == [b_id]
            assert set(ids(claim(a.backend, limit=10))) == set(a_ids)
            complete(b.backend, done=[b_id])
            assert a.counts()["done"] == 0 and b.counts()["done"] == 1
    finally:
        drop_prefix(_base(), other)


def test_bad_options_and_prefixes_are_refused() -> None:
    with pytest.raises(lmq.ConfigError, match="bogus"):
        lmq.Queue(_with(_base(), bogus="1")).counts()
    with pytest.raises(lmq.ConfigError, match="prefix"):
        lmq.Queue(_with(_base(), prefix="has space")).counts()
    with pytest.raises(lmq.ConfigError, match="socket_timeout"):
        lmq.Queue(_with(_base(), socket_timeout="soon")).counts()


def test_transactional_enqueue_is_refused(rq: lmq.Queue) -> None:
    with pytest.raises(lmq.ConfigError, match="redis"):
        rq.enqueue("t", connection=object())
    assert rq.counts()["pending"] == 0


# --- schema -----------------------------------------------------------------------------------


def test_schema_missing_names_lmq_migrate_until_migrated(prefix: str) -> None:
    url = _with(_base(), prefix=prefix)
    with lmq.Queue(url) as q:
        assert q.backend.schema_version() is None
        for call in (lambda: q.enqueue("t"), q.counts, lambda: claim(q.backend), q.tasks):
            with pytest.raises(lmq.SchemaMissing, match="lmq migrate"):
                call()
    # the CLI: `lmq migrate` exits 0 on Redis (twice: idempotent)
    for _ in range(2):
        run = subprocess.run(
            [sys.executable, "-m", "lmq", "migrate", "--url", url],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
    with lmq.Queue(url) as q:
        assert q.backend.schema_version() == 3
        assert q.migrate() == []
        assert q.get(q.enqueue("t")) is not None


def test_newer_schema_says_upgrade(prefix: str) -> None:
    raw = _raw()
    try:
        raw.hset(f"{prefix}queue:meta", "schema_version", "99")
        with lmq.Queue(_with(_base(), prefix=prefix)) as q:
            with pytest.raises(lmq.SchemaMissing, match="upgrade lmq"):
                q.counts()
            with pytest.raises(lmq.SchemaMissing, match="upgrade lmq"):
                q.migrate()
    finally:
        raw.close()


# --- connections ------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_is_backend_unavailable_quickly() -> None:
    port = _closed_port()
    started = time.monotonic()
    with lmq.Queue(f"redis://127.0.0.1:{port}/0?prefix=x_") as q:
        with pytest.raises(lmq.BackendUnavailable, match=str(port)):
            q.counts()
        with pytest.raises(lmq.BackendUnavailable):
            q.enqueue("t")
    assert time.monotonic() - started < 5


def test_unreachable_server_cli_exits_2_with_one_line() -> None:
    port = _closed_port()
    run = subprocess.run(
        [sys.executable, "-m", "lmq", "status", "--url", f"redis://127.0.0.1:{port}/0"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr


def _kill_clients(name_prefix: str) -> int:
    raw = _raw()
    try:
        victims = [c for c in raw.client_list() if c.get("name", "").startswith(name_prefix)]
        for c in victims:
            raw.client_kill_filter(_id=c["id"])
        return len(victims)
    finally:
        raw.close()


def test_killed_connections_are_replaced_on_the_next_call(rq: lmq.Queue, prefix: str) -> None:
    task_id = rq.enqueue("t")
    assert _kill_clients(f"lmq-{prefix}") >= 1
    # the pool notices the closed socket when it hands the connection out, and reconnects
    assert rq.get(task_id) is not None
    assert ids(claim(rq.backend)) == [task_id]


def test_scripts_are_reloaded_after_script_flush(rq: lmq.Queue) -> None:
    """SCRIPT FLUSH is what a restart does to the script cache: EVALSHA fails with
    NOSCRIPT, and the backend loads the script again instead of failing."""
    first = rq.enqueue("t")
    raw = _raw()
    try:
        raw.script_flush()
    finally:
        raw.close()
    second = rq.enqueue("t")
    got = ids(claim(rq.backend))
    assert set(got) == {first, second}
    complete(rq.backend, done=got)
    assert rq.counts()["done"] == 2


# --- wake-ups ---------------------------------------------------------------------------------


def test_wake_source_fires_on_enqueue_and_survives_a_killed_connection(
    rq: lmq.Queue, prefix: str
) -> None:
    wake = rq.backend.wake_source()
    assert wake is not None
    fired = threading.Event()
    calls: list[float] = []

    def callback() -> None:
        calls.append(time.monotonic())
        fired.set()

    wake.start(callback)
    try:
        raw = _raw()
        try:
            wait_for(lambda: raw.pubsub_numsub(f"{prefix}queue:wake")[0][1] == 1, timeout=5)
            rq.enqueue("t")
            assert fired.wait(5)
            fired.clear()
            # delayed work wakes nobody; a retry without delay does
            rq.enqueue("t", delay=3600)
            time.sleep(0.3)
            assert not fired.is_set()

            # kill the subscriber's connection from another client
            killed = [
                c for c in raw.client_list(_type="pubsub") if c.get("name") == f"lmq-wake-{prefix}"
            ]
            assert len(killed) == 1
            raw.client_kill_filter(_id=killed[0]["id"])
            # it reconnects, subscribes again, and calls back (work may have been missed)
            assert fired.wait(5)
            fired.clear()
            wait_for(lambda: raw.pubsub_numsub(f"{prefix}queue:wake")[0][1] == 1, timeout=5)
            rq.enqueue("t")
            assert fired.wait(5)
        finally:
            raw.close()
    finally:
        started = time.monotonic()
        wake.stop()
        assert time.monotonic() - started < 2


def test_retry_now_and_release_publish_a_wake_up(rq: lmq.Queue, prefix: str) -> None:
    a, b = rq.enqueue_many([("t", {}), ("t", {})])
    claim(rq.backend)
    raw = _raw()
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(f"{prefix}queue:wake")
        wait_for(lambda: raw.pubsub_numsub(f"{prefix}queue:wake")[0][1] == 1, timeout=5)

        def messages() -> int:
            n = 0
            while (m := pubsub.get_message(timeout=0.5)) is not None:
                n += m["type"] == "message"
            return n

        complete(rq.backend, retries=[retry(a, 600)])
        assert messages() == 0
        complete(rq.backend, released=[b])
        assert messages() == 1
    finally:
        pubsub.close()
        raw.close()


def test_worker_picks_up_through_wake_ups(rq: lmq.Queue) -> None:
    seen: list[float] = []
    done = threading.Event()

    @rq.task
    def job(sent: float) -> None:
        seen.append(time.time() - sent)
        if len(seen) == 5:
            done.set()

    worker = lmq.Worker(
        rq,
        lmq.WorkerSettings(install_signal_handlers=False, idle_poll=30, loop="asyncio"),
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(rq.workers, timeout=10)
        time.sleep(0.3)
        for _ in range(5):
            job.enqueue(sent=time.time())
            time.sleep(0.1)
        # with a 30 s idle poll, only the pub/sub wake-up can make this quick
        assert done.wait(10)
        assert max(seen) < 5
    finally:
        worker.stop()
        thread.join(15)


# --- claims -----------------------------------------------------------------------------------


def test_claim_order_over_mixed_priorities_times_and_queues(rq: lmq.Queue) -> None:
    spec = [  # (queue, priority, seconds ago)
        ("a", 0, 100),
        ("b", 0, 150),
        ("a", 5, 1),
        ("b", 5, 10),
        ("c", 5, 10),
        ("a", -2, 900),
        ("b", 1, 50),
        ("c", 1, 50),
        ("a", 1, 60),
        ("c", 0, 100),
    ]
    queue_of: dict[TaskId, str] = {}

    def fill() -> list[TaskId]:
        """Enqueue the spec; return the ids in the order claims must take them."""
        now = datetime.now(UTC)
        made = []
        for n, (qn, p, ago) in enumerate(spec):
            at = now - timedelta(seconds=ago)
            tid = rq.enqueue("t", {"n": n}, queue=qn, priority=p, run_at=at)
            queue_of[tid] = qn
            made.append((-p, -ago, int(tid), tid))
        return [m[3] for m in sorted(made)]

    rq.enqueue("t", queue="a", priority=99, delay=3600)  # not due: never claimed
    # one claim takes them in order, and the returned list follows that order
    expected = fill()
    assert ids(claim(rq.backend, limit=100)) == expected
    complete(rq.backend, done=expected)
    # one at a time
    expected = fill()
    order: list[TaskId] = []
    while got := claim(rq.backend, limit=1):
        order.extend(ids(got))
    assert order == expected
    complete(rq.backend, done=expected)
    # a queue filter over two of the queues keeps the same order among them
    expected = fill()
    in_ab = [tid for tid in expected if queue_of[tid] in ("a", "b")]
    assert ids(claim(rq.backend, limit=100, queues=("b", "a"))) == in_ab
    assert ids(claim(rq.backend, limit=100, queues=("c",))) == [
        tid for tid in expected if queue_of[tid] == "c"
    ]
    assert rq.counts()["pending"] == 1


def test_equal_times_go_by_id_across_many_ids(rq: lmq.Queue) -> None:
    at = datetime.now(UTC) - timedelta(seconds=5)
    made = [rq.enqueue("t", run_at=at) for _ in range(12)]  # ids 1..12: "10" < "9" as text
    assert ids(claim(rq.backend, limit=100)) == made


def test_threads_on_the_hot_path_never_share_a_task(rq: lmq.Queue) -> None:
    """complete(batch, claim) from several threads and backends: each task done once."""
    n_tasks, n_threads = 2000, 8
    rq.enqueue_many([("t", {"i": i}) for i in range(n_tasks)])
    url = rq.url
    queues = [lmq.Queue(url) for _ in range(2)]
    seen: dict[TaskId, str] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def run(n: int) -> None:
        worker = f"w{n}"
        backend = queues[n % 2].backend
        try:
            barrier.wait()
            held = backend.claim(ClaimRequest(worker, 7, 60)).tasks
            while held:
                with lock:
                    for c in held:
                        assert c.id not in seen, f"{c.id} claimed by {seen[c.id]} and {worker}"
                        seen[c.id] = worker
                result = backend.complete(
                    CompleteBatch(worker, done=[c.id for c in held]),
                    ClaimRequest(worker, 1 + n % 9, 60),
                )
                assert result is not None
                held = result.tasks
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for q in queues:
        q.close()
    assert errors == []
    assert len(seen) == n_tasks
    assert rq.counts() == {"pending": 0, "processing": 0, "done": n_tasks, "dead": 0}
    assert len({w for w in seen.values()}) > 1


def test_lease_expiry_is_measured_on_the_server_clock(rq: lmq.Queue, prefix: str) -> None:
    task_id = rq.enqueue("t")
    (c,) = claim(rq.backend, lease=30)
    raw = _raw()
    try:
        sec, usec = raw.time()
        until = raw.zscore(f"{prefix}queue:processing", str(task_id))
    finally:
        raw.close()
    server_now = sec + usec / 1e6
    assert until is not None and 28 < until - server_now <= 30
    task = rq.get(task_id)
    assert task is not None and task.locked_until is not None
    assert task.locked_until.timestamp() == pytest.approx(until)
    assert c.attempts == 1


def test_counts_and_listing_after_a_mixed_run(rq: lmq.Queue) -> None:
    ids_ = rq.enqueue_many([("job", {"i": i}) for i in range(6)], queue="q1")
    rq.enqueue("other", queue="q2", delay=600)
    got = ids(claim(rq.backend, limit=4, queues=("q1",)))
    complete(rq.backend, done=got[:2], burials=[burial(got[2], task_name="job")])
    stats = rq.stats()
    assert stats.as_dict() == {"pending": 3, "processing": 1, "done": 2, "dead": 1}
    four = ("pending", "processing", "done", "dead")
    assert {k: stats.by_queue["q1"][k] for k in four} == {
        "pending": 2,
        "processing": 1,
        "done": 2,
        "dead": 1,
    }
    assert {k: stats.by_queue["q2"][k] for k in four} == {
        "pending": 1,
        "processing": 0,
        "done": 0,
        "dead": 0,
    }
    assert (stats.ready, stats.scheduled) == (2, 1)
    assert [t.id for t in rq.tasks(status="done")] == sorted(got[:2], key=int, reverse=True)
    assert [t.id for t in rq.tasks(status="processing")] == [got[3]]
    assert [t.id for t in rq.tasks(name="job", status="pending")] == [ids_[5], ids_[4]]
    shown = rq.get(got[2])
    assert shown is not None and shown.status == "dead"
    assert json.loads(json.dumps(shown.to_json()))["id"] == got[2]


# --- layout details -----------------------------------------------------------------------


def test_big_enqueues_go_in_atomic_chunks_and_keep_unique_keys(
    rq: lmq.Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmq.backends.redis import backend as redis_backend

    monkeypatch.setattr(redis_backend, "ENQUEUE_CHUNK", 3)
    made = rq.enqueue_many([("t", {"i": i}) for i in range(6)])
    assert len(made) == len(set(made)) == 6
    assert [rq.get(i).payload["i"] for i in made] == list(range(6))  # type: ignore[union-attr]
    keyed = rq.backend.enqueue(
        [
            lmq.models.NewTask("t", "{}", unique_key="a"),
            lmq.models.NewTask("t", "{}"),
            lmq.models.NewTask("t", "{}"),
            lmq.models.NewTask("t", "{}", unique_key="a"),  # the next chunk sees the first
        ]
    )
    assert keyed[0] == keyed[3] and len(set(keyed)) == 3
    assert rq.counts()["pending"] == 9


def test_nul_in_names_is_refused(rq: lmq.Queue) -> None:
    with pytest.raises(ValueError, match="NUL"):
        rq.enqueue("bad\0name")
    with pytest.raises(ValueError, match="NUL"):
        rq.enqueue("t", queue="q\0")
    assert rq.counts()["pending"] == 0


def test_prune_one_at_a_time_stops_at_the_newest(rq: lmq.Queue) -> None:
    made = rq.enqueue_many([("t", {}) for _ in range(4)])
    claim(rq.backend)
    complete(rq.backend, done=list(reversed(made)))  # the newest id finishes first
    request = lmq.models.PruneRequest(done_older_than=-1, workers_stale_after=3600, batch=1)
    assert rq.backend.prune(request) == 3
    assert [t.id for t in rq.tasks(status="done")] == [made[-1]]
    assert rq.backend.prune(request) == 0
    assert rq.counts() == {"pending": 0, "processing": 0, "done": 1, "dead": 0}


def test_requeue_rewrites_a_row_deleted_by_hand(rq: lmq.Queue, prefix: str) -> None:
    from .helpers import kill

    task_id, dead = kill(rq, "sync", payload={"sku": "A"}, queue="q1", priority=2)
    raw = _raw()
    try:
        for key in raw.keys(f"{prefix}queue:tasks:*"):
            raw.hdel(key, str(task_id))
    finally:
        raw.close()
    assert rq.get(task_id) is None
    assert rq.requeue_dead([dead.id]) == [task_id]
    task = rq.get(task_id)
    assert task is not None
    assert (task.status, task.task_name, task.queue, task.priority, task.payload) == (
        "pending",
        "sync",
        "q1",
        2,
        {"sku": "A"},
    )
    assert [e.message for e in task.errors] == ["boom"]
    (c,) = claim(rq.backend)
    assert (c.id, c.attempts, c.max_attempts) == (task_id, 1, 5)


def test_rescue_records_the_lapse_and_frees_the_slot(rq: lmq.Queue) -> None:
    a, b = rq.enqueue_many([("t", {}), ("t", {})], queue="q")
    claim(rq.backend, "gone", lease=1)
    assert rq.stats().by_queue["q"]["processing"] == 2
    result = wait_for(lambda: rq.backend.claim(ClaimRequest("w2", 10, 60)).tasks, timeout=5)
    assert set(ids(result)) == {a, b}
    stats = rq.stats()
    assert stats.by_queue["q"]["processing"] == 2 and stats.pending == 0
    task = rq.get(a)
    assert task is not None and (task.locked_by, task.attempts) == ("w2", 2)
    assert [e.type for e in task.errors] == ["LeaseExpired"]
    assert "gone" in (task.last_error or "")


# --- issue 4: batches, cancel, pauses, dead-letter groups and reviews ---------------------


def test_a_claim_without_paused_queues_sends_what_it_sent_before() -> None:
    from lmq.backends.redis.backend import RedisBackend

    assert RedisBackend._claim_req(ClaimRequest("w", 5, 30.0)) == [5, 30.0, None]
    assert RedisBackend._claim_req(ClaimRequest("w", 5, 30.0, ("a",), ("b",))) == [
        5,
        30.0,
        ("a",),
        ["b"],
    ]


def test_paused_queues_are_skipped_by_claims_checks_and_rescues(rq: lmq.Queue) -> None:
    b = rq.backend
    held = rq.enqueue("t", queue="p")
    claim(b, "gone", lease=1, queues=("p",))
    rq.enqueue("t", queue="p")
    other = rq.enqueue("t", queue="o")
    b.pause_queue("p", True)
    b.pause_queue("p", True)  # again: keeps the first time
    assert list(b.paused_queues()) == ["p"]
    time.sleep(1.1)  # the lease runs out: the rescue puts it back, the claim skips it
    got = b.claim(ClaimRequest("w", 10, 60, exclude=("p",)))
    assert ids(got.tasks) == [other] and got.rescued == 1
    assert not b.has_ready(None, ("p",)) and b.has_ready(None)
    due = b.next_due(None, ("p",))  # the lease the claim took, not p's ready task
    assert due is not None and due > 30
    b.pause_queue("p", False)
    assert b.paused_queues() == {}
    assert sorted(ids(claim(b, "w", queues=("p",))), key=int)[0] == held


def test_batch_counters_agree_with_the_member_rows(rq: lmq.Queue) -> None:
    """The counters the scripts keep match a scan of the members after every kind of
    state change (claim, done, retry, bury, release, rescue, cancel, requeue, discard,
    prune)."""
    b = rq.backend
    made = rq.enqueue_many([("t", {"i": i}) for i in range(12)], batch="big")
    rq.enqueue("t")  # not a member
    got = ids(claim(b, "w1", limit=8))
    complete(
        b,
        "w1",
        done=got[:2],
        retries=[retry(got[2]), retry(got[3], 60)],
        burials=[burial(got[4]), burial(got[5]), burial(got[6])],
    )
    b.complete(CompleteBatch("w1", released=[got[7]]))
    claim(b, "gone", limit=1, lease=1)
    time.sleep(1.1)
    claim(b, "w2", limit=1)  # rescues the expired one first
    b.cancel(CancelSelector(batch="big"))
    dead = b.dead_letters(DeadFilter())
    b.requeue_dead(DeadSelector(ids=[dead[0].id]))
    b.discard_dead(DeadSelector(ids=[dead[1].id]))
    b.prune(PruneRequest(done_older_than=-1, workers_stale_after=3600))

    info = b.batch("big")
    assert info is not None and info.total == 12
    statuses = [t.status for t in (rq.get(i) for i in made) if t is not None]
    for status in ("pending", "processing", "done", "dead", "cancelled"):
        assert getattr(info, status) == statuses.count(status), status
    assert info.done == 0  # pruned
    assert info.last_finished is not None and info.completed is None


def test_settling_from_many_clients_at_once_completes_a_batch_once(rq: lmq.Queue) -> None:
    made = rq.enqueue_many([("t", {})] * 3, batch="b", on_complete=("after", {"n": 1}))
    complete(rq.backend, done=ids(claim(rq.backend)))
    results: list[list[tuple[str, TaskId | None]]] = []
    url = _with(_base(), prefix=rq.backend.prefix)  # type: ignore[attr-defined]

    def settle() -> None:
        with lmq.Queue(url) as q:
            results.append(q.backend.settle_batches())

    threads = [threading.Thread(target=settle) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    settled = [r for r in results if r]
    assert len(settled) == 1
    ((name, followup),) = settled[0]
    assert name == "b" and followup is not None and followup not in made
    task = rq.get(followup)
    assert task is not None and (task.task_name, task.payload, task.batch) == (
        "after",
        {"n": 1},
        None,
    )
    info = rq.batch("b")
    assert info.followup_id == followup and info.completed is not None
    assert rq.backend.settle_batches() == []


def test_approved_letters_are_requeued_once_by_concurrent_workers(rq: lmq.Queue) -> None:
    from .helpers import kill

    for i in range(40):
        kill(rq, message=f"order {i} failed")
    (group,) = rq.backend.dead_groups(DeadFilter())
    sel = DeadSelector(fingerprint=group.fingerprint)
    assert rq.backend.review_dead(Review(sel, approve=True, by="ops")) == 40
    url = _with(_base(), prefix=rq.backend.prefix)  # type: ignore[attr-defined]
    got: list[TaskId] = []
    lock = threading.Lock()

    def run() -> None:
        with lmq.Queue(url) as q:
            for _ in range(10):
                ids_ = q.backend.requeue_approved(limit=3)
                with lock:
                    got.extend(ids_)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(set(got)) == 40
    assert rq.counts()["pending"] == 40 and rq.counts()["dead"] == 0
    assert rq.backend.dead_groups(DeadFilter()) == []


def test_groups_come_from_the_fingerprint_index_and_agree_with_a_scan(rq: lmq.Queue) -> None:
    from .helpers import kill

    for i in range(3):
        kill(rq, "a", message=f"order {i} failed")
    kill(rq, "a", message="other 'x' trouble")
    kill(rq, "b", message="order 9 failed", queue="bulk")
    fast = rq.backend.dead_groups(DeadFilter())
    assert [(g.task_name, g.count) for g in fast] == [("a", 3), ("b", 1), ("a", 1)]
    # the scan (a queue filter) gives the same groups
    scanned = rq.backend.dead_groups(DeadFilter(queue="default"))
    assert [(g.fingerprint, g.count) for g in scanned] == [
        (g.fingerprint, g.count) for g in fast if g.task_name == "a"
    ]
    assert rq.backend.dead_groups(DeadFilter(task_name="b", limit=5))[0].count == 1
    assert rq.backend.dead_groups(DeadFilter(limit=1)) == fast[:1]
    one = rq.backend.dead_groups(DeadFilter(fingerprint=fast[0].fingerprint))
    assert one == fast[:1]


def test_prune_removes_cancelled_tasks_old_letters_and_finished_batches(
    rq: lmq.Queue, prefix: str
) -> None:
    from .helpers import kill

    b = rq.backend
    _, rejected = kill(rq, message="no")
    _, discarded = kill(rq, message="gone")
    _, kept = kill(rq, message="waits")
    b.review_dead(Review(DeadSelector(ids=[rejected.id]), approve=False, by="me"))
    b.discard_dead(DeadSelector(ids=[discarded.id]))
    members = rq.enqueue_many([("t", {})] * 2, batch="old")
    b.cancel(CancelSelector(ids=members))
    rq.enqueue("newest")  # the newest id is never pruned
    assert b.settle_batches() == [("old", None)]
    keep_all = PruneRequest(done_older_than=3600, workers_stale_after=3600, dead_older_than=3600)
    assert b.prune(keep_all) == 0
    assert rq.counts()["dead"] == 2 and rq.stats().cancelled == 2
    everything = PruneRequest(done_older_than=-1, workers_stale_after=3600, dead_older_than=-1)
    assert b.prune(everything) == 2 + 2 + 1  # two tasks, two letters, one batch
    assert rq.stats().cancelled == 0 and rq.counts()["dead"] == 1
    assert b.get_dead(rejected.id) is None and b.get_dead(discarded.id) is None
    assert [d.id for d in rq.dead_letters()] == [kept.id]
    assert b.batch("old") is None and b.batches() == []
    assert [g.count for g in b.dead_groups(DeadFilter())] == [1]
    raw = _raw()
    try:
        assert not raw.exists(f"{prefix}queue:batch:old")
    finally:
        raw.close()


def test_a_schema_1_prefix_is_upgraded_by_migrate(rq: lmq.Queue, prefix: str) -> None:
    from .helpers import kill

    _, live = kill(rq, message="order 1 failed")
    kill(rq, message="order 2 failed")
    _, requeued = kill(rq, message="order 3 failed")
    rq.requeue_dead([requeued.id])
    raw = _raw()
    try:  # what schema 1 had: no fingerprint or pruning indexes
        for key in raw.scan_iter(match=f"{prefix}queue:dead_*"):
            if not key.endswith(("dead_all", "dead_live", "dead_ids")):
                raw.delete(key)
        raw.hset(f"{prefix}queue:meta", "schema_version", "1")
    finally:
        raw.close()
    url = _with(_base(), prefix=prefix)
    with lmq.Queue(url) as q:
        with pytest.raises(lmq.SchemaMissing, match="lmq migrate"):
            q.counts()
        assert q.migrate() == [2, 3]
        assert q.migrate() == []
        assert q.backend.schema_version() == 3
        assert [g.count for g in q.backend.dead_groups(DeadFilter())] == [2]
        assert q.backend.dead_groups(DeadFilter())[0].example_id != requeued.id
        old = PruneRequest(done_older_than=3600, workers_stale_after=3600, dead_older_than=-1)
        assert q.backend.prune(old) == 1  # the re-queued letter
        assert q.backend.get_dead(live.id) is not None


def test_big_batches_add_each_chunk_to_the_total(
    rq: lmq.Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmq.backends.redis import backend as redis_backend

    monkeypatch.setattr(redis_backend, "ENQUEUE_CHUNK", 3)
    made = rq.enqueue_many([("t", {})] * 7, batch="chunks")
    info = rq.batch("chunks")
    assert (info.total, info.pending) == (7, 7)
    assert {rq.get(i).batch for i in made} == {"chunks"}  # type: ignore[union-attr]
    rq.backend.enqueue([NewTask("t", "{}", unique_key="k")])
    again = rq.backend.enqueue([NewTask("t", "{}", unique_key="k", batch="chunks")])
    assert rq.get(again[0]).batch is None  # type: ignore[union-attr]  # the existing task


# --- issue 5: breakers, rate keys and schedules --------------------------------------------


def _open(b: Any, name: str, version: int = 0, state: str = "open") -> BreakerState:
    now = time.time()
    stored = BreakerState(name, state, opened_at=now, retry_at=now + 30, updated=now)
    stored = BreakerState(**{**_fields(stored), "version": version + 1})
    assert b.put_breaker(stored, version)
    return stored


def _fields(state: BreakerState) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(state)


def _close(b: Any, stored: BreakerState) -> BreakerState:
    closed = BreakerState(stored.name, "closed", updated=time.time(), version=stored.version + 1)
    assert b.put_breaker(closed, stored.version)
    return closed


def plain(b: Any, worker: str = "w9", limit: int = 100) -> list[TaskId]:
    return ids(b.claim(ClaimRequest(worker, limit, 60.0)).tasks)


def _zcards(prefix: str, part: str) -> dict[str, int]:
    """The zsets under ``prefix`` whose name holds ``part``, with their sizes."""
    raw = _raw()
    try:
        found = raw.scan_iter(match=f"{prefix}queue:{part}*")
        return {k: int(raw.zcard(k)) for k in found if raw.type(k) == "zset"}
    finally:
        raw.close()


def test_a_probe_or_rate_claim_sends_its_key_and_a_plain_one_what_it_sent() -> None:
    from lmq.backends.redis.backend import RedisBackend

    assert RedisBackend._claim_req(ClaimRequest("w", 5, 30.0, breaker="b")) == [
        5,
        30.0,
        None,
        [],
        "b",
        None,
    ]
    assert RedisBackend._claim_req(ClaimRequest("w", 5, 30.0, ("a",), ("x",), rate_key="k")) == [
        5,
        30.0,
        ("a",),
        ["x"],
        None,
        "k",
    ]


def test_tasks_behind_an_open_breaker_are_parked_and_all_come_back(
    rq: lmq.Queue, prefix: str
) -> None:
    """Opening parks the pending tasks of the breaker (out of the pending zsets); what
    happens to them meanwhile (claims, leases running out, retries, releases, deferrals,
    re-queues, cancels) keeps them parked or takes them out for good; closing puts every
    one back, in order."""
    b = rq.backend
    spec = BatchSpec("bb", 6)
    made = b.enqueue(
        [NewTask("call", json.dumps({"i": i}), breaker="crm", batch="bb") for i in range(6)],
        batch=spec,
    )
    later = b.enqueue([NewTask("call", "{}", breaker="crm", delay=3600, queue="q2")])[0]
    free = rq.enqueue("plain")
    # three are running when it opens: one retried, one released, one lease runs out
    held = ids(b.claim(ClaimRequest("w1", 3, 60.0, breaker="crm")).tasks)
    assert held == made[:3]
    dies = ids(b.claim(ClaimRequest("dies", 1, 1.0, breaker="crm")).tasks)
    assert dies == [made[3]]
    stored = _open(b, "crm")
    assert _zcards(prefix, "pending:") == {f"{prefix}queue:pending:default:0": 1}  # free
    complete(b, "w1", retries=[retry(held[0])], released=[held[1]])
    b.complete(CompleteBatch("w1", deferred=[DeferOutcome(held[2], 0.0)]))
    time.sleep(1.1)
    assert ids(b.claim(ClaimRequest("w2", 10, 60.0)).tasks) == [free]  # rescues `dies`
    assert plain(b) == [] and not b.has_ready(None)
    due = b.next_due(None)  # the lease w2 took, not a parked task
    assert due is not None and due > 50

    counts = b.counts()
    assert (counts.pending, counts.ready, counts.scheduled) == (7, 6, 1)
    assert counts.by_queue["default"]["pending"] == 6
    assert counts.by_queue["q2"]["scheduled"] == 1
    assert b.batch("bb").pending == 6  # type: ignore[union-attr]
    listed = {t.id: t.status for t in b.list_tasks(TaskFilter(status="pending", limit=100))}
    assert set(listed) == {*made, later}
    # cancels find them (by id and by a filter), re-queued letters go back parked
    assert b.cancel(CancelSelector(ids=[made[4]])) == [made[4]]
    assert b.cancel(CancelSelector(queue="q2")) == [later]
    (dead_id,) = ids(b.claim(ClaimRequest("w3", 1, 60.0, breaker="crm")).tasks)
    complete(b, "w3", burials=[burial(dead_id)])
    (letter,) = rq.dead_letters()
    b.requeue_dead(DeadSelector(ids=[letter.id]))
    assert plain(b) == []
    assert b.batch("bb").pending == 5  # type: ignore[union-attr]

    _close(b, stored)
    assert _zcards(prefix, "bk:") == {f"{prefix}queue:bk:3:crm:default": 5}
    back = plain(b, limit=100)
    assert sorted(back, key=int) == sorted([*made[:4], made[5]], key=int)
    assert _zcards(prefix, "bk:") == {} and _zcards(prefix, "pending:") == {}
    raw = _raw()
    try:
        assert not raw.exists(f"{prefix}queue:bkq:crm")
        assert raw.smembers(f"{prefix}queue:breakers_blocked") == set()
    finally:
        raw.close()
    assert b.counts().pending == 0


def test_rate_keyed_tasks_wait_in_their_own_zsets(rq: lmq.Queue, prefix: str) -> None:
    b = rq.backend
    a = b.enqueue([NewTask("call", "{}", rate_key="api:1", queue="q", priority=p) for p in (0, 5)])
    both = b.enqueue([NewTask("call", "{}", rate_key="api:1", breaker="crm", queue="q")])[0]
    assert _zcards(prefix, "pending:") == {}
    assert _zcards(prefix, "rpending:") == {
        f"{prefix}queue:rpending:5:api:1:q:0": 2,
        f"{prefix}queue:rpending:5:api:1:q:5": 1,
    }
    counts = b.counts()
    assert counts.pending == counts.ready == 3 and counts.by_queue["q"]["ready"] == 3
    assert b.rate_keys_ready(("q",)) == {"api:1": (0.0, "call")}
    assert b.rate_keys_ready(("other",)) == {}
    assert b.rate_keys_ready(None, ("q",)) == {}
    stored = _open(b, "crm")  # parks `both`
    assert counts.by_queue == b.counts().by_queue  # parked: still counted
    got = ids(b.claim(ClaimRequest("w", 10, 60.0, rate_key="api:1")).tasks)
    assert got == [a[1], a[0]]
    assert b.rate_keys_ready(None) == {}
    _close(b, stored)
    assert b.rate_keys_ready(None) == {"api:1": (0.0, "call")}
    assert ids(b.claim(ClaimRequest("w", 10, 60.0, rate_key="api:1")).tasks) == [both]
    raw = _raw()
    try:
        assert raw.smembers(f"{prefix}queue:rate_keys") == set()
        assert not raw.exists(f"{prefix}queue:rlanes:api:1")
    finally:
        raw.close()


def test_a_probe_of_a_closed_breaker_takes_its_task_out_of_the_pending_zset(
    rq: lmq.Queue, prefix: str
) -> None:
    b = rq.backend
    first, second = b.enqueue([NewTask("call", "{}", breaker="crm")] * 2)
    assert ids(b.claim(ClaimRequest("w", 1, 60.0, breaker="crm")).tasks) == [first]
    assert plain(b) == [second]  # the probed one is gone from both
    assert _zcards(prefix, "pending:") == {} and _zcards(prefix, "bk:") == {}
    assert b.counts().processing == 2


def test_a_deferral_rewrites_the_head_flags(rq: lmq.Queue, prefix: str) -> None:
    """A task enqueued without keys (another program) gets them on its first claim: the
    head's flags follow, so a later claim, rescue or cancel finds its zsets."""
    b = rq.backend
    task_id = rq.enqueue("call", unique_key="u")
    assert plain(b) == [task_id]
    b.complete(CompleteBatch("w9", deferred=[DeferOutcome(task_id, 0.0, "crm", "api")]))
    raw = _raw()
    try:
        head = raw.hget(f"{prefix}queue:tasks:head", task_id)
    finally:
        raw.close()
    assert head is not None and head.endswith("\0" + chr(48 + 1 + 4 + 8))
    stored = _open(b, "crm")
    assert b.rate_keys_ready(None) == {}
    assert b.cancel(CancelSelector(task_name="call")) == [task_id]
    assert _zcards(prefix, "bk:") == {} and _zcards(prefix, "rpending:") == {}
    _close(b, stored)
    assert plain(b) == [] and b.rate_keys_ready(None) == {}


def test_a_schema_2_prefix_is_upgraded_to_3_by_migrate(rq: lmq.Queue, prefix: str) -> None:
    """Layout 3 only adds keys and head flags: a layout-2 prefix keeps its tasks."""
    b = rq.backend
    old = rq.enqueue_many([("t", {"i": i}) for i in range(3)], batch="b")
    member = ids(claim(b, "w1", limit=1))
    raw = _raw()
    try:
        raw.hset(f"{prefix}queue:meta", "schema_version", "2")
    finally:
        raw.close()
    url = _with(_base(), prefix=prefix)
    with lmq.Queue(url) as q:
        with pytest.raises(lmq.SchemaMissing, match="lmq migrate"):
            q.counts()
        assert q.migrate() == [3]
        assert q.migrate() == []
        assert q.backend.schema_version() == 3
        nb = q.backend
        complete(nb, "w1", done=member)
        assert sorted(plain(nb), key=int) == old[1:]
        assert q.batch("b").processing == 2
        keyed = nb.enqueue([NewTask("t", "{}", breaker="x")])[0]
        _open(nb, "x")
        assert plain(nb) == []
        assert ids(nb.claim(ClaimRequest("w", 5, 60.0, breaker="x")).tasks) == [keyed]


def test_a_random_walk_over_keyed_tasks_loses_nothing(rq: lmq.Queue, prefix: str) -> None:
    """Enqueues, the three kinds of claims (some with leases that run out at once),
    every outcome, breakers opening, closing and deleted, cancels and re-queues, in a
    seeded random order: every claim follows its rules, the counts always agree with the
    tasks' states, and once the breakers close everything drains, leaving no zset
    behind."""
    import random

    rnd = random.Random(5)
    b = rq.backend
    breakers: dict[str, BreakerState | None] = {"a": None, "b": None}
    keys: dict[TaskId, tuple[str | None, str | None]] = {}
    status: dict[TaskId, str] = {}
    held: dict[TaskId, str] = {}  # id -> worker, leases that last

    def blocked(name: str | None) -> bool:
        state = breakers.get(name) if name else None
        return state is not None and state.state != "closed"

    def took(got: list[Any], worker: str, lease: float) -> None:
        for c in got:
            assert (c.breaker, c.rate_key) == keys[c.id]
            status[c.id] = "processing"
            held.pop(c.id, None)
            if lease > 0:
                held[c.id] = worker

    def check() -> None:
        counts = b.counts()
        live = sum(1 for s in status.values() if s in ("pending", "processing"))
        assert counts.pending + counts.processing == live
        assert counts.dead == sum(1 for s in status.values() if s == "dead")

    for _ in range(400):
        op = rnd.random()
        if op < 0.2:
            tasks = [
                NewTask(
                    "t",
                    "{}",
                    queue=rnd.choice(("q1", "q2")),
                    priority=rnd.choice((0, 1)),
                    breaker=rnd.choice((None, None, "a", "b")),
                    rate_key=rnd.choice((None, None, "r")),
                )
                for _ in range(rnd.randint(1, 5))
            ]
            for task_id, t in zip(b.enqueue(tasks), tasks, strict=True):
                keys[task_id] = (t.breaker, t.rate_key)
                status[task_id] = "pending"
        elif op < 0.45:
            worker = rnd.choice(("w1", "w2"))
            lease = 0.0 if rnd.random() < 0.1 else 60.0
            kind = rnd.choice(("plain", "plain", "rate", "a", "b"))
            request = ClaimRequest(
                worker,
                rnd.randint(1, 4),
                lease,
                rate_key="r" if kind == "rate" else None,
                breaker=kind if kind in ("a", "b") else None,
            )
            result = b.claim(request)
            for c in result.tasks:
                brk, rk = keys[c.id]
                if kind == "plain":
                    assert rk is None and not blocked(brk)
                elif kind == "rate":
                    assert rk == "r" and not blocked(brk)
                else:
                    assert brk == kind
            # a rescue made the expired ones pending again before the claim
            for task_id, s in status.items():
                if s == "processing" and task_id not in held:
                    status[task_id] = "pending"
            took(result.tasks, worker, lease)
        elif op < 0.65 and held:
            task_id, worker = rnd.choice(sorted(held.items()))
            what = rnd.choice(("done", "retry", "release", "defer", "bury"))
            if what == "done":
                complete(b, worker, done=[task_id])
            elif what == "retry":
                complete(b, worker, retries=[retry(task_id)])
            elif what == "release":
                b.complete(CompleteBatch(worker, released=[task_id]))
            elif what == "bury":
                complete(b, worker, burials=[burial(task_id)])
            else:
                brk = rnd.choice((None, "a", "b"))
                rk = rnd.choice((None, "r"))
                b.complete(CompleteBatch(worker, deferred=[DeferOutcome(task_id, 0.0, brk, rk)]))
                old = keys[task_id]
                keys[task_id] = (brk or old[0], rk or old[1])
            del held[task_id]
            status[task_id] = {"done": "done", "bury": "dead"}.get(what, "pending")
        elif op < 0.8:
            name = rnd.choice(("a", "b"))
            current = breakers[name]
            if rnd.random() < 0.15:
                b.delete_breaker(name)
                breakers[name] = None
            else:
                version = current.version if current else 0
                state = BreakerState(
                    name, rnd.choice(("open", "half_open", "closed")), version=version + 1
                )
                assert b.put_breaker(state, version)
                breakers[name] = state
        elif op < 0.88:
            pending = sorted((i for i, s in status.items() if s == "pending"), key=int)
            if pending:
                task_id = rnd.choice(pending)
                assert b.cancel(CancelSelector(ids=[task_id])) == [task_id]
                status[task_id] = "cancelled"
        elif op < 0.92:
            queue = rnd.choice(("q1", "q2"))
            for task_id in b.cancel(CancelSelector(queue=queue)):
                assert status[task_id] == "pending"
                status[task_id] = "cancelled"
            assert not [i for i, s in status.items() if s == "pending" and rq.get(i).queue == queue]  # type: ignore[union-attr]
        elif op < 0.96:
            letters = rq.dead_letters()
            if letters:
                back = b.requeue_dead(DeadSelector(all=True))
                for task_id in back:
                    status[task_id] = "pending"
        check()

    # close everything, let the leases that ran out come back, and drain
    for name, state in breakers.items():
        if state is not None:
            assert b.delete_breaker(name)
    for _ in range(50):
        got = b.claim(ClaimRequest("w3", 50, 60.0)).tasks
        got += b.claim(ClaimRequest("w3", 50, 60.0, rate_key="r")).tasks
        if not got and not held:
            break
        complete(b, "w3", done=ids(got))
        for worker in ("w1", "w2"):
            mine = [i for i, w in held.items() if w == worker]
            if mine:
                complete(b, worker, done=mine)
        for task_id in [*ids(got), *held]:
            status[task_id] = "done"
        held.clear()
    assert {s for s in status.values()} <= {"done", "dead", "cancelled"}
    counts = b.counts()
    assert (counts.pending, counts.processing) == (0, 0)
    left = {
        k
        for k in _zcards(prefix, "")
        if not k.endswith(("processing", "dead_all", "dead_live", "dead_rejected", "dead_gone"))
        and ":dead_fp:" not in k
    }
    assert left == set()
    raw = _raw()
    try:
        for name in ("rate_keys", "breakers_blocked", "active", "bkq:a", "bkq:b", "rlanes:r"):
            assert not raw.exists(f"{prefix}queue:{name}"), name
    finally:
        raw.close()
