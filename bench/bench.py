"""lmq on SQLite against huey's SqliteHuey, on the same workloads, in one run; with
--backend, lmq on a database server against that server's Python peers (servers.py).

    bench/run.sh [--quick] [--only lmq|huey] [--workloads bulk,single,...] [--out FILE]
    bench/run.sh --backend postgresql|redis|mysql|all [--quick] [--only lmq|peers]
                 [--workloads drain,pickup,bulk,claim,claim_done] [--json FILE] [--docs FILE]

Workloads: bulk (enqueue_many), single (enqueue latency, idle and while a worker drains),
drain (no-op drain rate, async and def handlers, 1 and 2 processes, and the worker's
RSS), pickup (latency under a trickle), http (5,000 GETs that take 100 ms each), claim
(lmq only: claim cost with many finished rows).  Every workload gets a fresh database
in a temp dir; every child process is killed on exit, Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import huey_side
import lmq_side
import servers
from common import QUICK, Ctx, Sizes, rmtree, say
from procs import BENCH_DIR, cleanup_on_exit
from report import Results, notes, table

Workload = Callable[[Ctx], None]
WORKLOADS: dict[str, dict[str, Workload]] = {
    "bulk": {"lmq": lmq_side.bulk, "huey": huey_side.bulk},
    "single": {"lmq": lmq_side.single, "huey": huey_side.single},
    "drain": {"lmq": lmq_side.drains, "huey": huey_side.drains},
    "pickup": {"lmq": lmq_side.pickup, "huey": huey_side.pickup},
    "http": {"lmq": lmq_side.http, "huey": huey_side.http},
    "claim": {"lmq": lmq_side.claim_cost},
}

METHOD = """\
- Each workload uses a fresh SQLite file in a temp dir, for both systems. lmq uses its
  default SQLite settings (WAL, `synchronous=NORMAL`); huey uses `SqliteHuey` (WAL) with
  `synchronous=NORMAL` set on its connection so both make the same durability promise,
  and `results=False`.
- Drain rates: "start to exit" is the wall time from spawning `lmq worker … --burst`
  until that process exited (interpreter start-up, imports, the drain, the last
  acknowledgement and shutdown all included); for huey, from spawning the consumer until
  the last task had run (its shutdown is not counted). "First task to last" divides by
  the time between the first handler call and the last one (recorded by the handlers).
  Drained databases are checked: every task `done` (lmq) or counted (huey).
- RSS: the worker (or huey consumer) process, sampled with psutil every 50 ms by the
  bench; the figure is the last sample before it exited or finished.
- Latencies are from `time.perf_counter()` around each call (enqueue) or
  `time.time() - payload["t"]` in the handler (pickup), on one machine clock.
- Ratios are lmq/huey: above 1 is better for rates, below 1 for times and sizes.
"""


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_rev() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=BENCH_DIR, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=BENCH_DIR.parent, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (src/ modified)" if dirty else "")


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> dict[str, str]:
    return {
        "CPUs": str(os.cpu_count()),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "Python": platform.python_version(),
        "SQLite": sqlite3.sqlite_version,
        "lmq": f"{_version('lmq')} (git {_git_rev()})",
        "huey": _version("huey"),
        "aiohttp": _version("aiohttp"),
    }


def command_line() -> str:
    return os.environ.get("BENCH_CMD") or shlex.join(["python", "bench/bench.py", *sys.argv[1:]])


def markdown(
    results: Results,
    info: dict[str, str],
    started: datetime,
    load: tuple[str, str],
    cmd: str,
    errors: list[str],
) -> str:
    lines = [
        "# lmq benchmarks",
        "",
        f"Produced on {started:%Y-%m-%d %H:%M} UTC by:",
        "",
        "```",
        cmd,
        "```",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        f"- load average (1, 5, 15 min) at start: {load[0]}; at end: {load[1]} "
        "(a shared machine: other jobs may have run at the same time)",
        "",
        "## Results",
        "",
        table(results),
        "",
        "## How the figures were taken",
        "",
        METHOD,
        notes(results),
    ]
    if errors:
        lines += ["", "## Failures", "", *[f"- {e}" for e in errors]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--backend sqlite (the default) is the SQLite comparison; postgresql, redis "
        "and mysql measure lmq and that server's peers (pgqueuer, procrastinate and a bare "
        "psycopg loop; SAQ, huey's RedisHuey and Dramatiq; MariaDB: lmq alone) on the "
        "shared servers; all runs the three servers and then SQLite. Server workloads: "
        f"{','.join(servers.WORKLOADS)}. Server URLs default to $LMQ_TEST_POSTGRES_URL, "
        "$LMQ_TEST_REDIS_URL, $LMQ_TEST_MYSQL_URL, else the machine's shared servers. "
        "Isolation: see docs/benchmarks.md (own databases lmqbench_*, Redis db 12 with a "
        "fresh key prefix for lmq, db 13 flushed for the peers).",
    )
    ap.add_argument("--backend", default="sqlite",
                    choices=["sqlite", "postgresql", "redis", "mysql", "all"],
                    help="what to measure [default: sqlite]")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    ap.add_argument("--only", choices=["lmq", "huey", "peers"],
                    help="run one side only (huey: SQLite's peer; peers: a server's)")
    ap.add_argument(
        "--workloads",
        help=f"comma-separated subset of {','.join(WORKLOADS)} (SQLite) or "
        f"{','.join(servers.WORKLOADS)} (servers) [default: all]",
    )
    ap.add_argument("--out", type=Path, help="SQLite: also write the results as Markdown here "
                    "(a server section already in that file is kept)")  # fmt: skip
    ap.add_argument("--json", type=Path, help="servers: the results file [default: "
                    "bench/results/servers-<time>.json]")  # fmt: skip
    ap.add_argument("--docs", type=Path, help="servers: rewrite the measured backends' "
                    "figures in this file's server section (e.g. docs/benchmarks.md)")
    ap.add_argument("--postgresql-url", help="PostgreSQL server to use (its database only "
                    "names the server: the bench makes its own)")  # fmt: skip
    ap.add_argument("--redis-url", help="Redis server to use (lmq: db 12, peers: db 13)")
    ap.add_argument("--mysql-url", help="MariaDB/MySQL server to use")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (its path is "
                    "printed) to look at databases and worker logs")  # fmt: skip
    args = ap.parse_args(argv)
    known = set(WORKLOADS) | set(servers.WORKLOADS)
    given = args.workloads or ",".join(known)
    args.workloads = [w.strip() for w in given.split(",") if w.strip()]
    unknown = set(args.workloads) - known
    if unknown:
        ap.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    if args.backend == "sqlite" and args.only == "peers":
        ap.error("--only peers is for the server backends (SQLite's peer is huey)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rc = 0
    if args.backend != "sqlite":
        tmp = Path(tempfile.mkdtemp(prefix="lmq-bench-servers-"))
        try:
            with cleanup_on_exit():
                rc = servers.main(args, tmp, command_line())
        except KeyboardInterrupt:
            say("interrupted: child processes stopped")
            return 130
        finally:
            if args.keep_tmp or rc:
                say(f"temp dir kept (worker logs): {tmp}")
            else:
                rmtree(tmp)
        if args.backend != "all":
            return rc
    return main_sqlite(args) or rc


def main_sqlite(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else Sizes()
    systems = [args.only] if args.only in ("lmq", "huey") else ["lmq", "huey"]
    args.workloads = [w for w in args.workloads if w in WORKLOADS]
    results = Results()
    errors: list[str] = []
    started = datetime.now(UTC)
    load_start = _load()
    info = machine()
    say(f"lmq bench: {', '.join(f'{k} {v}' for k, v in info.items())}; load {load_start}")
    tmp = Path(tempfile.mkdtemp(prefix="lmq-bench-"))
    ctx = Ctx(tmp=tmp, sizes=sizes, results=results)
    try:
        with cleanup_on_exit():
            try:
                for name in args.workloads:
                    for system in systems:
                        fn = WORKLOADS[name].get(system)
                        if fn is None:
                            continue
                        say(f"{name} / {system}")
                        t = time.perf_counter()
                        try:
                            fn(ctx)
                        except Exception as exc:
                            traceback.print_exc()
                            errors.append(f"{name} on {system}: {type(exc).__name__}: {exc}")
                        say(f"  ({time.perf_counter() - t:.1f} s)")
            finally:
                ctx.close()
    except KeyboardInterrupt:
        say("interrupted: child processes stopped")
        return 130
    finally:
        if args.keep_tmp or errors:
            say(f"temp dir kept (databases, worker logs): {tmp}")
        else:
            rmtree(tmp)
    load = (load_start, _load())
    say("")
    say(table(results))
    say("")
    say(notes(results))
    say(f"load average at start: {load[0]}; at end: {load[1]}")
    for e in errors:
        say(f"FAILED: {e}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        md = markdown(results, info, started, load, command_line(), errors)
        args.out.write_text(servers.keep_server_section(args.out, md))
        say(f"wrote {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
