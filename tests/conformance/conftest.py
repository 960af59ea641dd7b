"""One conformance suite, run against every backend.

Every test that takes ``backend_url`` (or ``queue`` / ``backend``) runs once per backend
in :data:`BACKENDS`.  A backend is a factory: a context manager that gets the test's
``tmp_path`` and yields a URL naming an empty, isolated store, then cleans up.

* Embedded backends (SQLite, memory) are always on.
* Server backends are on when their environment variable names a server, e.g.
  ``LMQ_TEST_POSTGRES_URL=postgresql://localhost/lmq_test``; each test then gets its own
  table/key prefix on that server (see :func:`_server`).  A backend that is not
  configured is not parametrised at all (no skip noise), but the terminal summary says
  so, and ``LMQ_REQUIRE_BACKENDS=sqlite,memory,postgresql`` makes the run fail when any
  named backend ran no test, so CI cannot go green without exercising each one.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import lmq
from lmq.backends import Backend
from lmq_testservers import drop_prefix

UrlFactory = Callable[[Path], AbstractContextManager[str]]


@dataclass(frozen=True)
class BackendSpec:
    name: str
    make_url: UrlFactory
    enabled: Callable[[], str | None]  # None when usable here, else how to enable it
    shares_processes: bool = True  # separate processes see one store (not memory://)

    @property
    def kind(self) -> str:
        """The database kind (``mysql`` for ``mysql-update``)."""
        return self.name.split("-", 1)[0]


@contextmanager
def _sqlite(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path}/q.db"


@contextmanager
def _memory(tmp_path: Path) -> Iterator[str]:
    # a named store, so that two Queue objects of one test share it
    yield f"memory://test-{uuid.uuid4().hex}"


def _always() -> str | None:
    return None


def _server(env: str, options: str = "") -> tuple[UrlFactory, Callable[[], str | None]]:
    """A server backend named by ``$env``, isolated per test by a fresh prefix.

    The test gets the URL with its tables already migrated (server backends need ``lmq
    migrate``); afterwards every object under the prefix is dropped again.
    """

    @contextmanager
    def make(tmp_path: Path) -> Iterator[str]:
        base = os.environ[env]
        sep = "&" if "?" in base else "?"
        prefix = f"t{uuid.uuid4().hex[:8]}_"
        url = f"{base}{sep}prefix={prefix}" + (f"&{options}" if options else "")
        with lmq.Queue(url) as q:
            q.migrate()
        try:
            yield url
        finally:
            drop_prefix(base, prefix)

    def enabled() -> str | None:
        return None if os.environ.get(env) else f"set {env} to a server URL"

    return make, enabled


BACKENDS: list[BackendSpec] = [
    BackendSpec("sqlite", _sqlite, _always),
    BackendSpec("memory", _memory, _always, shares_processes=False),
    BackendSpec("postgresql", *_server("LMQ_TEST_POSTGRES_URL")),
    BackendSpec("mysql", *_server("LMQ_TEST_MYSQL_URL")),
    # the claim for servers without SKIP LOCKED, forced on the same server
    BackendSpec("mysql-update", *_server("LMQ_TEST_MYSQL_URL", "claim=update")),
    BackendSpec("redis", *_server("LMQ_TEST_REDIS_URL")),
]

_RAN: Counter[str] = Counter()  # backend name -> tests that set it up
_PROPERTY = "lmq_backend"


def _enabled() -> list[BackendSpec]:
    return [b for b in BACKENDS if b.enabled() is None]


@pytest.fixture(params=_enabled(), ids=lambda spec: spec.name)
def backend_spec(request: pytest.FixtureRequest) -> BackendSpec:
    spec: BackendSpec = request.param
    return spec


@pytest.fixture
def backend_url(
    backend_spec: BackendSpec, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    with backend_spec.make_url(tmp_path) as url:
        # counted where the reports arrive (pytest_runtest_logreport), so that under
        # pytest-xdist the controller, not each worker process, adds them up
        request.node.user_properties.append((_PROPERTY, backend_spec.name))
        yield url


@pytest.fixture
def queue(backend_url: str) -> Iterator[lmq.Queue]:
    with lmq.Queue(backend_url) as q:
        yield q


@pytest.fixture
def backend(queue: lmq.Queue) -> Backend:
    return queue.backend


# --- "every backend was exercised" ---------------------------------------------------------


def _required() -> list[str]:
    return [n.strip() for n in os.environ.get("LMQ_REQUIRE_BACKENDS", "").split(",") if n.strip()]


def _missing() -> list[str]:
    return [name for name in _required() if not _RAN[name]]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """One count per test whose store was set up (its setup report carries the name)."""
    if report.when != "setup":
        return
    for key, value in report.user_properties:
        if key == _PROPERTY:
            _RAN[str(value)] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.option.collectonly or hasattr(session.config, "workerinput"):
        return  # (a pytest-xdist worker sees only its share: the controller decides)
    if _missing() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if terminalreporter.config.option.collectonly:
        return
    ran = ", ".join(f"{name} ({_RAN[name]})" for name in sorted(_RAN)) or "none"
    off = ", ".join(f"{b.name} ({b.enabled()})" for b in BACKENDS if b.enabled() is not None)
    terminalreporter.write_line(f"lmq conformance backends run: {ran}")
    if off:
        terminalreporter.write_line(f"lmq conformance backends not configured: {off}")
    known = {b.name for b in BACKENDS}
    for name in _missing():
        why = "unknown backend name" if name not in known else "no test ran against it"
        terminalreporter.write_line(
            f"LMQ_REQUIRE_BACKENDS names {name!r}, but {why}: failing the run", red=True
        )
