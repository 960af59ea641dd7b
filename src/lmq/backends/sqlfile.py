"""Load named SQL statements from a ``.sql`` file kept next to a backend.

A file holds blocks introduced by ``-- name: NAME``; ``{prefix}`` in a statement is
replaced by the table prefix (checked to be a plain identifier before it gets here).
"""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_PREFIX = re.compile(r"^[A-Za-z0-9_]{0,16}$")


def check_prefix(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"invalid table prefix {prefix!r}: use up to 16 letters, digits or underscores"
        )
    return prefix


def load_queries(package: str, filename: str, prefix: str) -> dict[str, str]:
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        queries[name] = body.strip().rstrip(";").replace("{prefix}", prefix)
    return queries


def load_migrations(package: str, prefix: str) -> list[tuple[int, str, str]]:
    """Return ``(number, name, sql)`` for every ``NNNN_name.sql`` in ``package``."""
    found = []
    for entry in resources.files(package).iterdir():
        m = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if m:
            sql = entry.read_text(encoding="utf-8").replace("{prefix}", prefix)
            found.append((int(m.group(1)), m.group(2), sql))
    return sorted(found)


def load_schema(package: str, prefix: str, filename: str = "schema.sql") -> str:
    """The current schema (``schema.sql`` next to a backend) with the prefix filled in."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    return text.replace("{prefix}", prefix)
