"""MySQL / MariaDB backend (PyMySQL): statements in ``queries.sql``, the current schema in
``schema.sql``, upgrades in ``migrations/``.  See :mod:`lmq.backends.mysql.backend`."""

from .backend import MySQLBackend

__all__ = ["MySQLBackend"]
