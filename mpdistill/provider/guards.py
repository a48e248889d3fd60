"""What every HTTP client of mpdistill enforces, as plain functions: the call's total deadline, a
paced call's slot, the size cap, the same-origin redirect rule, the TLS trust store.

The threads' client (`conn`, under `chat`), the event loop's (`aiochat`) and the SDK's httpx
transport for batch mode (`transport`) all apply these, so a call means the same in every mode.
Importing this module imports no HTTP library: it is on every run's start-up path.

A call's deadline and slot live in context variables (`deadline`): each worker thread and each
event-loop task has its own. Every socket operation of the call is clamped to what is left of the
deadline (`clamp`), so connect, send, the headers and the last byte of the body all fit in
`--timeout`, even from a server that drips a byte every few seconds.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import ssl
import time
import urllib.parse
from typing import Iterator

from ..errors import CallError, RedirectError, ResponseTooLargeError

MAX_REDIRECTS = 20        # httpx's limit
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024   # --max-response-bytes
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("mpdistill_deadline", default=None)
_SLOT: contextvars.ContextVar[tuple[float, float]] = contextvars.ContextVar("mpdistill_slot", default=(0.0, 0.0))


@contextlib.contextmanager
def deadline(seconds: float | None, not_before: float = 0.0, awake_s: float = 0.0) -> Iterator[None]:
    """Every socket operation inside the block ends within `seconds` (None: no deadline) from when
    the call may leave: now, or `not_before` (time.monotonic()), which its writes wait for, the last
    `awake_s` of it awake (see `_spin_to_slot`)."""
    start = max(time.monotonic(), not_before)
    token = _DEADLINE.set(None if seconds is None else start + seconds)
    slot = _SLOT.set((not_before, awake_s))
    try:
        yield
    finally:
        _DEADLINE.reset(token)
        _SLOT.reset(slot)


def clamp(timeout: float | None, timeout_error: type[Exception] = TimeoutError) -> float | None:
    """`timeout` cut to what is left of the current deadline; raises once nothing is left."""
    end = _DEADLINE.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise timeout_error("the call's total deadline (--timeout) has passed")
    return left if timeout is None else min(timeout, left)


def hold_s() -> float:
    """Seconds a write of the current call still waits for the call's slot (0.0 or less: none)."""
    return _SLOT.get()[0] - time.monotonic()


def _sleep_s() -> float:
    """Seconds the current call may still sleep before its slot: all of the wait but its last `awake_s`."""
    at, awake = _SLOT.get()
    return at - awake - time.monotonic()


def _spin_to_slot() -> None:
    """The last of the wait, awake: a process woken from a sleep on a busy machine runs up to ~2 ms
    late, and a strict limiter judges the gap between two requests (the manager keeps the awake
    share of every interval small)."""
    at = _SLOT.get()[0]
    while time.monotonic() < at:
        pass


def wait_slot() -> None:
    """Wait for the current call's slot: asleep, then awake."""
    if _sleep_s() > 0:
        time.sleep(max(0.0, _sleep_s()))
    _spin_to_slot()


async def until_slot() -> None:
    """`wait_slot` in an event loop: on the loop's timer (whole milliseconds: epoll), then awake,
    which holds the loop for at most the awake window."""
    if _sleep_s() > 0:
        await asyncio.sleep(max(0.0, _sleep_s()))
    _spin_to_slot()


def redacted(url: object) -> str:
    """scheme://host[:port]/path of a URL: no credentials, no query string (it may hold keys)."""
    parts = urllib.parse.urlsplit(str(url))
    port = parts.port if parts.port not in (None, _DEFAULT_PORTS.get(parts.scheme)) else None
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of `url`, the port filled in for http and https."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(parts.scheme)


def next_hop(status: int, method: str, url: str, location: str | None,
             body: bytes | None) -> tuple[str, str, bytes | None] | None:
    """Where a redirect answer sends the call: (method, URL, body), None when `status` is no
    redirect; RedirectError when it leaves the origin. The method changes as httpx changes it (303,
    and a POST answered 301 or 302, become a GET without the body)."""
    if status not in REDIRECT_STATUSES or location is None:
        return None
    target = urllib.parse.urljoin(url, location)
    if origin(target) != origin(url):
        raise redirect_error(status, url, target)
    if status == 303 or (status in (301, 302) and method == "POST"):
        return "GET", target, None
    return method, target, body


def too_many_redirects(url: str) -> CallError:
    return CallError(f"more than {MAX_REDIRECTS} redirects from {redacted(url)}")


def redirect_error(status: int, source, target) -> RedirectError:
    """The error of a redirect from URL `source` to `target`, another origin: never followed."""
    return RedirectError(f"HTTP {status}: redirect from {redacted(source)} to another origin, "
                         f"{redacted(target)}, not followed (it would send the prompt there); "
                         "point --base-url at the final address", status=status)


def too_large(status: int, cap: int) -> ResponseTooLargeError:
    return ResponseTooLargeError(f"HTTP {status}: the response exceeds --max-response-bytes "
                                 f"({cap} bytes); not read further", status=status)


def query_value(value: object) -> object:
    """A row's extra_query value as httpx writes it into a URL (true, false, '' for None)."""
    return "true" if value is True else "false" if value is False else "" if value is None else value


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The trust store every client of this process verifies servers with, loaded once (the
    system's, or SSL_CERT_FILE / SSL_CERT_DIR; ~50 ms of CPU to load, so forked workers inherit it)."""
    return ssl.create_default_context()
