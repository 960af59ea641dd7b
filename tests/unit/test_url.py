"""Queue URLs: SQLAlchemy's SQLite rule, options, schemes, password masking."""

from __future__ import annotations

import sys

import pytest

import lmq
from lmq.backends import open_backend
from lmq.url import DEFAULT_URL, default_url, mask, parse_url


def test_relative_sqlite_path() -> None:
    u = parse_url("sqlite:///rel.db")
    assert (u.kind, u.path, u.options, u.prefix) == ("sqlite", "rel.db", {}, "")


def test_relative_sqlite_path_with_directories() -> None:
    assert parse_url("sqlite:///data/queue/lmq.db").path == "data/queue/lmq.db"


def test_absolute_sqlite_path() -> None:
    assert parse_url("sqlite:////abs.db").path == "/abs.db"
    assert parse_url("sqlite:////var/lib/lmq/q.db").path == "/var/lib/lmq/q.db"


def test_query_options_are_parsed_and_kept_out_of_the_path() -> None:
    u = parse_url("sqlite:////tmp/q.db?prefix=wp_&synchronous=FULL&empty=")
    assert u.path == "/tmp/q.db"
    assert u.options == {"prefix": "wp_", "synchronous": "FULL", "empty": ""}
    assert u.prefix == "wp_"
    assert u.raw == "sqlite:////tmp/q.db?prefix=wp_&synchronous=FULL&empty="


def test_server_url_options() -> None:
    u = parse_url("mysql://wp:pw@db.example/site?prefix=wp_")
    assert (u.kind, u.prefix) == ("mysql", "wp_")
    assert "prefix" not in u.path


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("SQLITE:///x.db", "sqlite"),
        ("memory://", "memory"),
        ("memory://shared", "memory"),
        ("postgres://h/db", "postgresql"),
        ("postgresql://h/db", "postgresql"),
        ("postgresql+psycopg://h/db", "postgresql"),
        ("mysql://h/db", "mysql"),
        ("mariadb://h/db", "mysql"),
        ("redis://localhost:6379/0", "redis"),
        ("rediss://localhost:6379/0", "redis"),
    ],
)
def test_schemes(url: str, kind: str) -> None:
    assert parse_url(url).kind == kind


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://host/file", "unknown queue URL scheme 'ftp'"),
        ("lmq.db", "invalid queue URL"),
        ("", "invalid queue URL"),
        ("sqlite:/x.db", "invalid queue URL"),
        ("sqlite://x.db", "invalid SQLite URL"),
        ("sqlite://", "invalid SQLite URL"),
        ("sqlite:///", "invalid SQLite URL"),
        ("sqlite:///?prefix=x", "invalid SQLite URL"),
    ],
)
def test_bad_urls_raise_config_error(url: str, why: str) -> None:
    with pytest.raises(lmq.ConfigError, match=why):
        parse_url(url)


def test_non_string_url_is_a_config_error() -> None:
    with pytest.raises(lmq.ConfigError):
        parse_url(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:s3cret@host/db", "postgresql://user:***@host/db"),
        ("postgresql://user:s3cret@host:5432/db?x=1", "postgresql://user:***@host:5432/db?x=1"),
        ("redis://:s3cret@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("mysql://user@host/db", "mysql://user@host/db"),
        ("mysql://host:3306/db", "mysql://host:3306/db"),
        ("sqlite:////tmp/q.db", "sqlite:////tmp/q.db"),
    ],
)
def test_mask_hides_only_the_password(url: str, masked: str) -> None:
    assert mask(url) == masked


def test_errors_never_show_the_password() -> None:
    with pytest.raises(lmq.ConfigError) as info:
        parse_url("ftp://user:s3cret@host/x")
    assert "s3cret" not in str(info.value)
    assert "***" in str(info.value)


def test_queue_repr_masks_the_password() -> None:
    queue = lmq.Queue("postgresql://user:s3cret@host/db")
    assert "s3cret" not in repr(queue)


def test_default_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMQ_URL", raising=False)
    assert default_url() == DEFAULT_URL == "sqlite:///lmq.db"
    monkeypatch.setenv("LMQ_URL", "")
    assert default_url() == "sqlite:///lmq.db"
    monkeypatch.setenv("LMQ_URL", "memory://")
    assert default_url() == "memory://"


@pytest.mark.parametrize(
    ("url", "driver", "extra"),
    [
        ("postgresql://h/db", "psycopg", "postgres"),
        ("mysql://h/db", "pymysql", "mysql"),
        ("redis://h", "redis", "redis"),
    ],
)
def test_a_missing_driver_names_the_extra(
    url: str, driver: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, driver, None)  # makes `import driver` fail
    with pytest.raises(lmq.exceptions.DriverMissing, match=rf"pip install 'lmq\[{extra}\]'"):
        open_backend(url)
