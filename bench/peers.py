"""The server backends' peers, producer side: set up, fill, trickle, tear down.

Each peer's worker runs in its own process (peer_runner.py; bare_pg.py for the bare
loop); the functions at the bottom time it the same way for every peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import peer_runner
import serverdb
from common import latency_figures, say, trickle
from procs import (
    BENCH_DIR,
    BenchError,
    child_env,
    children_cpu,
    python_cmd,
    server_cpu,
    spawn,
    stop,
    wait_for_file,
)


class Peer:
    name = ""
    backend = ""
    about = ""  # how it is configured, for the notes
    bulk_api = ""  # its batch enqueue call, "" when it has none
    variants: list[dict[str, str]] = [{}]  # worker tunings tried for the drain
    pickup_opts: dict[str, str] = {}

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def setup(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def fill(self, n: int, chunk: int) -> float:
        """Enqueue n no-op tasks (batch API if any, else one call each); seconds taken."""
        raise NotImplementedError

    def enqueue_pickup(self, t: float, w: int) -> None:
        raise NotImplementedError

    def worker_cmd(self, target: int, out: Path, opts: dict[str, str],
                   max_seconds: float = 1e9) -> list[str]:  # fmt: skip
        cmd = python_cmd(str(BENCH_DIR / "peer_runner.py"), self.name, "--url", self.url,
                         "--target", str(target), "--out", str(out),
                         "--max-seconds", str(max_seconds))  # fmt: skip
        for k, v in opts.items():
            cmd += ["--opt", f"{k}={v}"]
        return cmd


# --- PostgreSQL -----------------------------------------------------------------------------


class PgQueuer(Peer):
    name = "pgqueuer"
    about = ("pgqueuer on asyncpg, `QueueManager.run(batch_size=…)` (its default is 10); "
             "jobs are deleted when done and logged to `pgqueuer_log` as it ships")  # fmt: skip
    bulk_api = "`Queries.enqueue(list_of_entrypoints, payloads, priorities)`"
    variants = [{"batch_size": "10"}, {"batch_size": "100"}]
    pickup_opts = {"batch_size": "10"}
    db = "lmqbench_pgqueuer"

    def setup(self) -> None:
        import asyncpg
        from pgqueuer import Queries

        self.url = serverdb.pg_fresh_db(self.server_url, self.db)

        async def connect() -> Any:
            conn = await asyncpg.connect(self.url)
            q = Queries.from_asyncpg_connection(conn)
            await q.install()
            return conn, q

        self.conn, self.q = self.run(connect())

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.conn.close())
        super().teardown()
        serverdb.pg_drop_db(self.server_url, self.db)

    def fill(self, n: int, chunk: int) -> float:
        t = time.perf_counter()
        for start in range(0, n, chunk):
            k = min(chunk, n - start)
            payloads = [json.dumps({"n": i}).encode() for i in range(start, start + k)]
            self.run(self.q.enqueue(["noop"] * k, payloads, [0] * k))
        return time.perf_counter() - t

    def enqueue_pickup(self, t: float, w: int) -> None:
        self.run(self.q.enqueue("pickup", json.dumps({"t": t, "w": w}).encode()))


class Procrastinate(Peer):
    name = "procrastinate"
    about = ("procrastinate on psycopg 3, `run_worker_async(concurrency=…, "
             "listen_notify=True)` (its default concurrency is 1)")  # fmt: skip
    bulk_api = "`task.batch_defer_async(*kwargs)`"
    variants = [{"concurrency": "10"}]  # 1 and 50 were slower in trial runs
    pickup_opts = {"concurrency": "10"}
    db = "lmqbench_procrastinate"

    def setup(self) -> None:
        self.url = serverdb.pg_fresh_db(self.server_url, self.db)
        self.app = peer_runner.procrastinate_app(serverdb.plain(self.url))
        self.stack = contextlib.AsyncExitStack()
        self.run(self.stack.enter_async_context(self.app.open_async()))
        self.run(self.app.schema_manager.apply_schema_async())

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.stack.aclose())
        super().teardown()
        serverdb.pg_drop_db(self.server_url, self.db)

    def fill(self, n: int, chunk: int) -> float:
        task = self.app.tasks["noop"]
        t = time.perf_counter()
        for start in range(0, n, chunk):
            kwargs = [{"n": i} for i in range(start, min(n, start + chunk))]
            self.run(task.batch_defer_async(*kwargs))
        return time.perf_counter() - t

    def enqueue_pickup(self, t: float, w: int) -> None:
        self.run(self.app.tasks["pickup"].defer_async(t=t, w=w))


class BarePg(Peer):
    name = "bare loop"
    bulk_api = "COPY"
    about = ("`bench/bare_pg.py`: no library: claim 500 with `FOR UPDATE SKIP LOCKED`, "
             "`async def` no-op each, acknowledge the 500 in one UPDATE; rows filled by COPY")
    db = "lmqbench_bare"

    def setup(self) -> None:
        import psycopg

        import bare_pg

        self.url = serverdb.pg_fresh_db(self.server_url, self.db)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(bare_pg.SCHEMA)

    def teardown(self) -> None:
        super().teardown()
        serverdb.pg_drop_db(self.server_url, self.db)

    def fill(self, n: int, chunk: int) -> float:
        import psycopg

        t = time.perf_counter()
        with (
            psycopg.connect(self.url) as conn,
            conn.cursor() as cur,
            cur.copy("COPY bare_tasks (payload) FROM STDIN") as copy,
        ):
            for i in range(n):
                copy.write_row((f'{{"n": {i}}}',))
        return time.perf_counter() - t

    def worker_cmd(self, target: int, out: Path, opts: dict[str, str],
                   max_seconds: float = 1e9) -> list[str]:  # fmt: skip
        return python_cmd(str(BENCH_DIR / "bare_pg.py"), self.url, str(out))


# --- Redis ----------------------------------------------------------------------------------


class Saq(Peer):
    name = "saq"
    backend = "redis"
    about = "SAQ's `Worker(queue, functions, concurrency=…)` (its default is 10), async handlers"
    variants = [{"concurrency": "10"}, {"concurrency": "40"}]  # 100 exhausts its Redis pool
    pickup_opts = {"concurrency": "10"}

    def setup(self) -> None:
        self.url = serverdb.redis_claim_peer_db(self.server_url)
        self.queue = peer_runner.saq_queue(self.url)
        self.run(self.queue.connect())

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.queue.disconnect())
        super().teardown()
        serverdb.redis_release_peer_db(self.server_url)

    def fill(self, n: int, chunk: int) -> float:
        q = self.queue

        async def go() -> None:
            for start in range(0, n, 1000):
                await asyncio.gather(
                    *(q.enqueue("noop", n=i) for i in range(start, min(n, start + 1000)))
                )

        t = time.perf_counter()
        self.run(go())
        return time.perf_counter() - t

    def enqueue_pickup(self, t: float, w: int) -> None:
        self.run(self.queue.enqueue("pickup", t=t, w=w))


class HueyRedis(Peer):
    name = "huey"
    backend = "redis"
    about = ("huey's `RedisHuey` (blocking pops), `results=False`, consumer with "
             "`-k thread -w …`, `def` tasks (huey has no async tasks)")  # fmt: skip
    variants = [{"workers": "1"}, {"workers": "4"}]
    pickup_opts = {"workers": "1"}

    def setup(self) -> None:
        self.url = serverdb.redis_claim_peer_db(self.server_url)
        self.huey = peer_runner.huey_app(self.url)

    def teardown(self) -> None:
        super().teardown()
        serverdb.redis_release_peer_db(self.server_url)

    def fill(self, n: int, chunk: int) -> float:
        noop = self.huey.bench_tasks["noop"]
        t = time.perf_counter()
        for i in range(n):
            noop(i)
        return time.perf_counter() - t

    def enqueue_pickup(self, t: float, w: int) -> None:
        self.huey.bench_tasks["pickup"](t, w)


class Dramatiq(Peer):
    name = "dramatiq"
    backend = "redis"
    about = ("Dramatiq's `RedisBroker`, `Worker(broker, worker_threads=…, worker_timeout=100)` "
             "(default threads 8, timeout 1000 ms), `def` actors, `max_retries=0`")
    variants = [{"threads": "8"}]  # 1 thread was 5x slower in trial runs
    pickup_opts = {"threads": "8"}

    def setup(self) -> None:
        self.url = serverdb.redis_claim_peer_db(self.server_url)
        self.app = peer_runner.dramatiq_app(self.url)

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.app["broker"].close()
        super().teardown()
        serverdb.redis_release_peer_db(self.server_url)

    def fill(self, n: int, chunk: int) -> float:
        noop = self.app["noop"]
        t = time.perf_counter()
        for i in range(n):
            noop.send(i)
        return time.perf_counter() - t

    def enqueue_pickup(self, t: float, w: int) -> None:
        self.app["pickup"].send(t, w)


# --- the measurements, the same for every peer ----------------------------------------------


def _wait_result(out: Path, proc: Any, log: Path, timeout: float) -> dict[str, Any]:
    return json.loads(wait_for_file(out / "result.json", timeout, proc, log))  # type: ignore[no-any-return]


def drain(peer: Peer, d: Path, n: int, chunk: int, opts: dict[str, str],
          timeout: float, max_seconds: float) -> dict[str, float]:  # fmt: skip
    """Fill n tasks, then time one worker process from spawn to its n-th task (or to its
    last task ``max_seconds`` after the first, for a slow peer)."""
    peer.setup()
    try:
        fill = peer.fill(n, chunk)
        out = d / ("drain-" + "-".join(f"{k}{v}" for k, v in opts.items()))
        out.mkdir()
        log = out / "worker.log"
        cmd = peer.worker_cmd(n, out, opts, max_seconds)
        cpu0, srv0, t0 = children_cpu(), server_cpu(peer.backend), time.time()
        proc = spawn(cmd, log=log, env=child_env(), cwd=out)
        try:
            res = _wait_result(out, proc, log, timeout)
            srv1 = server_cpu(peer.backend)
        finally:
            stop(proc)
        cpu = children_cpu() - cpu0
    finally:
        peer.teardown()
    ran = res["count"]
    if ran < n and ran < max_seconds:  # fewer than one task a second: not a drain
        raise BenchError(f"{peer.name} ran {ran} of {n} tasks; see {log}")
    first, last = res["first"], res["last"]
    out_ = {
        "drain": ran / (last - t0),
        "drain_run": ran / (last - first) if last > first else float("nan"),
        "fill": n / fill,
        "startup": first - t0,
        "ran": ran,
        "cpu": cpu / ran * 1e6,
    }
    if srv0 is not None and srv1 is not None:
        out_["server_cpu"] = (srv1 - srv0) / ran * 1e6
    say(f"  {peer.name} {opts}: {out_['drain']:,.0f}/s spawn to last task, "
        f"{out_['drain_run']:,.0f}/s first to last; filled at {out_['fill']:,.0f}/s")  # fmt: skip
    return out_


def pickup(peer: Peer, d: Path, samples: int, interval: float, timeout: float,
           warm: int = 5) -> tuple[float, float]:  # fmt: skip
    peer.setup()
    try:
        out = d / "pickup"
        out.mkdir()
        log = out / "worker.log"
        proc = spawn(peer.worker_cmd(warm + samples, out, peer.pickup_opts), log=log,
                     env=child_env(), cwd=out)  # fmt: skip
        try:
            wait_for_file(out / "ready", 60, proc, log)
            time.sleep(1.0)
            for _ in range(warm):
                peer.enqueue_pickup(time.time(), 1)
                time.sleep(0.1)
            trickle(samples, interval, lambda t: peer.enqueue_pickup(t, 0))
            res = _wait_result(out, proc, log, timeout)
        finally:
            stop(proc)
    finally:
        peer.teardown()
    lat = res["latencies"]
    if len(lat) != samples:
        raise BenchError(f"{peer.name}: {len(lat)} latencies, expected {samples}; see {log}")
    p50, p99 = latency_figures(lat)
    say(f"  {peer.name} pickup: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    return p50, p99


def bulk(peer: Peer, n: int, chunk: int) -> float:
    peer.setup()
    try:
        secs = peer.fill(n, chunk)
    finally:
        peer.teardown()
    say(f"  {peer.name} bulk enqueue: {n / secs:,.0f}/s")
    return n / secs
