"""Unit tests of the chat call (provider.chat on the SDK-built client) against a tiny local HTTP server."""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mpdistill import errors
from mpdistill.provider.answer import Completion, split_reasoning
from mpdistill.provider.chat import chat_client, complete
from mpdistill.provider.status import error_for_status
from mpdistill.provider.endpoint import Endpoint

KEY = "sk-test-0001"
REQUEST = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def answer(content, **message):
    """A canned chat.completions body with one choice."""
    return {"id": "c1", "object": "chat.completion", "model": "m1-served",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content, **message}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


class _Handler(BaseHTTPRequestHandler):
    """Answers every POST with the server's current canned reply."""

    def do_POST(self):  # noqa: N802 (stdlib naming)
        """Record the request body, then send the scripted status, headers and body."""
        length = int(self.headers.get("Content-Length", 0))
        self.server.seen.append(json.loads(self.rfile.read(length)))
        status, headers, body, hang = self.server.script
        if hang:
            self.server.release.wait(10)
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        """Keep test output quiet."""


@pytest.fixture
def server():
    """A local chat-completions server on a free port; set `.script` to choose its reply."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.seen, srv.release = [], threading.Event()
    srv.script = (200, {}, answer("ok"), False)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def client_for(srv, timeout=5.0):
    """An SDK client pointed at the test server."""
    host, port = srv.server_address
    return chat_client(Endpoint(name="local", base_url=f"http://{host}:{port}/v1", api_key=KEY), timeout)


def call(srv, status=200, body=None, headers=None, request=REQUEST):
    """Script one reply and make one call through the real SDK."""
    srv.script = (status, headers or {}, answer("ok") if body is None else body, False)
    return complete(client_for(srv), dict(request))


def test_success_with_usage_and_headers(server):
    """A 200 answer gives answer, finish reason, usage, model and only the rate-limit headers."""
    result = call(server, headers={"x-ratelimit-remaining-requests": "99", "X-Request-Id": "r1"})
    assert result == Completion(answer="ok", reasoning=None, finish_reason="stop",
                                usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                                model="m1-served", headers={"x-ratelimit-remaining-requests": "99"})


def test_request_kwargs_and_extra_body_reach_the_server(server):
    """The request dict is sent as is, with extra_body merged into the JSON."""
    call(server, request={**REQUEST, "temperature": 0.2, "extra_body": {"top_k": 5}})
    sent = server.seen[-1]
    assert sent["model"] == "m1" and sent["max_tokens"] == 8 and sent["top_k"] == 5
    assert sent["temperature"] == 0.2


def test_reasoning_content_is_split(server):
    """reasoning_content becomes the reasoning, content the answer."""
    result = call(server, body=answer("42", reasoning_content="thinking hard"))
    assert (result.answer, result.reasoning) == ("42", "thinking hard")


def test_think_block_is_split(server):
    """A leading <think> block in content becomes the reasoning."""
    result = call(server, body=answer("\n<think>\nstep 1\n</think>\n\nThe answer."))
    assert (result.answer, result.reasoning) == ("The answer.", "step 1")


@pytest.mark.parametrize("body", [b"not json{", b"", json.dumps({"error": {"message": "x"}}).encode(),
                                  json.dumps({"choices": []}).encode(),
                                  json.dumps({"choices": [{"finish_reason": "stop"}]}).encode(),
                                  b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: [DONE]\n\n'])
def test_unusable_2xx_is_bad_response(server, body):
    """A 2xx that is not JSON (an SSE stream too) or has no usable choice raises BadResponseError."""
    with pytest.raises(errors.BadResponseError) as info:
        call(server, body=body)
    assert info.value.status == 200


def test_429_is_rate_limit_with_retry_after(server):
    """429 raises RateLimitError carrying Retry-After and the rate-limit headers."""
    headers = {"Retry-After": "7", "x-ratelimit-remaining-requests": "0", "Set-Cookie": "a=b"}
    with pytest.raises(errors.RateLimitError) as info:
        call(server, status=429, body={"error": {"message": "slow down"}}, headers=headers)
    err = info.value
    assert err.status == 429 and err.retry_after == 7.0
    assert err.headers == {"retry-after": "7", "x-ratelimit-remaining-requests": "0"}
    assert "slow down" in str(err)


def test_500_is_server_error(server):
    """500 raises ServerError, also when the body is not JSON."""
    with pytest.raises(errors.ServerError) as info:
        call(server, status=500, body=b"<html>oops</html>")
    assert info.value.status == 500 and info.value.retry_after is None


def test_401_is_auth_error_and_hides_the_key(server):
    """401 raises AuthError whose message never holds the key, even when the server echoes it."""
    body = {"error": {"message": f"Incorrect API key provided: {KEY}"}}
    with pytest.raises(errors.AuthError) as info:
        call(server, status=401, body=body)
    assert info.value.status == 401 and KEY not in str(info.value)
    assert KEY not in json.dumps(errors.to_info(info.value))


def test_400_is_rejected(server):
    """400 raises RejectedError with the server's message."""
    with pytest.raises(errors.RejectedError, match="context length") as info:
        call(server, status=400, body={"error": {"message": "context length exceeded"}})
    assert info.value.status == 400


def test_connection_refused_is_connect_error():
    """A closed port raises ConnectError."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = chat_client(Endpoint(name="gone", base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY), 2.0)
    with pytest.raises(errors.ConnectError) as info:
        complete(client, dict(REQUEST))
    assert info.value.status is None and KEY not in str(info.value)


def test_slow_server_is_call_timeout(server):
    """A server that answers after the client timeout raises CallTimeoutError."""
    server.script = (200, {}, answer("late"), True)
    with pytest.raises(errors.CallTimeoutError):
        complete(client_for(server, timeout=0.3), dict(REQUEST))


def test_keyless_endpoint_gets_a_placeholder_key(server):
    """An endpoint without a key still makes a client (local servers need none)."""
    host, port = server.server_address
    client = chat_client(Endpoint(name="vllm", base_url=f"http://{host}:{port}/v1"), 5.0)
    assert complete(client, dict(REQUEST)).answer == "ok"


@pytest.mark.parametrize("status, cls", [
    (400, errors.RejectedError), (401, errors.AuthError), (403, errors.AuthError),
    (404, errors.RejectedError), (408, errors.ServerError), (409, errors.ServerError),
    (418, errors.RejectedError), (422, errors.RejectedError), (429, errors.RateLimitError),
    (500, errors.ServerError), (502, errors.ServerError), (503, errors.ServerError),
])
def test_error_for_status_table(status, cls):
    """Each HTTP status maps to exactly its error class and keeps the status."""
    err = error_for_status(status, f"HTTP {status}")
    assert type(err) is cls and err.status == status


def test_error_for_status_keeps_only_interesting_headers():
    """Retry hints are parsed for 503 and only rate-limit/retry headers are kept."""
    err = error_for_status(503, "busy", {"Retry-After-Ms": "1500", "Authorization": "Bearer x",
                                         "X-RateLimit-Reset-Requests": "1s"})
    assert err.retry_after == 1.5
    assert err.headers == {"retry-after-ms": "1500", "x-ratelimit-reset-requests": "1s"}


@pytest.mark.parametrize("message, expected", [
    ({"content": "plain"}, ("plain", None)),
    ({"content": None}, (None, None)),
    ({"content": None, "reasoning_content": "r"}, (None, "r")),
    ({"content": "a", "reasoning": "r2"}, ("a", "r2")),
    ({"content": "a", "reasoning_content": "", "reasoning": "r3"}, ("a", "r3")),
    ({"content": "  <think>t</think>answer"}, ("answer", "t")),
    ({"content": "<think></think>\nanswer"}, ("answer", None)),
    ({"content": "<think>unfinished"}, ("<think>unfinished", None)),
    ({"content": "x <think>t</think>"}, ("x <think>t</think>", None)),
    ({"content": "<think>t</think>a", "reasoning_content": "r"}, ("<think>t</think>a", "r")),
    ({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, ("ab", None)),
])
def test_split_reasoning_table(message, expected):
    """Reasoning comes from reasoning fields, else from a leading complete <think> block only."""
    assert split_reasoning(message) == expected


# ---- JSON answers (--response-format json) -------------------------------------------------------

JSON_REQUEST = {**REQUEST, "response_format": {"type": "json_object"}}


def test_plain_request_is_not_parsed(server):
    """Without response_format a JSON-looking answer stays text and `extracted` stays None."""
    result = call(server, body=answer('{"a": 1}'))
    assert result.answer == '{"a": 1}' and result.extracted is None


@pytest.mark.parametrize("content", ['{"a": 1, "b": [2]}', '  \n{"a": 1, "b": [2]}\n',
                                     'Here it is:\n```json\n{"a": 1, "b": [2]}\n```\nDone.',
                                     '```\n{"a": 1, "b": [2]}\n```'])
def test_json_answer_is_extracted(server, content):
    """A bare or ```json-fenced object becomes `extracted`; the answer text is kept as sent."""
    result = call(server, body=answer(content), request=JSON_REQUEST)
    assert result.extracted == {"a": 1, "b": [2]} and result.answer == content


def test_json_schema_format_is_extracted(server):
    """response_format json_schema is parsed like json_object."""
    request = {**REQUEST, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}
    assert call(server, body=answer('{"ok": true}'), request=request).extracted == {"ok": True}


@pytest.mark.parametrize("content", ["Sure! The answer is 42.", "[1, 2]", '{"a": 1', "", "```json\nnope\n```"])
def test_bad_json_answer_is_transient_with_raw_text(server, content):
    """An answer that is not a JSON object raises BadResponseError (retried) quoting the raw answer."""
    with pytest.raises(errors.BadResponseError) as info:
        call(server, body=answer(content), request=JSON_REQUEST)
    assert info.value.retryable and info.value.status == 200
    assert content in str(info.value)


def test_bad_json_raw_text_is_truncated(server):
    """A huge non-JSON answer is quoted only up to ~2000 characters in the error."""
    with pytest.raises(errors.BadResponseError) as info:
        call(server, body=answer("x" * 10_000), request=JSON_REQUEST)
    assert "x" * 2000 in str(info.value) and len(str(info.value)) < 2300


def test_mock_server_json_object_then_badjson_marker():
    """Against the mock: JSON answers are extracted; [[badjson:1]] fails once with the raw text, then passes."""
    from mpdistill.mock.server import MockServer
    with MockServer() as mock:
        api = chat_client(Endpoint(name="mock", base_url=mock.url, api_key=KEY), 10.0)
        request = {"model": "m1", "response_format": {"type": "json_object"}}   # no max_tokens: no cut
        ok = complete(api, {**request, "messages": [{"role": "user", "content": "plain"}]})
        assert ok.extracted["answer"].startswith("mock answer: plain")
        marked = {**request, "messages": [{"role": "user", "content": "q [[badjson:1]]"}]}
        with pytest.raises(errors.BadResponseError) as info:
            complete(api, marked)
        assert "raw answer: mock answer: q" in str(info.value)
        assert complete(api, marked).extracted is not None


def test_post_chat_sends_extra_body_and_plain_params_like_create():
    """extra_body is merged into the JSON body and unlisted params (vLLM's top_k) pass through."""
    import json as _json
    from mpdistill.provider.chat import chat_client, complete
    from mpdistill.provider.endpoint import Endpoint
    from mpdistill.mock.server import MockServer
    with MockServer() as server:
        api = chat_client(Endpoint("e", server.url, "sk-test-0001"), timeout=5)
        c = complete(api, {"model": "m", "messages": [{"role": "user", "content": "[[echo_params]] x"}],
                           "temperature": 0.3, "top_k": 7, "extra_body": {"repetition_penalty": 1.1},
                           "extra_headers": {"X-Trace": "t1"}})
    sent = _json.loads(c.answer)
    assert sent["temperature"] == 0.3 and sent["top_k"] == 7 and sent["repetition_penalty"] == 1.1
    assert "extra_body" not in sent and "extra_headers" not in sent


TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": 1}"}}


@pytest.mark.parametrize("message", [{}, {"tool_calls": []}, {"refusal": None}, {"tool_calls": None, "refusal": ""}])
def test_content_null_without_tool_calls_or_refusal_is_bad_response(server, message):
    """content null with no tool calls and no refusal is no answer: BadResponseError saying so."""
    with pytest.raises(errors.BadResponseError, match="content null") as info:
        call(server, body=answer(None, **message))
    assert info.value.retryable and info.value.status == 200


def test_tool_calls_refusal_and_annotations_are_kept(server):
    """An answer of tool calls (content null), a refusal and url annotations all reach the Completion."""
    result = call(server, body=answer(None, tool_calls=[TOOL_CALL]))
    assert result.answer is None and result.tool_calls == [TOOL_CALL]
    result = call(server, body=answer(None, refusal="I can't help with that."))
    assert result.refusal == "I can't help with that." and result.tool_calls is None
    cite = {"type": "url_citation", "url_citation": {"url": "https://example.org", "title": "x"}}
    result = call(server, body=answer("see the link", annotations=[cite]))
    assert result.answer == "see the link" and result.annotations == [cite]


def test_tool_fields_of_the_request_are_sent(server):
    """tools, tool_choice, parallel_tool_calls and response_format go out as given."""
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    call(server, request={**REQUEST, "tools": tools, "tool_choice": "required", "parallel_tool_calls": False,
                          "response_format": {"type": "text"}})
    sent = server.seen[-1]
    assert (sent["tools"], sent["tool_choice"], sent["parallel_tool_calls"]) == (tools, "required", False)
    assert sent["response_format"] == {"type": "text"}



def test_offline_client_answers_in_process_and_sends_nothing(monkeypatch):
    """The warm-up client runs the whole call path (both body framings, a reused connection) without a network."""
    from mpdistill.provider import chat

    def no_network(*args, **kwargs):
        raise AssertionError("the offline client opened a TCP connection")
    monkeypatch.setattr(socket, "create_connection", no_network)
    api = chat.offline_client()
    try:
        answers = [chat.complete(api, REQUEST, timeout=5) for _ in range(3)]
    finally:
        api.close()
    assert [a.answer for a in answers] == ["offline"] * 3
    assert answers[0].headers == {"x-ratelimit-remaining-requests": "1"}
