"""Parse queue URLs and open the matching backend."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .exceptions import ConfigError

DEFAULT_URL = "sqlite:///lmq.db"

_SCHEMES = {
    "sqlite": "sqlite",
    "memory": "memory",
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "redis": "redis",
    "rediss": "redis",
}


@dataclass(frozen=True)
class QueueURL:
    raw: str
    kind: str  # sqlite | memory | postgresql | mysql | redis
    path: str  # sqlite: file path; others: unused here
    options: dict[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return self.options.get("prefix", "")


def default_url() -> str:
    return os.environ.get("LMQ_URL") or DEFAULT_URL


def mask(url: str) -> str:
    """The URL with its password replaced by ***, for messages and logs."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def parse_url(url: str) -> QueueURL:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"invalid queue URL {mask(str(url))!r}: expected e.g. sqlite:///lmq.db, "
            "postgresql://host/db, mysql://user@host/db or redis://host:6379/0"
        )
    scheme = url.split("://", 1)[0].lower().split("+", 1)[0]
    kind = _SCHEMES.get(scheme)
    if kind is None:
        raise ConfigError(
            f"unknown queue URL scheme {scheme!r} in {mask(url)!r}: "
            "use sqlite, postgresql, mysql or redis"
        )
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    if kind == "sqlite":
        # SQLAlchemy's rule: sqlite:///relative.db and sqlite:////absolute.db
        rest = url.split("://", 1)[1].split("?", 1)[0]
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(
                f"invalid SQLite URL {url!r}: use sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        path = rest[1:]
        if not path:
            raise ConfigError(f"invalid SQLite URL {url!r}: no file name")
        return QueueURL(url, kind, path, options)
    return QueueURL(url, kind, urlunsplit(parts._replace(query="")), options)
