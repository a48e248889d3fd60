"""When to retry a failed call and how long to wait: classify, backoff with jitter, Retry-After.

Pure functions over a frozen `RetryPolicy`; the manager owns the timers, workers never sleep.
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

from ..errors import AuthError, MpdistillError, TransientError

# Beyond 2**62 the cap always wins; stopping there keeps the float maths finite.
_MAX_EXPONENT = 62


class Action(enum.Enum):
    """What the manager does with a failed call."""

    RETRY = "retry"
    FAIL_ROW = "fail_row"
    DISABLE_KEY = "disable_key"


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


def classify(err: MpdistillError) -> Action:
    """Map an error to the manager's action, by class only."""
    if isinstance(err, TransientError):
        return Action.RETRY
    if isinstance(err, AuthError):
        return Action.DISABLE_KEY
    return Action.FAIL_ROW


def should_retry(policy: RetryPolicy, err: MpdistillError, attempts_made: int) -> bool:
    """True when `err` is worth retrying and the row still has retries left."""
    return classify(err) is Action.RETRY and attempts_made <= policy.max_retries


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
    return (rng or random).uniform(delay * (1.0 - jitter), delay)


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
