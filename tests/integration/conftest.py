"""Shared fixtures: real ``lmq`` processes against a real backend.

``h`` is a :class:`Harness` on a SQLite file in ``tmp_path`` (tests that look at the file
with raw ``sqlite3`` through :meth:`Harness.sql` use it).  ``hb`` is the same harness once
per backend: SQLite always, and PostgreSQL, MySQL and Redis when ``LMQ_TEST_POSTGRES_URL``,
``LMQ_TEST_MYSQL_URL`` or ``LMQ_TEST_REDIS_URL`` name a server (``.ci/run`` sets all three;
an unset one is a skip with its reason, and a failure when ``$CI`` is set).
A server harness works under a fresh ``?prefix=`` of its own, runs ``lmq migrate`` through
the CLI first and drops every object under the prefix afterwards.

Workers run ``python -m lmq worker --app lmq_itest_app`` (the app lives next to this file
and is found through ``PYTHONPATH``).  Its handlers append ``EVENT KEY PID`` lines to a
record file that :meth:`Harness.records` reads back.  Every process a test starts runs in
its own session; whatever is left at the end of the test is killed by its group id.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import lmq
from lmq_testservers import drop_prefix

HERE = Path(__file__).resolve().parent
APP = "lmq_itest_app"

# what must never appear on a worker's or producer's stderr
FORBIDDEN = (
    "Traceback",
    "database is locked",
    "stayed locked",
    "lost the backend",
    "internal error",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "soak: long multi-worker runs (minutes), outside CI: run with -m soak or LMQ_SOAK=1",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests run only when asked for (``-m soak``, or ``LMQ_SOAK=1``), so the plain
    ``pytest`` of the README and CI leaves them out."""
    if "soak" in (config.getoption("markexpr", "") or "") or os.environ.get("LMQ_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="a soak test: run with -m soak or LMQ_SOAK=1")
    for item in items:
        if item.get_closest_marker("soak"):
            item.add_marker(skip)


class Proc:
    """One started ``lmq`` (or producer) process, its stdout/stderr kept in files."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, name: str) -> None:
        self.name = name
        self.argv = argv
        self.out_path = cwd / f"{name}.stdout"
        self.err_path = cwd / f"{name}.stderr"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=out, stderr=err, start_new_session=True
            )
        self.pid = self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{self.name} (pid {self.pid}) did not exit within {timeout:g}s; "
                f"stderr:\n{self.stderr()[-3000:]}"
            )

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def assert_clean(self) -> None:
        text = self.stderr()
        for bad in FORBIDDEN:
            assert bad not in text, f"{bad!r} on {self.name}'s stderr:\n{text[-4000:]}"

    def kill_group(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        else:  # the leader is gone; children of a --processes parent may not be
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


# server backends the integration tests run on when their variable names a server
SERVER_ENVS = {
    "postgresql": "LMQ_TEST_POSTGRES_URL",
    "mysql": "LMQ_TEST_MYSQL_URL",
    "redis": "LMQ_TEST_REDIS_URL",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def not_here(why: str) -> None:
    """A server test that cannot run here: a failure in CI (never a silent skip), else a skip."""
    if in_ci():
        pytest.fail(f"{why} (CI must run every server backend's tests)")
    pytest.skip(why)


def shared_server_url(backend: str) -> str:
    """``$LMQ_TEST_…_URL`` for ``backend``; skips (fails in CI) when it is not set."""
    url = os.environ.get(SERVER_ENVS[backend], "")
    if not url:
        not_here(f"set {SERVER_ENVS[backend]} to run the {backend} integration tests")
    return url


def with_prefix(url: str, prefix: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


class Harness:
    """Processes, records and waiting for one test, on one backend.

    ``backend`` is ``sqlite`` (a file in ``tmp_path``, the default) or a server backend's
    name with ``url`` naming its store (already isolated: a prefix or a private server).
    """

    def __init__(self, tmp_path: Path, backend: str = "sqlite", url: str | None = None) -> None:
        self.dir = tmp_path
        self.backend = backend
        self.db = tmp_path / "queue.db"
        if backend == "sqlite":
            self.url = url or f"sqlite:///{self.db}"  # an absolute path: sqlite:////tmp/...
        else:
            assert url, f"a {backend} harness needs a URL"
            self.url = url
        self._cleanup: list[Callable[[], None]] = []
        self.record_path = tmp_path / "record.txt"
        self.flags = tmp_path / "flags"
        self.flags.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMQ_")}
        env["LMQ_URL"] = self.url
        env["LMQ_TEST_RECORD"] = str(self.record_path)
        env["LMQ_TEST_FLAGS"] = str(self.flags)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
        )
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        self.env = env
        self.procs: list[Proc] = []
        self._queue: lmq.Queue | None = None
        self._names: collections.Counter[str] = collections.Counter()

    # --- the queue, in this process ------------------------------------------------------

    @property
    def queue(self) -> lmq.Queue:
        if self._queue is None:
            self._queue = lmq.Queue(self.url)
        return self._queue

    def counts(self) -> dict[str, int]:
        return self.queue.counts()

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement with plain sqlite3, as another program would (SQLite only)."""
        assert self.backend == "sqlite", f"h.sql is raw SQLite; this harness is {self.backend}"
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as conn, conn:
            return conn.execute(statement, params).fetchall()

    # --- processes -----------------------------------------------------------------------

    def run(
        self, *args: str, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run one ``lmq`` command to completion."""
        return subprocess.run(
            [sys.executable, "-m", "lmq", *args],
            env=env or self.env,
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def migrate(self) -> None:
        """``lmq migrate`` through the CLI, as a user would."""
        res = self.run("migrate", timeout=60)
        assert res.returncode == 0, f"lmq migrate -> {res.returncode}: {res.stderr}"

    def run_json(self, *args: str) -> Any:
        res = self.run(*args)
        assert res.returncode == 0, f"lmq {' '.join(args)} -> {res.returncode}: {res.stderr}"
        return json.loads(res.stdout)

    def start(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> Proc:
        self._names[name] += 1
        proc = Proc(argv, env or self.env, self.dir, f"{name}-{self._names[name]}")
        self.procs.append(proc)
        return proc

    def worker(self, *args: str, name: str = "worker") -> Proc:
        return self.start([sys.executable, "-m", "lmq", "worker", "--app", APP, *args], name)

    def producer(self, start: int, count: int) -> Proc:
        return self.start(
            [sys.executable, "-m", "lmq_itest_producer", str(start), str(count)], "producer"
        )

    def worker_pids(self) -> list[int]:
        """Pids in the workers' heartbeat rows (``lmq status --json``)."""
        status = self.run_json("status", "--json")
        return [w["pid"] for w in status["workers"]]

    # --- what the handlers did -----------------------------------------------------------

    def records(self, event: str | None = None) -> list[tuple[str, str, int]]:
        """``(event, key, pid)`` for every line the handlers wrote, in order."""
        if not self.record_path.exists():
            return []
        rows = []
        for line in self.record_path.read_text().splitlines():
            ev, key, pid = line.split(" ")[:3]
            if event is None or ev == event:
                rows.append((ev, key, int(pid)))
        return rows

    def stamped(self) -> list[tuple[str, int, float]]:
        """``(key, pid, started)`` for every run of the ``stamped`` handler, in order."""
        if not self.record_path.exists():
            return []
        rows = []
        for line in self.record_path.read_text().splitlines():
            ev, key, pid, *rest = line.split(" ")
            if ev == "stamped":
                rows.append((key, int(pid), float(rest[0])))
        return rows

    def keys(self, event: str) -> collections.Counter[str]:
        return collections.Counter(key for _, key, _ in self.records(event))

    # --- waiting -------------------------------------------------------------------------

    def wait_for(
        self,
        cond: Callable[[], Any],
        what: str,
        timeout: float = 60,
        interval: float = 0.05,
        procs: list[Proc] | None = None,
    ) -> Any:
        """Poll ``cond`` until it is truthy; fail naming ``what`` after ``timeout`` seconds.

        Fails early if one of ``procs`` exits meanwhile (it was meant to keep running).
        """
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            for p in procs or ():
                if p.poll() is not None:
                    pytest.fail(
                        f"waiting for {what}: {p.name} exited with {p.poll()}; "
                        f"stderr:\n{p.stderr()[-3000:]}"
                    )
            if time.monotonic() > deadline:
                detail = "\n".join(f"--- {p.name}:\n{p.stderr()[-1500:]}" for p in self.procs)
                pytest.fail(
                    f"timed out after {timeout:g}s waiting for {what}; "
                    f"counts={self.counts()}\n{detail}"
                )
            time.sleep(interval)

    def wait_counts(
        self, timeout: float = 60, procs: list[Proc] | None = None, **want: int
    ) -> None:
        def ok() -> bool:
            c = self.counts()
            return all(c[k] == v for k, v in want.items())

        self.wait_for(ok, f"counts {want}", timeout=timeout, procs=procs)

    def wait_record(
        self, event: str, key: object, times: int = 1, timeout: float = 60
    ) -> list[tuple[str, str, int]]:
        def found() -> list[tuple[str, str, int]]:
            rows = [r for r in self.records(event) if r[1] == str(key)]
            return rows if len(rows) >= times else []

        return self.wait_for(found, f"{times}x record {event!r} for key {key}", timeout=timeout)

    def wait_stderr(self, proc: Proc, text: str, timeout: float = 30) -> None:
        self.wait_for(lambda: text in proc.stderr(), f"{text!r} on {proc.name}'s stderr", timeout)

    # --- teardown ------------------------------------------------------------------------

    def on_close(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` at teardown, after the processes are gone (last registered first)."""
        self._cleanup.append(fn)

    def close(self) -> None:
        for p in self.procs:
            p.kill_group()
        if self._queue is not None:
            self._queue.close()
            self._queue = None
        while self._cleanup:
            self._cleanup.pop()()


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    """A harness on a SQLite file (raw ``h.sql`` works)."""
    harness = Harness(tmp_path)
    try:
        yield harness
    finally:
        harness.close()


def leftovers(url: str, prefix: str) -> list[str]:
    """Objects still named ``prefix…`` on the server ``url`` names (no LIKE: no escaping)."""
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme in {"postgres", "postgresql"}:
        import psycopg

        with psycopg.connect(url.split("?", 1)[0], autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT relname FROM pg_class WHERE starts_with(relname, %s)"
                " UNION ALL SELECT proname FROM pg_proc WHERE starts_with(proname, %s)"
                " UNION ALL SELECT typname FROM pg_type WHERE starts_with(typname, %s)"
                " AND typtype = 'e'",
                (prefix, prefix, prefix),
            ).fetchall()
        return sorted(r[0] for r in rows)
    if scheme in {"mysql", "mariadb"}:
        from urllib.parse import unquote, urlsplit

        import pymysql

        parts = urlsplit(url)
        conn = pymysql.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=parts.path.lstrip("/") or None,
            connect_timeout=5,
        )
        with contextlib.closing(conn), conn.cursor() as cur:
            cur.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema ="
                " DATABASE() AND LEFT(table_name, CHAR_LENGTH(%s)) = %s",
                (prefix, prefix),
            )
            return sorted(r[0] for r in cur.fetchall())
    import redis

    client = redis.Redis.from_url(url.split("?", 1)[0], socket_timeout=5)
    with contextlib.closing(client):
        return sorted(k.decode() for k in client.scan_iter(match=f"{prefix}*", count=1000))


def drop_and_check(base: str, prefix: str) -> None:
    """``drop_prefix`` (tests/lmq_testservers.py), then fail if anything is left over."""
    drop_prefix(base, prefix)
    left = leftovers(base, prefix)
    assert not left, f"drop_prefix({prefix!r}) left {len(left)} objects: {left[:8]}"


@contextlib.contextmanager
def server_harness(tmp_path: Path, backend: str) -> Iterator[Harness]:
    """A harness on the shared server ``$LMQ_TEST_…_URL`` names, under a fresh prefix."""
    base = shared_server_url(backend)
    prefix = f"i{uuid.uuid4().hex[:8]}_"
    harness = Harness(tmp_path, backend, with_prefix(base, prefix))
    harness.on_close(lambda: drop_and_check(base, prefix))
    try:
        harness.migrate()
        yield harness
    finally:
        harness.close()


@pytest.fixture(params=["sqlite", *SERVER_ENVS])
def hb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """A harness once per backend: SQLite, and each server backend (skipped, or failed in
    CI, when its ``LMQ_TEST_…_URL`` is not set)."""
    backend: str = request.param
    if backend == "sqlite":
        harness = Harness(tmp_path)
        try:
            yield harness
        finally:
            harness.close()
    else:
        with server_harness(tmp_path, backend) as harness:
            yield harness


def stderr_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]
