"""Private database servers for tests that must stop, restart or re-address a server.

Never the shared servers: each context manager below starts its OWN instance, on a free
port, with its own data directory under the test's ``tmp_path``, and removes it again::

    with private_server("postgresql", tmp_path) as srv:
        srv.url                      # postgresql://postgres@127.0.0.1:PORT/test
        srv.restart(down=1.5)        # stop, stay down 1.5 s, start: same port, same data
        srv.url_for("10.77.3.1")     # the same server through another listen address

* PostgreSQL: ``initdb``/``pg_ctl`` as the ``postgres`` user (``initdb`` refuses root),
  trust authentication, database ``test``.  Its files live in a ``lmq-pg-*`` directory of
  the system temp dir, linked from ``tmp_path`` (the postgres user cannot pass pytest's
  0700 temp root), and are removed with the server.
* MariaDB: ``mariadb-install-db`` into its own datadir, ``mariadbd --no-defaults`` as
  root; real grants (root, empty password, from 127.0.0.1 and from 10.77.0.0/16, the
  network-namespace test hosts), database ``test``.
* Redis: ``redis-server`` with ``appendonly yes`` and ``appendfsync always`` (what the
  "nothing is lost" rule needs from Redis), no RDB snapshots.

``hosts`` are the addresses the server listens on (127.0.0.1 always comes first); the
netns test adds the root-side veth addresses.  Every start waits for the server to answer
(with a timeout and an error that quotes the server's log); stopping kills whatever is
left of the server's processes.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

KINDS = ("postgresql", "mysql", "redis")
START_TIMEOUT = 60.0


class ServerError(RuntimeError):
    """A private server did not start or stop as asked (the message quotes its log)."""


# --- finding the binaries ----------------------------------------------------------------


def _which(name: str, extra_globs: Sequence[str] = ()) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for pattern in extra_globs:
        for path in sorted(glob.glob(pattern), reverse=True):  # the newest version first
            if os.access(path, os.X_OK):
                return path
    return None


def _pg_bin(name: str) -> str | None:
    return _which(name, [f"/usr/lib/postgresql/*/bin/{name}"])


def _binaries(kind: str) -> dict[str, str | None]:
    if kind == "postgresql":
        return {
            "initdb": _pg_bin("initdb"),
            "pg_ctl": _pg_bin("pg_ctl"),
            "runuser": _which("runuser"),
        }
    if kind == "mysql":
        return {
            "mariadb-install-db": _which("mariadb-install-db", ["/usr/bin/mysql_install_db"]),
            "mariadbd": _which("mariadbd", ["/usr/sbin/mariadbd", "/usr/sbin/mysqld"]),
        }
    if kind == "redis":
        return {"redis-server": _which("redis-server")}
    raise ValueError(kind)


def unavailable(kind: str) -> str | None:
    """None when a private ``kind`` server can be started here, else what is missing."""
    missing = [name for name, path in _binaries(kind).items() if path is None]
    if kind == "postgresql":
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            missing.append("the postgres user")
    if os.geteuid() != 0 and kind != "redis":
        missing.append("root (to run the server as its own user)")
    return f"{kind}: missing {', '.join(missing)}" if missing else None


# --- helpers -------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on right now (on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return f"(no log at {path})"


def _run(argv: list[str], log: Path, timeout: float = 120, **kw: Any) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        res = subprocess.run(
            argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False, **kw
        )
    if res.returncode != 0:
        raise ServerError(f"{' '.join(argv)} exited {res.returncode}:\n{_tail(log)}")


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and everything below it; wait for them to go."""
    try:
        top = psutil.Process(pid)
        procs = [*top.children(recursive=True), top]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=10)


def _wait(
    ready: Callable[[], bool],
    what: str,
    timeout: float,
    log: Path,
    alive: Callable[[], bool] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    last = "none"
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except Exception as exc:  # not up yet; keep no reference to the failed connection
            last = repr(exc)
        if last != "none":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()  # a driver's half-open socket from a failed attempt
        if alive is not None and not alive():
            raise ServerError(f"{what}: the server exited while starting:\n{_tail(log)}")
        time.sleep(0.1)
    raise ServerError(
        f"{what}: not ready after {timeout:g}s (last error: {last}); log:\n{_tail(log)}"
    )


# --- the servers -----------------------------------------------------------------------


class PrivateServer:
    """One private server instance: ``start()``, ``stop()``, ``restart()``, ``url``."""

    kind = ""

    def __init__(
        self, base: Path, hosts: Sequence[str] = ("127.0.0.1",), port: int | None = None
    ) -> None:
        self.base = base
        self.hosts = ["127.0.0.1", *[h for h in hosts if h != "127.0.0.1"]]
        self.port = port or free_port()
        self.log = base / "server.log"
        base.mkdir(parents=True, exist_ok=True)
        self.running = False

    # to be provided per kind
    def _init(self) -> None: ...
    def _start(self) -> None: ...
    def _stop(self, mode: str) -> None: ...
    def _kill(self) -> None: ...
    def _ready(self) -> bool: ...
    def url_for(self, host: str) -> str: ...
    def _alive(self) -> bool:
        return True

    @property
    def url(self) -> str:
        return self.url_for("127.0.0.1")

    def setup(self) -> PrivateServer:
        self._init()
        self.start()
        return self

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start on the same port and data directory; return once it answers."""
        self._start()
        self.running = True
        _wait(
            self._ready, f"private {self.kind} on port {self.port}", timeout, self.log, self._alive
        )

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown; ``immediate``: like a crash (no clean shutdown)."""
        if mode not in ("fast", "immediate"):
            raise ValueError(mode)
        try:
            self._stop(mode)
        finally:
            self._kill()
            self.running = False
        deadline = time.monotonic() + 10
        while any(_port_open(h, self.port) for h in self.hosts):
            if time.monotonic() > deadline:
                raise ServerError(f"private {self.kind}: port {self.port} still open")
            time.sleep(0.05)

    def restart(self, down: float = 1.5, mode: str = "fast") -> None:
        """Stop, stay down ``down`` seconds, start again (same port, same data)."""
        self.stop(mode)
        time.sleep(down)
        self.start()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.running:
                self.stop("immediate")
        self._kill()

    def remove(self) -> None:
        """Delete the data directory (after :meth:`close`)."""
        shutil.rmtree(self.base / "data", ignore_errors=True)


class PostgresServer(PrivateServer):
    kind = "postgresql"

    def __init__(
        self, base: Path, hosts: Sequence[str] = ("127.0.0.1",), port: int | None = None
    ) -> None:
        super().__init__(base, hosts, port)
        # The postgres user must reach its files, and pytest keeps its base temp directory
        # 0700 (resetting it whenever another session starts), so the files live in a
        # directory of their own in the system temp dir; base/ links to it.
        self.home = Path(tempfile.mkdtemp(prefix="lmq-pg-"))
        self.data = self.home / "data"
        self.sock = self.home / "sock"
        self.log = self.home / "server.log"
        for name in ("data", "server.log"):
            (base / name).symlink_to(self.home / name)
        self.initdb = _pg_bin("initdb") or "initdb"
        self.pg_ctl = _pg_bin("pg_ctl") or "pg_ctl"
        self._created_db = False

    def _as_postgres(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv]

    def _init(self) -> None:
        import pwd

        pw = pwd.getpwnam("postgres")
        self.sock.mkdir(exist_ok=True)
        self.log.touch()
        for p in (self.home, self.sock, self.log):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        _run(
            self._as_postgres(
                self.initdb,
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ),
            self.log,
        )
        with open(self.data / "pg_hba.conf", "a") as f:
            f.write(
                "\n# lmq tests: the network-namespace test hosts\nhost all all 10.77.0.0/16 trust\n"
            )
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(
                "\nmax_connections = 300\nfsync = on\nshared_buffers = 64MB\n"
                "unix_socket_permissions = 0777\n"
            )

    def _start(self) -> None:
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses={','.join(self.hosts)}"
        _run(
            self._as_postgres(
                self.pg_ctl,
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                opts,
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
                "start",
            ),
            self.base / "pg_ctl.log",
        )

    def _ready(self) -> bool:
        import psycopg

        with psycopg.connect(
            self.url_for("127.0.0.1", db="postgres"), connect_timeout=2, autocommit=True
        ) as conn:
            if not self._created_db:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'test'")
                if exists.fetchone() is None:
                    conn.execute("CREATE DATABASE test")
                self._created_db = True
        return True

    def _pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _alive(self) -> bool:
        return True  # pg_ctl -w already waited; _ready retries the connection

    def _stop(self, mode: str) -> None:
        if self._pid() is None:
            return
        _run(
            self._as_postgres(
                self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop"
            ),
            self.base / "pg_ctl.log",
            timeout=60,
        )

    def _kill(self) -> None:
        pid = self._pid()
        if pid is not None and psutil.pid_exists(pid):
            _kill_tree(pid)
            with contextlib.suppress(OSError):
                (self.data / "postmaster.pid").unlink()

    def url_for(self, host: str, db: str = "test") -> str:
        return f"postgresql://postgres@{host}:{self.port}/{db}"

    def remove(self) -> None:
        # keep the log next to the test's other files, then drop the server's own directory
        with contextlib.suppress(OSError):
            (self.base / "server.log").unlink()
            shutil.copyfile(self.log, self.base / "server.log")
        (self.base / "data").unlink(missing_ok=True)
        shutil.rmtree(self.home, ignore_errors=True)


class _ChildProcessServer(PrivateServer):
    """A server that runs as our child process (``self.proc``): SIGTERM or SIGKILL it."""

    proc: subprocess.Popen[bytes] | None
    shutdown_timeout = 30.0

    def _stop(self, mode: str) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM if mode == "fast" else signal.SIGKILL)
        try:
            self.proc.wait(self.shutdown_timeout)
        except subprocess.TimeoutExpired:
            raise ServerError(
                f"{self.kind} did not shut down in {self.shutdown_timeout:g}s:\n"
                f"{_tail(self.log)}"
            ) from None

    def _kill(self) -> None:
        if self.proc is not None:
            _kill_tree(self.proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)


class MariaDBServer(_ChildProcessServer):
    kind = "mysql"
    shutdown_timeout = 60.0

    def __init__(
        self, base: Path, hosts: Sequence[str] = ("127.0.0.1",), port: int | None = None
    ) -> None:
        super().__init__(base, hosts, port)
        self.data = base / "data"
        self.sock = base / "mysqld.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self._granted = False

    def _init(self) -> None:
        install = _binaries("mysql")["mariadb-install-db"] or "mariadb-install-db"
        _run(
            [
                install,
                "--no-defaults",
                f"--datadir={self.data}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            self.base / "install.log",
        )

    def _start(self) -> None:
        mariadbd = _binaries("mysql")["mariadbd"] or "mariadbd"
        argv = [
            mariadbd,
            "--no-defaults",
            f"--datadir={self.data}",
            f"--port={self.port}",
            f"--socket={self.sock}",
            f"--bind-address={','.join(self.hosts)}",
            "--user=root",
            "--skip-name-resolve",
            f"--pid-file={self.base / 'mysqld.pid'}",
            f"--log-error={self.log}",
            "--innodb-buffer-pool-size=128M",
            "--max-connections=500",
            "--innodb-flush-log-at-trx-commit=1",
        ]
        with open(self.base / "mysqld.out", "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _ready(self) -> bool:
        import pymysql

        if not (self.sock.exists() and _port_open("127.0.0.1", self.port)):
            return False
        conn = pymysql.connect(
            unix_socket=str(self.sock), user="root", connect_timeout=2, autocommit=True
        )
        with contextlib.closing(conn), conn.cursor() as cur:
            if not self._granted:
                cur.execute("CREATE DATABASE IF NOT EXISTS test CHARACTER SET utf8mb4")
                for host in ("127.0.0.1", "10.77.%"):
                    cur.execute(f"CREATE USER IF NOT EXISTS 'root'@'{host}' IDENTIFIED BY ''")
                    cur.execute(f"GRANT ALL ON *.* TO 'root'@'{host}' WITH GRANT OPTION")
                self._granted = True
        # and over TCP, as lmq connects
        conn = pymysql.connect(
            host="127.0.0.1", port=self.port, user="root", database="test", connect_timeout=2
        )
        conn.close()
        return True

    def url_for(self, host: str) -> str:
        return f"mysql://root@{host}:{self.port}/test"


class RedisServer(_ChildProcessServer):
    kind = "redis"

    def __init__(
        self, base: Path, hosts: Sequence[str] = ("127.0.0.1",), port: int | None = None
    ) -> None:
        super().__init__(base, hosts, port)
        self.data = base / "data"
        self.proc: subprocess.Popen[bytes] | None = None

    def _init(self) -> None:
        self.data.mkdir(exist_ok=True)

    def _start(self) -> None:
        argv = [
            _binaries("redis")["redis-server"] or "redis-server",
            "--port",
            str(self.port),
            "--bind",
            *self.hosts,
            "--dir",
            str(self.data),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--logfile",
            str(self.log),
            "--maxclients",
            "1000",
        ]
        with open(self.base / "redis.out", "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _ready(self) -> bool:
        import redis

        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2
        )
        with contextlib.closing(client):
            return bool(client.ping())  # raises BusyLoadingError while loading the AOF

    def url_for(self, host: str) -> str:
        return f"redis://{host}:{self.port}/0"


SERVERS: dict[str, type[PrivateServer]] = {
    "postgresql": PostgresServer,
    "mysql": MariaDBServer,
    "redis": RedisServer,
}


@contextlib.contextmanager
def private_server(
    kind: str,
    tmp_path: Path,
    hosts: Sequence[str] = ("127.0.0.1",),
) -> Iterator[PrivateServer]:
    """Start a private ``kind`` server under ``tmp_path / kind``; stop and remove it after."""
    why = unavailable(kind)
    if why:
        raise ServerError(f"cannot start a private server: {why}")
    server = SERVERS[kind](tmp_path / f"srv-{kind}", hosts)
    try:
        server.setup()
        yield server
    finally:
        server.close()
        server.remove()


def private_postgres(
    tmp_path: Path, hosts: Sequence[str] = ("127.0.0.1",)
) -> contextlib.AbstractContextManager[PrivateServer]:
    return private_server("postgresql", tmp_path, hosts)


def private_mariadb(
    tmp_path: Path, hosts: Sequence[str] = ("127.0.0.1",)
) -> contextlib.AbstractContextManager[PrivateServer]:
    return private_server("mysql", tmp_path, hosts)


def private_redis(
    tmp_path: Path, hosts: Sequence[str] = ("127.0.0.1",)
) -> contextlib.AbstractContextManager[PrivateServer]:
    return private_server("redis", tmp_path, hosts)
