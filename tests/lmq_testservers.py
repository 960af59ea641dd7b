"""Test-side helpers for the shared database servers (no lmq code: plain drivers).

``drop_prefix(url, prefix)`` removes every object a test created under its prefix, so the
shared ``test`` databases do not fill up with tables (or Redis with keys) run after run.
"""

from __future__ import annotations

import contextlib
from urllib.parse import unquote, urlsplit


def drop_prefix(url: str, prefix: str) -> None:
    """Drop every table, function and key named ``prefix…`` on the server ``url`` names."""
    assert prefix and prefix.replace("_", "").isalnum(), prefix
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme in {"postgres", "postgresql"}:
        _drop_postgres(url, prefix)
    elif scheme in {"mysql", "mariadb"}:
        _drop_mysql(url, prefix)
    elif scheme in {"redis", "rediss"}:
        _drop_redis(url, prefix)


def _like(prefix: str) -> str:
    """A LIKE pattern for names starting with ``prefix`` (``_`` escaped: not a wildcard)."""
    return prefix.replace("_", "\\_") + "%"


def _drop_postgres(url: str, prefix: str) -> None:
    import psycopg

    dsn = url.split("?", 1)[0].replace("postgres://", "postgresql://", 1)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        tables = conn.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables"
            " WHERE tablename LIKE %s",
            (_like(prefix),),
        ).fetchall()
        for (name,) in tables:
            conn.execute(f"DROP TABLE IF EXISTS {name} CASCADE")
        funcs = conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.proname LIKE %s",
            (_like(prefix),),
        ).fetchall()
        for (sig,) in funcs:
            conn.execute(f"DROP FUNCTION IF EXISTS {sig} CASCADE")
        types = conn.execute(
            "SELECT quote_ident(typname) FROM pg_type WHERE typname LIKE %s AND typtype = 'e'",
            (_like(prefix),),
        ).fetchall()
        for (name,) in types:
            conn.execute(f"DROP TYPE IF EXISTS {name} CASCADE")


def _drop_mysql(url: str, prefix: str) -> None:
    import pymysql

    parts = urlsplit(url)
    conn = pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=parts.path.lstrip("/") or None,
        connect_timeout=5,
        autocommit=True,
    )
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = DATABASE() AND table_name LIKE %s",
            (_like(prefix),),
        )
        names = [r[0] for r in cur.fetchall()]
        if names:
            cur.execute("DROP TABLE IF EXISTS " + ", ".join(f"`{n}`" for n in names))


def _drop_redis(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url.split("?", 1)[0], socket_timeout=5)
    with contextlib.closing(client):
        batch = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)

