"""Chat calls from an event loop (`--mode async`) over aiohttp, the openai SDK's own async HTTP
backend (`openai[aiohttp]`): under a quarter of the CPU of httpx's async stack per call (0.33
against 1.43 ms at 64 in flight on the 2-core benchmark machine), which is what lets two
processes keep 2,048 calls in flight.

The guards are the threaded path's (`guards`): the whole call within its deadline
(counted from its slot), a request's own `timeout` per socket operation, the answer capped at
`--max-response-bytes`, redirects followed only within their origin, the environment's proxies,
the same TLS trust store. A paced call's request leaves at its slot, once its connection is made
(`Connector.connect`). Answers, errors and their classes are `chat.complete`'s.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Mapping

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from ..errors import ConnectError
from .answer import Completion
from .chat import body_of, finish_response, request_headers
from .endpoint import Endpoint
from .status import NO_KEY, deadline_error, redact_key
from .guards import (MAX_REDIRECTS, deadline, hold_s, next_hop, query_value, redacted, too_large, too_many_redirects,
                     tls_context, until_slot)

_NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connection pool; a paced call waits for its slot once it has its connection, just
    before its request is written."""

    async def connect(self, req, traces, timeout):
        conn = await super().connect(req, traces, timeout)
        if hold_s() > 0:
            await until_slot()
        return conn


@dataclass(frozen=True)
class AioChatClient:
    """What one endpoint's calls need in an event loop: its session, the URL, headers and key."""

    session: aiohttp.ClientSession
    url: str
    headers: dict
    api_key: str
    max_response_bytes: int | None
    proxy: tuple = (None, None)     # the environment's proxy for `url` and its credentials, if any
    target: URL = field(init=False, repr=False)   # `url` parsed once, not for every call

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", URL(self.url))

    async def aclose(self) -> None:
        await self.session.close()


def aio_client(endpoint: Endpoint, connections: int | None = None,
               max_response_bytes: int | None = None) -> AioChatClient:
    """The AioChatClient of `endpoint`, with up to `connections` open (inside the running loop)."""
    connector = _Connector(limit=max(connections or 0, 10), limit_per_host=0, ssl=tls_context())
    # The proxy is looked up here, once: aiohttp's trust_env looks it up (and .netrc) in a thread for
    # every request, which doubled a call's CPU.
    session = aiohttp.ClientSession(connector=connector, trust_env=False, timeout=_NO_TIMEOUT)
    url = endpoint.base_url.rstrip("/") + "/chat/completions"
    return AioChatClient(session, url, request_headers(endpoint), endpoint.api_key or NO_KEY, max_response_bytes,
                         _environment_proxy(URL(url)))


def _environment_proxy(url: URL) -> tuple:
    """(proxy URL, credentials) that HTTP(S)_PROXY, ALL_PROXY and NO_PROXY give `url`; (None, None): direct."""
    try:
        return get_env_proxy_for_url(url)
    except LookupError:
        return None, None


async def acomplete(api: AioChatClient, request: dict, timeout: float | None = None,
                    not_before: float = 0.0, awake_s: float = 0.0) -> Completion:
    """`chat.complete` in an event loop: the same request, slot, deadline, answer and errors."""
    held = max(0.0, not_before - time.monotonic())
    extra = request.get("extra_headers")
    headers = {**api.headers, **extra} if extra else api.headers
    per_operation = request.get("timeout")
    limits = _NO_TIMEOUT if per_operation is None else aiohttp.ClientTimeout(
        total=None, sock_connect=per_operation, sock_read=per_operation)
    try:
        with deadline(None, not_before, awake_s):   # the slot (asyncio.timeout keeps the deadline)
            async with asyncio.timeout(None if timeout is None else held + timeout):
                status, content, answer_headers, reason = await _send(
                    api, _with_query(api.target, request.get("extra_query")), json.dumps(body_of(request)).encode(),
                    headers, limits)
    except TimeoutError as err:
        raise deadline_error(timeout, redacted(api.url)) from err
    except aiohttp.ClientError as err:
        raise ConnectError(redact_key(f"cannot connect to {redacted(api.url)}: {err}", api.api_key)) from err
    return finish_response(status, content, answer_headers, reason, api.api_key, request)


def _with_query(url: URL, query) -> URL:
    """`url` with a request's extra_query, its values written as httpx writes them (true, false, '')."""
    if not query:
        return url
    if isinstance(query, dict):
        query = {k: query_value(v) for k, v in query.items()}
    return url.update_query(query)


async def _send(api: AioChatClient, url: URL, body: bytes | None, headers: dict,
                limits: aiohttp.ClientTimeout) -> tuple[int, bytes, Mapping[str, str], str]:
    """POST `body`, following redirects within the origin as httpx does; (status, body, headers, reason)."""
    method = "POST"
    for _ in range(MAX_REDIRECTS + 1):
        async with api.session.request(method, url, data=body, headers=headers, allow_redirects=False,
                                       timeout=limits, proxy=api.proxy[0], proxy_auth=api.proxy[1]) as response:
            hop = next_hop(response.status, method, str(url), response.headers.get("Location"), body)
            if hop is None:
                content = await _read(response, api.max_response_bytes)
                return response.status, content, response.headers, response.reason or ""
            method, target, body = hop
            url = URL(target, encoded=True)
    raise too_many_redirects(api.url)


async def _read(response: aiohttp.ClientResponse, cap: int | None) -> bytes:
    """The whole body, or ResponseTooLargeError as soon as it (or its Content-Length) exceeds `cap`."""
    if cap is None:
        return await response.read()
    if response.content_length is not None and response.content_length > cap:
        raise too_large(response.status, cap)
    chunks, seen = [], 0
    async for chunk in response.content.iter_any():
        seen += len(chunk)
        if seen > cap:
            raise too_large(response.status, cap)
        chunks.append(chunk)
    return b"".join(chunks)
