"""SQLite backend (the embedded default): statements in ``queries.sql``, schema in
``migrations/``."""

from .backend import DataVersionWatcher, SQLiteBackend

__all__ = ["DataVersionWatcher", "SQLiteBackend"]
