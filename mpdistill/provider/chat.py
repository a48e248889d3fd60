"""The hot path: one POST /chat/completions, as the openai SDK sends it, from a worker thread.

Measured against nginx on this project's 2-core machine, the SDK's request machinery (typed
options, URL and header merging, its auth wrapper, response objects) cost 0.3 ms of CPU a call in
a thread and 1.1 ms in an event loop, more than the rest of the call, and importing the SDK costs
most of a second of every run's start-up. For a plain JSON POST whose body mpdistill reads itself
(see `answer`) it adds nothing, so a call here is the SDK's request (its headers: JSON, bearer key;
create's keyword arguments meaning what they mean there) on a keep-alive connection of `conn`
(http.client, under the deadline, slot, size cap and redirect rule of `guards`); an event loop's
calls go over aiohttp the same way (`aiochat`), and the SDK serves batch mode's Files and Batches
calls (see `client`).
"""
from __future__ import annotations

import http.client
import itertools
import json
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Mapping

from .answer import Completion, finish
from .conn import Pool, Route, Unsendable, basic_auth, read_body, route_to
from .endpoint import Endpoint
from .guards import (DEFAULT_MAX_RESPONSE_BYTES, MAX_REDIRECTS, deadline, next_hop, query_value, redacted, too_large,
                     too_many_redirects)
from .status import (NO_KEY, deadline_error, error_for_status, interesting_headers, redact_key, status_detail)
from ..errors import ConnectError, MpdistillError, RejectedError
from .. import __version__

USER_AGENT = f"mpdistill/{__version__}"
# chat.completions.create's own keyword arguments, as `request` may carry them (see `body_of`).
_OPTIONS = frozenset({"extra_body", "extra_headers", "extra_query", "timeout"})


@dataclass(frozen=True)
class ChatClient:
    """What one endpoint's calls need: its connections, the URL, the headers and the key."""

    pool: Pool
    url: str
    headers: dict
    api_key: str
    timeout: float | None = None               # per socket operation, unless a row sets its own
    max_response_bytes: int | None = None      # None: no cap

    def close(self) -> None:
        self.pool.close()


def chat_client(endpoint: Endpoint, timeout: float, connections: int | None = None,
                max_response_bytes: int | None = None) -> ChatClient:
    """The ChatClient of `endpoint`: up to `connections` (the calls one process keeps in flight)
    kept alive, answers capped at `max_response_bytes` (None: no cap). Event loops: `aiochat.aio_client`."""
    url = endpoint.base_url.rstrip("/") + "/chat/completions"
    headers, parts = request_headers(endpoint), urllib.parse.urlsplit(url)
    if parts.username or parts.password:   # credentials in the URL go as Basic auth, as httpx sends them
        headers["Authorization"] = basic_auth(parts)
    pool = Pool(route_to(url), connections or 1)
    return ChatClient(pool, url, headers, endpoint.api_key or NO_KEY, timeout, max_response_bytes)


def request_headers(endpoint: Endpoint) -> dict:
    """The headers of every call to `endpoint`: the SDK's, with the bearer key (a placeholder for
    keyless servers, as the SDK sends)."""
    return {"Accept": "application/json", "Content-Type": "application/json", "User-Agent": USER_AGENT,
            "Authorization": f"Bearer {endpoint.api_key or NO_KEY}"}


def complete(api: ChatClient, request: dict, timeout: float | None = None, not_before: float = 0.0,
             awake_s: float = 0.0) -> Completion:
    """Make one call with the chat.completions kwargs in `request`, all of it (connect to last byte)
    within `timeout` seconds of when it may leave: now, or its slot `not_before` (time.monotonic()),
    which the request is held until once connected (the last `awake_s` awake, to leave on time);
    raise a CallError on failure."""
    extra = request.get("extra_headers")
    headers = {**api.headers, **extra} if extra else api.headers
    per_operation = request.get("timeout") or timeout or api.timeout
    url = _with_query(api.url, request.get("extra_query"))
    try:
        with deadline(timeout, not_before, awake_s):
            status, content, answer_headers, reason = _send(api, url, json.dumps(body_of(request)).encode(),
                                                            headers, per_operation)
    except TimeoutError as err:
        raise deadline_error(timeout, redacted(api.url)) from err
    except (OSError, http.client.HTTPException) as err:
        raise ConnectError(redact_key(f"cannot connect to {redacted(api.url)}: {err}", api.api_key)) from err
    except Unsendable as err:   # a header it cannot write (a row's extra_headers)
        raise RejectedError(redact_key(f"the request cannot be sent: {err}", api.api_key)) from err
    return finish_response(status, content, answer_headers, reason, api.api_key, request)


def _send(api: ChatClient, url: str, body: bytes | None, headers: dict,
          timeout: float | None) -> tuple[int, bytes, Mapping[str, str], str]:
    """POST `body`, following redirects within the origin as httpx does; (status, body, headers, reason)."""
    method = "POST"
    for _ in range(MAX_REDIRECTS + 1):
        conn = api.pool.take()
        try:
            response = conn.send(method, _target(url), body, headers, timeout)
            hop = next_hop(response.status, method, url, response.headers.get("Location"), body)
            cap = api.max_response_bytes
            content = read_body(response, cap, lambda: too_large(response.status, cap))
        except BaseException:
            conn.close()
            raise
        api.pool.give(conn)
        if hop is None:
            return response.status, content, response.headers, response.reason
        method, url, body = hop
    raise too_many_redirects(api.url)


def _target(url: str) -> str:
    """The request target of `url`: its path and query."""
    parts = urllib.parse.urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _with_query(url: str, query) -> str:
    """`url` with a row's extra_query, its values written as httpx writes them (true, false, '')."""
    if not query:
        return url
    pairs = query.items() if isinstance(query, Mapping) else query
    encoded = urllib.parse.urlencode([(k, query_value(v)) for k, v in pairs])
    return f"{url}{'&' if '?' in url else '?'}{encoded}"


def body_of(request: dict) -> dict:
    """The JSON body of `request`: create's keyword arguments, less its own options, extra_body merged."""
    body = {k: v for k, v in request.items() if k not in _OPTIONS}
    body.update(request.get("extra_body") or {})
    return body


def finish_response(status: int, content: bytes, headers: Mapping[str, str], reason: str, api_key: str,
                    request: dict) -> Completion:
    """The Completion of an answer, or its CallError (any HTTP client's: plain values)."""
    if not 200 <= status < 300:
        raise error_for_status(status, status_detail(status, _message(content, reason), api_key), headers)
    return finish(status, content, interesting_headers(headers), request)


def _message(content: bytes, reason: str) -> str:
    """The server's error message: the JSON body's (error.)message, else the body's text."""
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    body = data.get("error", data) if isinstance(data, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message.strip():
        message = content.decode("utf-8", "replace").strip() or reason
    return message


# What the network of `offline_client` answers every request with.
_CANNED_BODY = (b'{"id":"chatcmpl-offline","object":"chat.completion","created":0,"model":"offline",'
                b'"choices":[{"index":0,"message":{"role":"assistant","content":"offline"},"finish_reason":"stop"}],'
                b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}')
_CANNED_HEAD = (b"HTTP/1.1 200 OK\r\nServer: offline\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
                b"Content-Type: application/json\r\nConnection: keep-alive\r\nx-ratelimit-remaining-requests: 1\r\n")
# Both ways a server frames a body (vLLM and OpenAI send a length, nginx modules often chunk).
_CANNED_RESPONSES = (_CANNED_HEAD + b"Content-Length: %d\r\n\r\n" % len(_CANNED_BODY) + _CANNED_BODY,
                     _CANNED_HEAD + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(_CANNED_BODY)
                     + _CANNED_BODY + b"\r\n0\r\n\r\n")
# CPython 3.11 specializes a function's bytecode in place over its first 8 calls: warm past that.
WARM_UP_CALLS = 10


def offline_client() -> ChatClient:
    """A ChatClient built like `chat_client`'s whose network answers every call in-process with a
    canned completion (`_ReplaySocket`): the whole request path runs, nothing is sent, and no proxy
    from the environment sees the warm-up either."""
    responses = itertools.cycle(_CANNED_RESPONSES)
    endpoint = Endpoint(name="warm-up", base_url="http://127.0.0.1/v1")
    pool = Pool(Route("http", "127.0.0.1", 80, "127.0.0.1", 80), 1, lambda route, timeout: _ReplaySocket(responses))
    return ChatClient(pool, endpoint.base_url + "/chat/completions", request_headers(endpoint), NO_KEY, 5.0,
                      DEFAULT_MAX_RESPONSE_BYTES)


class _ReplaySocket(socket.socket):
    """The client end of a connected socket pair whose far end answers each request written to it
    with the next canned response: real sockets, so the code that runs is a real call's."""

    def __init__(self, responses) -> None:
        mine, peer = socket.socketpair()
        super().__init__(fileno=mine.detach())
        peer.settimeout(5.0)   # a bug here must end the warm-up, never hang it
        self._peer, self._responses, self._due = peer, responses, False

    def setsockopt(self, level: int, option: int, value) -> None:
        if level != socket.IPPROTO_TCP:   # TCP_NODELAY means nothing on a socket pair
            super().setsockopt(level, option, value)

    def sendall(self, data, flags: int = 0) -> None:
        super().sendall(data, flags)
        self._peer.recv(1 << 20)   # small requests: one recv holds what was written
        self._due = True

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        if self._due:
            self._due = False
            self._peer.sendall(next(self._responses))
        return super().recv_into(buffer, nbytes, flags)

    def close(self) -> None:
        self._peer.close()
        super().close()


def warm_up() -> None:
    """Run the whole request path WARM_UP_CALLS times, offline, before workers fork.

    What a process does first is what costs: caches and imports made on first use, and CPython
    3.11 rewriting the bytecode of each function it runs over its first calls, which in a forked
    worker copies every page of that code. Done here once, every worker inherits warm, shared pages.
    """
    api = offline_client()
    try:
        for _ in range(WARM_UP_CALLS):
            complete(api, {"model": "warm-up", "messages": [{"role": "user", "content": "warm-up"}]}, timeout=5.0)
    except MpdistillError:
        pass  # the warm-up is an optimisation: a failure of it must never stop a run
    finally:
        api.close()
