"""Shared CLI pieces: the group, --url/--app options, loading the app, output helpers."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from .. import __version__
from ..exceptions import AppImportError, ConfigError
from ..queue import Queue
from ..url import default_url, mask

F = TypeVar("F", bound=Callable[..., Any])


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="lmq")
def cli() -> None:
    """lmq: a local message queue for background work.

    Tasks are rows in a database you already run (SQLite by default); `lmq worker`
    claims and runs them.  Every command that touches the queue takes --url (default
    $LMQ_URL, else sqlite:///lmq.db).  Start with `lmq demo`.
    """


def url_option(f: F) -> F:
    f = click.option(
        "--url",
        metavar="URL",
        help="Queue database URL [default: $LMQ_URL, else sqlite:///lmq.db; "
        "with --app and no URL, the app's Queue URL].",
    )(f)
    return click.option(
        "--app",
        metavar="MODULE[:ATTR]",
        envvar="LMQ_APP",
        help="Importable module that defines your Queue and tasks [$LMQ_APP].",
    )(f)


def load_app(spec: str) -> Queue:
    """Import ``module`` or ``module:attr`` and return its :class:`Queue`."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise AppImportError(f"invalid --app {spec!r}: expected MODULE or MODULE:ATTR")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the current project imports
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppImportError(
                f"cannot import app module {module_name!r}: no module named {exc.name!r} "
                f"(run from your project's directory or check --app / $LMQ_APP)"
            ) from None
        raise AppImportError(f"importing app module {module_name!r} failed: {exc}") from None
    except Exception as exc:  # the user's module raised while importing
        if os.environ.get("LMQ_DEBUG"):
            raise
        raise AppImportError(
            f"importing app module {module_name!r} failed: {type(exc).__name__}: {exc} "
            "(set LMQ_DEBUG=1 for the traceback)"
        ) from None
    if attr:
        obj = getattr(module, attr, None)
        if not isinstance(obj, Queue):
            raise AppImportError(f"{module_name}:{attr} is not an lmq.Queue")
        return obj
    found = {name: v for name, v in vars(module).items() if isinstance(v, Queue)}
    if not found:
        raise AppImportError(f"app module {module_name!r} defines no lmq.Queue")
    if len(set(map(id, found.values()))) > 1:
        names = ", ".join(f"{module_name}:{n}" for n in sorted(found))
        raise AppImportError(
            f"app module {module_name!r} defines several queues; pick one: {names}"
        )
    return next(iter(found.values()))


def open_queue(url: str | None, app: str | None, *, create: bool = False) -> Queue:
    """The queue a command works on: --url, else $LMQ_URL, else the app's, else the default.

    One-shot commands pass ``create=False`` so a mistyped SQLite path is reported
    instead of silently creating an empty database.
    """
    queue = load_app(app) if app else None
    chosen = url or os.environ.get("LMQ_URL") or (queue.url if queue else None) or default_url()
    if queue is None:
        queue = Queue(chosen)
    queue.use_url(chosen, create=create)
    return queue


class MaskingFormatter(logging.Formatter):
    """A console line with every URL's password replaced by ***."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return mask(text) if "://" in text else text


def setup_logging(verbose: int, quiet: bool = False) -> None:
    """Console lines on stderr.

    ``-q``: warnings and errors; default: worker events (start, stop, signals, lost and
    regained backend, failures, dead letters); ``-v``: every task event too (claimed,
    succeeded); ``-vv``: also other libraries' debug logs (drivers, asyncio), each line
    naming its logger.  URLs are masked on every line.
    """
    level = logging.WARNING if quiet else (logging.INFO if verbose <= 0 else logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s %(levelname)-7s " + ("%(name)s: " if verbose >= 2 else "") + "%(message)s"
    handler.setFormatter(MaskingFormatter(fmt, "%H:%M:%S"))
    handler.setLevel(level)
    root = logging.getLogger("lmq")
    root.handlers[:] = [handler]
    # the logger passes INFO on; DEBUG, the per-task events, with -v (or --log-file, which
    # sets the logger to DEBUG and leaves this handler's level alone)
    root.setLevel(min(level, logging.INFO))
    root.propagate = False
    if verbose >= 2 and not quiet:
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.DEBUG)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def parse_json_object(text: str, what: str = "payload") -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"invalid JSON {what}: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"the {what} must be a JSON object, e.g. '{{\"id\": 1}}'")
    return value


def ago(dt: datetime | None) -> str:
    """'5s ago', 'in 3m', '-' for None."""
    if dt is None:
        return "-"
    secs = (datetime.now(UTC) - dt).total_seconds()
    text = human_seconds(abs(secs))
    return f"{text} ago" if secs >= 0 else f"in {text}"


def human_seconds(secs: float) -> str:
    if secs < 1:
        return f"{secs * 1000:.0f}ms"
    if secs < 120:
        return f"{secs:.0f}s"
    if secs < 7200:
        return f"{secs / 60:.0f}m"
    if secs < 172800:
        return f"{secs / 3600:.1f}h"
    return f"{secs / 86400:.1f}d"


def masked(queue: Queue) -> str:
    return mask(queue.url)
