"""SQLite backend (the embedded default): statements in ``queries.sql``, schema in
``migrations/``."""

from .backend import SQLiteBackend
from .watch import WalWatcher

__all__ = ["SQLiteBackend", "WalWatcher"]
