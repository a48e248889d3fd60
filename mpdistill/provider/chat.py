"""The hot path: one POST /chat/completions, as the openai SDK sends it, on an httpx client.

Measured against nginx on this project's 2-core machine, the SDK's request machinery (typed
options, URL and header merging, its auth wrapper, response objects) cost 0.3 ms of CPU a call in
a thread and 1.1 ms in an event loop, more than the rest of the call, and importing the SDK costs
most of a second of every run's start-up. For a plain JSON POST whose body mpdistill reads itself
(see `answer`) it adds nothing, so a call here is one httpx request with the SDK's headers (JSON,
bearer key) through the guarded transport (deadline, size cap, same-origin redirects: see
`transport`; an event loop's calls go over aiohttp the same way, see `aiochat`), and the SDK serves
batch mode's Files and Batches calls (see `client`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

import httpx2

from .answer import Completion, finish
from .endpoint import Endpoint
from .http import DEFAULT_MAX_RESPONSE_BYTES, http_client
from .status import (MAX_DETAIL, NO_KEY, deadline_error, error_for_status, interesting_headers, redact_key,
                     status_detail)
from .transport import GuardedTransport, ReplayNetwork, deadline, redacted
from ..errors import CallError, ConnectError, MpdistillError
from .. import __version__

USER_AGENT = f"mpdistill/{__version__}"
# chat.completions.create's own keyword arguments, as `request` may carry them (see `_build`).
_OPTIONS = frozenset({"extra_body", "extra_headers", "extra_query", "timeout"})


@dataclass(frozen=True)
class ChatClient:
    """What one endpoint's calls need: its httpx client, the URL, the headers and the key.

    `target` and `sent_headers` are the URL parsed and the client's headers merged with ours, once:
    what `build_request` would redo for every call (a third of the CPU a request costs us).
    """

    http: httpx2.Client
    url: str
    headers: dict
    api_key: str
    target: httpx2.URL = field(init=False, repr=False)
    sent_headers: httpx2.Headers = field(init=False, repr=False)

    def __post_init__(self) -> None:
        merged = httpx2.Headers(self.http.headers)
        merged.update(self.headers)
        object.__setattr__(self, "target", httpx2.URL(self.url))
        object.__setattr__(self, "sent_headers", merged)

    def close(self) -> None:
        self.http.close()


def chat_client(endpoint: Endpoint, timeout: float, connections: int | None = None,
                max_response_bytes: int | None = None) -> ChatClient:
    """The ChatClient of `endpoint`; see `http.http_client` (event loops: `aiochat.aio_client`)."""
    return on_http(endpoint, http_client(timeout, connections, max_response_bytes))


def on_http(endpoint: Endpoint, http: httpx2.Client) -> ChatClient:
    """A ChatClient of `endpoint` sending on `http`."""
    return ChatClient(http, endpoint.base_url.rstrip("/") + "/chat/completions", request_headers(endpoint),
                      endpoint.api_key or NO_KEY)


def request_headers(endpoint: Endpoint) -> dict:
    """The headers of every call to `endpoint`: the SDK's, with the bearer key (a placeholder for
    keyless servers, as the SDK sends)."""
    return {"Accept": "application/json", "Content-Type": "application/json", "User-Agent": USER_AGENT,
            "Authorization": f"Bearer {endpoint.api_key or NO_KEY}"}


def complete(api: ChatClient, request: dict, timeout: float | None = None, not_before: float = 0.0,
             awake_s: float = 0.0) -> Completion:
    """Make one call with the chat.completions kwargs in `request`, all of it (connect to last byte)
    within `timeout` seconds of when it may leave: now, or its slot `not_before` (time.monotonic()),
    which the request is held until once built and connected (the last `awake_s` awake, to leave
    on time); raise a CallError on failure."""
    try:
        with deadline(timeout, not_before, awake_s):
            response = api.http.send(_build(api, request, timeout))
    except httpx2.HTTPError as err:
        raise _transport_error(err, api, timeout) from err
    return _finish(response, api, request)


def _build(api: ChatClient, request: dict, timeout: float | None) -> httpx2.Request:
    """The POST of `request`: its body, with create's keywords meaning what they mean there
    (extra_body merged into the body, extra_headers and extra_query added, timeout per call)."""
    body = body_of(request)
    headers = api.sent_headers
    if request.get("extra_headers"):   # merged as build_request merges them
        headers = httpx2.Headers(api.http.headers)
        headers.update({**api.headers, **request["extra_headers"]})
    call_timeout = request.get("timeout") or timeout
    limits = api.http.timeout if call_timeout is None else httpx2.Timeout(call_timeout)
    # What `build_request` makes (the client's cookies too), from the parts prepared in ChatClient.
    return httpx2.Request("POST", api.target, params=request.get("extra_query"), headers=headers,
                          cookies=api.http.cookies, content=json.dumps(body).encode(),
                          extensions={"timeout": limits.as_dict()})


def body_of(request: dict) -> dict:
    """The JSON body of `request`: create's keyword arguments, less its own options, extra_body merged."""
    body = {k: v for k, v in request.items() if k not in _OPTIONS}
    body.update(request.get("extra_body") or {})
    return body


def _finish(response: httpx2.Response, api: ChatClient, request: dict) -> Completion:
    return finish_response(response.status_code, response.content, response.headers, response.reason_phrase,
                           api.api_key, request)


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


def _transport_error(err: httpx2.HTTPError, api: ChatClient, timeout: float | None) -> MpdistillError:
    """The mpdistill error of a request that got no answer."""
    where = redacted(err.request.url) if _has_request(err) else redacted(api.url)
    if isinstance(err, httpx2.TimeoutException):
        return deadline_error(timeout, where)
    if isinstance(err, httpx2.TransportError):
        return ConnectError(redact_key(f"cannot connect to {where}: {err}", api.api_key))
    return CallError(redact_key(f"{type(err).__name__}: {err}"[:MAX_DETAIL], api.api_key))


def _has_request(err: httpx2.HTTPError) -> bool:
    try:
        return err.request is not None
    except RuntimeError:   # httpx raises when no request was attached
        return False


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
    canned completion (`transport.ReplayNetwork`): the whole request path runs, nothing is sent.
    No proxy mounts: a proxy from the environment must not see the warm-up either."""
    transport = GuardedTransport(DEFAULT_MAX_RESPONSE_BYTES, network=ReplayNetwork(*_CANNED_RESPONSES),
                                 limits=httpx2.Limits(max_connections=10, max_keepalive_connections=10))
    http = httpx2.Client(transport=transport, timeout=5.0, follow_redirects=True)
    return on_http(Endpoint(name="warm-up", base_url="http://127.0.0.1/v1"), http)


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
