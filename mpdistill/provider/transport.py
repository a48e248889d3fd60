"""The HTTP layer under the SDK: a total deadline per call, a response size cap, same-origin redirects.

httpx times each socket operation on its own, so a server that drips a byte every few seconds
never times out. Here every socket operation of a call is clamped to what is left of the call's
deadline (`deadline`, a context variable: each worker thread has its own), so connect, send, the
headers and the last byte of the body all fit in `--timeout`. A paced call's first write waits for
its slot (`not_before`): the request is built and its connection made before, so the server sees
the slot, not the slot plus the SDK's and the connection's time. A response over the size cap and
a redirect to another origin (which would re-send the prompt elsewhere) end the call with an error.
The checks and the wait for a slot are plain functions, shared with the event loop's calls (`aiochat`).
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import socket
import ssl
import time
from typing import Any, Iterator

import httpcore2
import httpx2

from ..errors import RedirectError, ResponseTooLargeError

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


def _wait_slot() -> None:
    """Wait for the current call's slot: asleep, then awake."""
    if _sleep_s() > 0:
        time.sleep(max(0.0, _sleep_s()))
    _spin_to_slot()


async def until_slot() -> None:
    """`_wait_slot` in an event loop: on the loop's timer (whole milliseconds: epoll), then awake,
    which holds the loop for at most the awake window."""
    if _sleep_s() > 0:
        await asyncio.sleep(max(0.0, _sleep_s()))
    _spin_to_slot()


def _clamp(timeout: float | None, timeout_error: type[Exception]) -> float | None:
    """`timeout` cut to what is left of the current deadline; raises once nothing is left."""
    end = _DEADLINE.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise timeout_error("the call's total deadline (--timeout) has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore2.NetworkStream):
    """A connection whose reads and writes never outlast the current call's deadline."""

    def __init__(self, inner: httpcore2.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if hold_s() > 0:
            _wait_slot()
        self._inner.write(buffer, _clamp(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore2.NetworkStream:
        timeout = _clamp(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore2.NetworkBackend):
    """httpcore's socket backend with every connection made and used under the deadline."""

    def __init__(self, inner: httpcore2.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        timeout = _clamp(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        timeout = _clamp(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class ReplayNetwork(httpcore2.NetworkBackend):
    """A network where every connection answers each request written to it with the next of
    `responses` (raw HTTP/1.1 bytes, in turn), and nothing leaves the process: for running the
    request path offline.

    Connections are real sockets (a connected pair, the far end answered inline), so the code
    that runs is the code a real call runs, down to httpcore's socket stream.
    """

    def __init__(self, *responses: bytes) -> None:
        self._responses = itertools.cycle(responses)
        self._sockets = httpcore2.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind("")   # Linux: an unnamed (abstract) address, no file
            listener.listen(1)
            stream = self._sockets.connect_unix_socket(listener.getsockname(), timeout)
            peer, _ = listener.accept()
        peer.settimeout(5.0)   # a bug here must end the warm-up, never hang it
        return _ReplayStream(stream, peer, self._responses)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return self.connect_tcp("localhost", 0, timeout)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _ReplayStream(httpcore2.NetworkStream):
    """One connection of a `ReplayNetwork`: the far end reads each request and writes the answer."""

    def __init__(self, stream: httpcore2.NetworkStream, peer: socket.socket, responses: Iterator[bytes]) -> None:
        self._stream, self._peer, self._responses = stream, peer, responses
        self._due = False   # a request was written and not answered yet

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._due:
            self._due = False
            self._peer.sendall(next(self._responses))
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return   # h11 ends a body of known length with an empty write: nothing reaches the peer
        self._stream.write(buffer, timeout)
        self._peer.recv(1 << 20)   # small requests: one recv holds what was written
        self._due = True

    def close(self) -> None:
        self._stream.close()
        self._peer.close()

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def redacted(url: httpx2.URL | str) -> str:
    """scheme://host[:port]/path of a URL: no credentials, no query string (it may hold keys)."""
    url = httpx2.URL(str(url))
    return f"{url.scheme}://{url.host}{f':{url.port}' if url.port else ''}{url.path}"


def check_redirect(request: httpx2.Request, response: httpx2.Response) -> None:
    """RedirectError when `response` redirects to another origin (scheme, host or port)."""
    if not response.has_redirect_location:
        return
    target = request.url.join(response.headers["location"])
    if (target.scheme, target.host, target.port) != (request.url.scheme, request.url.host, request.url.port):
        raise redirect_error(response.status_code, request.url, target)


def redirect_error(status: int, source, target) -> RedirectError:
    """The error of a redirect from URL `source` to `target`, another origin: never followed."""
    return RedirectError(f"HTTP {status}: redirect from {redacted(source)} to another origin, "
                         f"{redacted(target)}, not followed (it would send the prompt there); "
                         "point --base-url at the final address", status=status)


def check_declared_size(response: httpx2.Response, cap: int | None) -> None:
    """ResponseTooLargeError when the response's Content-Length already says it exceeds `cap`."""
    declared = response.headers.get("content-length", "")
    if cap is not None and declared.isdigit() and int(declared) > cap:
        raise too_large(response.status_code, cap)


def too_large(status: int, cap: int) -> ResponseTooLargeError:
    return ResponseTooLargeError(f"HTTP {status}: the response exceeds --max-response-bytes "
                                 f"({cap} bytes); not read further", status=status)


class _CappedStream(httpx2.SyncByteStream):
    """A response body that raises once more than `cap` bytes have come."""

    def __init__(self, inner: httpx2.SyncByteStream, cap: int, status: int) -> None:
        self._inner, self._cap, self._status = inner, cap, status

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        for chunk in self._inner:
            seen += len(chunk)
            if seen > self._cap:
                raise too_large(self._status, self._cap)
            yield chunk

    def close(self) -> None:
        self._inner.close()


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The trust store every transport of this process verifies servers with, loaded once (httpx
    loads it again for each transport, ~50 ms of CPU each; forked workers inherit this one)."""
    return httpx2.create_ssl_context()


def guarded_mounts(max_response_bytes: int | None, limits: httpx2.Limits) -> dict:
    """The environment's proxies (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY) as guarded transports, for
    `mounts=`: handing httpx a transport of our own turns its lookup of proxies off."""
    try:
        from httpx2._utils import get_environment_proxies   # httpx's own reading of those variables
    except ImportError:   # pragma: no cover (a future httpx2 without it: direct connections only)
        return {}
    return {pattern: None if url is None else GuardedTransport(max_response_bytes, limits=limits, proxy=url)
            for pattern, url in get_environment_proxies().items()}


class GuardedTransport(httpx2.HTTPTransport):
    """httpx's transport with the call deadline on every socket, the size cap and the redirect rule.

    `network` replaces the sockets under the pool (see `ReplayNetwork`); None: real sockets.
    """

    def __init__(self, max_response_bytes: int | None = None, network: httpcore2.NetworkBackend | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**{"verify": tls_context(), **kwargs})
        self._cap = max_response_bytes
        pool = getattr(self, "_pool", None)
        if isinstance(pool, httpcore2.ConnectionPool):   # direct connections (not through a proxy)
            pool._network_backend = _DeadlineBackend(network or pool._network_backend)


    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        try:
            check_redirect(request, response)
            check_declared_size(response, self._cap)
        except Exception:
            response.close()
            raise
        if self._cap is not None:
            response.stream = _CappedStream(response.stream, self._cap, response.status_code)
        return response
