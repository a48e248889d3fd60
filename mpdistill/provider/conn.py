"""Keep-alive connections to one origin over the standard library's `http.client`, for calls
from threads (`--mode process` and `thread`), with `guards` on every socket operation.

Why not httpx, which the SDK uses: measured against nginx on the 2-core benchmark machine, one
call (`chat.complete`, the whole of it) costs 0.69 ms of CPU through httpx, httpcore and h11 and
0.29 ms here, and at `-p 64` that was most of what a worker did; importing httpx (and trio, under
httpcore) also cost 0.2 s of every run's start-up. http.client does the HTTP/1.1 framing (chunked
and close-delimited bodies, keep-alive, CONNECT tunnels); this module adds what a call needs on top:
- every read and write clamped to what is left of the call's deadline (`_DeadlineIO`), and a
  paced call's request written at its slot once its connection is made (`send`);
- connections kept alive and reused, an idle one that the server closed (readable) dropped;
- the environment's proxies (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY), plain-HTTP proxies
  with their credentials: a request line with the absolute URL, or a CONNECT tunnel for https.
"""
from __future__ import annotations

import base64
import http.client
import io
import select
import socket
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError
from .guards import clamp, hold_s, origin, redacted, tls_context, wait_slot

# What a call reads at a time (it checks the size cap between reads)
READ_SIZE = 256 * 1024


class Unsendable(Exception):
    """http.client refused to write the request (a header name or value HTTP cannot carry)."""


@dataclass(frozen=True)
class Route:
    """How requests reach one origin: the host and port to connect to (the proxy's, through one),
    the request target's prefix (the absolute URL's origin through a plain-HTTP proxy) and the
    headers the proxy needs."""

    scheme: str
    host: str
    port: int
    connect_host: str
    connect_port: int
    target_prefix: str = ""       # "http://host:port" when a proxy forwards the request itself
    tunnel: bool = False          # https through a proxy: CONNECT host:port first
    proxy_headers: tuple = ()     # (name, value) pairs for the proxy (Proxy-Authorization)


def route_to(url: str) -> Route:
    """The Route of `url`, through the proxy the environment names for it, if any."""
    try:
        return _route(url)
    except ValueError as err:   # a port that is no number, in the URL or the proxy's
        raise ConfigError(f"cannot call {redacted(url)}: {err} (in the base URL or the environment's proxy)") from err


def _route(url: str) -> Route:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"cannot call {redacted(url)}: the base URL must be http:// or https:// with a host")
    _, host, port = origin(url)
    proxy = _environment_proxy(parts.scheme, host)
    if proxy is None:
        return Route(parts.scheme, host, port, host, port)
    p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if p.scheme != "http" or not p.hostname:
        raise ConfigError(f"the proxy {_without_credentials(p)} for {parts.scheme}:// calls is not supported: "
                          "mpdistill's calls go through plain http:// proxies (set NO_PROXY to bypass it)")
    headers = (("Proxy-Authorization", basic_auth(p)),) if p.username is not None else ()
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    if parts.scheme == "https":
        return Route(parts.scheme, host, port, p.hostname, p.port or 80, tunnel=True, proxy_headers=headers)
    return Route(parts.scheme, host, port, p.hostname, p.port or 80, f"http://{netloc}", proxy_headers=headers)


def basic_auth(parts: urllib.parse.SplitResult) -> str:
    """The Basic credentials of a URL's user:password, as an Authorization header's value."""
    token = f"{urllib.parse.unquote(parts.username or '')}:{urllib.parse.unquote(parts.password or '')}"
    return "Basic " + base64.b64encode(token.encode()).decode()


def _environment_proxy(scheme: str, host: str) -> str | None:
    """The proxy URL that HTTP(S)_PROXY / ALL_PROXY give `scheme`, unless NO_PROXY exempts `host`."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(host, proxies):
        return None
    return proxy


def _without_credentials(parts: urllib.parse.SplitResult) -> str:
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


class _DeadlineIO(io.RawIOBase):
    """A socket's reading side (its own file, `raw`) whose every read ends within the call's
    deadline and its own per-operation `timeout`."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, timeout: float | None) -> None:
        self._raw, self._sock, self._timeout = raw, sock, timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        self._sock.settimeout(clamp(self._timeout))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()   # the socket itself closes once its connection and every file let go
        super().close()


class _Clamped:
    """Hands `http.client.HTTPResponse` a deadline-bound reader instead of the socket's own file."""

    def __init__(self, sock: socket.socket, timeout: float | None) -> None:
        self._sock, self._timeout = sock, timeout

    def makefile(self, mode: str, *args) -> io.BufferedReader:
        raw = self._sock.makefile("rb", buffering=0)
        return io.BufferedReader(_DeadlineIO(raw, self._sock, self._timeout), READ_SIZE)


class Connection:
    """One keep-alive connection along a Route (the http.client connection under it)."""

    def __init__(self, route: Route, make_socket: Callable[[Route, float | None], socket.socket] | None = None) -> None:
        cls = http.client.HTTPSConnection if route.scheme == "https" else http.client.HTTPConnection
        kwargs = {"context": tls_context()} if route.scheme == "https" else {}
        self._http = cls(route.connect_host, route.connect_port, **kwargs)
        if route.tunnel:
            self._http.set_tunnel(route.host, route.port, headers=dict(route.proxy_headers))
        if make_socket is not None:   # e.g. the warm-up's in-process peer
            self._http._create_connection = lambda address, timeout, source: make_socket(route, timeout)
        self._http.response_class = self._response
        # a plain-HTTP proxy reads its credentials from each request (a tunnel's go with its CONNECT)
        self._proxy_headers = {} if route.tunnel else dict(route.proxy_headers)
        self._timeout: float | None = None   # the current call's per-operation timeout
        self.route = route

    def _response(self, sock: socket.socket, **kwargs) -> http.client.HTTPResponse:
        return http.client.HTTPResponse(_Clamped(sock, self._timeout), **kwargs)

    def send(self, method: str, target: str, body: bytes | None, headers: dict,
             timeout: float | None) -> http.client.HTTPResponse:
        """Connect if need be, wait for the call's slot, write the request and read the answer's
        head, all within the deadline; the body is the caller's to read (`read_body`)."""
        h = self._http
        if h.sock is None:
            h.timeout = clamp(timeout)
            h.connect()
        if hold_s() > 0:
            wait_slot()
        h.sock.settimeout(clamp(timeout))
        self._timeout = timeout
        if self._proxy_headers:
            headers = {**headers, **self._proxy_headers}
        try:
            h.request(method, self.route.target_prefix + target, body, headers)
        except ValueError as err:   # raised before anything is written (UnicodeEncodeError included)
            raise Unsendable(str(err)) from err
        return h.getresponse()

    def idle_ok(self) -> bool:
        """Whether this idle connection may carry another request: open, and nothing to read on it
        (an idle connection that reads as ready was closed by the server or holds junk)."""
        sock = self._http.sock
        if sock is None:
            return False
        ready = select.poll()   # not select(): a busy process has descriptors past 1,024
        ready.register(sock, select.POLLIN)
        return not ready.poll(0)

    def close(self) -> None:
        self._http.close()


class Pool:
    """Idle keep-alive connections of one Route; `take` one (or a new one), `give` it back."""

    def __init__(self, route: Route, keep: int, make_socket=None) -> None:
        self.route, self._keep, self._make_socket = route, max(keep, 1), make_socket
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    def take(self) -> Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return Connection(self.route, self._make_socket)
            if conn.idle_ok():
                return conn
            conn.close()

    def give(self, conn: Connection) -> None:
        with self._lock:
            if len(self._idle) < self._keep:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def read_body(response: http.client.HTTPResponse, cap: int | None, too_large: Callable[[], Exception]) -> bytes:
    """The whole body of `response`, or `too_large()` as soon as it (or its Content-Length) exceeds `cap`."""
    if cap is not None and response.length is not None and response.length > cap:
        raise too_large()
    if cap is None or response.length is not None:   # a declared length: exactly that (short: IncompleteRead)
        return response.read()
    chunks, seen = [], 0
    while chunk := response.read1(READ_SIZE):
        seen += len(chunk)
        if seen > cap:
            raise too_large()
        chunks.append(chunk)
    response.close()   # read to the end: the connection may carry the next request
    return b"".join(chunks)
