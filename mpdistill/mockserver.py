"""OpenAI-compatible HTTP mock server: the quickstart's default backend and every test's endpoint.

Standard library only (asyncio, HTTP/1.1 keep-alive). Answers are deterministic; faults are
scripted by server options or by `[[...]]` markers in the prompt; outages by `pause`/`resume`.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import concurrent.futures
import functools
import http
import json
import logging
import math
import os
import random
import re
import signal
import threading
import time
import weakref
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "mock-model"
DEFAULT_PORT = 8765
_BACKLOG = 4096                 # a 64-process pool opens hundreds of connections at once
_CALL_TIMEOUT_S = 10.0          # how long start/stop/pause/resume wait for the server's loop
_ALWAYS = math.inf
_MARKER = re.compile(
    r"\[\[(fail|sleep|malformed|reasoning|think|badjson|echo_params)(?::([^\[\]]*))?\]\]")
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

    def __post_init__(self) -> None:
        if self.fixed_status is not None and not 400 <= self.fixed_status <= 599:
            raise ValueError(f"fixed_status must be an HTTP error status, got {self.fixed_status}")
        if self.rate_limit_rps is not None and self.rate_limit_rps <= 0:
            raise ValueError(f"rate_limit_rps must be positive, got {self.rate_limit_rps}")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be within [0, 1], got {self.error_rate}")


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, JSON body bytes, extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


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


# ----------------------------------------------------------------------------- chat content

def _text_of(content: object) -> str:
    """The text of a message: its string content or its `text` parts joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(part["text"] for part in content if isinstance(part, dict)
                   and part.get("type") == "text" and isinstance(part.get("text"), str))


def _image_urls(content: object) -> list:
    """The urls of a message's `image_url` parts (whatever they hold)."""
    if not isinstance(content, list):
        return []
    urls = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            ref = part.get("image_url")
            urls.append(ref.get("url") if isinstance(ref, dict) else ref)
    return urls


def valid_image_url(url: object) -> bool:
    """True for http(s) urls and `data:image/...;base64,<valid base64>` urls."""
    if not isinstance(url, str):
        return False
    if url.startswith(("http://", "https://")):
        return True
    _, sep, payload = url.partition(";base64,")
    if not url.startswith("data:image/") or not sep or not payload:
        return False
    try:
        base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _first_invalid_image(messages: list) -> str | None:
    """The first image url of any message that a real API would reject, or None."""
    for message in messages:
        if isinstance(message, dict):
            for url in _image_urls(message.get("content")):
                if not valid_image_url(url):
                    return str(url)
    return None


def last_user_text(messages: list) -> tuple[str, int]:
    """The text and image count of the last user message."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return _text_of(content), len(_image_urls(content))
    return "", 0


def prompt_tokens(messages: list) -> int:
    """A rough prompt size: all message text / 4, plus 85 per image, at least 1."""
    chars = images = 0
    for message in messages:
        if isinstance(message, dict):
            chars += len(_text_of(message.get("content")))
            images += len(_image_urls(message.get("content")))
    return max(1, chars // 4 + 85 * images)


def _truncate(content: str, tokens: int, request: dict) -> tuple[str, int, str]:
    """Cut the answer to `max_tokens` (4 characters a token) the way a real API stops early."""
    limit = request.get("max_completion_tokens", request.get("max_tokens"))
    if not isinstance(limit, int) or isinstance(limit, bool) or limit >= tokens:
        return content, tokens, "stop"
    limit = max(0, limit)
    return content[:limit * 4], limit, "length"


def _load_request(body: bytes) -> dict | Reply:
    """The request JSON, or the 400 reply a real API would give for it."""
    try:
        request = json.loads(body)
    except ValueError:
        return error_reply(400, "request body is not valid JSON", "invalid_json")
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list) \
            or not request["messages"]:
        return error_reply(400, "'messages' must be a non-empty list", "invalid_messages")
    if request.get("stream"):
        return error_reply(400, "the mock server does not stream; send stream=false", "unsupported")
    return request


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
            return {"requests": self._requests, "by_status": dict(self._by_status),
                    "max_concurrent": self._max_concurrent, "in_flight": self._in_flight,
                    "prompts": dict(self._prompts)}

    def reset_stats(self) -> None:
        """Zero the counters (marker state and the rate limiter are kept)."""
        with self._lock:
            self._requests = self._max_concurrent = 0
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
        elif method == "GET" and (path == "/models" or path.startswith("/models/")):
            handler = self._models
        else:
            return error_reply(404, f"Unknown request URL: {method} {target}", "unknown_url")
        refusal = self._gate(headers)
        return refusal if refusal is not None else await handler(n, path, body)

    def _gate(self, headers: dict) -> Reply | None:
        """The server-wide refusals, in the order a real API applies them."""
        opts = self.options
        if opts.api_keys is not None and _bearer(headers) not in opts.api_keys:
            return error_reply(401, "Incorrect API key provided.", "invalid_api_key")
        if opts.fixed_status is not None:
            extra = retry_headers(1.0) if opts.fixed_status == 429 else ()
            return error_reply(opts.fixed_status, f"injected status {opts.fixed_status}", headers=extra)
        wait = self._limiter.admit() if self._limiter else 0.0
        if wait > 0:
            return error_reply(429, "Rate limit reached for requests", headers=retry_headers(wait))
        if opts.error_rate > 0 and self._rng.random() < opts.error_rate:
            return error_reply(500, "injected server error")
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
        return None

    def _completion(self, n: int, request: dict, model: str, prompt: tuple[str, int],
                    markers: Markers) -> dict:
        text, images = prompt
        content = self._content(n, request, text, images, markers)
        tokens = max(1, len(content) // 4)
        finish = "stop"
        if not markers.echo_params:  # echoed params must stay parseable JSON
            content, tokens, finish = _truncate(content, tokens, request)
        message = {"role": "assistant", "content": content}
        if self.options.reasoning or markers.reasoning:
            message["reasoning_content"] = "mock reasoning about: " + text[:200]
        used = prompt_tokens(request["messages"])
        return {"id": f"chatcmpl-mock-{n}", "object": "chat.completion", "created": int(time.time()),
                "model": model, "system_fingerprint": "mpdistill-mock",
                "choices": [{"index": 0, "message": message, "finish_reason": finish,
                             "logprobs": None}],
                "usage": {"prompt_tokens": used, "completion_tokens": tokens,
                          "total_tokens": used + tokens}}

    def _content(self, n: int, request: dict, text: str, images: int, markers: Markers) -> str:
        if markers.echo_params:
            return json.dumps({k: v for k, v in request.items() if k != "messages"}, sort_keys=True)
        answer = "mock answer: " + text[:200] + (f" [images: {images}]" if images else "")
        response_format = request.get("response_format")
        wants_json = isinstance(response_format, dict) and response_format.get("type") == "json_object"
        if wants_json and not self._take("badjson", text, markers.badjson_times):
            answer = json.dumps({"answer": answer, "n": n})
        return "<think>mock thinking</think>" + answer if markers.think else answer


def _bearer(headers: dict) -> str | None:
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


# ----------------------------------------------------------------------------- HTTP/1.1

def _parse_head(head: bytes) -> tuple[str, str, str, dict] | None:
    """Request line and headers (names lower-cased), or None when they cannot be read."""
    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    headers = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                return None
            headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers


def _keeps_alive(version: str, headers: dict) -> bool:
    connection = headers.get("connection", "").lower()
    return "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection


async def _read_body(reader: asyncio.StreamReader, headers: dict) -> bytes:
    """The request body; ValueError for a bad Content-Length or chunk size."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    length = int(headers.get("content-length") or 0)
    if length < 0:
        raise ValueError("negative Content-Length")
    return await reader.readexactly(length) if length else b""


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        size = int((await reader.readline()).split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readline()).strip():
                pass  # trailers carry nothing the mock needs
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _encode(reply: Reply, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {reply.status} {_phrase(reply.status)}",
             "Content-Type: application/json", f"Content-Length: {len(reply.body)}"]
    lines.extend(f"{name}: {value}" for name, value in reply.headers)
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body


@functools.lru_cache(maxsize=None)
def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Status"


# ----------------------------------------------------------------------------- fork safety

class _SocketRegistry:
    """Sockets a forked child must not keep open.

    A worker forked while the server runs inherits its sockets; its copy of the listening
    socket would keep the port accepting (and block rebinding) while the server is paused.
    """

    def __init__(self) -> None:
        self._inodes: dict[int, int] = {}

    def add(self, fd: int) -> None:
        self._inodes[fd] = os.fstat(fd).st_ino

    def discard(self, fd: int) -> None:
        self._inodes.pop(fd, None)

    def release_in_child(self) -> None:
        """Point the child's copies at /dev/null (only fds that still are the same socket)."""
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for fd, inode in list(self._inodes.items()):
                if _inode(fd) == inode:
                    os.dup2(devnull, fd, inheritable=False)
        finally:
            os.close(devnull)
        self._inodes.clear()


def _inode(fd: int) -> int | None:
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


_LIVE_SERVERS: weakref.WeakSet = weakref.WeakSet()


def _release_sockets_in_child() -> None:
    for server in list(_LIVE_SERVERS):
        server._sockets.release_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_release_sockets_in_child)


# ----------------------------------------------------------------------------- server

class MockServer:
    """OpenAI-compatible HTTP server running its own asyncio loop in a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, latency_ms: float = 0.0,
                 error_rate: float = 0.0, rate_limit_rps: float | None = None,
                 fixed_status: int | None = None, reasoning: bool = False, models=(),
                 strict_models: bool = False, api_keys=None, seed: int = 0,
                 record_prompts: bool = False) -> None:
        self.options = MockOptions(
            latency_ms=float(latency_ms), error_rate=float(error_rate),
            rate_limit_rps=rate_limit_rps, fixed_status=fixed_status, reasoning=reasoning,
            models=tuple(models), strict_models=strict_models, seed=seed,
            api_keys=None if api_keys is None else frozenset(api_keys), record_prompts=record_prompts)
        self._host, self._port = host, port
        self._responder = _Responder(self.options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._accepting = False
        self._connections: dict[asyncio.Task, tuple[asyncio.StreamWriter, int]] = {}
        self._sockets = _SocketRegistry()
        _LIVE_SERVERS.add(self)

    @property
    def port(self) -> int:
        """The port listened on (the real one once started with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        """The base url for OpenAI clients: `http://127.0.0.1:PORT/v1`."""
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._port}/v1"

    def start(self) -> MockServer:
        """Listen in a daemon thread; return once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("mock server already started")
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                        name=f"mpdistill-mockserver-{id(self):x}")
        self._thread.start()
        try:
            ready.result(timeout=_CALL_TIMEOUT_S)
        except BaseException:
            self._thread.join(_CALL_TIMEOUT_S)
            self._thread = None
            raise
        logger.info("mock server listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Close every connection, stop the loop and join its thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive():
            self._call(self._close_all())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_CALL_TIMEOUT_S)
        self._thread = None
        logger.info("mock server on port %d stopped", self._port)

    def pause(self) -> None:
        """Simulate an outage: stop listening and drop every open connection."""
        self._call(self._close_all())
        logger.info("mock server on port %d paused", self._port)

    def resume(self) -> None:
        """End the outage: listen again on the same port."""
        self._call(self._listen())
        logger.info("mock server on port %d resumed", self._port)

    def stats(self) -> dict:
        """Thread-safe snapshot: requests, by_status, max_concurrent, in_flight, prompts."""
        return self._responder.stats()

    def reset_stats(self) -> None:
        """Zero the counters between test phases."""
        self._responder.reset_stats()

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _call(self, coro) -> None:
        """Run `coro` on the server's loop and wait for it."""
        if self._loop is None or self._thread is None:
            coro.close()
            raise RuntimeError("mock server is not running")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("call MockServer methods from another thread than its loop")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=_CALL_TIMEOUT_S)

    def _run(self, ready: concurrent.futures.Future) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except Exception as err:  # handed to start(), which raises it in the caller's thread
            ready.set_exception(err)
            loop.close()
            return
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            _cancel_all(loop)
            loop.close()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._accepting = True
        try:
            self._server = await asyncio.start_server(
                self._serve_connection, self._host, self._port, backlog=_BACKLOG, reuse_address=True)
        except OSError:
            self._accepting = False
            raise
        self._port = self._server.sockets[0].getsockname()[1]
        for sock in self._server.sockets:
            self._sockets.add(sock.fileno())

    async def _close_all(self) -> None:
        """Close the listening socket and abort every connection, mid-request or idle."""
        self._accepting = False
        server, self._server = self._server, None
        if server is not None:
            for sock in server.sockets:
                self._sockets.discard(sock.fileno())
            server.close()
        tasks = list(self._connections)
        for task, (writer, fd) in list(self._connections.items()):
            self._sockets.discard(fd)  # before the fd is closed and its number reused
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _serve_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        if not self._accepting:  # accepted just before a pause: refuse like the closed port
            writer.transport.abort()
            return
        task = asyncio.current_task()
        fd = writer.get_extra_info("socket").fileno()
        self._sockets.add(fd)
        self._connections[task] = (writer, fd)
        try:
            while await self._serve_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            logger.debug("client went away mid-request")
        except asyncio.CancelledError:
            # pause()/stop() drop connections on purpose; returning normally keeps asyncio's
            # stream callback (which calls task.exception()) from logging a spurious error
            logger.debug("connection dropped by pause/stop")
        finally:
            self._connections.pop(task, None)
            self._sockets.discard(fd)
            writer.close()

    async def _serve_request(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> bool:
        """Answer one request; True when the connection stays open for the next one."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed its keep-alive connection
        except asyncio.LimitOverrunError:
            return _refuse(writer, 431, "request head too large")
        parsed = _parse_head(head)
        if parsed is None:
            return _refuse(writer, 400, "malformed request head")
        method, target, version, headers = parsed
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body = await _read_body(reader, headers)
        except ValueError:
            return _refuse(writer, 400, "bad Content-Length or chunk size")
        keep_alive = _keeps_alive(version, headers)
        writer.write(_encode(await self._answer(method, target, headers, body), keep_alive))
        await writer.drain()
        return keep_alive

    async def _answer(self, method: str, target: str, headers: dict, body: bytes) -> Reply:
        try:
            return await self._responder.handle(method, target, headers, body)
        except Exception:  # a bug here must show up as a 500 in the test, not a dropped socket
            logger.exception("mock server failed to answer %s %s", method, target)
            return error_reply(500, "mock server internal error")


def _refuse(writer: asyncio.StreamWriter, status: int, message: str) -> bool:
    writer.write(_encode(error_reply(status, message), keep_alive=False))
    return False


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Finish whatever tasks are left (half-accepted connections) before the loop closes."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())


# ----------------------------------------------------------------------------- command

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mpdistill mock-server",
                                     description="OpenAI-compatible mock endpoint for demos and tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--rate-limit-rps", type=float, default=None)
    parser.add_argument("--fixed-status", type=int, default=None)
    parser.add_argument("--reasoning", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", action="append", default=[],
                        help="served model names, comma-separated or repeated")
    parser.add_argument("--strict-models", action="store_true",
                        help="answer 404 model_not_found for models not in --models")
    parser.add_argument("--api-key", action="append", default=None,
                        help="accepted key (repeatable); without it every key is accepted")
    parser.add_argument("--url-file", default=None, help="also write the base url to this file")
    return parser.parse_args(argv)


def _server_from_args(args: argparse.Namespace) -> MockServer:
    models = [name.strip() for item in args.models for name in item.split(",") if name.strip()]
    return MockServer(args.host, args.port, latency_ms=args.latency_ms, error_rate=args.error_rate,
                      rate_limit_rps=args.rate_limit_rps, fixed_status=args.fixed_status,
                      reasoning=args.reasoning, models=models, strict_models=args.strict_models,
                      api_keys=args.api_key, seed=args.seed)


def _write_atomically(path: str, text: str) -> None:
    """Readers polling for the file never see it half written."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _raise_fd_limit() -> None:
    """Benchmarks open hundreds of connections; the common soft limit of 1024 is too low."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError) as err:
        logger.debug("file descriptor limit unchanged: %s", err)


def run_forever(argv: list[str] | None = None) -> int:
    """The `mpdistill mock-server` command: serve until SIGINT or SIGTERM, then return 0."""
    args = _parse_args(argv)
    _raise_fd_limit()
    server = _server_from_args(args).start()
    stopping = threading.Event()
    previous = _install_stop_handlers(stopping)
    try:
        if args.url_file:  # before the line, so whoever waits for the line finds the file
            _write_atomically(args.url_file, server.url)
        print(f"mock server listening on {server.url}", flush=True)
        while not stopping.wait(0.5):
            pass
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _install_stop_handlers(stopping: threading.Event) -> dict:
    """SIGINT/SIGTERM set `stopping`; returns the handlers to restore (none off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda *_: stopping.set())
    return previous


if __name__ == "__main__":
    raise SystemExit(run_forever())
