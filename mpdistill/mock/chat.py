"""What the mock server answers: options, scripted `[[...]]` markers, faults and completions.

Pure request-to-reply logic, no sockets and no threads of its own; `server` carries it over HTTP,
`content` reads the requests, `batches` answers the Files/Batches subset.
"""
from __future__ import annotations

import asyncio
import collections
import json
import random
import threading
import time

from .batches import BatchStore
from .content import _first_invalid_image, _load_request, _truncate, last_user_text, prompt_tokens
from .replies import (_MALFORMED_BODY, _NO_MARKERS, DEFAULT_MODEL, Markers, MockOptions, Reply,
                      error_reply, json_reply, retry_headers)

# ----------------------------------------------------------------------------- behaviour

class WindowLimiter:
    """Sliding-window request limiter: at most `limit` admitted requests per `window` seconds."""

    def __init__(self, rps: float, clock=time.monotonic) -> None:
        self.limit = max(1, int(rps))
        self.window = self.limit / rps
        self._clock = clock
        self._admitted: collections.deque[float] = collections.deque()

    def admit(self) -> float:
        """Admit one request (0.0), or say how many seconds until one would be admitted."""
        now = self._clock()
        while self._admitted and now - self._admitted[0] >= self.window:
            self._admitted.popleft()
        if len(self._admitted) < self.limit:
            self._admitted.append(now)
            return 0.0
        return self._admitted[0] + self.window - now

    @property
    def remaining(self) -> int:
        """Requests still admitted in the current window."""
        return max(0, self.limit - len(self._admitted))


class _Responder:
    """Turns one HTTP request into a reply: routes, faults, markers, answers, counters.

    Runs on the server's loop thread only; the counters are read by other threads under a lock.
    """

    def __init__(self, options: MockOptions) -> None:
        self.options = options
        self._rng = random.Random(options.seed)
        self._limiter = WindowLimiter(options.rate_limit_rps) if options.rate_limit_rps else None
        self._marker_uses: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._requests = self._in_flight = self._max_concurrent = 0
        self._by_status: collections.Counter[int] = collections.Counter()
        self._prompts: collections.Counter[str] = collections.Counter()
        self._chat_calls = 0
        self._revoked: dict[str, bool] = {}     # key -> may still read its files and batches
        self.batches = BatchStore(options, self._chat)

    def revoke(self, key: str, reads: bool = True) -> None:
        """Reject `key` from now on (401); with `reads`, it may still poll and download its batches."""
        self._revoked[key] = reads

    async def handle(self, method: str, target: str, headers: dict, body: bytes) -> Reply:
        """Answer one request, after the configured latency."""
        n = self._begin()
        status = None
        try:
            reply = await self._route(n, method, target, headers, body)
            if self.options.latency_ms > 0:
                await asyncio.sleep(self.options.latency_ms / 1000)
            status = reply.status
            return self._with_limit_headers(reply)
        finally:
            self._end(status)

    def stats(self) -> dict:
        """A snapshot of the counters."""
        with self._lock:
            counts = {"requests": self._requests, "by_status": dict(self._by_status),
                      "max_concurrent": self._max_concurrent, "in_flight": self._in_flight,
                      "prompts": dict(self._prompts), "chat_requests": self._chat_calls}
        return {**counts, **self.batches.stats()}

    def reset_stats(self) -> None:
        """Zero the counters (marker state and the rate limiter are kept)."""
        with self._lock:
            self._requests = self._max_concurrent = self._chat_calls = 0
            self._by_status.clear()
            self._prompts.clear()

    def _begin(self) -> int:
        with self._lock:
            self._requests += 1
            self._in_flight += 1
            self._max_concurrent = max(self._max_concurrent, self._in_flight)
            return self._requests

    def _end(self, status: int | None) -> None:
        with self._lock:
            self._in_flight -= 1
            if status is not None:
                self._by_status[status] += 1

    async def _route(self, n: int, method: str, target: str, headers: dict, body: bytes) -> Reply:
        path = target.split("?", 1)[0].rstrip("/")
        path = path[3:] if path.startswith("/v1/") else path
        if method == "POST" and path == "/chat/completions":
            handler = self._chat
            with self._lock:
                self._chat_calls += 1
        elif self.batches.handles(path):
            refusal = self._auth(headers, reads=method == "GET")
            if refusal is not None:
                return refusal
            return await self.batches.handle(method, path, target.partition("?")[2], _bearer(headers),
                                             headers, body)
        elif method == "GET" and (path == "/models" or path.startswith("/models/")):
            handler = self._models
        else:
            return error_reply(404, f"Unknown request URL: {method} {target}", "unknown_url")
        refusal = self._gate(headers)
        return refusal if refusal is not None else await handler(n, path, body)

    def _gate(self, headers: dict) -> Reply | None:
        """The server-wide refusals, in the order a real API applies them."""
        opts = self.options
        refusal = self._auth(headers)
        if refusal is not None:
            return refusal
        if opts.fixed_status is not None:
            extra = retry_headers(1.0) if opts.fixed_status == 429 else ()
            return error_reply(opts.fixed_status, f"injected status {opts.fixed_status}", headers=extra)
        wait = self._limiter.admit() if self._limiter else 0.0
        if wait > 0:
            return error_reply(429, "Rate limit reached for requests", headers=retry_headers(wait))
        if opts.error_rate > 0 and self._rng.random() < opts.error_rate:
            return error_reply(500, "injected server error")
        return None

    def _auth(self, headers: dict, reads: bool = False) -> Reply | None:
        """401 for an unknown key, or a revoked one (which may keep reading when revoked so)."""
        key = _bearer(headers)
        if self.options.api_keys is not None and key not in self.options.api_keys:
            return error_reply(401, "Incorrect API key provided.", "invalid_api_key")
        if key in self._revoked and not (reads and self._revoked[key]):
            return error_reply(401, "This API key has been revoked.", "invalid_api_key")
        return None

    def _with_limit_headers(self, reply: Reply) -> Reply:
        if self._limiter is None:
            return reply
        extra = (("x-ratelimit-limit-requests", str(self._limiter.limit)),
                 ("x-ratelimit-remaining-requests", str(self._limiter.remaining)))
        return Reply(reply.status, reply.body, reply.headers + extra)

    async def _models(self, n: int, path: str, body: bytes) -> Reply:
        names = self.options.models or (DEFAULT_MODEL,)
        cards = [{"id": name, "object": "model", "created": 0, "owned_by": "mpdistill-mock"}
                 for name in names]
        if path == "/models":
            return json_reply(200, {"object": "list", "data": cards})
        wanted = path[len("/models/"):]
        card = next((card for card in cards if card["id"] == wanted), None)
        if card is None:
            return error_reply(404, f"The model `{wanted}` does not exist.", "model_not_found")
        return json_reply(200, card)

    async def _chat(self, n: int, path: str, body: bytes) -> Reply:
        request = _load_request(body)
        if isinstance(request, Reply):
            return request
        model = str(request.get("model") or DEFAULT_MODEL)
        if self.options.strict_models and self.options.models and model not in self.options.models:
            return error_reply(404, f"The model `{model}` does not exist.", "model_not_found")
        bad_url = _first_invalid_image(request["messages"])
        if bad_url is not None:
            return error_reply(400, f"Invalid image url {bad_url[:80]!r}: expected an http(s) url "
                                    "or data:image/...;base64,...", "invalid_image_url")
        text, images = last_user_text(request["messages"])
        try:
            markers = Markers.parse(text) if "[[" in text else _NO_MARKERS
        except ValueError as err:
            return error_reply(400, str(err), "invalid_marker")
        self._record(text)
        scripted = await self._scripted(markers, text)
        if scripted is not None:
            return scripted
        return json_reply(200, self._completion(n, request, model, (text, images), markers))

    def _record(self, text: str) -> None:
        if self.options.record_prompts:
            with self._lock:
                self._prompts[text] += 1

    def _take(self, kind: str, text: str, times: float) -> bool:
        """Use up one of the first `times` turns of a marker for this exact prompt text."""
        key = (kind, text)
        used = self._marker_uses.get(key, 0)
        if used >= times:
            return False
        self._marker_uses[key] = used + 1
        return True

    async def _scripted(self, markers: Markers, text: str) -> Reply | None:
        """The reply a marker forces instead of an answer, or None."""
        if markers.sleep_s > 0:
            await asyncio.sleep(markers.sleep_s)
        if markers.fail_status is not None and self._take("fail", text, markers.fail_times):
            retry_after = markers.fail_retry_after
            if retry_after is None and markers.fail_status == 429:
                retry_after = 0.1
            extra = retry_headers(retry_after) if retry_after is not None else ()
            return error_reply(markers.fail_status, f"scripted failure {markers.fail_status}",
                               headers=extra)
        if self._take("malformed", text, markers.malformed_times):
            return Reply(200, _MALFORMED_BODY)
        if self._take("reset", text, markers.reset_times):
            return Reply(200, _MALFORMED_BODY, cut_at=len(_MALFORMED_BODY) // 2)
        return None

    def _completion(self, n: int, request: dict, model: str, prompt: tuple[str, int],
                    markers: Markers) -> dict:
        text, images = prompt
        content = self._content(n, request, text, images, markers)
        tokens = max(1, len(content) // 4)
        finish = "stop"
        if not markers.echo_params:  # echoed params must stay parseable JSON
            content, tokens, finish = _truncate(content, tokens, request)
        message = self._message(request, content, text, markers)
        if "tool_calls" in message:
            finish = "tool_calls"
        used = prompt_tokens(request["messages"])
        return {"id": f"chatcmpl-mock-{n}", "object": "chat.completion", "created": int(time.time()),
                "model": model, "system_fingerprint": "mpdistill-mock",
                "choices": [{"index": i, "message": _sample(message, i), "finish_reason": finish,
                             "logprobs": None} for i in range(_samples(request))],
                "usage": {"prompt_tokens": used, "completion_tokens": tokens * _samples(request),
                          "total_tokens": used + tokens * _samples(request)}}

    def _message(self, request: dict, content: str, text: str, markers: Markers) -> dict:
        """The assistant message: the answer, or a tool call, a refusal, or no content at all."""
        calls = _tool_calls(request, text)
        if calls:
            return {"role": "assistant", "content": None, "tool_calls": calls}
        if markers.refusal:
            return {"role": "assistant", "content": None, "refusal": "mock refusal: " + text[:200]}
        if self._take("nocontent", text, markers.nocontent_times):
            return {"role": "assistant", "content": None}
        message = {"role": "assistant", "content": content}
        if self.options.reasoning or markers.reasoning:
            message["reasoning_content"] = "mock reasoning about: " + text[:200]
        return message

    def _content(self, n: int, request: dict, text: str, images: int, markers: Markers) -> str:
        if markers.echo_params:
            return json.dumps({k: v for k, v in request.items() if k != "messages"}, sort_keys=True)
        answer = "mock answer: " + text[:200] + (f" [images: {images}]" if images else "")
        response_format = request.get("response_format")
        wants_json = isinstance(response_format, dict) and response_format.get("type") == "json_object"
        if wants_json and not self._take("badjson", text, markers.badjson_times):
            answer = json.dumps({"answer": answer, "n": n})
        return "<think>mock thinking</think>" + answer if markers.think else answer


def _tool_calls(request: dict, text: str) -> list | None:
    """A call of the tool that `tool_choice` names (or of the first, when it is "required")."""
    tools, choice = request.get("tools"), request.get("tool_choice")
    if not isinstance(tools, list) or not tools:
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
    elif choice == "required":
        name = ((tools[0] or {}).get("function") or {}).get("name")
    else:
        return None
    arguments = json.dumps({"prompt": text[:200]})
    return [{"id": "call_mock_0", "type": "function", "function": {"name": name, "arguments": arguments}}]


def _bearer(headers: dict) -> str | None:
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


def _samples(request: dict) -> int:
    """How many choices the request asks for (`n`), at least 1."""
    n = request.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def _sample(message: dict, index: int) -> dict:
    """Choice `index`: the first is the plain answer, later ones say which sample they are."""
    if index == 0 or not isinstance(message.get("content"), str):
        return message
    return {**message, "content": f"{message['content']} (sample {index + 1})"}
