"""PostgreSQL backend (``lmq[postgres]``): statements in ``queries.sql``, the schema in
``schema.sql`` and ``migrations/``, LISTEN/NOTIFY wake-ups in ``wake.py``."""

from .backend import PostgresBackend
from .wake import ListenWakeSource

__all__ = ["ListenWakeSource", "PostgresBackend"]
