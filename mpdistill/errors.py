"""The one exception tree of mpdistill.

    MpdistillError
    ├── ConfigError                 bad flags, config files, endpoints (run-level, exit 2)
    │   ├── OutputInUseError        another run holds this output's lock
    │   └── OutputMismatchError     the output belongs to another job or input, or has a line
    │                               with no id: nothing is called, nothing is touched
    ├── InputFileError              the input cannot be opened at all (run-level, exit 2)
    ├── RowError                    one row cannot be used; it goes to the errors file
    │   ├── RowFormatError          invalid JSON / UTF-8, no prompt, too long, duplicate id
    │   └── ImageError              missing, corrupt or unsupported image
    ├── CallError                   one API call failed (.status, .retry_after, .headers)
    │   ├── TransientError          worth retrying after a backoff
    │   │   ├── CallTimeoutError    no answer within --timeout
    │   │   ├── ConnectError        no connection to the endpoint
    │   │   ├── RateLimitError      429: cool the endpoint down
    │   │   ├── ServerError         408, 409, 5xx
    │   │   ├── BadResponseError    a 2xx that cannot be used (malformed JSON, no choices)
    │   │   └── WorkerLostError     the worker process died during the call
    │   ├── RejectedError           400, 404, 422 and other 4xx: the row fails at once
    │   ├── RedirectError           a redirect to another origin: not followed, the row fails
    │   ├── ResponseTooLargeError   an answer over --max-response-bytes: the row fails
    │   └── AuthError               401, 403: that key is disabled
    ├── CheckpointError             a checkpoint file that cannot or must not be loaded
    ├── OutputError                 the output cannot be written (disk full, permissions)
    └── RunAbortedError             the run stops itself: every key disabled, outage too long

Classify by class and status code, never by message text. Workers send errors across
process boundaries as plain data (`to_info` / `from_info`), never as pickled exceptions.
"""
from __future__ import annotations


class MpdistillError(Exception):
    """Base class of every error mpdistill raises on purpose."""


class ConfigError(MpdistillError):
    """A flag, config file, endpoint file or environment value is wrong."""


class OutputInUseError(ConfigError):
    """Another run holds the lock of this output (its pid and host are in the message)."""


class OutputMismatchError(ConfigError):
    """The output does not belong to this job: another model/params/system, a changed input,
    or a line that names no row. Refused before any call, with the ways out."""


class InputFileError(MpdistillError):
    """The input file or directory cannot be read at all."""


class RowError(MpdistillError):
    """One input row cannot be turned into a request."""


class RowFormatError(RowError):
    """The row is not valid JSON/UTF-8, has no prompt or messages, is too long or repeats an id."""


class ImageError(RowError):
    """An image of the row is missing, corrupt or of an unsupported kind."""


class CallError(MpdistillError):
    """An API call failed; carries the HTTP status and server hints when there were any."""

    retryable = False

    def __init__(self, message: str, status: int | None = None,
                 retry_after: float | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.headers = headers or {}


class TransientError(CallError):
    """A failure that may go away: retry after a backoff."""

    retryable = True


class CallTimeoutError(TransientError):
    """The endpoint did not answer within the request timeout."""


class ConnectError(TransientError):
    """No connection could be made to the endpoint."""


class RateLimitError(TransientError):
    """HTTP 429: the endpoint asks us to slow down."""


class ServerError(TransientError):
    """HTTP 408, 409 or 5xx."""


class BadResponseError(TransientError):
    """A 2xx answer that cannot be used: malformed JSON, no choices, unparsable structured answer."""


class WorkerLostError(TransientError):
    """The worker process died holding the call (killed, or crashed on this row)."""


class RejectedError(CallError):
    """HTTP 400/404/422 (and other 4xx): the request itself is wrong; the row fails."""


class RedirectError(CallError):
    """A 3xx to another origin: following it would send the prompt elsewhere; the row fails."""


class ResponseTooLargeError(CallError):
    """The answer exceeds --max-response-bytes; reading stops and the row fails."""


class AuthError(CallError):
    """HTTP 401/403: the key is not accepted; that key is disabled."""


class CheckpointError(MpdistillError):
    """A checkpoint cannot be read, or must not be (unsafe owner, permissions, content)."""


class OutputError(MpdistillError):
    """The output or errors file cannot be written."""


class RunAbortedError(MpdistillError):
    """The run stopped itself for a run-level fault; the checkpoint is saved."""


_CALL_ERRORS = {cls.__name__: cls for cls in (
    CallError, TransientError, CallTimeoutError, ConnectError, RateLimitError, ServerError,
    BadResponseError, WorkerLostError, RejectedError, RedirectError, ResponseTooLargeError, AuthError,
    RowError, RowFormatError, ImageError)}


def to_info(err: MpdistillError) -> dict:
    """Describe an error as plain data that crosses process boundaries safely."""
    return {
        "kind": type(err).__name__,
        "message": str(err),
        "status": getattr(err, "status", None),
        "retry_after": getattr(err, "retry_after", None),
        "headers": dict(getattr(err, "headers", {}) or {}),
    }


def from_info(info: dict) -> MpdistillError:
    """Rebuild the error that `to_info` described."""
    cls = _CALL_ERRORS.get(info.get("kind"), CallError)
    if issubclass(cls, CallError):
        return cls(info.get("message", ""), status=info.get("status"),
                   retry_after=info.get("retry_after"), headers=info.get("headers"))
    return cls(info.get("message", ""))
