"""The application's own connection, for transactional enqueue on SQL backends.

``queue.enqueue(..., connection=conn)`` writes the task with ``conn``, inside whatever
transaction the application has open on it, so the task exists exactly when the
application's change commits (and is gone if it rolls back).  lmq never commits or rolls
back that connection.  Accepted: :mod:`sqlite3`, psycopg 3, PyMySQL and SQLAlchemy
``Connection`` objects (any driver of those three dialects).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..exceptions import ConfigError

_DIALECTS = {"sqlite": "sqlite", "postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}


@dataclass(frozen=True)
class AppConnection:
    """A DB-API cursor on the application's connection, and the SQL dialect it speaks."""

    dialect: str  # sqlite | postgresql | mysql
    cursor: Any


def _dialect_of_module(conn: object) -> str | None:
    module = type(conn).__module__.split(".", 1)[0]
    if module in {"sqlite3", "_sqlite3"}:
        return "sqlite"
    if module == "psycopg":
        return "postgresql"
    if module == "pymysql":
        return "mysql"
    return None


def app_connection(connection: object, expected: str) -> AppConnection:
    """Adapt ``connection`` (raise ConfigError if it is not one for ``expected``)."""
    if hasattr(connection, "exec_driver_sql") and hasattr(connection, "in_transaction"):
        sa: Any = connection  # a SQLAlchemy Connection
        dialect = _DIALECTS.get(sa.dialect.name)
        if dialect is not None and dialect == expected:
            if not sa.in_transaction():
                sa.begin()  # what SQLAlchemy's autobegin would do on the next execute
            return AppConnection(dialect, sa.connection.cursor())
    else:
        dialect = _dialect_of_module(connection)
        if dialect is not None and dialect == expected:
            return AppConnection(dialect, connection.cursor())  # type: ignore[attr-defined]
    raise ConfigError(
        f"connection= must be a {expected} connection for this queue's backend "
        f"(sqlite3, psycopg, PyMySQL or a SQLAlchemy Connection), got {type(connection).__name__}"
    )


def refuse_connection(kind: str) -> ConfigError:
    return ConfigError(
        f"transactional enqueue (connection=...) needs an SQL backend; the {kind} "
        "backend has no transaction to join"
    )
