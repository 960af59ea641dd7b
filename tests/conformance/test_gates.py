"""Circuit breakers, rate limits and schedules (issue 5) through the backend API.

Tasks carry ``breaker`` / ``rate_key``; a plain claim skips rate-keyed tasks and tasks
behind a stored breaker that is not closed (has_ready / next_due too); a probe claim
(``ClaimRequest.breaker``) takes only that breaker's tasks, whatever its state; a rate
claim (``ClaimRequest.rate_key``) only that key's tasks, not behind a blocked breaker;
``CompleteBatch.deferred`` puts a task back unrun; the breaker, rate-limit and schedule
rows are swapped by compare-and-set on ``version``; ``fire_schedule`` does the CAS and
the enqueue in one transaction.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

import lmq
from lmq.backends import Backend
from lmq.models import (
    BreakerState,
    ClaimRequest,
    CompleteBatch,
    DeadSelector,
    DeferOutcome,
    NewTask,
    RateState,
    ScheduleState,
    TaskFilter,
    TaskId,
)

from .helpers import burial, complete, ids, retry, wait_for

# --- helpers -----------------------------------------------------------------------------


def add(
    backend: Backend,
    name: str = "t",
    payload: Any = None,
    **fields: Any,
) -> TaskId:
    """Enqueue one task (``fields``: NewTask's, e.g. breaker=, rate_key=, queue=)."""
    (task_id,) = backend.enqueue([NewTask(name, json.dumps(payload or {}), **fields)])
    return task_id


def plain(
    backend: Backend,
    worker: str = "w1",
    limit: int = 100,
    lease: float = 60.0,
    queues: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] = (),
) -> list[TaskId]:
    return ids(backend.claim(ClaimRequest(worker, limit, lease, queues, exclude)).tasks)


def probe(
    backend: Backend, breaker: str, worker: str = "w1", limit: int = 100, lease: float = 60.0
) -> list[TaskId]:
    return ids(backend.claim(ClaimRequest(worker, limit, lease, breaker=breaker)).tasks)


def rate(
    backend: Backend,
    key: str,
    worker: str = "w1",
    limit: int = 100,
    lease: float = 60.0,
    queues: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] = (),
) -> list[TaskId]:
    request = ClaimRequest(worker, limit, lease, queues, exclude, rate_key=key)
    return ids(backend.claim(request).tasks)


def same(a: list[TaskId], b: list[TaskId]) -> bool:
    return sorted(a, key=str) == sorted(b, key=str)


def open_breaker(backend: Backend, name: str, state: str = "open") -> BreakerState:
    """Store breaker ``name`` as open (or half_open) and return the stored state."""
    now = time.time()
    stored = BreakerState(
        name,
        state,
        failures=5,
        cooldown=30.0,
        opened_at=now,
        retry_at=now + 30,
        probe_by="w9" if state == "half_open" else None,
        probe_until=now + 60 if state == "half_open" else None,
        trips=1,
        updated=now,
        version=1,
    )
    assert backend.put_breaker(stored, 0)
    return stored


def close_breaker(backend: Backend, stored: BreakerState) -> BreakerState:
    closed = replace(
        stored,
        state="closed",
        failures=0,
        retry_at=None,
        probe_by=None,
        probe_until=None,
        version=stored.version + 1,
    )
    assert backend.put_breaker(closed, stored.version)
    return closed


def in_threads(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``n`` threads released at once; return the results (or raise)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


def all_tasks(backend: Backend) -> list[Any]:
    return backend.list_tasks(TaskFilter(limit=1000))


# --- tasks carry their keys ------------------------------------------------------------------


def test_enqueue_stores_the_keys_and_get_shows_them(backend: Backend) -> None:
    both = add(backend, "call", breaker="crm", rate_key="crm-rate")
    only_breaker = add(backend, "call", breaker="crm")
    neither = add(backend, "other")
    many = backend.enqueue(
        [
            NewTask("bulk", "{}", breaker="b1"),
            NewTask("bulk", "{}", rate_key="r1"),
            NewTask("bulk", "{}"),
        ]
    )
    unique = backend.enqueue([NewTask("u", "{}", unique_key="u-1", breaker="b2", rate_key="r2")])
    expected = {
        both: ("crm", "crm-rate"),
        only_breaker: ("crm", None),
        neither: (None, None),
        many[0]: ("b1", None),
        many[1]: (None, "r1"),
        many[2]: (None, None),
        unique[0]: ("b2", "r2"),
    }
    for task_id, keys in expected.items():
        task = backend.get(task_id)
        assert task is not None
        assert (task.breaker, task.rate_key) == keys, task_id
        assert task.to_json()["breaker"] == keys[0]
    listed = {t.id: (t.breaker, t.rate_key) for t in all_tasks(backend)}
    assert listed == expected


def test_plain_claims_skip_rate_keyed_tasks(backend: Backend) -> None:
    keyed = [add(backend, "call", rate_key="api") for _ in range(3)]
    free = add(backend, "other")
    got = backend.claim(ClaimRequest("w1", 100, 60.0)).tasks
    assert ids(got) == [free]
    assert (got[0].breaker, got[0].rate_key) == (None, None)
    assert plain(backend) == []
    for task_id in keyed:
        task = backend.get(task_id)
        assert task is not None and (task.status, task.attempts) == ("pending", 0)


def test_plain_claims_skip_tasks_behind_a_breaker_that_is_not_closed(
    backend: Backend,
) -> None:
    open_b = open_breaker(backend, "down")
    open_breaker(backend, "probing", state="half_open")
    closed = close_breaker(backend, open_breaker(backend, "healed"))
    assert closed.state == "closed"
    behind_open = [add(backend, "call", breaker="down") for _ in range(2)]
    behind_half = add(backend, "call", breaker="probing")
    behind_closed = add(backend, "call", breaker="healed")
    no_row = add(backend, "call", breaker="never-stored")  # no row: closed
    free = add(backend, "other")

    got = backend.claim(ClaimRequest("w1", 100, 60.0)).tasks
    assert same(ids(got), [behind_closed, no_row, free])
    by_id = {c.id: c.breaker for c in got}
    assert by_id[behind_closed] == "healed" and by_id[no_row] == "never-stored"
    assert plain(backend) == []

    # once it closes, its tasks are ordinary ones again
    close_breaker(backend, open_b)
    assert same(plain(backend, "w2"), behind_open)
    assert plain(backend, "w2") == []
    task = backend.get(behind_half)
    assert task is not None and task.status == "pending"


def test_a_deleted_breaker_row_counts_as_closed(backend: Backend) -> None:
    open_breaker(backend, "down")
    task_id = add(backend, "call", breaker="down")
    assert plain(backend) == []
    assert backend.delete_breaker("down")
    assert plain(backend) == [task_id]


def test_plain_claims_keep_priority_order_among_the_claimable(backend: Backend) -> None:
    open_breaker(backend, "down")
    low = add(backend, "t", priority=0)
    add(backend, "t", priority=9, breaker="down")
    add(backend, "t", priority=8, rate_key="k")
    high = add(backend, "t", priority=5)
    mid = add(backend, "t", priority=3, breaker="fine")
    assert plain(backend, limit=1) == [high]
    assert plain(backend, limit=1) == [mid]
    assert plain(backend, limit=5) == [low]


def test_probe_claim_takes_only_that_breakers_tasks_whatever_its_state(
    backend: Backend,
) -> None:
    open_breaker(backend, "down")
    first = add(backend, "call", breaker="down")
    second = add(backend, "call", breaker="down")
    add(backend, "call", breaker="other")
    add(backend, "other")
    open_breaker(backend, "other-open")
    add(backend, "call", breaker="other-open")

    got = backend.claim(ClaimRequest("prober", 1, 60.0, breaker="down")).tasks
    assert ids(got) == [first]
    assert got[0].breaker == "down"
    task = backend.get(first)
    assert task is not None and (task.status, task.locked_by, task.attempts) == (
        "processing",
        "prober",
        1,
    )
    assert probe(backend, "down") == [second]
    assert probe(backend, "down") == []
    # closed (no row) and half_open breakers are probed alike
    assert len(probe(backend, "other")) == 1
    assert probe(backend, "nothing-here") == []


def test_probe_claim_in_half_open(backend: Backend) -> None:
    open_breaker(backend, "b", state="half_open")
    task_id = add(backend, "call", breaker="b")
    assert plain(backend) == []
    assert probe(backend, "b") == [task_id]


def test_rate_claim_takes_only_that_keys_tasks(backend: Backend) -> None:
    a1 = add(backend, "call", rate_key="a", priority=0)
    a2 = add(backend, "call", rate_key="a", priority=5)
    b1 = add(backend, "call", rate_key="b")
    add(backend, "other")
    later = add(backend, "call", rate_key="a", delay=60)

    got = backend.claim(ClaimRequest("w1", 1, 60.0, rate_key="a")).tasks
    assert ids(got) == [a2]  # priority first, as everywhere
    assert got[0].rate_key == "a"
    assert rate(backend, "a", limit=10) == [a1]
    assert rate(backend, "a") == []  # the delayed one is not due
    assert rate(backend, "b") == [b1]
    assert rate(backend, "nope") == []
    task = backend.get(later)
    assert task is not None and task.status == "pending"
    task = backend.get(a1)
    assert task is not None and (task.status, task.attempts) == ("processing", 1)


def test_rate_claim_excludes_tasks_behind_a_blocked_breaker(backend: Backend) -> None:
    stored = open_breaker(backend, "down")
    blocked = add(backend, "call", rate_key="k", breaker="down")
    fine = add(backend, "call", rate_key="k", breaker="up")
    bare = add(backend, "call", rate_key="k")
    assert same(rate(backend, "k"), [fine, bare])
    assert rate(backend, "k") == []
    close_breaker(backend, stored)
    assert rate(backend, "k") == [blocked]


def test_rate_claim_respects_queues_and_paused_queues(backend: Backend) -> None:
    in_a = add(backend, "call", rate_key="k", queue="a")
    in_b = add(backend, "call", rate_key="k", queue="b")
    in_c = add(backend, "call", rate_key="k", queue="c")
    add(backend, "plain", queue="a")
    add(backend, "call", rate_key="other", queue="c")
    assert rate(backend, "k", queues=("a",)) == [in_a]
    assert rate(backend, "k", exclude=("b",)) == [in_c]
    assert rate(backend, "k") == [in_b]


def test_expired_leases_are_claimed_under_the_same_rules(backend: Backend) -> None:
    keyed = add(backend, "call", rate_key="k")
    behind = add(backend, "call", breaker="b")
    assert rate(backend, "k", worker="dies", lease=0.5) == [keyed]
    assert plain(backend, worker="dies", lease=0.5) == [behind]
    stored = open_breaker(backend, "b")
    time.sleep(0.7)
    # both leases ran out: a plain claim takes neither
    assert plain(backend, worker="w2") == []
    assert not backend.has_ready(None)
    # the rate claim and the probe claim do, as a new attempt
    (again,) = wait_for(lambda: backend.claim(ClaimRequest("w2", 10, 60.0, rate_key="k")).tasks)
    assert (again.id, again.attempts, again.rate_key) == (keyed, 2, "k")
    assert probe(backend, "b", worker="w2") == [behind]
    task = backend.get(behind)
    assert task is not None and (task.attempts, task.locked_by) == (2, "w2")
    close_breaker(backend, stored)


def test_an_expired_lease_behind_a_closed_breaker_is_claimed_plainly(backend: Backend) -> None:
    task_id = add(backend, "call", breaker="b")
    assert plain(backend, worker="dies", lease=0.5) == [task_id]
    time.sleep(0.7)
    assert plain(backend, worker="w2") == [task_id]


def test_has_ready_and_next_due_ignore_tasks_no_plain_claim_may_take(
    backend: Backend,
) -> None:
    stored = open_breaker(backend, "down")
    add(backend, "call", rate_key="k")
    add(backend, "call", rate_key="k", delay=5)
    add(backend, "call", breaker="down")
    add(backend, "call", breaker="down", delay=5)
    assert not backend.has_ready(None)
    assert backend.next_due(None) is None
    assert not backend.has_ready(("default",))
    assert backend.next_due(("default",)) is None

    later = add(backend, "other", delay=30)
    assert not backend.has_ready(None)
    due = backend.next_due(None)
    assert due is not None and 20 < due <= 30
    assert plain(backend) == []

    close_breaker(backend, stored)
    assert backend.has_ready(None)
    assert backend.next_due(None) == 0
    got = plain(backend)
    assert len(got) == 1 and later not in got


def test_has_ready_sees_a_task_behind_a_closed_breaker(backend: Backend) -> None:
    stored = open_breaker(backend, "b")
    task_id = add(backend, "call", breaker="b")
    assert not backend.has_ready(None)
    close_breaker(backend, stored)
    assert backend.has_ready(None)
    assert plain(backend) == [task_id]


def test_rate_keys_ready(backend: Backend) -> None:
    stored = open_breaker(backend, "down")
    add(backend, "call_a", rate_key="a")
    add(backend, "call_a", rate_key="a", delay=50)
    add(backend, "call_b", rate_key="b", delay=30)
    add(backend, "call_c", rate_key="c", breaker="down")  # blocked: not listed
    add(backend, "call_d", rate_key="d", queue="paused")
    add(backend, "plain")
    add(backend, "behind", breaker="down")

    ready = backend.rate_keys_ready(None)
    assert set(ready) == {"a", "b", "d"}
    assert ready["a"] == (0, "call_a")
    seconds, name = ready["b"]
    assert name == "call_b" and 20 < seconds <= 30
    assert ready["d"][1] == "call_d"

    assert set(backend.rate_keys_ready(None, ("paused",))) == {"a", "b"}
    assert set(backend.rate_keys_ready(("paused",))) == {"d"}
    assert backend.rate_keys_ready(("nothing",)) == {}

    close_breaker(backend, stored)
    assert set(backend.rate_keys_ready(None)) == {"a", "b", "c", "d"}
    assert backend.rate_keys_ready(None)["c"] == (0, "call_c")

    # claimed tasks are not ready; the key goes when nothing of it is left
    assert len(rate(backend, "a")) == 1
    seconds, _ = backend.rate_keys_ready(None)["a"]
    assert 40 < seconds <= 50
    assert len(rate(backend, "c")) == 1
    assert "c" not in backend.rate_keys_ready(None)


def test_rate_keys_ready_sees_an_expired_lease(backend: Backend) -> None:
    task_id = add(backend, "call", rate_key="k")
    assert rate(backend, "k", worker="dies", lease=0.5) == [task_id]
    assert backend.rate_keys_ready(None) == {}
    time.sleep(0.7)
    assert wait_for(lambda: backend.rate_keys_ready(None)) == {"k": (0, "call")}
    assert rate(backend, "k") == [task_id]


def test_rate_keys_ready_empty(backend: Backend) -> None:
    assert backend.rate_keys_ready(None) == {}
    add(backend, "plain")
    assert backend.rate_keys_ready(None) == {}


# --- deferred outcomes ---------------------------------------------------------------------


def test_deferred_goes_back_unrun_with_the_attempt_refunded(backend: Backend) -> None:
    task_id = add(backend, "call", {"n": 1})
    assert plain(backend) == [task_id]
    before = time.time()
    complete(backend, deferred=[DeferOutcome(task_id, delay=30)])
    task = backend.get(task_id)
    assert task is not None
    assert (task.status, task.attempts, task.locked_by, task.locked_until) == (
        "pending",
        0,
        None,
        None,
    )
    assert task.errors == () and task.last_error is None
    assert (task.breaker, task.rate_key) == (None, None)
    assert task.next_run is not None
    assert before + 25 < task.next_run.timestamp() <= time.time() + 30.5
    assert plain(backend) == []
    assert backend.counts().as_dict()["pending"] == 1


def test_deferred_without_delay_is_claimable_again(backend: Backend) -> None:
    task_id = add(backend, "call")
    plain(backend)
    complete(backend, retries=[retry(task_id, 0, "first try failed")])
    (again,) = backend.claim(ClaimRequest("w1", 10, 60.0)).tasks
    assert again.attempts == 2
    complete(backend, deferred=[DeferOutcome(task_id)])
    task = backend.get(task_id)
    assert task is not None and task.attempts == 1
    assert [e.message for e in task.errors] == ["first try failed"]  # nothing added
    (third,) = backend.claim(ClaimRequest("w1", 10, 60.0)).tasks
    assert (third.id, third.attempts) == (task_id, 2)


def test_deferred_writes_the_keys_so_later_claims_follow_them(backend: Backend) -> None:
    open_breaker(backend, "down")
    for_breaker = add(backend, "call")  # enqueued without keys (another program)
    for_rate = add(backend, "call")
    assert same(plain(backend), [for_breaker, for_rate])
    complete(
        backend,
        deferred=[
            DeferOutcome(for_breaker, 0.0, breaker="down"),
            DeferOutcome(for_rate, 0.0, rate_key="api"),
        ],
    )
    task = backend.get(for_breaker)
    assert task is not None and (task.breaker, task.rate_key, task.status) == (
        "down",
        None,
        "pending",
    )
    task = backend.get(for_rate)
    assert task is not None and (task.breaker, task.rate_key, task.status) == (
        None,
        "api",
        "pending",
    )
    assert plain(backend) == []
    assert not backend.has_ready(None)
    assert probe(backend, "down") == [for_breaker]
    assert backend.rate_keys_ready(None) == {"api": (0, "call")}
    assert rate(backend, "api") == [for_rate]


def test_deferred_without_keys_keeps_the_rows_keys(backend: Backend) -> None:
    task_id = add(backend, "call", rate_key="api", breaker="b")
    assert rate(backend, "api") == [task_id]
    complete(backend, deferred=[DeferOutcome(task_id, 0.0)])
    task = backend.get(task_id)
    assert task is not None and (task.breaker, task.rate_key) == ("b", "api")
    assert plain(backend) == []
    assert rate(backend, "api") == [task_id]


def test_deferred_touches_only_the_workers_own_leases(backend: Backend) -> None:
    mine = add(backend, "call")
    done = add(backend, "call")
    assert same(plain(backend, "w1"), [mine, done])
    complete(backend, "w1", done=[done])
    complete(backend, "w2", deferred=[DeferOutcome(mine, 0.0, breaker="x")])
    complete(backend, "w1", deferred=[DeferOutcome(done, 0.0, rate_key="y")])
    task = backend.get(mine)
    assert task is not None
    assert (task.status, task.locked_by, task.attempts, task.breaker) == (
        "processing",
        "w1",
        1,
        None,
    )
    task = backend.get(done)
    assert task is not None and (task.status, task.rate_key) == ("done", None)


def test_deferred_with_other_outcomes_in_one_batch(backend: Backend) -> None:
    a, b, c = (add(backend, "call") for _ in range(3))
    plain(backend)
    backend.complete(CompleteBatch("w1", done=[a], released=[b], deferred=[DeferOutcome(c, 60.0)]))
    assert [backend.get(t).status for t in (a, b, c)] == [  # type: ignore[union-attr]
        "done",
        "pending",
        "pending",
    ]
    assert plain(backend) == [b]


# --- complete(..., claim=) uses the plain-claim rules ---------------------------------------


def test_complete_with_a_plain_claim_skips_blocked_and_rate_keyed_tasks(
    backend: Backend,
) -> None:
    open_breaker(backend, "down")
    first = add(backend, "t")
    add(backend, "call", rate_key="k")
    add(backend, "call", breaker="down")
    free = add(backend, "t")
    assert plain(backend, limit=1) == [first]
    result = backend.complete(CompleteBatch("w1", done=[first]), ClaimRequest("w1", 10, 60.0))
    assert result is not None and ids(result.tasks) == [free]
    result = backend.complete(CompleteBatch("w1", done=[free]), ClaimRequest("w1", 10, 60.0))
    assert result is not None and result.tasks == []
    # an empty batch with a claim, too
    result = backend.complete(CompleteBatch("w1"), ClaimRequest("w1", 10, 60.0))
    assert result is not None and result.tasks == []


def test_complete_with_a_rate_claim(backend: Backend) -> None:
    first = add(backend, "t", rate_key="k")
    add(backend, "t")
    second = add(backend, "t", rate_key="k")
    add(backend, "t", rate_key="other")
    assert rate(backend, "k", limit=1) == [first]
    result = backend.complete(
        CompleteBatch("w1", done=[first]), ClaimRequest("w1", 10, 60.0, rate_key="k")
    )
    assert result is not None and ids(result.tasks) == [second]


# --- dead letters keep the keys ----------------------------------------------------------------


def test_dead_letters_keep_the_keys_and_a_requeue_restores_them(
    queue: lmq.Queue, backend: Backend
) -> None:
    task_id = add(backend, "call", breaker="crm", rate_key="crm-rate")
    assert rate(backend, "crm-rate", worker="killer") == [task_id]
    complete(backend, "killer", burials=[burial(task_id, task_name="call")])
    task = backend.get(task_id)
    assert task is not None and task.status == "dead" and task.dead_letter_id is not None
    assert backend.requeue_dead(DeadSelector(ids=[task.dead_letter_id])) == [task_id]
    task = backend.get(task_id)
    assert task is not None
    assert (task.status, task.breaker, task.rate_key) == ("pending", "crm", "crm-rate")
    assert plain(backend) == []
    assert rate(backend, "crm-rate") == [task_id]


def test_a_requeue_by_selector_keeps_a_breaker(backend: Backend) -> None:
    task_id = add(backend, "call", breaker="crm")
    assert plain(backend, "killer") == [task_id]
    complete(backend, "killer", burials=[burial(task_id, task_name="call")])
    assert backend.requeue_dead(DeadSelector(task_name="call")) == [task_id]
    open_breaker(backend, "crm")
    assert plain(backend) == []
    task = backend.get(task_id)
    assert task is not None and task.breaker == "crm"
    assert probe(backend, "crm") == [task_id]


# --- breaker rows: compare-and-set -----------------------------------------------------------


def _breaker(name: str = "crm", version: int = 1, **fields: Any) -> BreakerState:
    values: dict[str, Any] = {
        "state": "open",
        "failures": 5,
        "window_start": 1_700_000_000.5,
        "window_calls": 20,
        "window_failures": 11,
        "cooldown": 30.0,
        "opened_at": 1_700_000_010.25,
        "retry_at": 1_700_000_040.25,
        "probe_by": None,
        "probe_until": None,
        "trips": 3,
        "forced": False,
        "last_error": "ConnectionError: 503 from crm.example",
        "updated": 1_700_000_010.25,
    }
    values.update(fields)
    return BreakerState(name, version=version, **values)


def test_put_breaker_inserts_at_version_0_and_reads_back_every_field(backend: Backend) -> None:
    assert backend.breakers() == []
    state = _breaker()
    assert backend.put_breaker(state, 0)
    assert backend.breakers() == [state]
    half = _breaker(
        "other",
        state="half_open",
        opened_at=None,
        retry_at=None,
        probe_by="host:123:abc",
        probe_until=1_700_000_100.5,
        forced=True,
        last_error=None,
    )
    assert backend.put_breaker(half, 0)
    assert backend.breakers() == [state, half]  # by name
    assert backend.breakers(["other"]) == [half]
    assert backend.breakers(["other", "crm", "missing"]) == [state, half]
    assert backend.breakers(["missing"]) == []
    assert backend.breakers([]) == []


def test_put_breaker_compare_and_set(backend: Backend) -> None:
    v1 = _breaker(version=1)
    assert backend.put_breaker(v1, 0)
    assert not backend.put_breaker(_breaker(version=1, failures=99), 0)  # a row exists
    v2 = _breaker(version=2, state="half_open", probe_by="w1", probe_until=1.7e9)
    assert backend.put_breaker(v2, 1)
    assert not backend.put_breaker(_breaker(version=2, state="closed"), 1)  # stale
    assert not backend.put_breaker(_breaker(version=4, state="closed"), 3)  # from the future
    assert backend.breakers() == [v2]
    v3 = _breaker(version=3, state="closed", failures=0, retry_at=None, opened_at=None)
    assert backend.put_breaker(v3, 2)
    assert backend.breakers(["crm"]) == [v3]


def test_delete_breaker(backend: Backend) -> None:
    assert not backend.delete_breaker("crm")
    assert backend.put_breaker(_breaker(), 0)
    assert backend.delete_breaker("crm")
    assert not backend.delete_breaker("crm")
    assert backend.breakers() == []
    assert backend.put_breaker(_breaker(version=1, trips=0), 0)  # a fresh start
    assert backend.breakers()[0].trips == 0


def test_racing_breaker_puts_let_exactly_one_win(backend_url: str, backend: Backend) -> None:
    assert backend.put_breaker(_breaker(version=1, state="open"), 0)
    queues = [lmq.Queue(backend_url) for _ in range(6)]
    try:

        def work(i: int) -> bool:
            state = _breaker(version=2, state="half_open", probe_by=f"w{i}", probe_until=1.7e9)
            return queues[i].backend.put_breaker(state, 1)

        results = in_threads(6, work)
    finally:
        for q in queues:
            q.close()
    assert results.count(True) == 1
    (stored,) = backend.breakers()
    assert stored.version == 2 and stored.probe_by == f"w{results.index(True)}"


# --- rate-limit rows --------------------------------------------------------------------------


def test_put_rate_limit_compare_and_set(backend: Backend) -> None:
    assert backend.rate_limits() == []
    v1 = RateState("api", 10, per=1.0, burst=2, tat=1_700_000_000.125, updated=1.7e9, version=1)
    assert backend.put_rate_limit(v1, 0)
    assert not backend.put_rate_limit(replace(v1, tat=5.0), 0)
    assert backend.rate_limits() == [v1]
    v2 = replace(v1, tat=1_700_000_000.225, version=2)
    assert backend.put_rate_limit(v2, 1)
    assert not backend.put_rate_limit(replace(v1, tat=9.0, version=2), 1)
    other = RateState("alpha", 3, per=60.0, burst=1, tat=0.0, updated=1.7e9, version=1)
    assert backend.put_rate_limit(other, 0)
    assert backend.rate_limits() == [other, v2]
    assert backend.rate_limits(["api"]) == [v2]
    assert backend.rate_limits(["missing"]) == []


def test_racing_rate_limit_puts_let_exactly_one_win(backend_url: str, backend: Backend) -> None:
    queues = [lmq.Queue(backend_url) for _ in range(6)]
    try:

        def work(i: int) -> bool:
            state = RateState("api", 10, 1.0, 1, tat=1.7e9 + i, updated=1.7e9, version=1)
            return queues[i].backend.put_rate_limit(state, 0)

        results = in_threads(6, work)
    finally:
        for q in queues:
            q.close()
    assert results.count(True) == 1
    (stored,) = backend.rate_limits()
    assert stored.tat == 1.7e9 + results.index(True)


# --- schedules --------------------------------------------------------------------------------


def _schedule(name: str = "cleanup", version: int = 1, **fields: Any) -> ScheduleState:
    values: dict[str, Any] = {
        "task_name": "cleanup_task",
        "queue": "maintenance",
        "payload_json": '{"older_than": 30}',
        "priority": 2,
        "cron": "*/5 * * * *",
        "every": None,
        "timezone": "Europe/Berlin",
        "missed": "once",
        "next_tick": 1_700_000_100.0,
        "last_tick": None,
        "last_task_id": None,
        "paused": False,
        "declared": 1_700_000_000.5,
        "updated": 1_700_000_000.5,
    }
    values.update(fields)
    return ScheduleState(name, version=version, **values)


def _comparable(s: ScheduleState) -> tuple[Any, ...]:
    """A schedule with its payload decoded (a JSON column may re-format the text)."""
    return (replace(s, payload_json="{}"), json.loads(s.payload_json))


def test_put_schedule_compare_and_set_and_read_back(backend: Backend) -> None:
    assert backend.schedules() == []
    cron = _schedule()
    assert backend.put_schedule(cron, 0)
    assert not backend.put_schedule(replace(cron, priority=7), 0)
    task_id = add(backend, "cleanup_task")
    every = _schedule(
        "a-tick",
        cron=None,
        every=1.5,
        timezone="UTC",
        missed="all",
        next_tick=None,
        last_tick=1_700_000_000.0,
        last_task_id=task_id,
        paused=True,
        payload_json="{}",
        queue="default",
        priority=0,
    )
    assert backend.put_schedule(every, 0)
    assert [_comparable(s) for s in backend.schedules()] == [
        _comparable(every),
        _comparable(cron),
    ]  # by name
    v2 = replace(cron, paused=True, version=2, updated=1_700_000_001.0)
    assert backend.put_schedule(v2, 1)
    assert not backend.put_schedule(replace(cron, version=2), 1)
    stored = {s.name: s for s in backend.schedules()}
    assert _comparable(stored["cleanup"]) == _comparable(v2)
    assert stored["a-tick"].last_task_id == task_id


def test_delete_schedule(backend: Backend) -> None:
    assert not backend.delete_schedule("cleanup")
    assert backend.put_schedule(_schedule(), 0)
    assert backend.delete_schedule("cleanup")
    assert not backend.delete_schedule("cleanup")
    assert backend.schedules() == []
    assert backend.put_schedule(_schedule(), 0)


def _tick_task(tick: float, name: str = "cleanup", **fields: Any) -> NewTask:
    return NewTask(
        "cleanup_task",
        '{"older_than": 30}',
        queue="maintenance",
        priority=2,
        unique_key=f"lmq:schedule:{name}:{tick:.0f}",
        **fields,
    )


def test_fire_schedule_sets_the_row_and_enqueues_the_tick(backend: Backend) -> None:
    v1 = _schedule(next_tick=1_700_000_100.0)
    assert backend.put_schedule(v1, 0)
    fired = replace(v1, next_tick=1_700_000_400.0, last_tick=1_700_000_100.0, version=2)
    got = backend.fire_schedule(fired, 1, [_tick_task(1_700_000_100.0)])
    assert got is not None and len(got) == 1
    task = backend.get(got[0])
    assert task is not None
    assert (task.task_name, task.queue, task.priority, task.payload, task.status) == (
        "cleanup_task",
        "maintenance",
        2,
        {"older_than": 30},
        "pending",
    )
    assert task.unique_key == "lmq:schedule:cleanup:1700000100"
    (stored,) = backend.schedules()
    # the task's id is stored with the row, in the same step (no version of its own)
    assert (stored.version, stored.next_tick, stored.last_tick, stored.last_task_id) == (
        2,
        1_700_000_400.0,
        1_700_000_100.0,
        got[0],
    )


def test_a_lost_fire_enqueues_nothing(backend: Backend) -> None:
    v1 = _schedule()
    assert backend.put_schedule(v1, 0)
    fired = replace(v1, next_tick=1_700_000_400.0, version=2)
    assert backend.fire_schedule(fired, 1, [_tick_task(1_700_000_100.0)]) is not None
    # a second worker read version 1 too: its fire loses, with no task
    late = replace(v1, next_tick=1_700_000_400.0, version=2)
    assert backend.fire_schedule(late, 1, [NewTask("cleanup_task", "{}")]) is None
    assert backend.fire_schedule(late, 0, [NewTask("cleanup_task", "{}")]) is None
    assert len(all_tasks(backend)) == 1
    assert backend.counts().as_dict()["pending"] == 1
    assert backend.schedules()[0].version == 2


def test_fire_schedule_of_several_ticks_and_of_none(backend: Backend) -> None:
    v1 = _schedule(missed="all")
    assert backend.put_schedule(v1, 0)
    ticks = [1_700_000_100.0, 1_700_000_400.0, 1_700_000_700.0]
    got = backend.fire_schedule(
        replace(v1, next_tick=1_700_001_000.0, version=2), 1, [_tick_task(t) for t in ticks]
    )
    assert got is not None and len(set(got)) == 3
    assert backend.schedules()[0].last_task_id == got[-1]  # the last tick's task
    # a fire that only moves next_tick on (missed="skip" with a tick too old)
    assert backend.fire_schedule(replace(v1, next_tick=1.8e9, version=3), 2, []) == []
    assert backend.schedules()[0].next_tick == 1.8e9
    assert len(all_tasks(backend)) == 3


def test_fire_schedule_tasks_keep_their_keys(backend: Backend) -> None:
    v1 = _schedule()
    assert backend.put_schedule(v1, 0)
    got = backend.fire_schedule(
        replace(v1, version=2), 1, [_tick_task(1.7e9, breaker="crm", rate_key="crm")]
    )
    assert got is not None
    task = backend.get(got[0])
    assert task is not None and (task.breaker, task.rate_key) == ("crm", "crm")


def test_the_unique_key_guards_a_tick_a_second_time(backend: Backend) -> None:
    """Two fires of one tick (a schedule re-declared in between) give one task."""
    v1 = _schedule()
    assert backend.put_schedule(v1, 0)
    first = backend.fire_schedule(replace(v1, version=2), 1, [_tick_task(1.7e9)])
    second = backend.fire_schedule(replace(v1, version=3), 2, [_tick_task(1.7e9)])
    assert first is not None and second is not None and first == second
    assert len(all_tasks(backend)) == 1


@pytest.mark.parametrize("with_unique_key", [False, True], ids=["cas-only", "cas-and-key"])
def test_racing_fires_of_one_tick_give_exactly_one_task(
    backend_url: str, backend: Backend, with_unique_key: bool
) -> None:
    """Six workers read version 1 and fire the same tick at once: one wins, one task.

    Without a unique key only the compare-and-set stands between them and six tasks."""
    v1 = _schedule(every=1.0, cron=None, next_tick=1_700_000_001.0)
    assert backend.put_schedule(v1, 0)
    queues = [lmq.Queue(backend_url) for _ in range(6)]
    try:

        def work(i: int) -> list[TaskId] | None:
            task = _tick_task(1_700_000_001.0)
            if not with_unique_key:
                task = task._replace(unique_key=None, payload_json=json.dumps({"by": i}))
            fired = replace(v1, next_tick=1_700_000_002.0, last_tick=1_700_000_001.0, version=2)
            return queues[i].backend.fire_schedule(fired, 1, [task])

        results = in_threads(6, work)
    finally:
        for q in queues:
            q.close()
    won = [r for r in results if r is not None]
    assert len(won) == 1 and len(won[0]) == 1
    (task,) = all_tasks(backend)
    assert task.id == won[0][0]
    assert backend.schedules()[0].version == 2


def test_racing_fires_over_many_ticks(backend_url: str, backend: Backend) -> None:
    """Four workers fire ticks in a loop, re-reading on a lost CAS: every tick once."""
    assert backend.put_schedule(_schedule(every=1.0, cron=None, next_tick=0.0), 0)
    ticks = 20
    queues = [lmq.Queue(backend_url) for _ in range(4)]
    try:

        def work(i: int) -> int:
            b = queues[i].backend
            wins = 0
            while True:
                (s,) = b.schedules()
                assert s.next_tick is not None
                tick = s.next_tick
                if tick >= ticks:
                    return wins
                task = NewTask("cleanup_task", json.dumps({"tick": tick}))  # no unique key
                fired = replace(s, next_tick=tick + 1, last_tick=tick, version=s.version + 1)
                if b.fire_schedule(fired, s.version, [task]) is not None:
                    wins += 1

        results = in_threads(4, work)
    finally:
        for q in queues:
            q.close()
    assert sum(results) == ticks
    fired_ticks = sorted(t.payload["tick"] for t in all_tasks(backend))
    assert fired_ticks == [float(t) for t in range(ticks)]
