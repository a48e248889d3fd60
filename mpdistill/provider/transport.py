"""The httpx transport under the openai SDK's clients (batch mode's Files and Batches calls) with
`guards` applied: every socket operation clamped to the call's total deadline, a paced call's first
write held until its slot, the size cap, no redirect to another origin.

httpx times each socket operation on its own, so a server that drips a byte every few seconds
never times out; here each one gets what is left of the call's deadline (`guards.clamp`). Online
chat calls do not come here: threads call over `conn`, event loops over `aiohttp`.
"""
from __future__ import annotations

from typing import Any, Iterator

import httpcore2
import httpx2

from .guards import clamp, hold_s, redirect_error, tls_context, too_large, wait_slot


class _DeadlineStream(httpcore2.NetworkStream):
    """A connection whose reads and writes never outlast the current call's deadline."""

    def __init__(self, inner: httpcore2.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, clamp(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if hold_s() > 0:
            wait_slot()
        self._inner.write(buffer, clamp(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore2.NetworkStream:
        timeout = clamp(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore2.NetworkBackend):
    """httpcore's socket backend with every connection made and used under the deadline."""

    def __init__(self, inner: httpcore2.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        timeout = clamp(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        timeout = clamp(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def check_redirect(request: httpx2.Request, response: httpx2.Response) -> None:
    """RedirectError when `response` redirects to another origin (scheme, host or port)."""
    if not response.has_redirect_location:
        return
    target = request.url.join(response.headers["location"])
    if (target.scheme, target.host, target.port) != (request.url.scheme, request.url.host, request.url.port):
        raise redirect_error(response.status_code, request.url, target)


def check_declared_size(response: httpx2.Response, cap: int | None) -> None:
    """ResponseTooLargeError when the response's Content-Length already says it exceeds `cap`."""
    declared = response.headers.get("content-length", "")
    if cap is not None and declared.isdigit() and int(declared) > cap:
        raise too_large(response.status_code, cap)


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

    """

    def __init__(self, max_response_bytes: int | None = None, **kwargs: Any) -> None:
        super().__init__(**{"verify": tls_context(), **kwargs})
        self._cap = max_response_bytes
        pool = getattr(self, "_pool", None)
        if isinstance(pool, httpcore2.ConnectionPool):   # direct connections (not through a proxy)
            pool._network_backend = _DeadlineBackend(pool._network_backend)


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
