"""One chat-completion call through the official openai SDK, mapped onto mpdistill's error tree.

The hot path reads the raw JSON body itself (see `answer`) instead of building the SDK's pydantic
models. `error_for_status` is the one place where an HTTP status becomes an error class and
`call_error` the one place where an SDK exception does; both serve `complete` and `acomplete`.
Every call has a total deadline and a size cap, and never follows a redirect to another origin
(see `transport`).
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import httpx2
import openai

from .answer import Completion, finish
from .endpoint import Endpoint
from .transport import (AsyncGuardedTransport, GuardedTransport, ReplayNetwork, deadline, guarded_mounts,
                        redacted)
from ..errors import (AuthError, BadResponseError, CallError, CallTimeoutError, ConnectError,
                      MpdistillError, RateLimitError, RejectedError, ServerError)
from ..engine.retry import parse_retry_after

# The SDK refuses an empty key; keyless servers (vLLM, llama.cpp, Ollama) ignore whatever we send.
NO_KEY = "EMPTY"
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_KEPT_HEADERS = frozenset({"retry-after", "retry-after-ms"})
_RATELIMIT_PREFIX = "x-ratelimit-"
_MAX_DETAIL = 500
# chat.completions.create keyword → the SDK request option it becomes (see post_chat).
_CREATE_OPTIONS = {"extra_body": "extra_json", "extra_headers": "headers", "extra_query": "params",
                   "timeout": "timeout"}
_RAW_RESPONSE = openai.APIResponse[object]   # `post` returns the response unparsed: we read the JSON
_RAW_ASYNC_RESPONSE = openai.AsyncAPIResponse[object]


def make_client(endpoint: Endpoint, timeout: float, connections: int | None = None,
                max_response_bytes: int | None = None) -> openai.OpenAI:
    """An SDK client for `endpoint`; it never retries, because mpdistill schedules retries itself.

    `connections` (the requests one process keeps in flight) sizes its connection pool, so that
    every in-flight request keeps its connection alive instead of reconnecting. Answers beyond
    `max_response_bytes` fail (None: no cap, e.g. for Batch API file downloads).
    """
    limits = _limits(connections)
    http = openai.DefaultHttpxClient(transport=GuardedTransport(max_response_bytes, limits=limits),
                                     mounts=guarded_mounts(max_response_bytes, limits), timeout=timeout)
    return openai.OpenAI(api_key=endpoint.api_key or NO_KEY, base_url=endpoint.base_url,
                         timeout=timeout, max_retries=0, http_client=http)


def make_async_client(endpoint: Endpoint, timeout: float, connections: int | None = None,
                      max_response_bytes: int | None = None) -> openai.AsyncOpenAI:
    """The asyncio twin of `make_client` (made inside the event loop that will use it)."""
    limits = _limits(connections)
    http = openai.DefaultAsyncHttpxClient(transport=AsyncGuardedTransport(max_response_bytes, limits=limits),
                                          mounts=guarded_mounts(max_response_bytes, limits, asynchronous=True),
                                          timeout=timeout)
    return openai.AsyncOpenAI(api_key=endpoint.api_key or NO_KEY, base_url=endpoint.base_url,
                              timeout=timeout, max_retries=0, http_client=http)


def _limits(connections: int | None) -> httpx2.Limits:
    if not connections:
        return openai.DEFAULT_CONNECTION_LIMITS
    return httpx2.Limits(max_connections=max(connections, 10), max_keepalive_connections=max(connections, 10))


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


def offline_client() -> openai.OpenAI:
    """An SDK client built like `make_client`'s whose network answers every call in-process with
    a canned completion (`transport.ReplayNetwork`): the whole request path runs, nothing is sent.

    For warming that path up before workers fork (see `engine.worker.preload`). No proxy mounts:
    a proxy from the environment must not see the warm-up either.
    """
    transport = GuardedTransport(DEFAULT_MAX_RESPONSE_BYTES, network=ReplayNetwork(*_CANNED_RESPONSES),
                                 limits=_limits(1))
    http = openai.DefaultHttpxClient(transport=transport, timeout=5.0)
    return openai.OpenAI(api_key=NO_KEY, base_url="http://127.0.0.1/v1", timeout=5.0, max_retries=0,
                         http_client=http)


def complete(client: openai.OpenAI, request: dict, timeout: float | None = None) -> Completion:
    """Make one call with the chat.completions kwargs in `request`, all of it (connect to last byte)
    within `timeout` seconds; raise a CallError on failure."""
    with sdk_errors(client, timeout), deadline(timeout):
        raw = post_chat(client, request)
    return _finish(raw, request)


async def acomplete(client: openai.AsyncOpenAI, request: dict, timeout: float | None = None) -> Completion:
    """`complete` for AsyncOpenAI: the same request, deadline, answer and errors."""
    try:
        with sdk_errors(client, timeout):
            async with asyncio.timeout(timeout):
                raw = await post_chat(client, request)
    except TimeoutError as err:
        raise CallTimeoutError(f"no complete answer within the {timeout:g} s deadline (--timeout)") from err
    return _finish(raw, request)


@contextlib.contextmanager
def sdk_errors(client, timeout: float | None = None):
    """Turn the SDK's exceptions raised inside into mpdistill's errors (sync and async calls alike)."""
    try:
        yield
    except openai.APIError as err:
        raise call_error(err, client.api_key, timeout) from err


def _finish(raw, request: dict) -> Completion:
    http = raw.http_response
    return finish(http.status_code, http.content, interesting_headers(http.headers), request)


def post_chat(client: openai.OpenAI | openai.AsyncOpenAI, request: dict):
    """POST /chat/completions with the SDK's generic `post`; returns the SDK's raw response
    (a coroutine of it with an AsyncOpenAI client).

    The same client, auth, headers, timeout and status-to-exception mapping as
    `chat.completions.create`, without create's walk of every param against its typed-dict
    annotations: for plain JSON data that walk changes nothing, yet costs more CPU than the rest
    of the call. create's own keyword arguments (extra_body, extra_headers, extra_query, timeout)
    mean here what they mean there.
    """
    body = {k: v for k, v in request.items() if k not in _CREATE_OPTIONS}
    options = {name: request[key] for key, name in _CREATE_OPTIONS.items() if request.get(key) is not None}
    raw = _RAW_ASYNC_RESPONSE if isinstance(client, openai.AsyncOpenAI) else _RAW_RESPONSE
    return client.post("/chat/completions", body=body, options=options, cast_to=raw)


def call_error(err: openai.APIError, api_key: object, timeout: float | None = None) -> MpdistillError:
    """The mpdistill error for an SDK exception; ours raised under the SDK (transport) come back as is."""
    if isinstance(err, openai.APITimeoutError):      # before APIConnectionError: it is a subclass
        limit = f"the {timeout:g} s deadline (--timeout)" if timeout is not None else "the timeout"
        return CallTimeoutError(f"no complete answer within {limit} from {_where(err)}")
    if isinstance(err, openai.APIConnectionError):
        if isinstance(err.__cause__, MpdistillError):
            return err.__cause__
        return ConnectError(f"cannot connect to {_where(err)}: {err.__cause__ or err}")
    if isinstance(err, openai.APIStatusError):
        message = _redact(_status_detail(err), api_key)
        return error_for_status(err.status_code, message, err.response.headers)
    return CallError(f"{type(err).__name__}: {_redact(str(err), api_key)}"[:_MAX_DETAIL])


def error_for_status(status: int, message: str, headers: Mapping[str, str] | None = None) -> CallError:
    """The CallError for an HTTP error status: the one status-to-class mapping of mpdistill."""
    kept = interesting_headers(headers or {})
    if status == 429:
        return RateLimitError(message, status=status, retry_after=parse_retry_after(kept), headers=kept)
    if status in (408, 409) or status >= 500:
        return ServerError(message, status=status, retry_after=parse_retry_after(kept), headers=kept)
    if status in (401, 403):
        return AuthError(message, status=status, headers=kept)
    if 400 <= status < 500:
        return RejectedError(message, status=status, headers=kept)
    # 1xx/3xx reaching here means the answer cannot be used at all.
    return BadResponseError(message, status=status, headers=kept)


def interesting_headers(headers: Mapping[str, str]) -> dict:
    """Only the response headers the scheduler uses (rate-limit state, retry hints), lower-cased."""
    kept = {}
    for name, value in headers.items():
        name = name.lower()
        if name in _KEPT_HEADERS or name.startswith(_RATELIMIT_PREFIX):
            kept[name] = value
    return kept


def _status_detail(err: openai.APIStatusError) -> str:
    """`HTTP <status>: <server's error message>`, short."""
    body = err.body
    detail = body.get("message") if isinstance(body, dict) else body   # text body: e.g. a proxy's HTML
    if not isinstance(detail, str) or not detail.strip():
        detail = err.message
    return f"HTTP {err.status_code}: {detail or err.message}"[:_MAX_DETAIL]


def _redact(message: str, api_key: object) -> str:
    """Some servers echo the key they refused; never let it into an error message."""
    if isinstance(api_key, str) and len(api_key) >= 8 and api_key in message:
        return message.replace(api_key, "***")
    return message


def _where(err: openai.APIError) -> str:
    """Host and path of the failed request, without the query string (it may hold secrets)."""
    return redacted(err.request.url)
