"""``lmq.Queue`` defaults, ``@queue.task`` and enqueue-time checks (no storage needed)."""

from __future__ import annotations

import inspect
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import lmq
from lmq.queue import TaskOptions
from lmq.retry import DEFAULT_BACKOFF

EMPTY = {"pending": 0, "processing": 0, "done": 0, "dead": 0}


@pytest.fixture
def queue() -> Any:
    with lmq.Queue("memory://") as q:
        yield q


# --- Queue ----------------------------------------------------------------------------


def test_queue_url_defaults_to_env_then_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMQ_URL", raising=False)
    assert lmq.Queue().url == "sqlite:///lmq.db"
    monkeypatch.setenv("LMQ_URL", "memory://")
    assert lmq.Queue().url == "memory://"
    assert lmq.Queue("sqlite:////tmp/other.db").url == "sqlite:////tmp/other.db"


def test_queue_refuses_a_malformed_url_at_once() -> None:
    with pytest.raises(lmq.ConfigError):
        lmq.Queue("not a url")


def test_queue_opens_nothing_until_used(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    queue = lmq.Queue(url)
    assert not (tmp_path / "q.db").exists()
    queue.counts()
    assert (tmp_path / "q.db").exists()
    queue.close()


def test_queue_starts_with_an_empty_registry() -> None:
    assert lmq.Queue("memory://").registry == {}


def test_use_url_switches_the_backend(queue: lmq.Queue) -> None:
    queue.enqueue("t")
    queue.use_url("memory://")
    assert queue.url == "memory://"
    assert queue.counts() == EMPTY


def test_worker_settings_defaults() -> None:
    s = lmq.WorkerSettings()
    assert (s.queues, s.concurrency, s.lease, s.burst) == (None, 10, 30.0, False)
    assert s.grace >= 10.0
    assert s.install_signal_handlers is True


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [({"concurrency": 0}, "concurrency"), ({"lease": 0.5}, "lease"), ({"grace": -1}, "grace")],
)
def test_worker_settings_are_checked(kwargs: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        lmq.WorkerSettings(**kwargs)


# --- @queue.task ----------------------------------------------------------------------


def test_task_without_arguments_uses_the_contract_defaults(queue: lmq.Queue) -> None:
    @queue.task
    def sync_product(product_id: int, sku: str) -> str:
        return f"{product_id}:{sku}"

    assert isinstance(sync_product, lmq.TaskFunction)
    assert sync_product.name == "sync_product"
    assert queue.registry["sync_product"] is sync_product
    assert sync_product.options == TaskOptions(
        name="sync_product",
        queue="default",
        priority=0,
        max_attempts=5,
        timeout=30.0,
        backoff=DEFAULT_BACKOFF,
        breaker=None,
    )
    assert sync_product(1, sku="A") == "1:A"  # calling it runs it directly
    assert sync_product.__name__ == "sync_product"
    assert not sync_product.is_async


def test_task_with_empty_parentheses(queue: lmq.Queue) -> None:
    @queue.task()
    def cleanup() -> None: ...

    assert cleanup.name == "cleanup"
    assert queue.registry == {"cleanup": cleanup}


def test_task_with_arguments(queue: lmq.Queue) -> None:
    backoff = lmq.Backoff(base=2.0)

    @queue.task(
        name="products.sync",
        max_attempts=2,
        timeout=None,
        queue="slow",
        priority=7,
        breaker="shop-api",
        backoff=backoff,
    )
    async def sync(product_id: int) -> None:
        """Docs."""

    assert sync.name == "products.sync"
    assert set(queue.registry) == {"products.sync"}
    o = sync.options
    assert (o.max_attempts, o.timeout, o.queue, o.priority, o.breaker, o.backoff) == (
        2,
        None,
        "slow",
        7,
        "shop-api",
        backoff,
    )
    assert sync.is_async
    assert sync.__doc__ == "Docs."
    assert inspect.iscoroutinefunction(sync.fn)


def test_duplicate_task_names_are_refused(queue: lmq.Queue) -> None:
    @queue.task
    def job() -> None: ...

    def other() -> None: ...

    with pytest.raises(lmq.ConfigError, match="'job' is already registered"):
        queue.task(name="job")(other)
    assert queue.registry["job"] is job


def test_registering_the_same_function_again_is_harmless(queue: lmq.Queue) -> None:
    def job() -> None: ...

    queue.task(job)
    queue.task(job)  # e.g. a module imported twice
    assert list(queue.registry) == ["job"]


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
    ],
)
def test_task_options_are_checked(queue: lmq.Queue, kwargs: dict[str, Any], why: str) -> None:
    with pytest.raises(lmq.ConfigError, match=why):
        queue.task(**kwargs)


def test_each_queue_has_its_own_registry() -> None:
    a, b = lmq.Queue("memory://"), lmq.Queue("memory://")

    @a.task
    def job() -> None: ...

    b.task(name="job")(lambda: None)  # no clash: another queue
    assert a.registry["job"] is job
    assert b.registry["job"] is not job


# --- enqueue through a task -----------------------------------------------------------


def test_task_enqueue_stores_its_kwargs_with_the_tasks_defaults(queue: lmq.Queue) -> None:
    @queue.task(queue="slow", priority=3, max_attempts=2)
    def sync_product(product_id: int, sku: str = "x") -> None: ...

    task_id = sync_product.enqueue(product_id=1, sku="A-1")
    task = queue.get(task_id)
    assert task is not None
    assert (task.task_name, task.payload, task.queue, task.priority) == (
        "sync_product",
        {"product_id": 1, "sku": "A-1"},
        "slow",
        3,
    )
    assert task.max_attempts is None  # the handler's declaration applies when it runs
    assert sync_product.enqueue(product_id=2) != task_id  # a default may be left out


@pytest.mark.parametrize(
    ("args", "kwargs", "why"),
    [
        ((), {}, "missing a required argument: 'product_id'"),
        ((), {"product_id": 1, "colour": "red"}, "unexpected keyword argument 'colour'"),
        ((1,), {}, "keyword arguments only"),
    ],
)
def test_task_enqueue_checks_the_signature(
    queue: lmq.Queue, args: tuple[Any, ...], kwargs: dict[str, Any], why: str
) -> None:
    @queue.task
    def sync_product(product_id: int, sku: str = "x") -> None: ...

    with pytest.raises(TypeError, match=why):
        sync_product.enqueue(*args, **kwargs)
    assert queue.counts() == EMPTY


def test_task_enqueue_refuses_what_json_cannot_hold(queue: lmq.Queue) -> None:
    @queue.task
    def job(when: Any) -> None: ...

    with pytest.raises(TypeError, match="'when'"):
        job.enqueue(when=datetime.now())
    assert queue.counts() == EMPTY


def test_var_keyword_handler_accepts_any_payload(queue: lmq.Queue) -> None:
    @queue.task
    def anything(**kwargs: Any) -> None: ...

    assert anything.accepts_any
    assert queue.get(anything.enqueue(a=1, b=[2])) is not None


def test_queue_enqueue_takes_registered_defaults_and_explicit_overrides(
    queue: lmq.Queue,
) -> None:
    @queue.task(queue="slow", priority=3)
    def job() -> None: ...

    a = queue.get(queue.enqueue("job"))
    b = queue.get(queue.enqueue("job", queue="fast", priority=-1, max_attempts=9))
    c = queue.get(queue.enqueue("unregistered"))
    assert a is not None and b is not None and c is not None
    assert (a.queue, a.priority, a.max_attempts) == ("slow", 3, None)
    assert (b.queue, b.priority, b.max_attempts) == ("fast", -1, 9)
    assert (c.queue, c.priority, c.max_attempts) == ("default", 0, None)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"task_name": ""}, TypeError),
        ({"task_name": 5}, TypeError),
        ({"delay": -1}, ValueError),
        ({"run_at": datetime.now() + timedelta(hours=1)}, ValueError),  # naive
        ({"max_attempts": 0}, ValueError),
    ],
)
def test_enqueue_checks_its_options(
    queue: lmq.Queue, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    kwargs = {"task_name": "t", **kwargs}
    with pytest.raises(error):
        queue.enqueue(**kwargs)
    with pytest.raises(error):
        queue.enqueue_many([(kwargs.pop("task_name"), {})], **kwargs)
    assert queue.counts() == EMPTY
