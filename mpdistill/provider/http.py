"""The httpx clients under the openai SDK (batch mode's Files and Batches calls): guarded
transports (deadline, size cap, redirect rule; see `transport`), a pool sized to the calls in
flight, the environment's proxies.

The same defaults as the SDK's own httpx client (redirects followed, 1,000 connections, 100 kept
alive): `client` builds SDK clients on them. Online chat calls go over `conn` and `aiochat`.
"""
from __future__ import annotations

import httpx2

from .transport import GuardedTransport, guarded_mounts

_DEFAULT_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)


def http_client(timeout: float, connections: int | None = None,
                max_response_bytes: int | None = None) -> httpx2.Client:
    """An httpx client with a pool of `connections` (the calls one process keeps in flight, each on
    a connection kept alive), answers capped at `max_response_bytes` (None: no cap, e.g. for Batch
    API file downloads)."""
    limits = _limits(connections)
    return httpx2.Client(transport=GuardedTransport(max_response_bytes, limits=limits),
                         mounts=guarded_mounts(max_response_bytes, limits), timeout=timeout, follow_redirects=True)


def _limits(connections: int | None) -> httpx2.Limits:
    if not connections:
        return _DEFAULT_LIMITS
    return httpx2.Limits(max_connections=max(connections, 10), max_keepalive_connections=max(connections, 10))
