"""The mock server speaks enough OpenAI for the real SDK, and every scripted fault does what it says."""
from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import openai
import pytest

from mpdistill.mock.server import MockServer, WindowLimiter, retry_headers

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-test-0001"
PNG_URL = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nnot-really-a-png").decode()


@pytest.fixture
def make_server():
    servers: list[MockServer] = []

    def factory(**kwargs) -> MockServer:
        server = MockServer(**kwargs).start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server) -> MockServer:
    return make_server()


def sdk(server: MockServer, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, **kwargs)


def chat(text, **extra) -> dict:
    return {"model": "mock-model", "messages": [{"role": "user", "content": text}], **extra}


def call(server, payload=None, method="POST", path="/v1/chat/completions", headers=None, conn=None):
    """One raw request; returns (status, lower-cased headers, body bytes)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    body = None if payload is None else json.dumps(payload).encode()
    conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    if own:
        conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def content_of(body: bytes) -> str:
    return json.loads(body)["choices"][0]["message"]["content"]


# ----------------------------------------------------------------------------- answers

def test_chat_answer_has_openai_shape_and_usage(server):
    """The SDK parses an answer that echoes the model and counts tokens."""
    with sdk(server) as client:
        reply = client.chat.completions.create(
            model="any-model", messages=[{"role": "system", "content": "be brief " * 20},
                                         {"role": "user", "content": "hello there"}])
    assert reply.id.startswith("chatcmpl-mock-")
    assert reply.model == "any-model"
    assert reply.choices[0].message.content == "mock answer: hello there"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens == len("be brief " * 20 + "hello there") // 4
    assert reply.usage.completion_tokens == len("mock answer: hello there") // 4
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_answer_uses_last_user_message_and_long_text_is_cut(server):
    """Only the last user message is answered, cut to 200 characters."""
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                {"role": "user", "content": "y" * 500}]
    status, _, body = call(server, {"model": "m", "messages": messages})
    assert status == 200
    assert content_of(body) == "mock answer: " + "y" * 200


def test_text_parts_are_joined_and_data_url_images_counted(server):
    """Text parts are concatenated; a base64 data-url image is accepted and counted."""
    content = [{"type": "text", "text": "describe "}, {"type": "text", "text": "this"},
               {"type": "image_url", "image_url": {"url": PNG_URL}}]
    with sdk(server) as client:
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}])
    assert reply.choices[0].message.content == "mock answer: describe this [images: 1]"
    assert reply.usage.prompt_tokens >= 85


def test_http_image_url_is_accepted(server):
    """An http(s) image url passes validation."""
    content = [{"type": "text", "text": "look"},
               {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    status, _, body = call(server, {"model": "m", "messages": [{"role": "user", "content": content}]})
    assert status == 200
    assert content_of(body).endswith("[images: 1]")


@pytest.mark.parametrize("url", ["/home/user/cat.png", "cat.png", "data:image/png;base64,%%%not-b64",
                                 "data:text/plain;base64,aGk="])
def test_unencoded_image_url_is_rejected_with_400(server, url):
    """A raw path or a broken data url is a 400 that names the image url."""
    content = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": url}}]
    with sdk(server) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}])
    assert "image url" in str(caught.value).lower()
    assert caught.value.code == "invalid_image_url"


def test_max_tokens_truncates_with_finish_reason_length(server):
    """A max_tokens below the answer's size cuts it and reports finish_reason length."""
    status, _, body = call(server, chat("z" * 100, max_tokens=5))
    reply = json.loads(body)
    assert status == 200
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["choices"][0]["message"]["content"] == ("mock answer: " + "z" * 100)[:20]
    assert reply["usage"]["completion_tokens"] == 5


def test_json_object_mode_answers_a_json_object(server):
    """With response_format json_object the content is {"answer", "n"}."""
    with sdk(server) as client:
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}],
                                               response_format={"type": "json_object"})
    parsed = json.loads(reply.choices[0].message.content)
    assert parsed == {"answer": "mock answer: q", "n": 1}


def test_reasoning_option_adds_reasoning_content(make_server):
    """reasoning=True puts reasoning_content on every message."""
    server = make_server(reasoning=True)
    status, _, body = call(server, chat("why"))
    assert json.loads(body)["choices"][0]["message"]["reasoning_content"] == "mock reasoning about: why"


def test_invalid_body_and_stream_requests_are_400(server):
    """A body that is not JSON, has no messages, or asks to stream is a 400."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=b"{not json", headers={})
    assert conn.getresponse().status == 400
    conn.close()
    assert call(server, {"model": "m"})[0] == 400
    assert call(server, chat("x", stream=True))[0] == 400


# ----------------------------------------------------------------------------- markers

def test_fail_marker_fails_first_n_then_answers(server):
    """[[fail:429:2:0.25]] gives two 429s with that Retry-After, then answers."""
    text = "row 1 [[fail:429:2:0.25]]"
    with sdk(server) as client:
        for _ in range(2):
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
            assert caught.value.response.headers["retry-after"] == "0.25"
            assert caught.value.response.headers["retry-after-ms"] == "250"
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
    assert reply.choices[0].message.content == "mock answer: " + text


def test_fail_marker_counts_per_prompt_text(server):
    """Each distinct prompt text has its own count; 429 defaults to Retry-After 0.1."""
    status, headers, _ = call(server, chat("a [[fail:429:1]]"))
    assert (status, headers["retry-after"]) == (429, "0.1")
    assert call(server, chat("b [[fail:429:1]]"))[0] == 429
    assert call(server, chat("a [[fail:429:1]]"))[0] == 200


def test_fail_marker_star_always_fails(server):
    """[[fail:503:*]] never stops failing, and the SDK sees a server error."""
    with sdk(server) as client:
        for _ in range(3):
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "[[fail:503:*]]"}])


def test_sleep_marker_outlasts_client_timeout(server):
    """[[sleep:S]] holds the answer long enough for a client timeout."""
    with sdk(server, timeout=0.3) as client, pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "[[sleep:3]]"}])
    status, _, _ = call(server, chat("quick [[sleep:0.01]]"))
    assert status == 200


def test_malformed_marker_sends_invalid_json_first_n(server):
    """[[malformed:1]] answers 200 with a body that is not JSON once, then a valid answer."""
    status, _, body = call(server, chat("m [[malformed:1]]"))
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(body)
    assert content_of(call(server, chat("m [[malformed:1]]"))[2]).startswith("mock answer:")


def test_reasoning_and_think_markers(server):
    """[[reasoning]] adds reasoning_content; [[think]] prefixes a think block."""
    message = json.loads(call(server, chat("r [[reasoning]]"))[2])["choices"][0]["message"]
    assert message["reasoning_content"] == "mock reasoning about: r [[reasoning]]"
    assert content_of(call(server, chat("t [[think]]"))[2]) == "<think>mock thinking</think>mock answer: t [[think]]"


def test_badjson_marker_breaks_json_mode_first_n(server):
    """[[badjson:1]] makes the first json_object answer plain text, the next valid JSON."""
    payload = chat("j [[badjson:1]]", response_format={"type": "json_object"})
    with pytest.raises(ValueError):
        json.loads(content_of(call(server, payload)[2]))
    assert json.loads(content_of(call(server, payload)[2]))["answer"] == "mock answer: j [[badjson:1]]"


def test_echo_params_returns_request_without_messages(server):
    """[[echo_params]] answers with the request parameters, untruncated."""
    with sdk(server) as client:
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "[[echo_params]]"}],
            temperature=0.3, max_tokens=2, top_p=0.9)
    echoed = json.loads(reply.choices[0].message.content)
    assert echoed["temperature"] == 0.3 and echoed["max_tokens"] == 2 and echoed["top_p"] == 0.9
    assert "messages" not in echoed


def test_unreadable_marker_is_400(server):
    """A marker with a bad argument is reported, not ignored."""
    status, _, body = call(server, chat("[[fail:abc:2]]"))
    assert status == 400
    assert json.loads(body)["error"]["code"] == "invalid_marker"


# ----------------------------------------------------------------------------- server options

def test_rate_limit_answers_429_with_retry_after(make_server):
    """Requests beyond the per-second budget get 429 with Retry-After and limit headers."""
    server = make_server(rate_limit_rps=2)
    answers = [call(server, chat(f"r{i}")) for i in range(5)]
    statuses = [status for status, _, _ in answers]
    assert statuses[:2] == [200, 200] and 429 in statuses
    _, headers, body = answers[statuses.index(429)]
    assert 0 < float(headers["retry-after"]) <= 1
    assert int(headers["retry-after-ms"]) > 0
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
    assert all(h["x-ratelimit-limit-requests"] == "2" for _, h, _ in answers)
    assert "x-ratelimit-remaining-requests" in headers


def test_fixed_status_401_is_an_authentication_error(make_server):
    """fixed_status=401 makes the SDK raise AuthenticationError."""
    server = make_server(fixed_status=401)
    with sdk(server) as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])


def test_fixed_status_429_carries_retry_after_one(make_server):
    """fixed_status=429 answers every request 429 with Retry-After 1."""
    server = make_server(fixed_status=429)
    status, headers, _ = call(server, chat("hi"))
    assert (status, headers["retry-after"], headers["retry-after-ms"]) == (429, "1", "1000")


def test_api_keys_reject_unknown_key(make_server):
    """With api_keys set, only those bearer keys are accepted."""
    server = make_server(api_keys={KEY})
    with sdk(server) as client:
        assert client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    bad = openai.OpenAI(base_url=server.url, api_key="sk-test-0002", max_retries=0)
    with bad, pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert "sk-test-0002" not in str(caught.value)


def test_error_rate_is_seeded(make_server):
    """The same seed gives the same sequence of injected 500s."""
    runs = []
    for _ in range(2):
        server = make_server(error_rate=0.5, seed=7)
        runs.append([call(server, chat("x"))[0] for _ in range(20)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 500}


def test_models_route_lists_names_with_and_without_v1(make_server):
    """/v1/models and /models list the configured names, or mock-model by default."""
    with sdk(make_server()) as client:
        assert [m.id for m in client.models.list()] == ["mock-model"]
    server = make_server(models=["a", "b"])
    for path in ("/v1/models", "/models"):
        status, _, body = call(server, method="GET", path=path)
        assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == ["a", "b"]
    assert call(server, chat("hi"), path="/chat/completions")[0] == 200


def test_unknown_route_is_404_with_openai_error(server):
    """Any other route answers 404 with {"error": {message, type, code}}."""
    status, _, body = call(server, method="GET", path="/v1/nothing")
    error = json.loads(body)["error"]
    assert status == 404 and set(error) == {"message", "type", "code"}


def test_strict_models_rejects_unknown_model(make_server):
    """strict_models with a model list answers 404 model_not_found to other models."""
    server = make_server(models=["served"], strict_models=True)
    with sdk(server) as client:
        assert client.chat.completions.create(model="served", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "model_not_found"


# ----------------------------------------------------------------------------- outages

def test_pause_refuses_connections_and_resume_uses_same_port(server):
    """While paused, clients get connection errors; after resume the same port answers."""
    port = server.port
    with sdk(server) as client:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "warm"}])
        server.pause()
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "down"}])
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        server.resume()
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "up"}])
    assert server.port == port and reply.choices[0].message.content == "mock answer: up"


def test_pause_drops_request_in_flight(server):
    """A request waiting for its answer fails with a connection error when the server pauses."""
    errors: list[Exception] = []

    def slow_call():
        with sdk(server) as client:
            try:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "[[sleep:20]]"}])
            except openai.APIError as err:
                errors.append(err)

    worker = threading.Thread(target=slow_call)
    worker.start()
    while server.stats()["in_flight"] == 0:
        threading.Event().wait(0.01)
    server.pause()
    worker.join(10)
    assert not worker.is_alive() and isinstance(errors[0], openai.APIConnectionError)


def test_forked_child_does_not_keep_the_server_sockets(server):
    """A process forked while serving does not keep the port open or block resume."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    assert call(server, chat("before"), conn=conn)[0] == 200
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child only waits, as an idle pool worker would
        os.read(read_fd, 1)
        os._exit(0)
    try:
        server.pause()
        with pytest.raises(ConnectionError):
            call(server, chat("kept-alive"), conn=conn)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
        server.resume()
        assert call(server, chat("after"))[0] == 200
    finally:
        os.write(write_fd, b"x")
        os.waitpid(pid, 0)
        conn.close()
        os.close(read_fd)
        os.close(write_fd)


def test_stop_ends_thread_and_closes_port(make_server):
    """stop() joins the loop thread and the port refuses connections afterwards."""
    server = make_server()
    errors: list[Exception] = []

    def slow_call():
        try:
            call(server, chat("[[sleep:30]]"))
        except ConnectionError as err:
            errors.append(err)

    slow = threading.Thread(target=slow_call)
    slow.start()
    while server.stats()["in_flight"] == 0:
        threading.Event().wait(0.01)
    server.stop()
    slow.join(10)
    assert not slow.is_alive() and errors, "the request in flight was not dropped"
    assert not [t for t in threading.enumerate() if t.name.startswith("mpdistill-mockserver")]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()


# ----------------------------------------------------------------------------- transport

def test_sequential_keep_alive_requests(server):
    """300 requests over one keep-alive connection all succeed and are counted."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    call(server, chat("first"), conn=conn)
    sock = conn.sock
    statuses = [call(server, chat(f"q{i}"), conn=conn)[0] for i in range(299)]
    assert conn.sock is sock, "the connection was reopened"
    conn.close()
    assert statuses == [200] * 299
    assert server.stats()["requests"] == 300 and server.stats()["by_status"] == {200: 300}


def test_many_concurrent_connections(make_server):
    """80 clients at once are all served, concurrently."""
    server = make_server(latency_ms=100)
    statuses: list[int] = []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        statuses.extend(call(server, chat("c"), conn=conn)[0] for _ in range(2))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(80)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [200] * 160
    assert server.stats()["max_concurrent"] > 1


def test_chunked_request_body_is_accepted(server):
    """A Transfer-Encoding: chunked body is read like a Content-Length one."""
    body = json.dumps(chat("chunky")).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=iter([body[:10], body[10:]]),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 200 and content_of(response.read()) == "mock answer: chunky"
    conn.close()


def test_stats_record_prompts_only_when_asked(make_server):
    """Prompts are counted with record_prompts=True and not by default."""
    plain, recording = make_server(), make_server(record_prompts=True)
    for server in (plain, recording):
        call(server, chat("p"))
        call(server, chat("p"))
    assert plain.stats()["prompts"] == {}
    assert recording.stats()["prompts"] == {"p": 2}


# ----------------------------------------------------------------------------- pure parts and CLI

def test_window_limiter_with_fake_clock():
    """The limiter admits R per window and says how long until the next slot."""
    now = [0.0]
    limiter = WindowLimiter(2, clock=lambda: now[0])
    assert [limiter.admit(), limiter.admit()] == [0.0, 0.0]
    assert limiter.admit() == pytest.approx(1.0)
    now[0] = 0.7
    assert limiter.admit() == pytest.approx(0.3)
    now[0] = 1.0
    assert limiter.admit() == 0.0 and limiter.remaining == 1


@pytest.mark.parametrize("seconds, header, ms", [(1.0, "1", "1000"), (0.1, "0.1", "100"),
                                                 (0.3001, "0.3", "301"), (2.5, "2.5", "2500")])
def test_retry_headers_format(seconds, header, ms):
    """Retry-After is seconds without trailing zeros; retry-after-ms is whole milliseconds."""
    assert retry_headers(seconds) == (("Retry-After", header), ("retry-after-ms", ms))


def test_run_forever_serves_until_sigterm(tmp_path):
    """The command prints its url, writes --url-file, serves, and exits 0 on SIGTERM."""
    url_file = tmp_path / "url"
    proc = subprocess.Popen([sys.executable, "-m", "mpdistill.mock.server", "--port", "0",
                             "--models", "x,y", "--url-file", str(url_file)],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        url = url_file.read_text()
        assert line == f"mock server listening on {url}"
        with openai.OpenAI(base_url=url, api_key=KEY, max_retries=0) as client:
            assert [m.id for m in client.models.list()] == ["x", "y"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.stdout.close()
