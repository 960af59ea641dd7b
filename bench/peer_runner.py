"""One peer's worker in its own process, counting the tasks it runs (see peers.py).

    python bench/peer_runner.py SYSTEM --url URL --target N --out DIR [--opt K=V ...]

SYSTEM is pgqueuer, procrastinate, saq, huey or dramatiq.  The handlers are the peers'
own decorated functions: ``noop`` (the drain; ``async def`` where the peer has async
handlers) and ``pickup`` (records ``time.time() - t``; warm-up tasks carry ``w``).  Once
the worker is started the runner writes DIR/ready; when ``--target`` tasks have run it
(or ``--max-seconds`` after the first task, for a slow peer) writes DIR/result.json
(first and last handler call, count, latencies) atomically and
stops the peer's worker the peer's own way.  Producers import the app builders from here
too, so both sides name the tasks identically.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

_now = time.time


class Stats:
    """Thread-safe task counter; ``done`` is set when ``target`` tasks have run."""

    def __init__(self, target: int, max_seconds: float = 1e9) -> None:
        self.target = target
        self.max_seconds = max_seconds
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies: list[float] = []
        self.done = threading.Event()
        self._lock = threading.Lock()

    def hit(self, latency: float | None = None) -> None:
        now = _now()
        with self._lock:
            if not self.first:
                self.first = now
            self.last = now
            if latency is not None:
                self.latencies.append(latency)
            self.count += 1
            if self.count >= self.target:
                self.done.set()

    def write(self, out: Path) -> None:
        with self._lock:
            data = {
                "first": self.first,
                "last": self.last,
                "count": self.count,
                "latencies": self.latencies,
                "done_at": _now(),
            }
        tmp = out / "result.json.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, out / "result.json")

    def _over(self) -> bool:
        return bool(self.first) and _now() - self.first > self.max_seconds

    async def wait_async(self) -> None:
        """Until ``target`` tasks ran, or ``max_seconds`` passed since the first one."""
        while not self.done.is_set() and not self._over():
            await asyncio.sleep(0.002)

    def wait(self) -> None:
        while not self.done.wait(0.01) and not self._over():
            pass


STATS = Stats(0)


def _pickup(t: float, w: int = 0) -> None:
    STATS.hit(None if w else _now() - t)


# --- the peers' apps (shared by producer and worker) ----------------------------------------


def pgqueuer_app(conn: Any) -> Any:
    from pgqueuer import PgQueuer

    pgq = PgQueuer.from_asyncpg_connection(conn)

    @pgq.entrypoint("noop")
    async def noop(job: Any) -> None:
        STATS.hit()

    @pgq.entrypoint("pickup")
    async def pickup(job: Any) -> None:
        _pickup(**json.loads(job.payload))

    return pgq


def procrastinate_app(dsn: str) -> Any:
    from procrastinate import App, PsycopgConnector

    app = App(connector=PsycopgConnector(conninfo=dsn))

    @app.task(name="noop")
    async def noop(n: int) -> None:
        STATS.hit()

    @app.task(name="pickup")
    async def pickup(t: float, w: int = 0) -> None:
        _pickup(t, w)

    return app


def saq_queue(url: str) -> Any:
    from saq import Queue

    return Queue.from_url(url, name="bench")


async def _saq_noop(ctx: Any, *, n: int) -> None:
    STATS.hit()


async def _saq_pickup(ctx: Any, *, t: float, w: int = 0) -> None:
    _pickup(t, w)


SAQ_FUNCTIONS = [("noop", _saq_noop), ("pickup", _saq_pickup)]


def huey_app(url: str) -> Any:
    from huey import RedisHuey

    huey = RedisHuey("lmqbench", url=url, results=False, utc=True)

    @huey.task(name="noop")
    def noop(n: int) -> None:
        STATS.hit()

    @huey.task(name="pickup")
    def pickup(t: float, w: int = 0) -> None:
        _pickup(t, w)

    huey.bench_tasks = {"noop": noop, "pickup": pickup}  # type: ignore[attr-defined]
    return huey


def dramatiq_app(url: str) -> dict[str, Any]:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=url, namespace="lmqbench")
    dramatiq.set_broker(broker)

    @dramatiq.actor(actor_name="noop", max_retries=0, broker=broker)
    def noop(n: int) -> None:
        STATS.hit()

    @dramatiq.actor(actor_name="pickup", max_retries=0, broker=broker)
    def pickup(t: float, w: int = 0) -> None:
        _pickup(t, w)

    return {"broker": broker, "noop": noop, "pickup": pickup}


# --- the workers ----------------------------------------------------------------------------


async def _run_pgqueuer(url: str, opts: dict[str, str], out: Path) -> None:
    import asyncpg
    from pgqueuer.types import QueueExecutionMode

    conn = await asyncpg.connect(url)
    pgq = pgqueuer_app(conn)
    run = asyncio.create_task(
        pgq.run(batch_size=int(opts.get("batch_size", 10)), mode=QueueExecutionMode.continuous)
    )
    (out / "ready").write_text("1")
    await STATS.wait_async()
    STATS.write(out)
    pgq.shutdown.set()
    pgq.qm.shutdown.set()
    await asyncio.wait_for(run, 30)


async def _run_procrastinate(url: str, opts: dict[str, str], out: Path) -> None:
    app = procrastinate_app(url)
    async with app.open_async():
        run = asyncio.create_task(
            app.run_worker_async(
                concurrency=int(opts.get("concurrency", 1)),
                wait=True,
                install_signal_handlers=False,
                listen_notify=True,
            )
        )
        (out / "ready").write_text("1")
        await STATS.wait_async()
        STATS.write(out)
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(run, 30)


async def _run_saq(url: str, opts: dict[str, str], out: Path) -> None:
    from saq import Worker

    queue = saq_queue(url)
    worker = Worker(queue, functions=SAQ_FUNCTIONS, concurrency=int(opts.get("concurrency", 10)))
    run = asyncio.create_task(worker.start())
    (out / "ready").write_text("1")
    await STATS.wait_async()
    STATS.write(out)
    await worker.stop()
    run.cancel()
    await queue.disconnect()


def _run_huey(url: str, opts: dict[str, str], out: Path) -> None:
    huey = huey_app(url)
    consumer = huey.create_consumer(
        workers=int(opts.get("workers", 1)),
        worker_type="thread",
        periodic=False,
        initial_delay=0.005,
        backoff=1.0,
        max_delay=0.005,
    )
    consumer.start()
    (out / "ready").write_text("1")
    STATS.wait()
    STATS.write(out)
    consumer.stop(graceful=True)


def _run_dramatiq(url: str, opts: dict[str, str], out: Path) -> None:
    from dramatiq import Worker

    app = dramatiq_app(url)
    worker = Worker(
        app["broker"],
        worker_threads=int(opts.get("threads", 8)),
        worker_timeout=int(opts.get("timeout_ms", 100)),
    )
    worker.start()
    (out / "ready").write_text("1")
    STATS.wait()
    STATS.write(out)
    worker.stop(timeout=10_000)


def main() -> None:
    global STATS  # noqa: PLW0603 - the handlers read the module's counter
    ap = argparse.ArgumentParser()
    ap.add_argument("system", choices=["pgqueuer", "procrastinate", "saq", "huey", "dramatiq"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--target", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-seconds", type=float, default=1e9,
                    help="stop this long after the first task even if --target is not reached")
    ap.add_argument("--opt", action="append", default=[], help="K=V, the peer's tuning")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    opts = dict(o.split("=", 1) for o in args.opt)
    STATS = Stats(args.target, args.max_seconds)
    if args.system == "pgqueuer":
        asyncio.run(_run_pgqueuer(args.url, opts, args.out))
    elif args.system == "procrastinate":
        asyncio.run(_run_procrastinate(args.url, opts, args.out))
    elif args.system == "saq":
        asyncio.run(_run_saq(args.url, opts, args.out))
    elif args.system == "huey":
        _run_huey(args.url, opts, args.out)
    else:
        _run_dramatiq(args.url, opts, args.out)
    os._exit(0)  # some peers leave non-daemon threads behind; the result is written


if __name__ == "__main__":
    # run as the module ``peer_runner`` so that task names (huey's are module-qualified)
    # match the producer's, which imports this file under that name
    import peer_runner

    peer_runner.main()
