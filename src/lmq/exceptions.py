"""One exception tree for lmq.

Everything lmq raises on purpose derives from :class:`LmqError`; the CLI turns any of
them into a single clear line and exit status 2 (see ``lmq.cli``).  ``Retry`` and
``Discard`` are not errors: a handler raises them to steer its own task.
"""

from __future__ import annotations


class LmqError(Exception):
    """Base of every error lmq raises on purpose."""


class ConfigError(LmqError):
    """Bad configuration: an unparsable URL, an unknown option, a missing --app."""


class AppImportError(ConfigError):
    """The module given with --app (or $LMQ_APP) could not be imported or has no Queue."""


class PayloadError(LmqError, TypeError):
    """A payload that JSON cannot hold (also a TypeError, as the contract says)."""


class PayloadValueError(LmqError, ValueError):
    """A payload value JSON refuses (NaN, infinity): also a ValueError."""


class UnknownTaskError(LmqError, KeyError):
    """A task name that nothing registered."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a plain sentence
        return str(self.args[0]) if self.args else "unknown task"


# --- backend subtree -------------------------------------------------------------


class BackendError(LmqError):
    """Something went wrong talking to the storage backend."""


class DriverMissing(BackendError):
    """The backend's driver is not installed; the message names the extra to install."""


class BackendUnavailable(BackendError):
    """The server or file cannot be reached (or opened) right now."""


class SchemaMissing(BackendError):
    """lmq's tables are missing or older than the code: run ``lmq migrate``."""


class BackendBusy(BackendError):
    """The backend stayed locked longer than lmq is willing to wait."""


class NotFound(LmqError, LookupError):
    """A task or dead letter id that does not exist."""


# --- handler control flow --------------------------------------------------------


class Retry(Exception):
    """Raise from a handler to run the task again after ``delay`` seconds.

    A retry still counts as an attempt: when the task has used ``max_attempts`` it goes
    to the dead letters instead, so a handler cannot loop forever.
    """

    def __init__(self, delay: float = 0.0, reason: str | None = None) -> None:
        if delay < 0:
            raise ValueError("Retry delay must be >= 0")
        self.delay = float(delay)
        self.reason = reason
        super().__init__(reason or f"retry requested in {self.delay:g}s")


class Discard(Exception):
    """Raise from a handler to send the task to the dead letters at once."""

    def __init__(self, reason: str = "discarded by the handler") -> None:
        self.reason = reason
        super().__init__(reason)


class TaskTimeout(Exception):
    """Recorded as a task's error when it ran past its ``timeout``."""
