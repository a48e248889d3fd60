"""One chat-completion call through the official openai SDK, mapped onto mpdistill's error tree;
the answer of a JSON-format request (response_format json_object / json_schema) is parsed here too.

The hot path reads the raw JSON body itself instead of building the SDK's pydantic models.
`error_for_status` is the one place where an HTTP status becomes an error class.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import openai

from .endpoint import Endpoint
from ..errors import (AuthError, BadResponseError, CallError, CallTimeoutError, ConnectError,
                     RateLimitError, RejectedError, ServerError)
from ..engine.retry import parse_retry_after

# The SDK refuses an empty key; keyless servers (vLLM, llama.cpp, Ollama) ignore whatever we send.
NO_KEY = "EMPTY"
_KEPT_HEADERS = frozenset({"retry-after", "retry-after-ms"})
_RATELIMIT_PREFIX = "x-ratelimit-"
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_MAX_DETAIL = 500
# chat.completions.create keyword → the SDK request option it becomes (see post_chat).
_CREATE_OPTIONS = {"extra_body": "extra_json", "extra_headers": "headers", "extra_query": "params",
                   "timeout": "timeout"}
_RAW_RESPONSE = openai.APIResponse[object]   # `post` returns the response unparsed: we read the JSON
_RAW_ASYNC_RESPONSE = openai.AsyncAPIResponse[object]
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


def make_client(endpoint: Endpoint, timeout: float, connections: int | None = None) -> openai.OpenAI:
    """An SDK client for `endpoint`; it never retries, because mpdistill schedules retries itself.

    `connections` (the requests one process keeps in flight) sizes its connection pool, so that
    every in-flight request keeps its connection alive instead of reconnecting.
    """
    http = openai.DefaultHttpxClient(limits=_limits(connections)) if connections else None
    return openai.OpenAI(api_key=endpoint.api_key or NO_KEY, base_url=endpoint.base_url,
                         timeout=timeout, max_retries=0, http_client=http)


def make_async_client(endpoint: Endpoint, timeout: float, connections: int | None = None) -> openai.AsyncOpenAI:
    """The asyncio twin of `make_client` (made inside the event loop that will use it)."""
    http = openai.DefaultAsyncHttpxClient(limits=_limits(connections)) if connections else None
    return openai.AsyncOpenAI(api_key=endpoint.api_key or NO_KEY, base_url=endpoint.base_url,
                              timeout=timeout, max_retries=0, http_client=http)


def _limits(connections: int):
    try:
        import httpx2 as http   # the SDK's own HTTP library since openai 3
    except ImportError:
        import httpx as http
    return http.Limits(max_connections=max(connections, 10), max_keepalive_connections=max(connections, 10))


class _NoNetwork:
    """An HTTP transport that refuses every request, so `warm_up` never sends anything."""

    def handle_request(self, request):
        raise ConnectionRefusedError("warm-up request: never sent")

    def close(self) -> None:
        pass


def warm_up() -> None:
    """Run the SDK's request path once, offline, before workers fork.

    The SDK imports its chat resources and builds its type caches on first use; done once in the
    manager, every forked worker inherits them instead of paying ~100 ms of CPU each.
    """
    sdk = openai.OpenAI(api_key=NO_KEY, base_url="http://127.0.0.1/v1", max_retries=0,
                        http_client=openai.DefaultHttpxClient(transport=_NoNetwork()))
    try:
        post_chat(sdk, {"model": "warm-up", "messages": [{"role": "user", "content": "warm-up"}]})
    except (OSError, openai.APIError):
        pass  # expected: the transport refuses; only the code paths on the way mattered


def complete(client: openai.OpenAI, request: dict) -> Completion:
    """Make one call with the chat.completions kwargs in `request`; raise a CallError on failure."""
    with sdk_errors(client):
        raw = post_chat(client, request)
    return completion_of(raw, request)


async def acomplete(client: openai.AsyncOpenAI, request: dict) -> Completion:
    """`complete` with an AsyncOpenAI client: the same request, mapping and parsing, awaited."""
    with sdk_errors(client):
        raw = await post_chat(client, request)
    return completion_of(raw, request)


@contextlib.contextmanager
def sdk_errors(client):
    """Turn the SDK's exceptions raised inside into mpdistill's CallErrors (sync and async calls alike)."""
    try:
        yield
    except openai.APITimeoutError as err:      # before APIConnectionError: it is a subclass
        raise CallTimeoutError(f"no answer within the timeout from {_where(err)}") from err
    except openai.APIConnectionError as err:
        raise ConnectError(f"cannot connect to {_where(err)}: {err.__cause__ or err}") from err
    except openai.APIStatusError as err:
        message = _redact(_status_detail(err), client.api_key)
        raise error_for_status(err.status_code, message, err.response.headers) from err


def completion_of(raw, request: dict) -> Completion:
    """The Completion of the SDK's raw 2xx response to `request` (its JSON answer parsed if asked)."""
    completion = parse_response(raw.http_response.status_code, raw.http_response.content,
                                raw.http_response.headers)
    if wants_json(request):
        return with_extracted(completion, raw.http_response.status_code)
    return completion


def post_chat(client: openai.OpenAI | openai.AsyncOpenAI, request: dict):
    """POST /chat/completions with the SDK's generic `post`; returns the SDK's raw response
    (a coroutine of it with an AsyncOpenAI client).

    The same client, auth, headers, timeout and status-to-exception mapping as
    `chat.completions.create`, without create's walk of every param against its typed-dict
    annotations: for plain JSON data that walk changes nothing, yet costs more CPU than the rest
    of the call. create's own keyword arguments (extra_body, extra_headers, extra_query, timeout)
    mean here what they mean there.
    """
    body = {k: v for k, v in request.items() if k not in _CREATE_OPTIONS}
    options = {name: request[key] for key, name in _CREATE_OPTIONS.items() if request.get(key) is not None}
    raw = _RAW_ASYNC_RESPONSE if isinstance(client, openai.AsyncOpenAI) else _RAW_RESPONSE
    return client.post("/chat/completions", body=body, options=options, cast_to=raw)


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


def parse_response(status: int, body: bytes, headers: Mapping[str, str]) -> Completion:
    """A Completion from a 2xx body; BadResponseError when it is not JSON or has no usable choice."""
    kept = interesting_headers(headers)
    try:
        data = json.loads(body)
    except ValueError as err:       # JSONDecodeError and UnicodeDecodeError both are
        raise BadResponseError(f"HTTP {status}: body is not JSON ({err})",
                               status=status, headers=kept) from err
    return completion_from_body(data, status, kept)


def completion_from_body(data: object, status: int = 200, kept: dict | None = None) -> Completion:
    """A Completion from a decoded 2xx body (a Batch API result line holds one already decoded)."""
    kept = kept or {}
    choice = _first_choice(data)
    if choice is None:
        raise BadResponseError(f"HTTP {status}: answer has no usable choices: {str(data):.200}",
                               status=status, headers=kept)
    answer, reasoning = split_reasoning(choice["message"])
    usage = data.get("usage")
    return Completion(answer=answer, reasoning=reasoning, finish_reason=choice.get("finish_reason"),
                      usage=usage if isinstance(usage, dict) else None,
                      model=data.get("model"), headers=kept, samples=_samples(data))


def _samples(data: dict) -> tuple | None:
    """All choices as (answer, reasoning, finish_reason) dicts, when there is more than one."""
    choices = data.get("choices")
    if len(choices) < 2:
        return None
    out = []
    for c in choices:
        message = c.get("message") if isinstance(c, dict) else None
        answer, reasoning = split_reasoning(message) if isinstance(message, dict) else (None, None)
        out.append({"answer": answer, "reasoning": reasoning,
                    "finish_reason": c.get("finish_reason") if isinstance(c, dict) else None})
    return tuple(out)


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


def interesting_headers(headers: Mapping[str, str]) -> dict:
    """Only the response headers the scheduler uses (rate-limit state, retry hints), lower-cased."""
    kept = {}
    for name, value in headers.items():
        name = name.lower()
        if name in _KEPT_HEADERS or name.startswith(_RATELIMIT_PREFIX):
            kept[name] = value
    return kept


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


def _status_detail(err: openai.APIStatusError) -> str:
    """`HTTP <status>: <server's error message>`, short."""
    body = err.body
    detail = body.get("message") if isinstance(body, dict) else body   # text body: e.g. a proxy's HTML
    if not isinstance(detail, str) or not detail.strip():
        detail = err.message
    return f"HTTP {err.status_code}: {detail or err.message}"[:_MAX_DETAIL]


def _redact(message: str, api_key: object) -> str:
    """Some servers echo the key they refused; never let it into an error message."""
    if isinstance(api_key, str) and len(api_key) >= 8 and api_key in message:
        return message.replace(api_key, "***")
    return message


def _where(err: openai.APIError) -> str:
    """Host and path of the failed request, without the query string (it may hold secrets)."""
    url = err.request.url
    return f"{url.scheme}://{url.host}{f':{url.port}' if url.port else ''}{url.path}"
