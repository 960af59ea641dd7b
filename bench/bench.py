"""lmq on SQLite against huey's SqliteHuey, on the same workloads, in one run.

    bench/run.sh [--quick] [--only lmq|huey] [--workloads bulk,single,...] [--out FILE]

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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    ap.add_argument("--only", choices=["lmq", "huey"], help="run one system only")
    ap.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {','.join(WORKLOADS)} [default: all]",
    )
    ap.add_argument("--out", type=Path, help="also write the results as Markdown here")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (its path is "
                    "printed) to look at databases and worker logs")  # fmt: skip
    args = ap.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    systems = [args.only] if args.only else ["lmq", "huey"]
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
        args.out.write_text(markdown(results, info, started, load, command_line(), errors))
        say(f"wrote {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
