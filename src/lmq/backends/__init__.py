"""Backends: one module (or subpackage) per storage engine, behind ``base.Backend``.

Server backends live in subpackages that import their driver lazily; a missing driver
becomes :class:`~lmq.exceptions.DriverMissing` naming the extra to install.
"""

from __future__ import annotations

import importlib

from ..exceptions import DriverMissing
from ..url import QueueURL, parse_url
from .base import Backend, WakeSource

# kind -> (module, class, the driver's import name, the extra that installs it)
_SERVER_BACKENDS = {
    "postgresql": ("lmq.backends.postgres", "PostgresBackend", "psycopg", "postgres"),
    "mysql": ("lmq.backends.mysql", "MySQLBackend", "pymysql", "mysql"),
    "redis": ("lmq.backends.redis", "RedisBackend", "redis", "redis"),
}


def open_backend(url: str | QueueURL, *, create: bool = True) -> Backend:
    """Open the backend a URL names.  ``create=False``: never create a missing SQLite file.

    Server backends never create their tables implicitly: ``lmq migrate`` does.
    """
    parsed = url if isinstance(url, QueueURL) else parse_url(url)
    if parsed.kind == "sqlite":
        from .sqlite import SQLiteBackend

        return SQLiteBackend(parsed, create=create)
    if parsed.kind == "memory":
        from .memory import MemoryBackend

        return MemoryBackend(parsed)
    module, cls, driver, extra = _SERVER_BACKENDS[parsed.kind]
    try:
        importlib.import_module(driver)
    except ImportError:
        raise DriverMissing(
            f"the {parsed.kind} backend needs its driver ({driver}): "
            f"pip install 'lmq[{extra}]'"
        ) from None
    backend: Backend = getattr(importlib.import_module(module), cls)(parsed)
    return backend


__all__ = ["Backend", "WakeSource", "open_backend"]
