"""Backoff (full jitter, capped) and error fingerprints."""

from __future__ import annotations

import random
import re
import uuid

import pytest

import lmq
from lmq.retry import DEFAULT_BACKOFF, Backoff, fingerprint, normalise_message

# --- Backoff ------------------------------------------------------------------------------


def test_default_is_the_contracts_policy() -> None:
    assert Backoff(base=1.0, factor=2.0, cap=3600.0, jitter=True) == DEFAULT_BACKOFF
    assert lmq.Backoff is Backoff


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (10, 512.0), (12, 2048.0), (13, 3600.0)],
)
def test_ceiling_doubles_from_one_second_up_to_an_hour(attempt: int, ceiling: float) -> None:
    assert Backoff().ceiling(attempt) == ceiling


def test_factor_and_base() -> None:
    b = Backoff(base=0.5, factor=3.0, cap=1000.0)
    assert [b.ceiling(n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 13.5]


def test_cap_wins() -> None:
    b = Backoff(base=10.0, factor=10.0, cap=25.0, jitter=False)
    assert [b.delay(n) for n in (1, 2, 3)] == [10.0, 25.0, 25.0]


def test_without_jitter_the_delay_is_the_ceiling() -> None:
    b = Backoff(jitter=False)
    assert [b.delay(n) for n in range(1, 15)] == [b.ceiling(n) for n in range(1, 15)]


@pytest.mark.parametrize("attempt", [1, 2, 5, 12, 13, 40])
def test_full_jitter_stays_within_zero_and_the_ceiling(attempt: int) -> None:
    b = Backoff()
    rng = random.Random(attempt)
    top = b.ceiling(attempt)
    draws = [b.delay(attempt, rng) for _ in range(2000)]
    assert all(0.0 <= d <= top for d in draws)
    # full jitter spreads over the whole range, not just near the top
    assert min(draws) < 0.05 * top
    assert max(draws) > 0.95 * top


def test_jitter_uses_the_given_rng() -> None:
    b = Backoff()
    assert b.delay(5, random.Random(1)) == b.delay(5, random.Random(1))


@pytest.mark.parametrize("attempt", [64, 65, 66, 1_000, 10**6, 10**18])
def test_huge_attempt_numbers_give_the_cap_without_overflow(attempt: int) -> None:
    b = Backoff()
    assert b.ceiling(attempt) == 3600.0
    assert 0.0 <= b.delay(attempt, random.Random(0)) <= 3600.0
    assert Backoff(factor=10.0, cap=50.0, jitter=False).delay(attempt) == 50.0


def test_constant_backoff_stays_constant_for_many_attempts() -> None:
    b = Backoff(base=2.0, factor=1.0, cap=100.0, jitter=False)
    assert {b.delay(n) for n in (1, 10, 64, 65, 100, 10**6)} == {2.0}


def test_slow_growth_is_not_cut_to_the_cap_early() -> None:
    b = Backoff(base=1.0, factor=1.01, cap=3600.0)
    assert b.ceiling(100) == pytest.approx(1.01**99)


def test_zero_base_never_waits() -> None:
    b = Backoff(base=0.0)
    assert {b.delay(n, random.Random(n)) for n in (1, 5, 100, 10**6)} == {0.0}


@pytest.mark.parametrize(
    "kwargs", [{"base": -1.0}, {"cap": -1.0}, {"factor": 0.5}, {"factor": 0.0}]
)
def test_invalid_backoff_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Backoff needs"):
        Backoff(**kwargs)


# --- Retry and Discard --------------------------------------------------------------------


def test_retry_carries_its_delay() -> None:
    assert lmq.Retry(5).delay == 5.0
    assert lmq.Retry().delay == 0.0
    assert "2.5s" in str(lmq.Retry(2.5))
    assert str(lmq.Retry(1, reason="rate limited")) == "rate limited"


def test_retry_refuses_a_negative_delay() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        lmq.Retry(-1)


def test_discard_carries_its_reason() -> None:
    assert lmq.Discard("bad sku").reason == "bad sku"
    assert str(lmq.Discard("bad sku")) == "bad sku"
    assert lmq.Discard().reason


def test_retry_and_discard_are_not_lmq_errors() -> None:
    assert not issubclass(lmq.Retry, lmq.LmqError)
    assert not issubclass(lmq.Discard, lmq.LmqError)


# --- fingerprints -------------------------------------------------------------------------


def test_runs_of_digits_share_a_fingerprint() -> None:
    assert fingerprint("sync", "ValueError", "order 17 failed") == fingerprint(
        "sync", "ValueError", "order 4203 failed"
    )


@pytest.mark.parametrize(
    ("one", "two"),
    [
        ("user 'alice' not found", "user 'bob smith' not found"),
        ('key "a-1" missing', 'key "zzz" missing'),
        ("object at 0x7f3a2b10 broke", "object at 0x55aa01ff broke"),
        ("commit 3f9ac21 rejected", "commit 0b1d77e rejected"),
        # fixed ids: the test ids must be the same in every pytest-xdist worker
        (
            "job 333347ba-6a10-4712-98fa-866827d4b306 lost",
            "job 20e5eaba-34d0-42a7-a7a3-557308183f8d lost",
        ),
        ("job CD673B28A1194ED7BE03D5302A23DE56 lost", "job 3B35B608972B49F6AB0E2BC17B49A49B lost"),
        ("HTTP 500 from  api", "HTTP 503 from api"),
        ("took 1.5s", "took 22.75s"),
        ("order17 failed", "order4203 failed"),
    ],
)
def test_varying_parts_are_normalised(one: str, two: str) -> None:
    assert normalise_message(one) == normalise_message(two)
    assert fingerprint("t", "E", one) == fingerprint("t", "E", two)


def test_normalised_text_is_readable() -> None:
    assert normalise_message("order 17 failed") == "order <n> failed"
    assert normalise_message("user 'alice'  not\nfound") == "user <str> not found"
    assert normalise_message(f"id {uuid.UUID(int=5)} gone") == "id <id> gone"


def test_plain_words_that_look_like_hex_are_kept() -> None:
    assert normalise_message("bad face added") == "bad face added"


def test_normalised_text_is_bounded() -> None:
    assert len(normalise_message("word " * 1000)) <= 500


@pytest.mark.parametrize(
    "other",
    [
        ("other_task", "ValueError", "order 17 failed"),
        ("sync", "KeyError", "order 17 failed"),
        ("sync", "ValueError", "order 17 shipped"),
    ],
)
def test_different_task_type_or_shape_differ(other: tuple[str, str, str]) -> None:
    assert fingerprint("sync", "ValueError", "order 17 failed") != fingerprint(*other)


def test_fingerprint_is_short_stable_hex() -> None:
    fp = fingerprint("sync", "ValueError", "order 17 failed")
    assert re.fullmatch(r"[0-9a-f]{12}", fp)
    assert fp == fingerprint("sync", "ValueError", "order 17 failed")
