"""Choose the endpoint/key for every request: token buckets, cooldowns and adaptive (AIMD) rate limits.

Pure scheduling state owned by the manager process (single-threaded); time comes from an injected `clock`.
Every `acquire` that returns a name is ended by exactly one of `release`, `rate_limited` or `failed`;
`disable` only changes state (for a 401/403 the caller ends the call with `failed` and then disables).
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import ConfigError
from ..provider.endpoint import Endpoint, mask_key
from . import hints
from .adaptive import PACE_LEAD_S, AdaptiveRate
from .ratelimit import Bucket
from .retry import RetryPolicy, backoff

logger = logging.getLogger(__name__)

# A request bucket starts with one token (slow start): a full one would send a second of a possibly too high
# rpm at once, and a server that admits a burst of a few answers most of it 429. The adaptive rate (AIMD,
# pacing) of each endpoint lives in `adaptive`; a 429 leaves one request token for the end of the cooldown,
# so a cooldown never ends in a burst.
# A short Retry-After is paced, not waited out: the endpoint cools down one request interval and the cut
# rate does the slowing (nginx-style limiters say `Retry-After: 1` whatever the rate, and waiting a whole
# second on each 429 costs a second of traffic). A longer one, or any once a cut brought no 2xx, is obeyed.
PACE_MAX_S = 2.0
TRANSIENT_STREAK = 3     # consecutive transient failures before the endpoint cools down
BUSY_POLL_S = 0.05       # wait_time hint when only a full concurrency cap blocks (a release frees it)
HINT_MAX_S = 3600.0      # server hints (Retry-After, reset headers) are honoured up to an hour
# Cooldowns keep at least 3/4 of their exponential step: several runs sharing a key spread out
# without a cooldown ever shrinking to nothing.
COOLDOWN_JITTER = 0.25


@dataclass(eq=False)
class _State:
    """Mutable scheduling state of one endpoint (manager-private)."""

    endpoint: Endpoint
    index: int
    rate: AdaptiveRate               # requests: configured rpm, 429 cuts, probing, even pacing
    tokens: Bucket | None            # None: unlimited tokens
    in_flight: int = 0
    n_requests: int = 0
    n_ok: int = 0
    n_429: int = 0
    n_errors: int = 0
    rate_until: float = -math.inf     # held after a 429 or an exhausted x-ratelimit budget
    outage_until: float = -math.inf   # held after repeated transient failures
    rate_level: int = 0               # exponent of the 429 cooldown when there is no Retry-After
    outage_level: int = 0
    streak: int = 0                   # consecutive transient failures
    rested_until: float = -math.inf   # end of the last real rest (not a paced interval): rates restart there
    pass_: float = 0.0                # weighted round-robin position
    slot: float = 0.0                 # when the request acquired last should leave (the paced schedule)
    disabled_reason: str | None = None


class KeyPool:
    """The manager's endpoint chooser: limits, cooldowns, adaptive rpm and counters per endpoint."""

    def __init__(self, endpoints: list[Endpoint], *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, cooldown_base: float = 1.0,
                 cooldown_max: float = 60.0, pace_lead: float = PACE_LEAD_S) -> None:
        """`pace_lead`: how long before its slot a paced request is handed out (0: when it is due, for
        a pool whose callers send at once: the cluster's budget service)."""
        _check_pool(endpoints)
        self._clock = clock
        self._rng = rng or random.Random()
        self._base = cooldown_base
        self._cooldowns = RetryPolicy(base_delay=cooldown_base, max_delay=cooldown_max, jitter=COOLDOWN_JITTER)
        self._vtime = 0.0
        now = clock()
        self._states = {e.name: _new_state(e, i, now, pace_lead) for i, e in enumerate(endpoints)}

    # -- choosing -------------------------------------------------------------------------------

    def acquire(self, model: str, est_tokens: int) -> str | None:
        """Reserve a slot, a request and `est_tokens` on the best ready endpoint; None if none is ready."""
        now, est = self._clock(), max(0, int(est_tokens))
        ready = [st for st in self._usable(model) if self._wait(st, est, now) == 0.0]
        if not ready:
            return None
        st = min(ready, key=self._rank)
        self._reserve(st, est, now)
        return st.endpoint.name

    def slot(self, name: str) -> float:
        """When the request just acquired on `name` should leave: its slot of the endpoint's paced
        schedule (about `pace_lead` ahead), or the time it was acquired."""
        return self._state(name).slot

    def awake_s(self, name: str) -> float:
        """How long before its slot the worker of the request just acquired on `name` stays awake."""
        return self._state(name).rate.awake_s()

    def begin(self) -> None:
        """Traffic starts now (the first worker is up): budgets saved while the pool started do not
        leave as one burst."""
        now = self._clock()
        for st in self._states.values():
            st.rate.begin(now)

    def wait_time(self, model: str, est_tokens: int) -> float | None:
        """Seconds until `acquire` could succeed (0.0: now); None if no enabled endpoint serves `model`."""
        now, est = self._clock(), max(0, int(est_tokens))
        usable = self._usable(model)
        return min((self._wait(st, est, now) for st in usable), default=None)

    def _usable(self, model: str) -> list[_State]:
        return [st for st in self._states.values()
                if st.disabled_reason is None and st.endpoint.serves(model)]

    def _wait(self, st: _State, est: int, now: float) -> float:
        """Seconds until `st` could take this request: cooldowns, buckets, concurrency cap."""
        waits = [st.rate_until - now, st.outage_until - now, st.rate.wait(now)]
        if st.tokens is not None:
            waits.append(st.tokens.wait(est, now))
        cap = st.endpoint.max_concurrency
        if cap is not None and st.in_flight >= cap:
            waits.append(BUSY_POLL_S)
        if st.streak >= TRANSIENT_STREAK and st.in_flight > 0:
            waits.append(BUSY_POLL_S)  # a failing endpoint gets one probe at a time, not a burst
        return max(0.0, *waits)

    def _rank(self, st: _State) -> tuple:
        """Fewest in flight per weight, then fullest buckets, then weighted round robin, then file order."""
        return (st.in_flight / st.endpoint.weight, -self._headroom(st),
                max(st.pass_, self._vtime), st.index)

    def _headroom(self, st: _State) -> float:
        """Free share (0..1) of the tightest limit; 1.0 when nothing limits the endpoint."""
        shares = [1.0]
        for bucket in (st.rate.bucket, st.tokens):
            if bucket is not None:
                shares.append(bucket.fraction())
        cap = st.endpoint.max_concurrency
        if cap is not None:
            shares.append((cap - st.in_flight) / cap)
        return min(shares)

    def _reserve(self, st: _State, est: int, now: float) -> None:
        st.in_flight += 1
        st.n_requests += 1
        st.slot = st.rate.take(now)
        if st.tokens is not None:
            st.tokens.give(-est)
        # Stride scheduling: an endpoint that was unavailable for a while does not catch up in a burst.
        start = max(st.pass_, self._vtime)
        self._vtime = start
        st.pass_ = start + 1.0 / st.endpoint.weight

    # -- ending a call --------------------------------------------------------------------------

    def release(self, name: str, *, ok: bool, reserved_tokens: int, used_tokens: int | None = None,
                headers: Mapping | None = None) -> None:
        """The call ended without a 429 or a transport failure: correct tokens, read headers, adapt."""
        st, now = self._end_call(name), self._clock()
        if st.tokens is not None and used_tokens is not None:
            st.tokens.refill(now)
            st.tokens.give(reserved_tokens - used_tokens)
        if headers:
            self._read_headers(st, headers, now)
        if not ok:
            st.n_errors += 1
            st.streak = 0  # it answered: reachable, whatever the answer
            return
        st.n_ok += 1
        st.streak = st.rate_level = st.outage_level = 0
        st.outage_until = -math.inf  # it answered: the outage is over
        st.rate.ok(now)

    def rate_limited(self, name: str, retry_after: float | None, reserved_tokens: int) -> None:
        """A 429: refund tokens, cut the rate once per burst, then pace or cool down (Retry-After, backoff)."""
        st, now = self._state(name), self._clock()
        old_news = st.rate.cut_pending > 0  # sent before the last cut: that cut answered it
        self._end_call(name)
        st.n_429 += 1
        st.streak = 0  # a 429 is an answer: slow down, but the endpoint is reachable
        self._refund(st, reserved_tokens, now)
        stubborn = not old_news and not st.rate.ok_since_cut  # no 2xx at all since the last cut
        if not old_news:
            self._decrease(st, now)
        cool = self._cooldown(st, retry_after, now, old_news=old_news, stubborn=stubborn)
        if cool is None:
            return
        st.rate_until = max(st.rate_until, now + cool)
        if cool > self._interval(st):
            st.rested_until = st.rate_until
        if st.rate.bucket is not None:
            st.rate.bucket.hold(st.rate_until)

    def _cooldown(self, st: _State, retry_after: float | None, now: float, *, old_news: bool,
                  stubborn: bool) -> float | None:
        """Seconds to rest after a 429; None: nothing beyond the cut already made for its burst."""
        if retry_after is None:
            if now >= st.rate_until:  # a new 429 after the last cooldown, not one more of the same burst
                st.rate_level += 1
            return self._backoff(max(1, st.rate_level))
        hint = min(max(0.0, float(retry_after)), HINT_MAX_S)
        if hint > PACE_MAX_S or stubborn:
            return hint
        return None if old_news else min(hint, self._interval(st))

    def failed(self, name: str, reserved_tokens: int, *, transient: bool) -> None:
        """Timeout, connection error, 5xx (transient) or any other failure: refund, count, maybe cool down."""
        st, now = self._end_call(name), self._clock()
        st.n_errors += 1
        self._refund(st, reserved_tokens, now)
        if not transient:
            return
        st.streak += 1
        if st.streak >= TRANSIENT_STREAK and now >= st.outage_until:
            st.outage_level += 1
            st.outage_until = st.rested_until = now + self._backoff(st.outage_level)
            logger.warning("endpoint %s: %d transient failures in a row, cooling down %.1f s",
                           name, st.streak, st.outage_until - now)

    def _end_call(self, name: str) -> _State:
        st = self._state(name)
        if st.in_flight <= 0:
            raise ValueError(f"endpoint {name!r} has no call in flight")
        st.in_flight -= 1
        st.rate.ended()
        return st

    def _refund(self, st: _State, reserved_tokens: int, now: float) -> None:
        if st.tokens is not None:
            st.tokens.refill(now)
            st.tokens.give(max(0, reserved_tokens))

    def _backoff(self, level: int) -> float:
        """The cooldown after `level` failures: retry's one backoff, with the pool's base, cap and jitter."""
        return backoff(self._cooldowns, level, rng=self._rng)

    # -- adaptive rate (AIMD) -------------------------------------------------------------------

    def _decrease(self, st: _State, now: float) -> None:
        """Cut the rate (see `AdaptiveRate.cut`), measured since the last rest: its idle time says
        nothing of the limit. Calls in flight now were sent at the old rate: until they have all
        ended, their 429s do not cut again."""
        since = st.rate.sent.start or now
        if st.rested_until <= now:
            since = max(since, st.rested_until)
        st.rate.cut(now, since, st.in_flight, st.endpoint.name)

    def _interval(self, st: _State) -> float:
        """One request's share of the current rate (at most the base cooldown)."""
        return st.rate.interval(self._base)

    def _read_headers(self, st: _State, headers: Mapping, now: float) -> None:
        """x-ratelimit-remaining-* of 0 holds the endpoint until x-ratelimit-reset-* (OpenAI style).

        Without a reset header the hold is one request interval: a sliding window frees a slot soon, and a
        full second's hold on every exhausted window would halve the throughput near the limit.
        """
        for hold in hints.exhausted_holds(headers, HINT_MAX_S):
            st.rate_until = max(st.rate_until, now + (hold if hold is not None else self._interval(st)))
            if st.rate.bucket is not None:
                st.rate.bucket.hold(st.rate_until)

    # -- state for the runner and the status file -----------------------------------------------

    def disable(self, name: str, reason: str) -> bool:
        """Take the endpoint out for good (401/403); True only the first time."""
        st = self._state(name)
        if st.disabled_reason is not None:
            return False
        key = st.endpoint.api_key
        reason = str(reason or "disabled")
        st.disabled_reason = reason.replace(key, mask_key(key)) if key else reason
        return True

    def all_disabled(self, model: str | None = None) -> bool:
        """True when no enabled endpoint is left (for `model`, when given)."""
        states = [st for st in self._states.values() if model is None or st.endpoint.serves(model)]
        return all(st.disabled_reason is not None for st in states)

    def all_unavailable(self) -> bool:
        """True when every enabled endpoint cools down after transient failures: an outage."""
        now = self._clock()
        enabled = [st for st in self._states.values() if st.disabled_reason is None]
        return bool(enabled) and all(st.outage_until > now for st in enabled)

    def all_down(self) -> bool:
        """True while every enabled endpoint has failed transiently TRANSIENT_STREAK times in a row and not
        answered since (cooling down or being probed): the outage lasts until some endpoint answers."""
        now = self._clock()
        enabled = [st for st in self._states.values() if st.disabled_reason is None]
        return bool(enabled) and all(st.outage_until > now or st.streak >= TRANSIENT_STREAK for st in enabled)

    def in_flight(self, name: str) -> int:
        return self._state(name).in_flight

    def snapshot(self) -> list[dict]:
        """Plain per-endpoint data for status and summary files; keys masked."""
        now = self._clock()
        return [_describe(st, now) for st in self._states.values()]

    def _state(self, name: str) -> _State:
        try:
            return self._states[name]
        except KeyError as err:
            raise KeyError(f"unknown endpoint {name!r}") from err


def _check_pool(endpoints: list[Endpoint]) -> None:
    """Limits must be positive and names unique: names identify endpoints in every call."""
    if not endpoints:
        raise ConfigError("the endpoint pool is empty")
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate endpoint names in the pool: {', '.join(names)}")
    for e in endpoints:
        limits = (e.rpm, e.tpm, e.max_concurrency)
        if not e.weight > 0 or any(limit is not None and not limit > 0 for limit in limits):
            raise ConfigError(f"endpoint {e.name!r}: weight, rpm, tpm and max_concurrency must be > 0")


def _new_state(endpoint: Endpoint, index: int, now: float, pace_lead: float) -> _State:
    tpm = endpoint.tpm
    return _State(endpoint=endpoint, index=index, rate=AdaptiveRate(endpoint.rpm, now, pace_lead),
                  tokens=Bucket(tpm, now) if tpm is not None else None)


def _describe(st: _State, now: float) -> dict:
    until = max(st.rate_until, st.outage_until)
    e = st.endpoint
    return {
        "name": e.name, "base_url": e.display_url, "key": mask_key(e.api_key),
        "requests": st.n_requests, "ok": st.n_ok, "rate_limited": st.n_429, "errors": st.n_errors,
        "in_flight": st.in_flight,
        "current_rpm": round(st.rate.current, 1) if st.rate.current is not None else None,
        "rpm": e.rpm, "tpm": e.tpm, "max_concurrency": e.max_concurrency, "weight": e.weight,
        "cooldown_until": round(until - now, 3) if until > now else None,
        "disabled": st.disabled_reason is not None, "disabled_reason": st.disabled_reason,
    }
