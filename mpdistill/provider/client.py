"""The openai SDK's clients for an endpoint (batch mode's Files and Batches calls), and the mapping
of the SDK's exceptions onto mpdistill's error tree (`call_error`; statuses map in `status`).

The clients are built on `http.http_client`, so they too have a total deadline per call and a
size cap, and never follow a redirect to another origin (see `transport`, `guards`). Importing the SDK costs
most of a second, so only batch mode imports this module; online calls go through `chat`.
"""
from __future__ import annotations

import contextlib

import openai

from .endpoint import Endpoint
from .http import http_client
from .status import MAX_DETAIL, NO_KEY, deadline_error, error_for_status, redact_key, status_detail
from .guards import redacted
from ..errors import CallError, ConnectError, MpdistillError


def make_client(endpoint: Endpoint, timeout: float, connections: int | None = None,
                max_response_bytes: int | None = None) -> openai.OpenAI:
    """An SDK client for `endpoint`; it never retries, because mpdistill schedules retries itself.

    `connections` (the requests one process keeps in flight) sizes its connection pool, so that
    every in-flight request keeps its connection alive instead of reconnecting. Answers beyond
    `max_response_bytes` fail (None: no cap, e.g. for Batch API file downloads).
    """
    return openai.OpenAI(api_key=endpoint.api_key or NO_KEY, base_url=endpoint.base_url, timeout=timeout,
                         max_retries=0, http_client=http_client(timeout, connections, max_response_bytes))


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
        return deadline_error(timeout, _where(err))
    if isinstance(err, openai.APIConnectionError):
        if isinstance(err.__cause__, MpdistillError):
            return err.__cause__
        return ConnectError(f"cannot connect to {_where(err)}: {err.__cause__ or err}")
    if isinstance(err, openai.APIStatusError):
        return error_for_status(err.status_code, status_detail(err.status_code, _message(err), api_key),
                                err.response.headers)
    return CallError(f"{type(err).__name__}: {redact_key(str(err), api_key)}"[:MAX_DETAIL])


def _message(err: openai.APIStatusError) -> str:
    """The server's error message as the SDK parsed it (a text body, e.g. a proxy's HTML, as is)."""
    body = err.body
    detail = body.get("message") if isinstance(body, dict) else body
    return detail if isinstance(detail, str) and detail.strip() else err.message


def _where(err: openai.APIError) -> str:
    """Host and path of the failed request, without the query string (it may hold secrets)."""
    return redacted(err.request.url)
