"""Backends: one module (or subpackage) per storage engine, behind ``base.Backend``."""

from __future__ import annotations

from ..exceptions import ConfigError
from ..url import QueueURL, parse_url
from .base import Backend, WakeSource

_LATER = {
    "postgresql": "postgres",
    "mysql": "mysql",
    "redis": "redis",
}


def open_backend(url: str | QueueURL, *, create: bool = True) -> Backend:
    """Open the backend a URL names.  ``create=False``: never create a missing SQLite file."""
    parsed = url if isinstance(url, QueueURL) else parse_url(url)
    if parsed.kind == "sqlite":
        from .sqlite import SQLiteBackend

        return SQLiteBackend(parsed, create=create)
    if parsed.kind == "memory":
        from .memory import MemoryBackend

        return MemoryBackend(parsed)
    raise ConfigError(
        f"the {parsed.kind} backend is not part of this lmq version yet "
        f"(it will come as lmq[{_LATER[parsed.kind]}]); use sqlite:///path.db for now"
    )


__all__ = ["Backend", "WakeSource", "open_backend"]
