"""The database server restarts in the middle of a 20,000-task run (per server backend).

Against a PRIVATE server (tests/lmq_private_servers.py: its own data directory and port;
Redis with ``appendonly yes`` + ``appendfsync always``), never the shared one.  Two ``lmq
worker`` processes drain 20,000 tasks; when about a third is done the server is stopped,
stays down ~1.5 s and starts again on the same port and data, once after a clean
shutdown and once after a crash (``immediate``: what the server acknowledged must survive).
The workers must log the lost backend and its return, keep running, and finish everything:
done == 20,000, dead == 0, every task ran, and a task ran twice only if it was in flight at
the restart.
"""

from __future__ import annotations

import collections
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import lmq
from lmq_private_servers import KINDS, PrivateServer, private_server, unavailable

from .conftest import Harness, Proc, not_here

N = 20_000
WORKERS = 2
CONCURRENCY = 50
TASK_SECONDS = 0.03  # each run awaits this long: the run lasts >= 6 s, long enough to cut
LEASE = "6"  # what a lost claim's tasks wait before another claim takes them


@pytest.fixture(params=KINDS)
def private(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrivateServer]:
    kind: str = request.param
    why = unavailable(kind)
    if why:
        not_here(why)
    with private_server(kind, tmp_path) as server:
        yield server


def _counts(h: Harness) -> dict[str, int] | None:
    try:
        return h.counts()
    except lmq.LmqError:  # the server is down, or our connection has not noticed yet
        return None


def _events(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _runs_so_far(h: Harness) -> int:
    try:
        return h.record_path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


# fast: a clean shutdown (pg_ctl -m fast, SIGTERM); immediate: a crash (pg_ctl -m immediate,
# SIGKILL), so the server must recover what it acknowledged (fsync, InnoDB redo, the AOF)
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_restart_mid_run_loses_nothing(
    private: PrivateServer, tmp_path: Path, mode: str
) -> None:
    h = Harness(tmp_path, private.kind, private.url)
    try:
        _run(h, private, mode)
    finally:
        h.close()


def _run(h: Harness, server: PrivateServer, mode: str) -> None:
    h.migrate()
    for start in range(0, N, 5000):
        h.queue.enqueue_many(
            [("stamped", {"n": i, "seconds": TASK_SECONDS}) for i in range(start, start + 5000)]
        )
    assert h.counts()["pending"] == N

    logs = [h.dir / f"worker-{i}.jsonl" for i in range(WORKERS)]
    workers: list[Proc] = [
        h.worker("-c", str(CONCURRENCY), "--lease", LEASE, "--log-file", str(log)) for log in logs
    ]
    h.wait_for(
        lambda: _runs_so_far(h) >= N // 3,
        "a third of the tasks to run",
        60,
        interval=0.01,
        procs=workers,
    )

    stop_began = time.time()
    done_before = _runs_so_far(h)
    server.restart(down=1.5, mode=mode)
    restarted = time.time()
    assert done_before < N * 0.9, f"the run was nearly over ({done_before}) at the restart"

    for log in logs:  # every worker noticed, and came back
        h.wait_for(
            lambda log=log: "backend_back" in [e["event"] for e in _events(log)],
            f"backend_back in {log.name}",
            60,
            procs=workers,
        )

    def all_done() -> bool:
        c = _counts(h)
        return c is not None and c["done"] == N

    h.wait_for(all_done, f"all {N} tasks done", 90, interval=0.25, procs=workers)

    for w in workers:
        assert w.poll() is None, f"{w.name} exited: {w.stderr()[-3000:]}"
    assert h.counts() == {"pending": 0, "processing": 0, "done": N, "dead": 0}

    for w, log in zip(workers, logs, strict=True):
        names = [e["event"] for e in _events(log)]
        assert "backend_lost" in names, f"{w.name} never logged the lost backend: {names[:40]}"
        lost, back = names.index("backend_lost"), len(names) - 1 - names[::-1].index("backend_back")
        assert lost < back, f"{w.name}: backend_back before backend_lost"
        assert "lost the backend" in w.stderr()
        assert "Traceback" not in w.stderr(), w.stderr()[-4000:]

    runs: dict[str, list[float]] = collections.defaultdict(list)
    pids: collections.Counter[int] = collections.Counter()
    for key, pid, started in h.stamped():
        runs[key].append(started)
        pids[pid] += 1
    missing = {str(i) for i in range(N)} - set(runs)
    assert not missing, f"{len(missing)} tasks never ran, e.g. {sorted(missing)[:5]}"
    assert set(runs) == {str(i) for i in range(N)}
    assert set(pids) == {w.pid for w in workers}, f"runs by pid: {pids}"

    twice = {k: sorted(v) for k, v in runs.items() if len(v) > 1}
    extra = sum(len(v) - 1 for v in twice.values())
    assert extra <= WORKERS * CONCURRENCY, (
        f"{extra} extra runs ({len(twice)} tasks), more than the {WORKERS * CONCURRENCY} "
        "the workers could hold at the restart"
    )
    late = {k: v for k, v in twice.items() if v[0] >= restarted}
    assert not late, f"tasks first run after the restart ran twice: {dict(list(late.items())[:5])}"
    down = restarted - stop_began
    print(
        f"\n{server.kind} ({mode}): restart at {done_before}/{N} runs, down {down:.1f}s;"
        f" {len(twice)} tasks ran twice"
    )

    for w in workers:
        w.signal(signal.SIGTERM)
    for w in workers:
        assert w.wait(30) == 0, w.stderr()[-3000:]
