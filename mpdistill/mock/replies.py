"""What every mock reply is built from: the server options, the `[[...]]` prompt markers, and
OpenAI-style JSON and error replies.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

DEFAULT_MODEL = "mock-model"
_ALWAYS = math.inf
_MARKER = re.compile(
    r"\[\[(fail|sleep|malformed|reasoning|think|badjson|echo_params|reset|nocontent|refusal)"
    r"(?::([^\[\]]*))?\]\]")
_MALFORMED_BODY = (b'{"id": "chatcmpl-mock-malformed", "object": "chat.completion", '
                   b'"choices": [{"index": 0, "message": {"role": "assis')


# ----------------------------------------------------------------------------- records

@dataclass(frozen=True)
class MockOptions:
    """How the mock server answers: injected faults, served models, accepted keys."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    rate_limit_rps: float | None = None
    fixed_status: int | None = None
    reasoning: bool = False
    models: tuple[str, ...] = ()
    strict_models: bool = False
    api_keys: frozenset[str] | None = field(default=None, repr=False)
    seed: int = 0
    record_prompts: bool = False
    batch_seconds: float = 0.0          # Batches: time from create to completed
    batch_script: tuple[str, ...] = ()  # outcome of each created batch in turn: ok, failed, expired
    batch_max_requests: int = 50_000

    def __post_init__(self) -> None:
        if self.fixed_status is not None and not 400 <= self.fixed_status <= 599:
            raise ValueError(f"fixed_status must be an HTTP error status, got {self.fixed_status}")
        if self.rate_limit_rps is not None and self.rate_limit_rps <= 0:
            raise ValueError(f"rate_limit_rps must be positive, got {self.rate_limit_rps}")
        if any(o not in ("ok", "failed", "expired") for o in self.batch_script):
            raise ValueError(f"batch_script outcomes are ok, failed or expired, got {self.batch_script}")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be within [0, 1], got {self.error_rate}")


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, JSON body bytes, extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    cut_at: int | None = None   # send only this many body bytes, then drop the connection


@dataclass(frozen=True)
class Markers:
    """The `[[...]]` markers found in the last user message of a request."""

    fail_status: int | None = None
    fail_times: float = 0
    fail_retry_after: float | None = None
    sleep_s: float = 0.0
    malformed_times: float = 0
    badjson_times: float = 0
    reasoning: bool = False
    think: bool = False
    echo_params: bool = False
    reset_times: float = 0        # the connection drops mid-body
    nocontent_times: float = 0    # content null, no tool calls, no refusal
    refusal: bool = False

    @classmethod
    def parse(cls, text: str) -> Markers:
        """Read every marker of `text`; ValueError names the first one that cannot be read."""
        values: dict = {}
        for match in _MARKER.finditer(text):
            try:
                values.update(_MARKER_PARSERS[match.group(1)](match.group(2)))
            except (ValueError, TypeError) as err:
                raise ValueError(f"invalid marker {match.group(0)!r}") from err
        return cls(**values)


def _times(arg: str | None) -> float:
    """A marker's repeat count: a number, or `*` / nothing for always."""
    if arg in (None, "", "*"):
        return _ALWAYS
    count = int(arg)
    if count < 0:
        raise ValueError("negative count")
    return count


def _parse_fail(arg: str | None) -> dict:
    """`fail:STATUS[:N[:RETRY_AFTER]]`."""
    parts = (arg or "").split(":")
    if len(parts) > 3 or not 400 <= int(parts[0]) <= 599:
        raise ValueError("expected fail:STATUS:N[:RETRY_AFTER] with an error status")
    retry_after = float(parts[2]) if len(parts) > 2 else None
    return {"fail_status": int(parts[0]), "fail_times": _times(parts[1] if len(parts) > 1 else None),
            "fail_retry_after": retry_after}


def _parse_sleep(arg: str | None) -> dict:
    """`sleep:SECONDS`."""
    seconds = float(arg)  # type: ignore[arg-type]  # None raises TypeError, reported as invalid
    if not seconds >= 0:
        raise ValueError("negative sleep")
    return {"sleep_s": seconds}


_MARKER_PARSERS = {
    "fail": _parse_fail,
    "sleep": _parse_sleep,
    "malformed": lambda arg: {"malformed_times": _times(arg)},
    "badjson": lambda arg: {"badjson_times": _times(arg)},
    "reasoning": lambda arg: {"reasoning": True},
    "think": lambda arg: {"think": True},
    "echo_params": lambda arg: {"echo_params": True},
    "reset": lambda arg: {"reset_times": _times(arg)},
    "nocontent": lambda arg: {"nocontent_times": _times(arg)},
    "refusal": lambda arg: {"refusal": True},
}
_NO_MARKERS = Markers()


# ----------------------------------------------------------------------------- replies

_ERROR_KINDS = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def json_reply(status: int, obj: object, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """A reply whose body is `obj` as compact JSON."""
    return Reply(status, json.dumps(obj, separators=(",", ":")).encode(), headers)


def error_reply(status: int, message: str, code: str | None = None,
                headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """An OpenAI-style error: `{"error": {"message", "type", "code"}}`."""
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    err_type, default_code = _ERROR_KINDS.get(status, (default_type, default_type))
    body = {"error": {"message": message, "type": err_type, "code": code or default_code}}
    return json_reply(status, body, headers)


def retry_headers(seconds: float) -> tuple[tuple[str, str], ...]:
    """`Retry-After` (seconds, maybe fractional) and `retry-after-ms`, as OpenAI sends them."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".") or "0"
    return (("Retry-After", text), ("retry-after-ms", str(max(0, math.ceil(seconds * 1000)))))
