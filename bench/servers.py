"""The server backends: lmq against its peers on the same server, in the same run.

    bench/run.sh --backend postgresql|redis|mysql|all [--quick] [--only lmq|peers]
                 [--workloads drain,pickup,bulk,claim,claim_done] [--json FILE] [--docs FILE]

PostgreSQL: lmq, pgqueuer, procrastinate and a bare psycopg loop (a reference, no
library).  Redis: lmq, SAQ, huey's RedisHuey, Dramatiq.  MariaDB/MySQL: lmq alone.  One
worker process each.  Results go to a JSON file (bench/results/ by default) and, with
--docs, into the server section of docs/benchmarks.md (between the markers below).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import signal
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lmq_server
import peers
import serverdb
from common import say
from procs import BENCH_DIR
from report import render_backend, server_table, server_targets


def _markers(backend: str) -> tuple[str, str]:
    return (f"<!-- bench --backend {backend}: figures begin (bench/run.sh --docs rewrites "
            "down to the end marker) -->", f"<!-- bench --backend {backend}: figures end -->")


SECTION = "## Server backends"

WORKLOADS = ("drain", "pickup", "bulk", "claim", "claim_done")


@dataclass(frozen=True)
class ServerSizes:
    drain: int = 100_000
    concurrency: int = 500  # lmq worker -c
    samples: int = 200  # pickup
    interval: float = 0.02
    bulk: int = 100_000
    chunk: int = 10_000
    loop: int = 2_000  # lmq single enqueues timed
    claim_small: int = 1_000
    claim_large: int = 1_000_000
    claim_limit: int = 250
    claim_done: int = 1_000_000  # finished rows beside claim_small pending (retention)
    claims: int = 40
    timeout: float = 300.0  # any one worker run
    measurement: float = 900.0  # any one measurement, its fill included (SIGALRM)
    peer_max_seconds: float = 40.0  # a slower peer's drain stops this long after its first task


QUICK = ServerSizes(drain=5_000, samples=50, bulk=20_000, loop=500, claim_large=100_000,
                    claim_done=100_000, claims=5, timeout=120.0, measurement=300.0,
                    peer_max_seconds=10.0)  # fmt: skip


@dataclass(frozen=True)
class BackendSpec:
    title: str
    module: str  # lmq's backend module
    env: str  # env var with the server's URL
    default: str
    peers: tuple[type[peers.Peer], ...]


BACKENDS = {
    "postgresql": BackendSpec(
        "PostgreSQL",
        "lmq.backends.postgres",
        "LMQ_TEST_POSTGRES_URL",
        "postgresql://root@127.0.0.1:5432/test",
        (peers.PgQueuer, peers.Procrastinate, peers.BarePg),
    ),
    "redis": BackendSpec(
        "Redis",
        "lmq.backends.redis",
        "LMQ_TEST_REDIS_URL",
        "redis://127.0.0.1:6379/0",
        (peers.Saq, peers.HueyRedis, peers.Dramatiq),
    ),
    "mysql": BackendSpec(
        "MariaDB / MySQL",
        "lmq.backends.mysql",
        "LMQ_TEST_MYSQL_URL",
        "mysql://root@127.0.0.1:3306/test",
        (),
    ),
}

METHOD = """\
- One worker process per system, on the same server, one after another in one run.
  lmq: `lmq worker --app benchapp -c 500 -p 1 --burst` (the `async def` no-op of the SQLite
  section); each peer with its own worker API in `bench/peer_runner.py`, the same no-op
  (`async def` where the peer has async tasks, `def` for huey and Dramatiq), tried with a
  couple of its own settings (the best is shown, all are in the notes).
- Drain: N tasks enqueued first, then the worker started. lmq's figure is from spawning the
  process until it exited by itself (start-up, imports, last acknowledgement and shutdown
  included); a peer's is from spawning its process until its N-th handler call (its
  shutdown not counted). "First task to last" divides by the time between the first and
  the N-th handler call. lmq's queue is checked afterwards: N tasks `done`.
- Worker CPU time per task: the worker process's user + system CPU time over its whole
  life (start-up included; from `getrusage(RUSAGE_CHILDREN)` around it), divided by the
  tasks it ran. The machine is shared (other jobs run beside the bench, see the load
  averages), which moves the rates from run to run; CPU per task moves much less.
  Server CPU time per task: the MariaDB or Redis server process's CPU time over the same
  span (its other clients included, so an upper bound); PostgreSQL's per-connection
  processes exit with their client, so it has no such figure.
- Pickup: the worker idle, 5 warm-up tasks, then one task every 20 ms; latency = the
  handler's `time.time()` minus the producer's `time.time()` just before its enqueue call.
- Bulk: `queue.enqueue_many` in calls of 10,000 (lmq); the peer's batch API where it has
  one (the bare loop: COPY). "One call per task": lmq times single `queue.enqueue` calls;
  a peer without a batch API shows the rate of its drain's fill (one call per task; SAQ's
  calls 1,000 at a time with `asyncio.gather`).
- Claim cost (lmq only): `backend.claim(ClaimRequest(limit=250))` with 1,000 and with
  1,000,000 ready tasks (filled by `enqueue_many`; then VACUUM ANALYZE on PostgreSQL,
  ANALYZE TABLE on MariaDB, and a 2 s pause), median of 40 claims after 2 warm-ups;
  each claim's tasks are released at once (not timed), so the backlog stays the same.
- Claim cost with finished rows (lmq only): the same claim with 1,000 ready tasks, in a
  fresh queue and in one that first had 1,000,000 tasks enqueued and run to `done`
  through `claim` + `complete` (10,000 at a time, as a worker acknowledges them, so the
  rows, indexes and counters are the real ones; the retention pruner is not running).
- Isolation: PostgreSQL and MariaDB: each system its own database (`lmqbench_lmq`,
  `lmqbench_pgqueuer`, `lmqbench_procrastinate`, `lmqbench_bare`), created afresh before
  each measurement and dropped after it; lmq also gets a fresh `?prefix=`. Redis: lmq a
  fresh key prefix in db 12 (its keys deleted afterwards); the peers, whose key names are
  fixed, the dedicated db 13, emptied with FLUSHDB (that db only, never FLUSHALL) before
  and after each peer; the bench refuses to run if db 13 holds keys it did not write."""


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _server(backend: str, url: str) -> str:
    if backend == "postgresql":
        return f"PostgreSQL {serverdb.pg_server_version(url)}"
    if backend == "mysql":
        return f"MariaDB/MySQL {serverdb.my_server_version(url)}"
    return f"Redis {serverdb.redis_server_version(url)}"


def _lmq_available(spec: BackendSpec) -> str | None:
    """None if lmq's backend imports, else why not."""
    try:
        importlib.import_module(spec.module)
    except Exception as exc:
        return f"{spec.module} not importable ({type(exc).__name__}: {exc})"
    return None


class Run:
    """One backend's figures: values[system][metric], notes[system][metric]."""

    def __init__(self, backend: str, systems: list[str]) -> None:
        self.backend = backend
        self.systems = systems
        self.values: dict[str, dict[str, float]] = {s: {} for s in systems}
        self.notes: dict[str, dict[str, str]] = {s: {} for s in systems}
        self.errors: list[str] = []

    def put(self, system: str, key: str, value: float, note: str = "") -> None:
        self.values[system][key] = value
        if note:
            self.notes[system][key] = note


class MeasurementTimeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise MeasurementTimeout(f"took longer than the {LIMIT[0]:g} s every measurement gets")


LIMIT = [900.0]  # seconds for any one measurement (fill, run, checks), set by main()


def _attempt(run: Run, what: str, fn: Any, *args: Any) -> Any:
    """Run one measurement under a SIGALRM deadline; a failure is recorded, not raised."""
    t = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, LIMIT[0])
    try:
        return fn(*args)
    except Exception as exc:
        traceback.print_exc()
        run.errors.append(f"{what}: {type(exc).__name__}: {exc}")
        return None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        say(f"  ({what}: {time.perf_counter() - t:.1f} s)")


def run_backend(backend: str, url: str, sz: ServerSizes, tmp: Path, only: str | None,
                workloads: list[str]) -> dict[str, Any]:  # fmt: skip
    spec = BACKENDS[backend]
    peer_objs = [] if only == "lmq" else [p(url) for p in spec.peers]
    systems = ([] if only == "peers" else ["lmq"]) + [p.name for p in peer_objs]
    run = Run(backend, systems)
    server = _server(backend, url)
    say(f"== {spec.title}: {server} at {url}")
    if "lmq" in systems:
        missing = _lmq_available(spec)
        if missing:
            run.errors.append(f"lmq: {missing}")
            say(f"  lmq skipped: {missing}")
            systems.remove("lmq")
    for p in peer_objs:
        run.notes[p.name]["about"] = p.about
    n = 0

    def wd(name: str) -> Path:
        nonlocal n
        n += 1
        d = tmp / f"{backend}-{n:02d}-{name.replace(' ', '_')}"
        d.mkdir()
        return d

    if "drain" in workloads:
        if "lmq" in systems:
            say(f"drain / lmq ({sz.drain:,} tasks)")
            r = _attempt(run, "drain on lmq", lmq_server.drain, backend, url, wd("lmq-drain"),
                         sz.drain, sz.chunk, sz.concurrency, sz.timeout)  # fmt: skip
            if r:
                run.put("lmq", "drain", r["drain"],
                        f"{sz.drain:,} tasks, `-c {sz.concurrency}`, spawn to exit; spawn to "
                        f"first task {r['startup']:.2f} s, last task to exit {r['exit']:.2f} s")
                run.put("lmq", "drain_run", r["drain_run"])
                run.put("lmq", "drain_cpu", r["cpu"])
                if "server_cpu" in r:
                    run.put("lmq", "drain_server_cpu", r["server_cpu"])
        for p in peer_objs:
            tried: dict[str, dict[str, float]] = {}
            for opts in p.variants:
                label = ", ".join(f"{k}={v}" for k, v in opts.items()) or "defaults"
                say(f"drain / {p.name} ({label})")
                r = _attempt(run, f"drain on {p.name} ({label})", peers.drain, p, wd(p.name),
                             sz.drain, sz.chunk, opts, sz.timeout,
                             sz.peer_max_seconds)  # fmt: skip
                if r:
                    tried[label] = r
            if not tried:
                continue
            best = max(tried, key=lambda k: tried[k]["drain"])
            b = tried[best]
            summary = "; ".join(
                f"{k}: {v['drain']:,.0f}/s ({v['drain_run']:,.0f}/s first to last"
                + (f"; stopped after {sz.peer_max_seconds:g} s with {v['ran']:,.0f} run"
                   if v["ran"] < sz.drain else "") + ")"
                for k, v in tried.items()
            )  # fmt: skip
            run.put(p.name, "drain", b["drain"],
                    f"{sz.drain:,} tasks, spawn to last task; best of {summary}; spawn to "
                    f"first task {b['startup']:.2f} s")  # fmt: skip
            run.put(p.name, "drain_run", b["drain_run"])
            run.put(p.name, "drain_cpu", b["cpu"])
            if "server_cpu" in b:
                run.put(p.name, "drain_server_cpu", b["server_cpu"])
            if not p.bulk_api:
                run.put(p.name, "enqueue_loop", b["fill"], f"the drain's fill of {sz.drain:,}")

    if "pickup" in workloads:
        if "lmq" in systems:
            say("pickup / lmq")
            r = _attempt(run, "pickup on lmq", lmq_server.pickup, backend, url,
                         wd("lmq-pickup"), sz.samples, sz.interval)  # fmt: skip
            if r:
                run.put("lmq", "pickup_p50", r[0],
                        f"`lmq worker -c 10`, {sz.samples} samples, one every "
                        f"{sz.interval * 1000:g} ms; of which the producer's `enqueue` call "
                        f"itself (its commit included): p50 {r[2]:.2f} ms")  # fmt: skip
                run.put("lmq", "pickup_p99", r[1])
        for p in peer_objs:
            if isinstance(p, peers.BarePg):
                continue
            say(f"pickup / {p.name}")
            r = _attempt(run, f"pickup on {p.name}", peers.pickup, p, wd(p.name + "-pickup"),
                         sz.samples, sz.interval, sz.timeout)  # fmt: skip
            if r:
                opts = ", ".join(f"{k}={v}" for k, v in p.pickup_opts.items())
                run.put(p.name, "pickup_p50", r[0], opts)
                run.put(p.name, "pickup_p99", r[1])

    if "bulk" in workloads:
        if "lmq" in systems:
            say("bulk / lmq")
            r = _attempt(run, "bulk on lmq", lmq_server.bulk, backend, url, sz.bulk, sz.chunk)
            if r:
                run.put("lmq", "bulk", r, f"`enqueue_many` of {sz.bulk:,} in calls of "
                        f"{sz.chunk:,}")  # fmt: skip
            r = _attempt(run, "single enqueues on lmq", lmq_server.enqueue_loop, backend, url,
                         sz.loop)  # fmt: skip
            if r:
                run.put("lmq", "enqueue_loop", r, f"{sz.loop:,} `queue.enqueue` calls")
        for p in peer_objs:
            if not p.bulk_api:
                run.notes[p.name].setdefault("bulk", "no batch enqueue API")
                continue
            say(f"bulk / {p.name}")
            r = _attempt(run, f"bulk on {p.name}", peers.bulk, p, sz.bulk, sz.chunk)
            if r:
                run.put(p.name, "bulk", r, f"{p.bulk_api}, {sz.bulk:,} in calls of {sz.chunk:,}")

    if "claim" in workloads and "lmq" in systems:
        say("claim / lmq")
        small = _attempt(run, "claim cost at 1k on lmq", lmq_server.claim_cost, backend, url,
                         sz.claim_small, sz.chunk, sz.claim_limit, sz.claims)  # fmt: skip
        large = _attempt(run, "claim cost at 1M on lmq", lmq_server.claim_cost, backend, url,
                         sz.claim_large, sz.chunk, sz.claim_limit, sz.claims)  # fmt: skip
        if small:
            run.put("lmq", "claim_1k", small, f"median of {sz.claims}, `limit={sz.claim_limit}`, "
                    "after the fill the task table is vacuumed/analyzed (PostgreSQL, MariaDB) "
                    "and the bench waits 2 s, for both sizes")  # fmt: skip
        if large:
            run.put("lmq", "claim_1m", large, f"{sz.claim_large:,} ready tasks")
        if small and large:
            run.put("lmq", "claim_ratio", large / small)

    if "claim_done" in workloads and "lmq" in systems:
        say("claim with done rows / lmq")
        none = _attempt(run, "claim cost with 0 done rows on lmq", lmq_server.claim_cost,
                        backend, url, sz.claim_small, sz.chunk, sz.claim_limit,
                        sz.claims)  # fmt: skip
        many = _attempt(run, f"claim cost with {sz.claim_done:,} done rows on lmq",
                        lmq_server.claim_cost, backend, url, sz.claim_small, sz.chunk,
                        sz.claim_limit, sz.claims, sz.claim_done)  # fmt: skip
        if none:
            run.put("lmq", "claim_done_0", none, f"{sz.claim_small:,} ready tasks, median of "
                    f"{sz.claims}, `limit={sz.claim_limit}`, nothing finished yet")  # fmt: skip
        if many:
            run.put("lmq", "claim_done_1m", many, f"the same {sz.claim_small:,} ready tasks "
                    f"after {sz.claim_done:,} tasks were enqueued and run to `done`")  # fmt: skip
        if none and many:
            run.put("lmq", "claim_done_ratio", many / none)

    return {
        "title": spec.title,
        "server": f"Server: {server}, at `{url}` (the shared one on this machine).",
        "systems": run.systems if "lmq" in systems else [s for s in run.systems if s != "lmq"],
        "values": run.values,
        "notes": run.notes,
        "errors": run.errors,
    }


def machine() -> dict[str, str]:
    return {
        "CPUs": str(os.cpu_count()),
        "platform": platform.platform(),
        "Python": platform.python_version(),
        "lmq": f"{_version('lmq')} (git {_git_rev()})",
        **{d: _version(d) for d in ("psycopg", "redis", "PyMySQL", "pgqueuer", "asyncpg",
                                    "procrastinate", "saq", "huey", "dramatiq")},
    }  # fmt: skip


def _git_rev() -> str:
    import subprocess

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"],
                               cwd=BENCH_DIR.parent, capture_output=True, text=True,
                               check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (src/ modified)" if dirty else "")


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def splice_docs(path: Path, doc: dict[str, Any]) -> None:
    """Replace each measured backend's figures between its markers in ``path``'s server
    section; other backends' figures (from earlier runs) stay as they are."""
    text = path.read_text() if path.exists() else ""
    if f"\n{SECTION}" not in text:
        text = text.rstrip() + f"\n\n{SECTION}\n"
    for b in doc["backends"]:
        begin, end = _markers(b)
        if begin not in text:
            text = text.rstrip() + f"\n\n{begin}\n{end}\n"
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n\n{render_backend(doc, b).rstrip()}\n\n{end}{tail}"
    path.write_text(text)


def keep_server_section(path: Path, sqlite_md: str) -> str:
    """The SQLite run's Markdown plus the server section already in ``path``, if any."""
    if not path.exists():
        return sqlite_md
    text = path.read_text()
    at = text.find(f"\n{SECTION}")
    return sqlite_md if at < 0 else sqlite_md.rstrip() + "\n" + text[at:]


def main(args: Any, tmp: Path, command: str) -> int:
    sz = QUICK if args.quick else ServerSizes()
    LIMIT[0] = sz.measurement
    backends = [b for b in ("postgresql", "redis", "mysql") if args.backend in (b, "all")]
    started = datetime.now(UTC)
    doc: dict[str, Any] = {
        "started": f"{started:%Y-%m-%d %H:%M}",
        "command": command,
        "machine": machine(),
        "sizes": asdict(sz),
        "backends": {},
    }
    load0 = _load()
    failed = False
    for b in backends:
        url = getattr(args, f"{b}_url") or os.environ.get(BACKENDS[b].env) or BACKENDS[b].default
        data = run_backend(b, url, sz, tmp, args.only, [w for w in args.workloads
                                                         if w in WORKLOADS])  # fmt: skip
        doc["backends"][b] = data
        failed = failed or bool(data["errors"])
        say("")
        say(server_table(b, data["values"], data["systems"]))
        say("")
        say(server_targets(b, data["values"]))
        for e in data["errors"]:
            say(f"FAILED: {e}")
        say("")
    doc["load"] = [load0, _load()]
    out = args.json or BENCH_DIR / "results" / f"servers-{started:%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    say(f"wrote {out}")
    if args.docs:
        splice_docs(args.docs, doc)
        say(f"wrote the server figures into {args.docs}")
    return 1 if failed else 0
