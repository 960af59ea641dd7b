"""Retry policy (exponential backoff with full jitter and a cap) and error fingerprints."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """``delay = uniform(0, min(cap, base * factor ** (attempt - 1)))`` ("full jitter").

    The default is the contract's: 1 s doubling per attempt, capped at one hour.  Pass
    ``jitter=False`` to get the deterministic upper bound instead.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 3600.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0 or self.factor < 1:
            raise ValueError("Backoff needs base >= 0, cap >= 0 and factor >= 1")

    def ceiling(self, attempt: int) -> float:
        """The largest delay after the given attempt (1 = the first)."""
        exp = max(attempt - 1, 0)
        if self.base == 0 or self.factor == 1:
            return float(min(self.cap, self.base))
        try:  # float ** overflows (rather than growing a huge int) for huge attempt counts
            grown = self.base * float(self.factor) ** exp
        except OverflowError:
            return float(self.cap)
        return float(min(self.cap, grown))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        top = self.ceiling(attempt)
        if not self.jitter:
            return top
        return (rng or random).uniform(0.0, top)


DEFAULT_BACKOFF = Backoff()

# Normalise what varies between otherwise identical failures: quoted values, hex ids,
# uuids and runs of digits.  "order 17 failed" and "order 4203 failed" become one group.
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_UUID = re.compile(
    r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
)
_HEX = re.compile(r"\b(?:0x)?[0-9a-fA-F]*\d[0-9a-fA-F]*\b")
_DIGITS = re.compile(r"\d+")
_SPACE = re.compile(r"\s+")


def normalise_message(message: str) -> str:
    text = _QUOTED.sub("<str>", message)
    text = _UUID.sub("<id>", text)
    text = _HEX.sub("<n>", text)
    text = _DIGITS.sub("<n>", text)
    return _SPACE.sub(" ", text).strip()[:500]


def fingerprint(task_name: str, error_type: str, message: str) -> str:
    """A short stable id for a kind of failure: task name, exception type, shape of text."""
    import hashlib

    key = f"{task_name}\x1f{error_type}\x1f{normalise_message(message)}"
    return hashlib.sha1(key.encode("utf-8"), usedforsecurity=False).hexdigest()[:12]
