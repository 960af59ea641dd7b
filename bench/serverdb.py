"""Isolation on the shared servers: what the benchmark creates, and how it removes it.

- PostgreSQL / MariaDB: every system gets its own database named ``lmqbench_<system>``,
  dropped and created afresh before its measurement and dropped afterwards (lmq also gets
  a fresh ``?prefix=`` inside its database).  No other database is touched.
- Redis: lmq gets a fresh key prefix in db ``LMQ_REDIS_DB`` and only keys under that
  prefix are deleted afterwards.  The peers (whose key names are fixed) get the dedicated
  db ``PEER_REDIS_DB``, flushed (FLUSHDB of that db alone, never FLUSHALL) before and after
  each peer; the bench refuses to flush it if it holds keys it did not put there.
"""

from __future__ import annotations

import contextlib
import secrets
from urllib.parse import unquote, urlsplit, urlunsplit

from procs import BenchError

LMQ_REDIS_DB = 12
PEER_REDIS_DB = 13
OWNER_KEY = "lmqbench:owner"  # set in the peers' db while the bench uses it


def fresh_prefix() -> str:
    return f"b{secrets.token_hex(3)}_"


def with_path(url: str, path: str, query: str = "") -> str:
    """``url`` with its path (database name / db number) and query replaced."""
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + path, query, ""))


def plain(url: str) -> str:
    """A URL a driver takes: no query string, ``postgresql://`` scheme."""
    return url.split("?", 1)[0]


# --- PostgreSQL -----------------------------------------------------------------------------


def _pg_admin(url: str):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(plain(url), autocommit=True, connect_timeout=5)


def pg_fresh_db(url: str, name: str) -> str:
    """Drop and create database ``name`` on ``url``'s server; its URL."""
    assert name.startswith("lmqbench_"), name
    with _pg_admin(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_path(url, name)


def pg_drop_db(url: str, name: str) -> None:
    assert name.startswith("lmqbench_"), name
    with contextlib.suppress(Exception), _pg_admin(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_server_version(url: str) -> str:
    try:
        with _pg_admin(url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "?"
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"


# --- MariaDB / MySQL ------------------------------------------------------------------------


def _my_admin(url: str):  # type: ignore[no-untyped-def]
    import pymysql

    p = urlsplit(url)
    return pymysql.connect(
        host=p.hostname or "127.0.0.1",
        port=p.port or 3306,
        user=unquote(p.username or "root"),
        password=unquote(p.password or ""),
        connect_timeout=5,
        autocommit=True,
    )


def my_fresh_db(url: str, name: str) -> str:
    assert name.startswith("lmqbench_"), name
    conn = _my_admin(url)
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    return with_path(url, name)


def my_drop_db(url: str, name: str) -> None:
    assert name.startswith("lmqbench_"), name
    with contextlib.suppress(Exception):
        conn = _my_admin(url)
        with contextlib.closing(conn), conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def my_server_version(url: str) -> str:
    try:
        conn = _my_admin(url)
        with contextlib.closing(conn), conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            row = cur.fetchone()
            return str(row[0]) if row else "?"
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"


# --- Redis ----------------------------------------------------------------------------------


def _redis(url: str):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(plain(url), socket_timeout=30)


def redis_db_url(url: str, db: int) -> str:
    return with_path(url, str(db))


def redis_claim_peer_db(url: str) -> str:
    """Empty the peers' dedicated db (only if empty or ours) and mark it; its URL."""
    peer_url = redis_db_url(url, PEER_REDIS_DB)
    r = _redis(peer_url)
    with contextlib.closing(r):
        if r.dbsize() and not r.exists(OWNER_KEY):
            raise BenchError(
                f"Redis db {PEER_REDIS_DB} holds {r.dbsize()} keys the bench did not write; "
                "it flushes that db between peers, so it refuses to run there"
            )
        r.flushdb()
        r.set(OWNER_KEY, "lmq bench/")
    return peer_url


def redis_release_peer_db(url: str) -> None:
    r = _redis(redis_db_url(url, PEER_REDIS_DB))
    with contextlib.closing(r), contextlib.suppress(Exception):
        if r.exists(OWNER_KEY) or not r.dbsize():
            r.flushdb()


def redis_drop_prefix(url: str, prefix: str) -> int:
    """Delete the keys under ``prefix`` in ``url``'s db; how many."""
    assert prefix and prefix.replace("_", "").isalnum(), prefix
    r = _redis(url)
    n = 0
    with contextlib.closing(r):
        batch: list[bytes] = []
        for key in r.scan_iter(match=f"{prefix}*", count=5000):
            batch.append(key)
            if len(batch) >= 2000:
                n += r.unlink(*batch)
                batch.clear()
        if batch:
            n += r.unlink(*batch)
    return n


def redis_server_version(url: str) -> str:
    try:
        r = _redis(url)
        with contextlib.closing(r):
            return str(r.info("server")["redis_version"])
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
