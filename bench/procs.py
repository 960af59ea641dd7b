"""Child processes: start them in their own process group, sample their RSS, and always
clean them up (normal exit, failure, Ctrl-C or SIGTERM to the bench)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil

BENCH_DIR = Path(__file__).resolve().parent
_children: list[subprocess.Popen[bytes]] = []


class BenchError(RuntimeError):
    """A workload failed; the message says what (and where its log is)."""


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p)
    env.pop("LMQ_URL", None)
    env.pop("LMQ_APP", None)
    env.update(extra)
    return env


def spawn(
    cmd: Sequence[str], *, log: Path, env: dict[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` as the leader of a new process group, output appended to ``log``."""
    with open(log, "ab") as out:
        p = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    _children.append(p)
    return p


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


def _killpg(p: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, sig)


def stop(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    """Signal the process group, wait for the leader; SIGKILL the group after ``timeout``."""
    if p.poll() is None:
        _killpg(p, sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            _killpg(p, signal.SIGKILL)
            p.wait(5)
    _killpg(p, signal.SIGKILL)  # stragglers of the group (e.g. orphaned children)
    return p.returncode


def wait(p: subprocess.Popen[bytes], timeout: float, what: str, log: Path) -> int:
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        stop(p)
        raise BenchError(f"{what} did not finish within {timeout:g}s; see {log}") from None


def children_cpu() -> float:
    """User + system CPU seconds of the children this process has reaped so far: the
    difference across one child's run is that child's whole CPU time (threads and its own
    reaped children included)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


SERVER_PROCESSES = {"mysql": ("mariadbd", "mysqld"), "redis": ("redis-server",)}


def server_cpu(backend: str) -> float | None:
    """CPU seconds used so far by the database server's process (MariaDB and Redis run as
    one long-lived process; PostgreSQL's per-connection processes exit with their client,
    so it has no such figure): None when not found here."""
    names = SERVER_PROCESSES.get(backend)
    if not names:
        return None
    total, found = 0.0, False
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in names:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
                found = True
    return total if found else None


def kill_all() -> None:
    """Terminate every process group we started (SIGTERM, then SIGKILL)."""
    live = [p for p in _children if p.poll() is None]
    for p in live:
        _killpg(p, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for p in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.0, deadline - time.monotonic()))
    for p in _children:
        _killpg(p, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(1)
    _children.clear()


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def cleanup_on_exit() -> Iterator[None]:
    """SIGINT (even if inherited as ignored), SIGTERM and SIGHUP interrupt the bench like
    Ctrl-C; the children die with it either way."""
    old = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        kill_all()
        for s, h in old.items():
            signal.signal(s, h)


class RssSampler:
    """Polls a process's RSS every ``interval`` seconds; ``last`` is the final sample
    taken while it was alive (i.e. just before it exited), ``peak`` the largest."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.last = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.proc.status() == psutil.STATUS_ZOMBIE:
                    return
                rss = self.proc.memory_info().rss
            except psutil.Error:
                return
            if rss:
                self.last = rss
                self.peak = max(self.peak, rss)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def cpu_seconds(pid: int) -> float:
    """CPU time of all the process's threads, in ns resolution where Linux offers it
    (``/proc/PID/task/*/schedstat``); psutil's clock-tick figure otherwise."""
    total, found = 0, False
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(stat.read_text().split()[0])
            found = True
    if found:
        return total / 1e9
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def wait_for_file(path: Path, timeout: float, p: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        if p.poll() is not None:
            raise BenchError(f"process exited with {p.returncode} early; see {log}")
        time.sleep(0.01)
    raise BenchError(f"{path.name} did not appear within {timeout:g}s; see {log}")


class HttpServer:
    """The local aiohttp server that answers after ``delay`` seconds, in its own process."""

    def __init__(self, tmp: Path, delay: float = 0.1) -> None:
        self.log = tmp / "httpserver.log"
        port_file = tmp / "httpserver.port"
        port_file.unlink(missing_ok=True)
        self.proc = spawn(
            python_cmd(str(BENCH_DIR / "httpserver.py"), str(port_file), str(delay)),
            log=self.log,
            env=child_env(),
            cwd=tmp,
        )
        port = int(wait_for_file(port_file, 15, self.proc, self.log))
        self.url = f"http://127.0.0.1:{port}/item"

    def close(self) -> None:
        stop(self.proc)
