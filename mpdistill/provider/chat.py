"""The hot path: one POST /chat/completions on the HTTP client the SDK client was built on.

The SDK's request machinery (typed options, URL and header merging, its auth wrapper, response
objects) costs ~0.2 ms of CPU a call in a thread and ~1 ms in an event loop, more than the rest of
the call. It adds nothing for a plain JSON POST whose body mpdistill reads itself (see `answer`),
so a `ChatClient` takes from the SDK client what the SDK would send (base URL, its default headers,
the bearer key) once, and each call is a single httpx request through the guarded transport
(deadline, size cap, same-origin redirects: see `transport`). The SDK client stays the one way to
make clients, and serves the Files and Batches calls (see `batch.calls`).
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import httpx2
import openai

from .answer import Completion, finish
from .client import NO_KEY, error_for_status, http_client, interesting_headers, redact_key, sdk_client
from .endpoint import Endpoint
from .transport import deadline, redacted
from ..errors import CallError, CallTimeoutError, ConnectError, MpdistillError

_MAX_DETAIL = 500
# chat.completions.create's own keyword arguments, as `request` may carry them (see `_build`).
_OPTIONS = frozenset({"extra_body", "extra_headers", "extra_query", "timeout"})


@dataclass(frozen=True)
class ChatClient:
    """What one endpoint's calls need: its httpx client, the URL, the headers and the key."""

    http: httpx2.Client | httpx2.AsyncClient
    url: str
    headers: dict
    api_key: str

    def close(self) -> None:
        self.http.close()

    async def aclose(self) -> None:
        await self.http.aclose()


def chat_client(endpoint: Endpoint, timeout: float, connections: int | None = None,
                max_response_bytes: int | None = None, *, asynchronous: bool = False) -> ChatClient:
    """The ChatClient of `endpoint` (an async one for an event loop), built through the SDK."""
    http = http_client(timeout, connections, max_response_bytes, asynchronous=asynchronous)
    return from_sdk(sdk_client(endpoint, timeout, http), http)


def from_sdk(sdk: openai.OpenAI | openai.AsyncOpenAI, http: httpx2.Client | httpx2.AsyncClient) -> ChatClient:
    """A ChatClient sending on `http` (the client `sdk` was built on) what `sdk` would send: its base
    URL, its default headers and the bearer key."""
    headers = {name: value for name, value in sdk.default_headers.items() if isinstance(value, str)}
    key = sdk.api_key or NO_KEY
    headers["Authorization"] = f"Bearer {key}"
    return ChatClient(http, f"{sdk.base_url}chat/completions", headers, key)


def complete(api: ChatClient, request: dict, timeout: float | None = None) -> Completion:
    """Make one call with the chat.completions kwargs in `request`, all of it (connect to last byte)
    within `timeout` seconds; raise a CallError on failure."""
    try:
        with deadline(timeout):
            response = api.http.send(_build(api, request, timeout))
    except httpx2.HTTPError as err:
        raise _transport_error(err, api, timeout) from err
    return _finish(response, api, request)


async def acomplete(api: ChatClient, request: dict, timeout: float | None = None) -> Completion:
    """`complete` in an event loop: the same request, deadline, answer and errors."""
    try:
        async with asyncio.timeout(timeout):
            response = await api.http.send(_build(api, request, timeout))
    except TimeoutError as err:
        raise CallTimeoutError(f"no complete answer within the {timeout:g} s deadline (--timeout)") from err
    except httpx2.HTTPError as err:
        raise _transport_error(err, api, timeout) from err
    return _finish(response, api, request)


def _build(api: ChatClient, request: dict, timeout: float | None) -> httpx2.Request:
    """The POST of `request`: its body, with create's keywords meaning what they mean there
    (extra_body merged into the body, extra_headers and extra_query added, timeout per call)."""
    body = {k: v for k, v in request.items() if k not in _OPTIONS}
    body.update(request.get("extra_body") or {})
    headers = {**api.headers, **(request.get("extra_headers") or {})}
    call_timeout = request.get("timeout") or timeout
    return api.http.build_request("POST", api.url, content=json.dumps(body).encode(), headers=headers,
                                  params=request.get("extra_query"),
                                  timeout=call_timeout if call_timeout is not None else httpx2.USE_CLIENT_DEFAULT)


def _finish(response: httpx2.Response, api: ChatClient, request: dict) -> Completion:
    headers = interesting_headers(response.headers)
    if not 200 <= response.status_code < 300:
        raise error_for_status(response.status_code, _detail(response, api.api_key), response.headers)
    return finish(response.status_code, response.content, headers, request)


def _detail(response: httpx2.Response, api_key: str) -> str:
    """`HTTP <status>: <server's error message>`, short, never holding the key."""
    try:
        data = json.loads(response.content)
    except ValueError:
        data = None
    body = data.get("error", data) if isinstance(data, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message.strip():
        message = response.content.decode("utf-8", "replace").strip() or response.reason_phrase
    return redact_key(f"HTTP {response.status_code}: {message}"[:_MAX_DETAIL], api_key)


def _transport_error(err: httpx2.HTTPError, api: ChatClient, timeout: float | None) -> MpdistillError:
    """The mpdistill error of a request that got no answer."""
    where = redacted(err.request.url) if _has_request(err) else redacted(api.url)
    if isinstance(err, httpx2.TimeoutException):
        limit = f"the {timeout:g} s deadline (--timeout)" if timeout is not None else "the timeout"
        return CallTimeoutError(f"no complete answer within {limit} from {where}")
    if isinstance(err, httpx2.TransportError):
        return ConnectError(redact_key(f"cannot connect to {where}: {err}", api.api_key))
    return CallError(redact_key(f"{type(err).__name__}: {err}"[:_MAX_DETAIL], api.api_key))


def _has_request(err: httpx2.HTTPError) -> bool:
    try:
        return err.request is not None
    except RuntimeError:   # httpx raises when no request was attached
        return False


class _NoNetwork(httpx2.BaseTransport):
    """An HTTP transport that refuses every request, so `warm_up` never sends anything."""

    def handle_request(self, request):
        raise httpx2.ConnectError("warm-up request: never sent", request=request)


def warm_up() -> None:
    """Run the request path once, offline, before workers fork: what it imports and caches on
    first use is then inherited by every forked worker instead of costing each its own."""
    http = openai.DefaultHttpxClient(transport=_NoNetwork())
    sdk = openai.OpenAI(api_key=NO_KEY, base_url="http://127.0.0.1/v1", max_retries=0, http_client=http)
    try:
        complete(from_sdk(sdk, http), {"model": "warm-up", "messages": [{"role": "user", "content": "warm-up"}]})
    except ConnectError:
        pass  # expected: the transport refuses; only the code paths on the way mattered
