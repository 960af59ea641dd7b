"""Two worker "hosts" in separate network namespaces share one server (per server backend).

Each namespace is linked to the root namespace by its own veth pair (10.77.N.0/30: the
root side .1, the namespace side .2) and runs its own UTS namespace with its own host
name, so the two ``lmq worker`` processes look and connect like two machines.  A PRIVATE
server listens on 127.0.0.1 and the two root-side veth addresses; each worker reaches it
through its own link (inside a namespace 127.0.0.1 is that namespace's own loopback, so
there is no other way).  These veth links are the only non-loopback addresses used.

The test fails, rather than skips, when network namespaces cannot be made here.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmq_private_servers import KINDS, PrivateServer, private_server, unavailable

from .conftest import APP, Harness, Proc, not_here

N = 2_000
CONCURRENCY = 10
TASK_SECONDS = 0.01


@dataclasses.dataclass(frozen=True)
class Link:
    ns: str  # the namespace
    host_if: str  # veth end in the root namespace
    ns_if: str  # veth end inside ``ns``
    host_ip: str  # 10.77.N.1: where the server listens for this namespace
    ns_ip: str  # 10.77.N.2: the "host" the worker runs on
    hostname: str  # the namespace's own host name (UTS namespace)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    res = subprocess.run([ip, *args], capture_output=True, text=True, timeout=30, check=False)
    if check and res.returncode != 0:
        pytest.fail(
            f"`ip {' '.join(args)}` failed ({res.returncode}): {res.stderr.strip()}"
            " -- network namespaces are needed for this test (run as root with iproute2)"
        )
    return res


def _free_subnets(count: int) -> list[int]:
    """``count`` values of N such that no address in 10.77.N.0/24 is configured yet."""
    used = set(re.findall(r"\b10\.77\.(\d+)\.", _ip("-o", "-4", "addr", "show").stdout))
    free = [n for n in range(1, 255) if str(n) not in used]
    assert len(free) >= count, "no free 10.77.N.0/30 subnets"
    start = int(uuid.uuid4().int % len(free))
    return [free[(start + i) % len(free)] for i in range(count)]


@contextlib.contextmanager
def namespaces(count: int = 2) -> Iterator[list[Link]]:
    """``count`` namespaces, each with a veth link to the root namespace; always removed."""
    if shutil.which("ip") is None and not os.path.exists("/usr/sbin/ip"):
        pytest.fail("`ip` (iproute2) is not installed: this test needs network namespaces")
    tag = uuid.uuid4().hex[:6]
    links: list[Link] = []
    made_ns: list[str] = []
    made_if: list[str] = []
    try:
        for i, n in enumerate(_free_subnets(count), start=1):
            link = Link(
                ns=f"lmqt{i}-{tag}",
                host_if=f"lq{tag}h{i}",
                ns_if=f"lq{tag}n{i}",
                host_ip=f"10.77.{n}.1",
                ns_ip=f"10.77.{n}.2",
                hostname=f"lmqhost{i}-{tag}",
            )
            _ip("netns", "add", link.ns)
            made_ns.append(link.ns)
            _ip("link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if)
            made_if.append(link.host_if)
            _ip("link", "set", link.ns_if, "netns", link.ns)
            _ip("addr", "add", f"{link.host_ip}/30", "dev", link.host_if)
            _ip("link", "set", link.host_if, "up")
            _ip("-n", link.ns, "addr", "add", f"{link.ns_ip}/30", "dev", link.ns_if)
            _ip("-n", link.ns, "link", "set", link.ns_if, "up")
            _ip("-n", link.ns, "link", "set", "lo", "up")
            links.append(link)
        for link in links:  # the link works both ways before anything uses it
            res = _ip(
                "netns", "exec", link.ns, "ping", "-c", "1", "-W", "2", link.host_ip, check=False
            )
            if res.returncode != 0 and shutil.which("ping"):
                pytest.fail(f"{link.ns} cannot reach {link.host_ip}: {res.stdout}{res.stderr}")
        yield links
    finally:
        problems = []
        for name in made_if:
            res = _ip("link", "del", name, check=False)  # deletes the peer too
            if res.returncode != 0 and "Cannot find device" not in res.stderr:
                problems.append(f"ip link del {name}: {res.stderr.strip()}")
        for ns in made_ns:
            res = _ip("netns", "del", ns, check=False)
            if res.returncode != 0:
                problems.append(f"ip netns del {ns}: {res.stderr.strip()}")
        leftover = [ns for ns in made_ns if ns in _ip("netns", "list", check=False).stdout]
        assert not problems and not leftover, f"cleanup failed: {problems} {leftover}"


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    why = unavailable(name)
    if why:
        not_here(why)
    return name


def _client_addresses(server: PrivateServer) -> set[str]:
    """The peer addresses of the server's client connections, as the server sees them."""
    if server.kind == "postgresql":
        import psycopg

        with psycopg.connect(server.url, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT DISTINCT host(client_addr) FROM pg_stat_activity"
                " WHERE client_addr IS NOT NULL"
            ).fetchall()
        return {r[0] for r in rows}
    if server.kind == "mysql":
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=server.port, user="root", connect_timeout=5)
        with contextlib.closing(conn), conn.cursor() as cur:
            cur.execute(
                "SELECT DISTINCT SUBSTRING_INDEX(host, ':', 1) FROM information_schema.processlist"
            )
            return {r[0] for r in cur.fetchall()}
    import redis

    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
    with contextlib.closing(client):
        return {c["addr"].rsplit(":", 1)[0] for c in client.client_list()}


def test_two_worker_hosts_in_network_namespaces_share_one_server(kind: str, tmp_path: Path) -> None:
    with (
        namespaces(2) as links,
        private_server(
            kind, tmp_path, hosts=["127.0.0.1", *(link.host_ip for link in links)]
        ) as server,
    ):
        h = Harness(tmp_path, kind, server.url)
        try:
            _run(h, server, links)
        finally:
            h.close()  # the workers die before their namespaces go


def _worker_in(h: Harness, link: Link, url: str) -> Proc:
    env = {**h.env, "LMQ_URL": url}
    argv = [
        "ip", "netns", "exec", link.ns,
        # its own host name too: a second machine, as far as lmq can tell
        "unshare", "--uts", "--", "sh", "-c", f'hostname {link.hostname} && exec "$@"', "sh",
        sys.executable, "-m", "lmq", "worker", "--app", APP, "--url", url,
        "-c", str(CONCURRENCY), "--lease", "10",
    ]  # fmt: skip
    return h.start(argv, f"worker-{link.ns}", env=env)


def _run(h: Harness, server: PrivateServer, links: list[Link]) -> None:
    h.migrate()  # from the root namespace, over 127.0.0.1
    workers = {link.ns: _worker_in(h, link, server.url_for(link.host_ip)) for link in links}
    procs = list(workers.values())

    def two_heartbeats() -> list[dict[str, object]] | None:
        rows = h.run_json("status", "--json")["workers"]
        return rows if len(rows) == 2 else None

    rows = h.wait_for(two_heartbeats, "both workers' heartbeat rows", 60, procs=procs)
    assert {r["host"] for r in rows} == {link.hostname for link in links}, rows
    by_host = {r["host"]: r["pid"] for r in rows}
    for link in links:
        assert by_host[link.hostname] == workers[link.ns].pid, (rows, link)

    ids = h.queue.enqueue_many([("stamped", {"n": i, "seconds": TASK_SECONDS}) for i in range(N)])
    assert len(ids) == N
    h.wait_for(lambda: len(h.stamped()) >= N // 4, "work to start", 60, procs=procs)
    seen = _client_addresses(server)
    for link in links:  # each worker talks to the server from its own namespace's address
        assert link.ns_ip in seen, f"no connection from {link.ns_ip}: {seen}"

    h.wait_counts(done=N, timeout=90, procs=procs)
    assert h.counts() == {"pending": 0, "processing": 0, "done": N, "dead": 0}

    runs = collections.Counter(key for key, _, _ in h.stamped())
    assert set(runs) == {str(i) for i in range(N)}, "some tasks never ran"
    twice = {k: c for k, c in runs.items() if c > 1}
    assert not twice, f"tasks ran more than once: {dict(list(twice.items())[:10])}"
    per_pid = collections.Counter(pid for _, pid, _ in h.stamped())
    assert set(per_pid) == {p.pid for p in procs}, f"runs per pid: {per_pid}"
    assert all(per_pid[p.pid] > 0 for p in procs)
    print(f"\n{server.kind}: runs per namespace worker: {dict(per_pid)}")

    for p in procs:
        p.signal(signal.SIGTERM)
    for p in procs:
        assert p.wait(30) == 0, p.stderr()[-3000:]
        p.assert_clean()
    assert h.run_json("status", "--json")["workers"] == []
