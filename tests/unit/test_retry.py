"""Unit tests of mpdistill.engine.retry: the decide() table, backoff and Retry-After parsing."""
from __future__ import annotations

import email.utils
import random

import pytest

from mpdistill import errors
from mpdistill.engine.retry import Action, Attempt, RetryPolicy, Verdict, backoff, decide, parse_retry_after

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


ZERO = RetryPolicy(max_retries=2, jitter=0.0)   # delays are exact: base 1 s, doubling
A, R, D, F = Action.RETRY, Action.FAIL_ROW, Action.DISABLE_KEY, Verdict
ROW = Attempt(number=1, retries=0, row_fault=True, others_failing=False)       # the endpoint answers others
SHARED = Attempt(number=3, retries=0, row_fault=False, others_failing=True)    # other rows fail there too
LAST = Attempt(number=3, retries=2, row_fault=True, others_failing=False)       # no retry left


@pytest.mark.parametrize("err, attempt, expected", [
    # 429: cools the endpoint (Retry-After there), the row goes back at once, never charged
    (errors.RateLimitError("r", status=429, retry_after=5.0), ROW, (A, 0.0, F.RATE_LIMITED, False)),
    (errors.RateLimitError("r", status=429), LAST, (A, 0.0, F.RATE_LIMITED, False)),
    # 401/403: the key is out only when other rows are refused too; else the row's own, charged
    (errors.AuthError("a", status=401), SHARED, (D, 0.0, F.NEUTRAL, False)),
    (errors.AuthError("a", status=403), ROW, (A, 1.0, F.ANSWERED, True)),
    (errors.AuthError("a", status=401), LAST, (R, None, F.ANSWERED, True)),
    (errors.AuthError("a", status=401), Attempt(2, 1, row_fault=True, others_failing=True), (A, 2.0, F.ANSWERED, True)),
    # a 2xx that is no answer: the endpoint answered, the row is charged
    (errors.BadResponseError("b", status=200), ROW, (A, 1.0, F.ANSWERED, True)),
    (errors.BadResponseError("b", status=200), SHARED, (A, 1.0, F.ANSWERED, True)),
    (errors.BadResponseError("b", status=200), LAST, (R, None, F.ANSWERED, True)),
    # timeouts, connection errors, 5xx: the row's when the endpoint answers others ...
    (errors.ConnectError("c"), ROW, (A, 1.0, F.NEUTRAL, True)),
    (errors.CallTimeoutError("t"), LAST, (R, None, F.NEUTRAL, True)),
    (errors.ServerError("s", status=503, retry_after=7.0), ROW, (A, 7.0, F.NEUTRAL, True)),
    # ... else the endpoint's: uncharged, towards an outage, backing off by call number
    (errors.ConnectError("c"), SHARED, (A, 4.0, F.DOWN, False)),
    (errors.CallTimeoutError("t"), Attempt(50, 2, row_fault=False), (A, 32.0, F.DOWN, False)),
    (errors.ServerError("s", status=500, retry_after=0.5), SHARED, (A, 0.5, F.DOWN, False)),
    # a worker that died holding the call: charged, straight back
    (errors.WorkerLostError("w"), ROW, (A, 0.0, F.NEUTRAL, True)),
    (errors.WorkerLostError("w"), LAST, (R, None, F.NEUTRAL, True)),
    # everything else fails the row at once
    (errors.RejectedError("x", status=400), ROW, (R, None, F.ANSWERED, True)),
    (errors.RejectedError("x", status=422), SHARED, (R, None, F.ANSWERED, True)),
    (errors.CallError("generic"), ROW, (R, None, F.ANSWERED, True)),
    (errors.RowFormatError("row"), ROW, (R, None, F.ANSWERED, True)),
    (errors.ImageError("img"), ROW, (R, None, F.ANSWERED, True)),
    (RuntimeError("not ours"), ROW, (R, None, F.ANSWERED, True)),
])
def test_decide_table(err, attempt, expected):
    """Each (error, evidence) pair gets its one action, delay, endpoint verdict and charge."""
    decision = decide(err, attempt, ZERO)
    assert (decision.action, decision.delay, decision.verdict, decision.charged) == expected


def test_decide_works_on_errors_rebuilt_from_info():
    """An error that crossed a process boundary as plain data is decided the same."""
    rebuilt = errors.from_info(errors.to_info(errors.ServerError("boom", status=502, retry_after=2.0)))
    assert decide(rebuilt, ROW, ZERO) == decide(errors.ServerError("boom", status=502, retry_after=2.0), ROW, ZERO)


def test_decide_charges_exactly_max_retries_then_fails():
    """A poison row gets 1 + max_retries calls: max_retries charged retries, then the error row."""
    policy, err, retries, actions = RetryPolicy(max_retries=3, zero=True), errors.ConnectError("reset"), 0, []
    for number in range(1, 10):
        decision = decide(err, Attempt(number, retries, row_fault=True), policy)
        actions.append(decision.action)
        retries += decision.charged
        if decision.action is R:
            break
    assert actions == [A, A, A, R] and retries == 4


def test_decide_uses_the_jittered_backoff():
    """Charged retries wait the policy's backoff (jittered below the exponential step, seeded)."""
    policy = RetryPolicy(base_delay=2.0, jitter=0.5)
    delays = {decide(errors.ServerError("s", status=500), Attempt(2, 1), policy, random.Random(i)).delay
              for i in range(20)}
    assert all(2.0 <= d <= 4.0 for d in delays) and len(delays) > 1
