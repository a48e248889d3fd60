"""The openai SDK's clients for an endpoint, and the mapping of failures onto mpdistill's error tree.

`error_for_status` is the one place where an HTTP status becomes an error class (for the chat
calls of `chat` and the SDK's Files and Batches calls alike) and `call_error` the one place where
an SDK exception does. Every client's HTTP layer has a total deadline per call and a size cap, and
never follows a redirect to another origin (see `transport`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping

import httpx2
import openai

from .endpoint import Endpoint
from .transport import AsyncGuardedTransport, GuardedTransport, guarded_mounts, redacted
from ..errors import (AuthError, BadResponseError, CallError, CallTimeoutError, ConnectError,
                      MpdistillError, RateLimitError, RejectedError, ServerError)
from ..engine.retry import parse_retry_after

# The SDK refuses an empty key; keyless servers (vLLM, llama.cpp, Ollama) ignore whatever we send.
NO_KEY = "EMPTY"
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_KEPT_HEADERS = frozenset({"retry-after", "retry-after-ms"})
_RATELIMIT_PREFIX = "x-ratelimit-"
_MAX_DETAIL = 500


def make_client(endpoint: Endpoint, timeout: float, connections: int | None = None,
                max_response_bytes: int | None = None) -> openai.OpenAI:
    """An SDK client for `endpoint`; it never retries, because mpdistill schedules retries itself.

    `connections` (the requests one process keeps in flight) sizes its connection pool, so that
    every in-flight request keeps its connection alive instead of reconnecting. Answers beyond
    `max_response_bytes` fail (None: no cap, e.g. for Batch API file downloads).
    """
    return sdk_client(endpoint, timeout, http_client(timeout, connections, max_response_bytes))


def make_async_client(endpoint: Endpoint, timeout: float, connections: int | None = None,
                      max_response_bytes: int | None = None) -> openai.AsyncOpenAI:
    """The asyncio twin of `make_client` (made inside the event loop that will use it)."""
    http = http_client(timeout, connections, max_response_bytes, asynchronous=True)
    return sdk_client(endpoint, timeout, http)


def http_client(timeout: float, connections: int | None = None, max_response_bytes: int | None = None,
                *, asynchronous: bool = False) -> httpx2.Client | httpx2.AsyncClient:
    """The SDK's default httpx client on guarded transports (deadline, size cap, redirect rule),
    with a pool of `connections` and the environment's proxies."""
    limits = _limits(connections)
    if asynchronous:
        transport = AsyncGuardedTransport(max_response_bytes, limits=limits)
        return openai.DefaultAsyncHttpxClient(
            transport=transport, mounts=guarded_mounts(max_response_bytes, limits, asynchronous=True),
            timeout=timeout)
    return openai.DefaultHttpxClient(transport=GuardedTransport(max_response_bytes, limits=limits),
                                     mounts=guarded_mounts(max_response_bytes, limits), timeout=timeout)


def sdk_client(endpoint: Endpoint, timeout: float, http: httpx2.Client | httpx2.AsyncClient):
    """The SDK client of `endpoint` on `http` (async when `http` is), with no retries of its own."""
    kind = openai.AsyncOpenAI if isinstance(http, httpx2.AsyncClient) else openai.OpenAI
    return kind(api_key=endpoint.api_key or NO_KEY, base_url=endpoint.base_url, timeout=timeout,
                max_retries=0, http_client=http)


def _limits(connections: int | None) -> httpx2.Limits:
    if not connections:
        return openai.DEFAULT_CONNECTION_LIMITS
    return httpx2.Limits(max_connections=max(connections, 10), max_keepalive_connections=max(connections, 10))


@contextlib.contextmanager
def sdk_errors(client, timeout: float | None = None):
    """Turn the SDK's exceptions raised inside into mpdistill's errors (the Files and Batches calls)."""
    try:
        yield
    except openai.APIError as err:
        raise call_error(err, client.api_key, timeout) from err


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
        message = redact_key(_status_detail(err), api_key)
        return error_for_status(err.status_code, message, err.response.headers)
    return CallError(f"{type(err).__name__}: {redact_key(str(err), api_key)}"[:_MAX_DETAIL])


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


def redact_key(message: str, api_key: object) -> str:
    """Some servers echo the key they refused; never let it into an error message."""
    if isinstance(api_key, str) and len(api_key) >= 8 and api_key in message:
        return message.replace(api_key, "***")
    return message


def _where(err: openai.APIError) -> str:
    """Host and path of the failed request, without the query string (it may hold secrets)."""
    return redacted(err.request.url)
