"""Unit tests of mpdistill.provider.transport through the real SDK against tiny local servers:
the total deadline, a paced call's slot, the response size cap and the same-origin redirect rule."""
from __future__ import annotations

import asyncio
import json
import socket
import socketserver
import threading
import time

import pytest

from mpdistill import errors
from mpdistill.provider.aiochat import acomplete, aio_client
from mpdistill.provider.chat import chat_client, complete
from mpdistill.provider.endpoint import Endpoint

KEY = "sk-test-0001"
REQUEST = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = json.dumps({"choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": "ok"}}]}).encode()


class _Server(socketserver.ThreadingTCPServer):
    """A raw HTTP/1.1 server: `reply(handler)` writes whatever the test wants, however slowly."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, reply) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.reply, self.requests = reply, []
        self.connected: list[float] = []   # time.monotonic() of each connection accepted
        self.arrived: list[float] = []     # ... and of each request's head read
        self.heads: list[bytes] = []       # each request's head

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        """Serve requests on one keep-alive connection until the client closes it (a server that
        closed after one answer would race the client's reuse of the connection)."""
        self.server.connected.append(time.monotonic())
        try:
            while self._one_request() and not getattr(self, "closing", False):
                pass
        except OSError:
            pass  # the client reset the connection (deadline, cap): that is what the test wanted

    def _one_request(self) -> bool:
        """Read one request (head and body), record its path, then let the test's reply write."""
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = self.rfile.readline()
            if not line:
                return False
            head += line
        self.server.arrived.append(time.monotonic())
        self.server.heads.append(head)
        length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0)
        self.rfile.read(length)
        self.server.requests.append(head.split(b" ")[1].decode())
        self.server.reply(self)
        self.wfile.flush()
        return True


@pytest.fixture
def serve():
    """Start raw servers for a test; all are shut down after it."""
    started = []

    def start(reply) -> _Server:
        srv = _Server(reply)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(srv)
        return srv
    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


def _client(url: str, timeout: float = 5.0, cap: int | None = 1 << 20):
    return chat_client(Endpoint(name="local", base_url=url, api_key=KEY), timeout, max_response_bytes=cap)


def _acall(url: str, request: dict, timeout: float, cap: int | None = 1 << 20, **slot):
    """One call from an event loop (`aiochat`), its client made and closed inside the loop."""
    async def run():
        api = aio_client(Endpoint(name="local", base_url=url, api_key=KEY), 8, cap)
        try:
            return await acomplete(api, request, timeout=timeout, **slot)
        finally:
            await api.aclose()
    return asyncio.run(run())


def _head(status: str = "200 OK", length: int | None = None, extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    return f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{size}{extra}\r\n".encode()


def _drip(handler) -> None:
    """The whole answer, one byte every 0.2 s: each read is quick, the call would take minutes."""
    for byte in _head(length=len(ANSWER)) + ANSWER:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(0.2)


@pytest.mark.timeout(20)
def test_a_dripping_server_fails_at_the_total_deadline(serve):
    """A byte every 0.2 s never trips a per-read timeout of 1 s; the 1 s total deadline ends the call."""
    srv = serve(_drip)
    with pytest.raises(errors.CallTimeoutError, match="deadline"):
        complete(_client(srv.url, timeout=1.0), dict(REQUEST), timeout=1.0)


@pytest.mark.timeout(20)
def test_the_async_client_keeps_the_same_deadline(serve):
    """acomplete ends a dripping call at its deadline too, with the same error class."""
    srv = serve(_drip)
    with pytest.raises(errors.CallTimeoutError):
        _acall(srv.url, dict(REQUEST), timeout=1.0)


def _silent(handler) -> None:
    """Take the request and answer nothing for a minute."""
    time.sleep(60)


@pytest.mark.timeout(20)
def test_the_async_client_keeps_a_per_request_timeout_tighter_than_the_deadline(serve):
    """A request's own `timeout` (per read, as the SDK means it) still ends a silent call long
    before the call's 60 s deadline, though reads skip a timer when the deadline comes first."""
    srv = serve(_silent)
    with pytest.raises(errors.CallTimeoutError):
        _acall(srv.url, {**REQUEST, "timeout": 0.5}, timeout=60.0)


def test_a_call_within_its_deadline_is_untouched(serve):
    """A prompt answer under a deadline is a normal Completion (connection reuse included)."""
    srv = serve(lambda h: h.wfile.write(_head(length=len(ANSWER)) + ANSWER))
    client = _client(srv.url)
    assert [complete(client, dict(REQUEST), timeout=5.0).answer for _ in range(3)] == ["ok"] * 3


def _answer(handler) -> None:
    handler.wfile.write(_head(length=len(ANSWER)) + ANSWER)


def _call(url: str, asynchronous: bool, timeout: float, request: dict = REQUEST, cap: int | None = 1 << 20,
          **slot) -> str:
    """One call through the threaded (httpx) or the event loop's (aiohttp) client; its answer."""
    if asynchronous:
        return _acall(url, dict(request), timeout, cap, **slot).answer
    return complete(_client(url, timeout, cap), dict(request), timeout=timeout, **slot).answer


@pytest.mark.timeout(20)
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_paced_call_is_connected_before_its_slot_and_sent_at_it(serve, asynchronous):
    """A call given a slot 0.3 s ahead connects at once, and its request reaches the server at the
    slot: never before it, and soon after it."""
    srv = serve(_answer)
    slot = time.monotonic() + 0.3
    assert _call(srv.url, asynchronous, 5.0, not_before=slot, awake_s=0.0015) == "ok"
    assert srv.connected[0] < slot <= srv.arrived[0] < slot + 0.1, (srv.connected, slot, srv.arrived)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_paced_calls_deadline_counts_from_its_slot(serve, asynchronous):
    """A 1 s deadline starts at the call's slot (0.5 s ahead), not when it was handed over: an answer
    0.7 s after the slot (1.2 s after the call began) is in time."""
    srv = serve(lambda h: (time.sleep(0.7), _answer(h)))
    assert _call(srv.url, asynchronous, 1.0, not_before=time.monotonic() + 0.5) == "ok"


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_extra_query_and_headers_reach_the_server_the_same_way(serve, asynchronous):
    """A row's extra_query (a bool, a number, None among them) and extra_headers are sent alike by both clients."""
    srv = serve(_answer)
    request = {**REQUEST, "extra_query": {"flag": True, "off": False, "n": 3, "empty": None},
               "extra_headers": {"X-Trace": "row-7"}}
    assert _call(srv.url, asynchronous, 5.0, request) == "ok"
    assert srv.requests == ["/v1/chat/completions?flag=true&off=false&n=3&empty="]
    assert b"x-trace: row-7" in srv.heads[0].lower()


def _big(declared: bool):
    def reply(handler) -> None:
        body = b'{"choices": [{"message": {"content": "' + b"x" * (3 << 20) + b'"}}]}'
        handler.closing = True
        handler.wfile.write(_head(length=len(body) if declared else None, extra="Connection: close\r\n"))
        handler.wfile.write(body)
    return reply


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "until-close"])
def test_an_answer_over_the_size_cap_fails_the_row(serve, declared, asynchronous):
    """A 3 MB answer against a 1 MB cap is ResponseTooLargeError (not retried), declared or not."""
    srv = serve(_big(declared))
    with pytest.raises(errors.ResponseTooLargeError, match="max-response-bytes") as info:
        _call(srv.url, asynchronous, 5.0, cap=1 << 20)
    assert not info.value.retryable


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_no_cap_reads_a_large_answer(serve, asynchronous):
    """With the cap off (None) the same 3 MB answer is read whole."""
    srv = serve(_big(True))
    assert len(_call(srv.url, asynchronous, 5.0, cap=None)) == 3 << 20


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_redirect_to_another_origin_is_not_followed(serve, asynchronous):
    """A 307 to another port is refused naming both URLs (no key, no query); the other server gets nothing."""
    elsewhere = serve(lambda h: h.wfile.write(_head(length=len(ANSWER)) + ANSWER))
    target = f"{elsewhere.url}/chat/completions?api_key={KEY}"
    srv = serve(lambda h: h.wfile.write(_head("307 Temporary Redirect", 0, f"Location: {target}\r\n")))
    with pytest.raises(errors.RedirectError) as info:
        _call(srv.url, asynchronous, 5.0)
    message = str(info.value)
    assert f"{srv.url}/chat/completions" in message and f"{elsewhere.url}/chat/completions" in message
    assert KEY not in message and elsewhere.requests == [] and info.value.status == 307


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_same_origin_redirect_is_followed(serve, asynchronous):
    """A 308 to another path on the same server is followed as the SDK would."""
    def reply(handler) -> None:
        if handler.server.requests[-1].endswith("/moved"):
            handler.wfile.write(_head(length=len(ANSWER)) + ANSWER)
        else:
            handler.wfile.write(_head("308 Permanent Redirect", 0, "Location: /v1/moved\r\n"))
    srv = serve(reply)
    assert _call(srv.url, asynchronous, 5.0) == "ok"
    assert srv.requests == ["/v1/chat/completions", "/v1/moved"]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_connection_to_a_silent_port_times_out_within_the_deadline(asynchronous):
    """A server that accepts and never answers ends at the deadline as CallTimeoutError."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        with pytest.raises(errors.CallTimeoutError):
            _call(url, asynchronous, 0.5)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_environment_proxies_are_still_used_and_guarded(serve, monkeypatch, asynchronous):
    """HTTP_PROXY still routes calls through the proxy, and the total deadline holds there too."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    proxy = serve(lambda h: h.wfile.write(_head(length=len(ANSWER)) + ANSWER))
    monkeypatch.setenv("HTTP_PROXY", proxy.url[:-len("/v1")])
    assert _call("http://api.example.invalid/v1", asynchronous, 5.0) == "ok"
    assert proxy.requests == ["http://api.example.invalid/v1/chat/completions"]
    dripping = serve(_drip)
    monkeypatch.setenv("HTTP_PROXY", dripping.url[:-len("/v1")])
    with pytest.raises(errors.CallTimeoutError):
        _call("http://api.example.invalid/v1", asynchronous, 1.0)


def _no_proxy_env(monkeypatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy",
                 "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.timeout(20)
def test_an_https_call_through_a_proxy_opens_a_tunnel_with_the_proxys_credentials(serve, monkeypatch):
    """HTTPS_PROXY with credentials: the proxy gets CONNECT host:443 with Proxy-Authorization, and a
    refused tunnel is a ConnectError that names neither the key nor the proxy's password."""
    _no_proxy_env(monkeypatch)
    proxy = serve(lambda h: h.wfile.write(_head("407 Proxy Authentication Required", 0)))
    monkeypatch.setenv("HTTPS_PROXY", f"http://user:s3cret@127.0.0.1:{proxy.server_address[1]}")
    with pytest.raises(errors.ConnectError, match="407") as info:
        _call("https://api.example.invalid/v1", False, 5.0)
    assert proxy.requests == ["api.example.invalid:443"]
    assert b"proxy-authorization: basic dxnlcjpzm2nyzxq=" in proxy.heads[0].lower()
    assert "s3cret" not in str(info.value) and KEY not in str(info.value)


@pytest.mark.timeout(20)
def test_a_plain_http_proxy_gets_its_credentials_with_each_request(serve, monkeypatch):
    """HTTP_PROXY with credentials: every request the proxy forwards carries Proxy-Authorization."""
    _no_proxy_env(monkeypatch)
    proxy = serve(_answer)
    monkeypatch.setenv("HTTP_PROXY", f"http://user:s3cret@127.0.0.1:{proxy.server_address[1]}")
    assert _call("http://api.example.invalid:8000/v1", False, 5.0) == "ok"
    assert proxy.requests == ["http://api.example.invalid:8000/v1/chat/completions"]
    assert b"proxy-authorization: basic dxnlcjpzm2nyzxq=" in proxy.heads[0].lower()


def test_a_proxy_that_is_not_plain_http_is_a_config_error(monkeypatch):
    """ALL_PROXY=socks5://… cannot carry the threads' calls: a ConfigError naming the proxy, not its password."""
    _no_proxy_env(monkeypatch)
    monkeypatch.setenv("ALL_PROXY", "socks5://user:pw@127.0.0.1:1080")
    with pytest.raises(errors.ConfigError, match="socks5://127.0.0.1:1080") as info:
        _client("http://api.example.invalid/v1")
    assert "pw" not in str(info.value)


def test_no_proxy_exempts_a_host(serve, monkeypatch):
    """NO_PROXY naming the host sends the call straight to it, past HTTP_PROXY."""
    _no_proxy_env(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")   # the discard port: a call there would fail
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    srv = serve(_answer)
    assert _call(srv.url, False, 5.0) == "ok"


def test_an_idle_connection_the_server_closed_is_replaced(serve):
    """A server that closes the connection after each answer: every next call opens a new one and succeeds."""
    def reply(handler) -> None:
        handler.closing = True
        _answer(handler)
    srv = serve(reply)
    client = _client(srv.url)
    for _ in range(3):
        assert complete(client, dict(REQUEST), timeout=5.0).answer == "ok"
        time.sleep(0.05)   # the server's close reaches the idle connection
    assert len(srv.connected) == 3


def test_a_header_the_request_cannot_carry_fails_the_row(serve):
    """An extra_headers value that HTTP cannot carry (a newline) is RejectedError (not retried), not a crash."""
    srv = serve(_answer)
    with pytest.raises(errors.RejectedError, match="cannot be sent") as info:
        complete(_client(srv.url), {**REQUEST, "extra_headers": {"X-Bad": "a\r\nInjected: 1"}}, timeout=5.0)
    assert not info.value.retryable and srv.requests == []


def test_credentials_in_the_base_url_are_sent_as_basic_auth(serve):
    """http://user:password@host/v1 sends Basic auth for them (as the SDK's httpx did), not in the request line."""
    srv = serve(_answer)
    assert _call(srv.url.replace("http://", "http://alice:pw%21@"), False, 5.0) == "ok"
    assert b"authorization: basic ywxpy2u6chch" in srv.heads[0].lower()
    assert srv.requests == ["/v1/chat/completions"]


def test_a_connection_past_descriptor_1024_is_reused(serve):
    """A process with over 1,024 files open (thread mode at -c 1024) still reuses its idle connections."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200 <= hard or hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    srv = serve(_answer)
    held = []
    try:
        while len(held) < 1100:
            held.append(socket.socket())
        client = _client(srv.url)
        assert [complete(client, dict(REQUEST), timeout=5.0).answer for _ in range(3)] == ["ok"] * 3
    finally:
        for sock in held:
            sock.close()
    assert len(srv.connected) == 1


@pytest.fixture
def tls_files(tmp_path, monkeypatch):
    """A throwaway certificate for 127.0.0.1 (openssl), trusted by this process's clients only."""
    import shutil
    import subprocess
    from mpdistill.provider import guards
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make the test certificate (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    guards.tls_context.cache_clear()
    yield cert, key
    guards.tls_context.cache_clear()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_an_https_endpoint_is_verified_and_answers(serve, tls_files, asynchronous):
    """An https:// endpoint with a certificate the trust store holds answers; the same server under
    a name its certificate does not carry is refused as a ConnectError."""
    import ssl
    cert, key = tls_files
    srv = serve(_answer)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    url = srv.url.replace("http://", "https://")
    assert _call(url, asynchronous, 5.0) == "ok" and _call(url, asynchronous, 5.0) == "ok"
    with pytest.raises(errors.ConnectError):
        _call(url.replace("127.0.0.1", "localhost"), asynchronous, 5.0)
