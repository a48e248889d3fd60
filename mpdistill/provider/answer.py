"""What a 2xx chat-completion body says: the answer, reasoning, tool calls, refusal, samples, and
the parsed answer of a JSON-format request. Pure functions of the body, for sync and async calls.

A body that is no answer (not JSON, no usable choice, `content: null` with neither tool calls nor
a refusal, a JSON answer that does not parse) is a BadResponseError, retried like a bad status.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

from ..errors import BadResponseError

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_MAX_RAW_ANSWER = 2000
_JSON_FORMATS = frozenset({"json_object", "json_schema"})
_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class Completion:
    """The useful part of one chat-completion answer."""

    answer: str | None
    reasoning: str | None
    finish_reason: str | None
    usage: dict | None
    model: str | None
    headers: dict = field(default_factory=dict)   # x-ratelimit-*, retry-after(-ms), lower-cased
    extracted: dict | None = None                 # the parsed answer of a JSON-format request
    samples: tuple | None = None                  # every choice when the request asked for n > 1
    tool_calls: list | None = None                # the assistant's tool calls, as the server sent them
    refusal: str | None = None
    annotations: list | None = None               # e.g. url citations of a web-search model


def finish(status: int, body: bytes, headers: dict, request: dict) -> Completion:
    """The Completion of a 2xx body (`headers`: the kept ones); JSON-format answers parsed too."""
    completion = parse_response(status, body, headers)
    return with_extracted(completion, status) if wants_json(request) else completion


def parse_response(status: int, body: bytes, headers: dict) -> Completion:
    """A Completion from a 2xx body; BadResponseError when it is not JSON or holds no answer."""
    try:
        data = json.loads(body)
    except ValueError as err:       # JSONDecodeError and UnicodeDecodeError both are
        raise BadResponseError(f"HTTP {status}: body is not JSON ({err})",
                               status=status, headers=headers) from err
    return completion_from_body(data, status, headers)


def completion_from_body(data: object, status: int = 200, headers: dict | None = None) -> Completion:
    """A Completion from a decoded 2xx body (a Batch API result line holds one already decoded)."""
    headers = headers or {}
    choice = _first_choice(data)
    if choice is None:
        raise BadResponseError(f"HTTP {status}: answer has no usable choices: {str(data):.200}",
                               status=status, headers=headers)
    message = choice["message"]
    answer, reasoning = split_reasoning(message)
    tool_calls, refusal = _list(message.get("tool_calls")), _text(message.get("refusal"))
    if answer is None and not tool_calls and not refusal:
        raise BadResponseError(f"HTTP {status}: the answer has content null and neither tool calls "
                               f"nor a refusal (finish_reason {choice.get('finish_reason')!r})",
                               status=status, headers=headers)
    usage = data.get("usage")
    return Completion(answer=answer, reasoning=reasoning, finish_reason=choice.get("finish_reason"),
                      usage=usage if isinstance(usage, dict) else None, model=data.get("model"),
                      headers=headers, samples=_samples(data), tool_calls=tool_calls, refusal=refusal,
                      annotations=_list(message.get("annotations")))


def _list(value: object) -> list | None:
    """A non-empty list as sent, else None (servers send `[]` and `null` alike for "none")."""
    return value if isinstance(value, list) and value else None


def _samples(data: dict) -> tuple | None:
    """All choices as (answer, reasoning, finish_reason) dicts, when there is more than one."""
    choices = data.get("choices")
    if len(choices) < 2:
        return None
    out = []
    for c in choices:
        message = c.get("message") if isinstance(c, dict) else None
        answer, reasoning = split_reasoning(message) if isinstance(message, dict) else (None, None)
        sample = {"answer": answer, "reasoning": reasoning,
                  "finish_reason": c.get("finish_reason") if isinstance(c, dict) else None}
        if isinstance(message, dict) and _list(message.get("tool_calls")):
            sample["tool_calls"] = message["tool_calls"]
        out.append(sample)
    return tuple(out)


def wants_json(request: dict) -> bool:
    """True when the request asks for a JSON answer (response_format json_object or json_schema)."""
    fmt = request.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in _JSON_FORMATS


def with_extracted(completion: Completion, status: int = 200) -> Completion:
    """`completion` with its answer parsed into `extracted`; BadResponseError (retried) when the
    answer is not a JSON object, with the raw answer in the message so the errors file shows it."""
    try:
        extracted = extract_json(completion.answer)
    except ValueError as err:
        raw = completion.answer or ""
        cut = f" [... {len(raw) - _MAX_RAW_ANSWER} more chars]" if len(raw) > _MAX_RAW_ANSWER else ""
        raise BadResponseError(f"HTTP {status}: JSON answer expected, {err}; raw answer: "
                               f"{raw[:_MAX_RAW_ANSWER]}{cut}",
                               status=status, headers=completion.headers) from err
    return dataclasses.replace(completion, extracted=extracted)


def extract_json(answer: str | None) -> dict:
    """The JSON object an answer holds: bare, or in a ```json fenced block; ValueError otherwise."""
    text = (answer or "").strip()
    if not text:
        raise ValueError("the answer is empty")
    if not text.startswith("{"):
        fenced = _FENCE.search(text)
        if fenced is None:
            raise ValueError("the answer is neither a JSON object nor a ```json block")
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except ValueError as err:
        raise ValueError(f"the answer is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise ValueError(f"the answer is JSON but a {type(value).__name__}, not an object")
    return value


def split_reasoning(message: dict) -> tuple[str | None, str | None]:
    """(answer, reasoning) from an assistant message: reasoning fields first, else a leading <think> block."""
    content = _text(message.get("content"))
    reasoning = _text(message.get("reasoning_content")) or _text(message.get("reasoning"))
    if reasoning or content is None:
        return content, reasoning or None
    stripped = content.lstrip()
    if stripped.startswith(_THINK_OPEN):
        end = stripped.find(_THINK_CLOSE)
        if end >= 0:
            thought = stripped[len(_THINK_OPEN):end].strip()
            return stripped[end + len(_THINK_CLOSE):].lstrip(), thought or None
    return content, None


def _first_choice(data: object) -> dict | None:
    """The first choice if it carries a message dict, else None."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        return None
    choice = choices[0]
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        return None
    return choice


def _text(value: object) -> str | None:
    """Message text; list-of-parts content (some servers send it) is joined."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p.get("text") or "" for p in value if isinstance(p, dict))
    return None


