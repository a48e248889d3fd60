"""Convert mpdistill output and error rows to OpenAI Batch API output lines, and read such lines back.

Batch lines keep mpdistill's `"line"` key first (resume scans read it there); Batch API and
`vllm run-batch` readers ignore the extra key. `from_batch_output` reads OpenAI's, vLLM's and our lines.
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from ..provider.answer import split_reasoning
from .records import ANSWER_EXTRAS
from . import identity
from .identity import is_batch_output  # noqa: F401  (read by the tools through this module too)

# mpdistill error class → the `code` of a Batch API error object.
ERROR_CODES = {
    "RateLimitError": "rate_limit_exceeded", "CallTimeoutError": "timeout",
    "ConnectError": "connection_error", "ServerError": "server_error",
    "BadResponseError": "bad_response", "RejectedError": "invalid_request_error",
    "AuthError": "authentication_error", "RowFormatError": "invalid_row", "ImageError": "invalid_image",
}
# Batch API error `type` for a status, as OpenAI reports it in a response body.
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                429: "rate_limit_error"}


def custom_id_of(record: dict) -> Any:
    """The Batch `custom_id` of a written row: the Batch line's own custom_id, else the row's id
    (kept as the JSON value it is, so it reads back as the same row), else its line number as text."""
    if record.get("custom_id") not in (None, ""):
        return record["custom_id"]
    rid = identity.record_id(record)
    if rid is not None:
        return rid
    line = identity.record_line(record)
    return None if line is None else str(line)


def _implied(record: dict) -> bool:
    return record.get(identity.IMPLIED) is True or identity.explicit_id(record) is None


def _digest(*parts: Any) -> str:
    """A stable hex id, so converting the same row twice gives the same Batch ids."""
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


def _epoch(iso: Any) -> int:
    try:
        return int(datetime.fromisoformat(str(iso)).timestamp())
    except ValueError:
        return 0


def _head(record: dict, custom_id: str, digest: str) -> dict:
    head = {"line": record["line"]} if "line" in record else {}
    head.update({"id": f"batch_req_{digest}", "custom_id": custom_id})
    if _implied(record) and "line" in record:
        head[identity.IMPLIED] = True
    return head


def to_batch_output(record: dict) -> dict:
    """An mpdistill output row as a Batch API output line with a rebuilt chat.completion body."""
    custom_id = custom_id_of(record)
    digest = _digest(custom_id, record.get("line"), record.get("model"), record.get("processed_at"))
    message = {"role": "assistant", "content": record.get("answer")}
    if record.get("reasoning") is not None:
        message["reasoning_content"] = record["reasoning"]
    message.update({k: record[k] for k in ANSWER_EXTRAS if record.get(k) is not None})
    body = {"id": f"chatcmpl-{digest}", "object": "chat.completion",
            "created": _epoch(record.get("processed_at")), "model": record.get("model"),
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": record.get("finish_reason")}],
            "usage": record.get("usage")}
    return {**_head(record, custom_id, digest),
            "response": {"status_code": 200, "request_id": f"req_{digest}", "body": body},
            "error": None}


def error_to_batch_output(error_row: dict) -> dict:
    """An mpdistill errors-file row as a Batch API output line; `response` is null without a status."""
    custom_id = custom_id_of(error_row)
    digest = _digest(custom_id, error_row.get("line"), error_row.get("model"), error_row.get("failed_at"))
    kind = error_row.get("error") or "Error"
    error = {"code": ERROR_CODES.get(kind, "error"), "message": error_row.get("reason") or kind}
    status = error_row.get("status")
    response = None
    if isinstance(status, int) and not isinstance(status, bool):
        body_error = {**error, "type": _ERROR_TYPES.get(status, "invalid_request_error" if status < 500
                                                        else "server_error"), "param": None}
        response = {"status_code": status, "request_id": f"req_{digest}", "body": {"error": body_error}}
    return {**_head(error_row, custom_id, digest), "response": response, "error": error}


def from_batch_output(line: dict) -> dict:
    """Read a Batch API output line back: ids, answer, reasoning, finish_reason, usage, model, error."""
    response = line.get("response") if isinstance(line.get("response"), dict) else None
    status = response.get("status_code") if response else None
    body = response.get("body") if response and isinstance(response.get("body"), dict) else {}
    custom_id = line.get("custom_id")
    out = {"line": line.get("line"), "id": custom_id, "custom_id": custom_id, "answer": None, "reasoning": None, "finish_reason": None,
           "usage": None, "model": body.get("model"), "status_code": status,
           "request_id": response.get("request_id") if response else None, "error": None}
    if line.get(identity.IMPLIED) is True:
        out[identity.IMPLIED] = True
    error = _line_error(line, status, body)
    if error is not None:
        out["error"] = error
        return out
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    out["answer"], out["reasoning"] = split_reasoning(message)
    out.update({k: message[k] for k in ANSWER_EXTRAS if message.get(k) is not None})
    out["finish_reason"] = choice.get("finish_reason")
    out["usage"] = body.get("usage") if isinstance(body.get("usage"), dict) else None
    return out


def _line_error(line: dict, status: Any, body: dict) -> dict | None:
    """The line's error as {code, message, status}, from `error` or from a non-2xx response body."""
    error = line.get("error")
    if not isinstance(error, dict):
        error = None
    if error is None and isinstance(status, int) and not 200 <= status < 300:
        error = body.get("error") if isinstance(body.get("error"), dict) else {"message": f"HTTP {status}"}
    if error is None and not body:
        error = {"code": "no_response", "message": "the line has neither a response body nor an error"}
    if error is None:
        return None
    return {"code": error.get("code"), "message": error.get("message"), "status": status}
