"""What a failed call means: `decide` (retry after d, fail the row, cool the endpoint, disable the
key), the one backoff with jitter, and Retry-After parsing.

Pure functions over a frozen `RetryPolicy`; the manager owns the timers, workers never sleep.
`decide` classifies by exception class (and the evidence of other rows), never by message text.
"""
from __future__ import annotations

import enum
import email.utils
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timezone

from ..errors import AuthError, BadResponseError, RateLimitError, TransientError, WorkerLostError

# Beyond 2**62 the cap always wins; stopping there keeps the float maths finite.
_MAX_EXPONENT = 62


class Action(enum.Enum):
    """What the manager does with the row of a failed call."""

    RETRY = "retry"              # again after `Decision.delay`
    FAIL_ROW = "fail_row"        # an error row, for good
    DISABLE_KEY = "disable_key"  # the key is out for this run; the row goes back at once, uncharged


class Verdict(enum.Enum):
    """What the failed call says about its endpoint (the key pool's side of the decision)."""

    ANSWERED = "answered"          # it answered, whatever the answer: reachable (release, not ok)
    RATE_LIMITED = "rate_limited"  # 429: cut the rate, cool down (Retry-After)
    DOWN = "down"                  # a transport fault other rows share: counts towards an outage
    NEUTRAL = "neutral"            # the row's own fault (or a lost worker): refund, count, no outage


@dataclass(frozen=True)
class Attempt:
    """What the manager knows of the failed call besides its error.

    `others_failing`: other rows failed the same way on this endpoint since its last success.
    `row_fault`: the fault follows the row: the endpoint answered others since this row began
    failing there, or no other row fails there (see `engine.health`).
    """

    number: int                  # calls made for the row, this one included
    retries: int = 0             # failures already charged against --max-retries
    row_fault: bool = True
    others_failing: bool = False


@dataclass(frozen=True)
class Decision:
    """The manager's whole reaction to one failed call."""

    action: Action
    delay: float | None          # seconds before the row is sent again; None when it fails
    verdict: Verdict
    charged: bool                # the failure counts against the row's --max-retries


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a row is retried.

    Jitter: a computed delay d becomes uniform(d * (1 - jitter), d). Keeping at least
    (1 - jitter) of d leaves the exponential growth visible while still spreading out
    the retries of rows that failed together (full jitter, uniform(0, d), could retry at once).
    """

    max_retries: int = 5        # retries after the first attempt
    base_delay: float = 1.0
    max_delay: float = 60.0
    jitter: float = 0.5
    zero: bool = False          # testing switch: every delay is 0


# Uncharged retries (a fault the endpoint shares, while it lasts) back off by call number, up to
# 2**5 × base: --max-outage, not the row, bounds how long they go on.
_UNCHARGED_EXPONENT_CAP = 6


def decide(err: Exception, attempt: Attempt, policy: RetryPolicy,
           rng: random.Random | None = None) -> Decision:
    """The one place where a failed call becomes retry-after-d / fail the row / cool the endpoint /
    disable the key. By class: 429 cools the endpoint and is never charged; 401/403 disables the
    key when other rows are refused too, else it is the row's; a bad 2xx is the row's; timeouts,
    connection errors and 408/409/5xx are the row's when the endpoint answers others, else the
    endpoint's (uncharged, towards an outage); everything else (400/404/422, bad rows) fails the row.
    """
    if isinstance(err, RateLimitError):
        return Decision(Action.RETRY, 0.0, Verdict.RATE_LIMITED, charged=False)
    if isinstance(err, AuthError):
        if attempt.others_failing and not attempt.row_fault:
            return Decision(Action.DISABLE_KEY, 0.0, Verdict.NEUTRAL, charged=False)
        return _charged(err, attempt, policy, Verdict.ANSWERED, rng)
    if isinstance(err, BadResponseError):
        return _charged(err, attempt, policy, Verdict.ANSWERED, rng)
    if isinstance(err, WorkerLostError):
        return _charged(err, attempt, policy, Verdict.NEUTRAL, rng, delay=0.0)
    if isinstance(err, TransientError):
        if attempt.row_fault:
            return _charged(err, attempt, policy, Verdict.NEUTRAL, rng)
        delay = backoff(policy, min(attempt.number, _UNCHARGED_EXPONENT_CAP), err.retry_after, rng)
        return Decision(Action.RETRY, delay, Verdict.DOWN, charged=False)
    return Decision(Action.FAIL_ROW, None, Verdict.ANSWERED, charged=True)


def _charged(err: Exception, attempt: Attempt, policy: RetryPolicy, verdict: Verdict,
             rng: random.Random | None, delay: float | None = None) -> Decision:
    """A retry that counts against --max-retries, or the row's end when none is left."""
    retries = attempt.retries + 1
    if retries > policy.max_retries:
        return Decision(Action.FAIL_ROW, None, verdict, charged=True)
    if delay is None:
        delay = backoff(policy, retries, getattr(err, "retry_after", None), rng)
    return Decision(Action.RETRY, delay, verdict, charged=True)


def backoff(policy: RetryPolicy, attempt: int, retry_after: float | None = None,
            rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1 for the first retry).

    A server hint wins and is honoured exactly, unless it exceeds `max_delay`.
    """
    if policy.zero:
        return 0.0
    if retry_after is not None and retry_after >= 0:
        return min(float(retry_after), policy.max_delay)
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    delay = min(policy.base_delay * 2.0 ** exponent, policy.max_delay)
    jitter = min(max(policy.jitter, 0.0), 1.0)
    low = delay * (1.0 - jitter)
    return low + (delay - low) * (rng or random).random()   # uniform(low, delay), from any random()


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait, from `retry-after-ms` or `retry-after`; None if absent or unusable.

    `retry-after` may be seconds (fractional allowed) or an HTTP date; a date already past means 0.
    """
    if not headers:
        return None
    lowered = {str(k).lower(): v for k, v in headers.items()}
    millis = _parse_seconds(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    value = lowered.get("retry-after")
    if value is None:
        return None
    seconds = _parse_seconds(value)
    if seconds is not None:
        return seconds
    return _parse_http_date(value, time.time() if now is None else now)


def _parse_seconds(value: str | None) -> float | None:
    """A finite, non-negative number of seconds, or None."""
    if value is None:
        return None
    try:
        seconds = float(str(value).strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _parse_http_date(value: str, now: float) -> float | None:
    """Seconds from `now` until the HTTP date `value`, at least 0; None if it is not a date."""
    try:
        when = email.utils.parsedate_to_datetime(str(value).strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)    # HTTP dates are GMT by definition
    return max(0.0, when.timestamp() - now)
