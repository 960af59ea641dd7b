"""``lmq worker --processes N``: a parent that runs N worker processes and restarts any
that dies.

Each child is an ordinary ``lmq worker`` (``python -m lmq worker …``) with its own event
loop, connection and heartbeat row.  The parent forwards SIGTERM/SIGINT to the children
and waits for them (they shut down gracefully); a second signal is forwarded too, so the
children exit at once.  A child that exits on its own (crash, SIGKILL, OOM) is restarted
after a short pause that grows if it keeps dying.  In ``--burst`` mode a child that exits
0 has drained the queue and is not restarted; the parent exits when all have.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import time

log = logging.getLogger("lmq.worker")


def run_processes(
    child_args: list[str], n: int, *, burst: bool, grace: float, env: dict[str, str] | None = None
) -> int:
    cmd = [sys.executable, "-m", "lmq", *child_args, "--processes", "1"]
    children: dict[int, subprocess.Popen[bytes]] = {}
    restarts: dict[int, list[float]] = {i: [] for i in range(n)}
    stopping = {"signals": 0}

    def spawn(slot: int) -> None:
        children[slot] = subprocess.Popen(cmd, env=env)
        log.info(
            "started worker process %d (pid %d)",
            slot,
            children[slot].pid,
            extra={"event": "process_started", "slot": slot, "pid": children[slot].pid},
        )

    def forward(signum: int, _frame: object) -> None:
        stopping["signals"] += 1
        for p in children.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for slot in range(n):
            spawn(slot)
        finished: set[int] = set()
        worst = 0
        while len(finished) < n:
            time.sleep(0.1)
            for slot, p in list(children.items()):
                if slot in finished:
                    continue
                code = p.poll()
                if code is None:
                    continue
                if stopping["signals"] or (burst and code == 0):
                    finished.add(slot)
                    worst = max(worst, code if code > 0 else 0)
                    continue
                # died on its own: restart, backing off if it keeps dying
                now = time.monotonic()
                recent = [t for t in restarts[slot] if now - t < 60]
                restarts[slot] = [*recent, now]
                pause = min(0.5 * 2 ** max(len(recent) - 1, 0), 30.0) if recent else 0.2
                log.warning(
                    "worker process %d (pid %d) exited with %s; restarting in %.1fs",
                    slot,
                    p.pid,
                    _describe(code),
                    pause,
                    extra={"event": "process_died", "slot": slot, "code": code},
                )
                deadline = time.monotonic() + pause
                while time.monotonic() < deadline and not stopping["signals"]:
                    time.sleep(0.05)
                if stopping["signals"]:
                    finished.add(slot)
                    continue
                spawn(slot)
        return worst
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for p in children.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(grace + 5)
                except subprocess.TimeoutExpired:
                    p.kill()


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"
