"""Unit tests of mpdistill.engine.retry: classification, backoff and Retry-After parsing."""
from __future__ import annotations

import email.utils
import random

import pytest

from mpdistill import errors
from mpdistill.engine.retry import Action, RetryPolicy, backoff, classify, parse_retry_after, should_retry

NOW = 1_700_000_000.0


@pytest.mark.parametrize("headers, expected", [
    ({"retry-after": "3"}, 3.0),
    ({"Retry-After": "7"}, 7.0),
    ({"retry-after": "1.5"}, 1.5),
    ({"retry-after": " 0 "}, 0.0),
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ({"retry-after-ms": "junk", "retry-after": "9"}, 9.0),
    ({"retry-after": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
    ({"retry-after": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0),
    ({"retry-after": "soon"}, None),
    ({"retry-after": ""}, None),
    ({"retry-after": "-5"}, None),
    ({"retry-after-ms": "-100"}, None),
    ({"retry-after": "nan"}, None),
    ({"retry-after": "inf"}, None),
    ({"x-ratelimit-remaining-requests": "0"}, None),
    ({}, None),
    (None, None),
])
def test_parse_retry_after_table(headers, expected):
    """Retry-After in seconds, fractions, ms, HTTP dates is parsed; garbage and negatives give None."""
    assert parse_retry_after(headers, now=NOW) == (pytest.approx(expected) if expected is not None else None)


def test_backoff_grows_exponentially_until_the_cap():
    """Without jitter the delay doubles per attempt and stops at max_delay."""
    policy = RetryPolicy(base_delay=1.0, max_delay=10.0, jitter=0.0)
    assert [backoff(policy, n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_jitter_stays_within_bounds():
    """With jitter j every delay d lies in [d*(1-j), d] and the values actually vary."""
    policy = RetryPolicy(base_delay=2.0, max_delay=60.0, jitter=0.5)
    rng = random.Random(42)
    for attempt in range(1, 8):
        full = min(2.0 * 2 ** (attempt - 1), 60.0)
        samples = [backoff(policy, attempt, rng=rng) for _ in range(50)]
        assert all(full * 0.5 <= s <= full for s in samples)
        assert len(set(samples)) > 1


def test_backoff_is_reproducible_with_a_seeded_rng():
    """The same seed gives the same delays."""
    policy = RetryPolicy()
    first = [backoff(policy, n, rng=random.Random(7)) for n in range(1, 5)]
    second = [backoff(policy, n, rng=random.Random(7)) for n in range(1, 5)]
    assert first == second


def test_backoff_survives_huge_attempt_numbers():
    """A very large attempt number returns the cap instead of overflowing."""
    assert backoff(RetryPolicy(jitter=0.0, max_delay=30.0), 100_000) == 30.0


def test_backoff_honours_server_hint_exactly():
    """A Retry-After hint wins over the exponential delay and gets no jitter below it."""
    policy = RetryPolicy(base_delay=1.0, max_delay=60.0, jitter=0.5)
    assert backoff(policy, 1, retry_after=12.5, rng=random.Random(0)) == 12.5
    assert backoff(policy, 5, retry_after=0.0) == 0.0


def test_backoff_caps_an_excessive_server_hint():
    """A hint beyond max_delay is cut to max_delay."""
    assert backoff(RetryPolicy(max_delay=60.0), 1, retry_after=3600.0) == 60.0


def test_zero_switch_makes_every_delay_zero():
    """RetryPolicy(zero=True) returns 0 whatever the attempt or hint."""
    policy = RetryPolicy(zero=True)
    assert {backoff(policy, n, retry_after=hint) for n in (1, 5, 50) for hint in (None, 30.0)} == {0.0}


@pytest.mark.parametrize("err, action", [
    (errors.CallTimeoutError("t"), Action.RETRY),
    (errors.ConnectError("c"), Action.RETRY),
    (errors.RateLimitError("r", status=429), Action.RETRY),
    (errors.ServerError("s", status=503), Action.RETRY),
    (errors.BadResponseError("b", status=200), Action.RETRY),
    (errors.TransientError("t"), Action.RETRY),
    (errors.AuthError("a", status=401), Action.DISABLE_KEY),
    (errors.RejectedError("x", status=400), Action.FAIL_ROW),
    (errors.CallError("generic"), Action.FAIL_ROW),
    (errors.RowFormatError("row"), Action.FAIL_ROW),
    (errors.ImageError("img"), Action.FAIL_ROW),
    (errors.OutputError("disk"), Action.FAIL_ROW),
])
def test_classify_table(err, action):
    """Each error class maps to its action: transient retry, auth disables the key, the rest fail the row."""
    assert classify(err) is action


def test_classify_works_on_errors_rebuilt_from_info():
    """An error that crossed a process boundary as plain data classifies the same."""
    rebuilt = errors.from_info(errors.to_info(errors.RateLimitError("slow", status=429, retry_after=2.0)))
    assert classify(rebuilt) is Action.RETRY


def test_should_retry_counts_attempts():
    """A transient error is retried while attempts_made <= max_retries, then given up."""
    policy = RetryPolicy(max_retries=2)
    err = errors.ServerError("boom", status=500)
    assert [should_retry(policy, err, n) for n in (1, 2, 3)] == [True, True, False]


def test_should_retry_never_retries_permanent_errors():
    """Rejected and auth errors are not retried even on the first attempt."""
    policy = RetryPolicy(max_retries=5)
    assert not should_retry(policy, errors.RejectedError("bad", status=400), 1)
    assert not should_retry(policy, errors.AuthError("key", status=401), 1)
