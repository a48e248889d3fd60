"""What an HTTP answer that is not a 2xx means to mpdistill: the one status-to-class mapping.

Shared by the chat calls (`chat`), the SDK's Files and Batches calls (`client`) and Batch API
result lines (`batch.collect`); it imports nothing of the SDK, so a run's start-up never pays for it.
"""
from __future__ import annotations

from collections.abc import Mapping

from ..engine.retry import parse_retry_after
from ..errors import (AuthError, BadResponseError, CallError, CallTimeoutError, RateLimitError, RejectedError,
                      ServerError)

# The SDK refuses an empty key; keyless servers (vLLM, llama.cpp, Ollama) ignore whatever we send.
NO_KEY = "EMPTY"
MAX_DETAIL = 500
_KEPT_HEADERS = frozenset({"retry-after", "retry-after-ms"})
_RATELIMIT_PREFIX = "x-ratelimit-"


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


def status_detail(status: int, message: str, api_key: object = None) -> str:
    """`HTTP <status>: <server's message>`, short, never holding the key: every error's message."""
    return redact_key(f"HTTP {status}: {message}"[:MAX_DETAIL], api_key)


def deadline_error(timeout: float | None, where: str | None = None) -> CallTimeoutError:
    """The error of a call that had no complete answer within its deadline (`--timeout`)."""
    limit = f"the {timeout:g} s deadline (--timeout)" if timeout is not None else "the timeout"
    return CallTimeoutError(f"no complete answer within {limit}" + (f" from {where}" if where else ""))


def interesting_headers(headers: Mapping[str, str]) -> dict:
    """Only the response headers the scheduler uses (rate-limit state, retry hints), lower-cased."""
    kept = {}
    for name, value in headers.items():
        name = name.lower()
        if name in _KEPT_HEADERS or name.startswith(_RATELIMIT_PREFIX):
            kept[name] = value
    return kept


def redact_key(message: str, api_key: object) -> str:
    """Some servers echo the key they refused; never let it into an error message."""
    if isinstance(api_key, str) and len(api_key) >= 8 and api_key in message:
        return message.replace(api_key, "***")
    return message
