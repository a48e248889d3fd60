"""The bench's HTTP server: nginx (+ echo module) on 127.0.0.1, or the built-in mock where nginx is missing.

nginx runs in the foreground from a temporary prefix directory (config, pid file, logs) and is
stopped by its pid. `wrk_ceiling` measures what the server itself can answer, with no client in the way.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "nginx.conf.template"
POST_LUA = HERE / "post.lua"
ECHO_MODULE_PATHS = ("/usr/lib/nginx/modules/ngx_http_echo_module.so",
                     "/usr/share/nginx/modules/ngx_http_echo_module.so")
ENABLED_MODULES = Path("/etc/nginx/modules-enabled")

# A fixed, valid chat.completion (with usage), as a real server would send it.
ANSWER = ("This is a fixed answer from the benchmark server. It is long enough to look like a short "
          "completion, and the same for every row.")
BODY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}}, separators=(",", ":"))


def free_port() -> int:
    """A port nobody listens on right now (bind port 0 and give it back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")


def echo_module() -> str | None:
    """The `load_module` line the echo module needs, '' when nginx loads it itself, None when missing."""
    for conf in ENABLED_MODULES.glob("*.conf") if ENABLED_MODULES.is_dir() else ():
        if "echo" in conf.read_text(errors="replace"):
            match = re.search(r"load_module\s+([^;]+);", conf.read_text(errors="replace"))
            if match and Path(match.group(1)).exists():
                return f"load_module {match.group(1)};"
    for path in ECHO_MODULE_PATHS:
        if Path(path).exists():
            return f"load_module {path};"
    return None


def nginx_available() -> tuple[bool, str]:
    """(usable, why not / version): nginx and its echo module must both be installed."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        return False, "nginx not installed"
    if echo_module() is None:
        return False, "nginx echo module (libnginx-mod-http-echo) not installed"
    return True, nginx_version(binary)


def nginx_version(binary: str = "nginx") -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    match = re.search(r"nginx/(\S+)", out.stderr + out.stdout)
    return match.group(1) if match else "unknown"


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


class NginxServer:
    """nginx from a temp prefix: `/d<ms>/v1` answers after <ms> ms; `/rl/v1` is limited to `rate` r/s."""

    kind = "nginx"

    def __init__(self, delays_ms=(0, 200), rate: float = 50, burst: int = 5, rate_delay_ms: int = 50,
                 workers: int = 1, strict: dict | None = None) -> None:
        self.delays_ms, self.rate, self.burst = tuple(delays_ms), rate, burst
        self.rate_delay_ms, self.workers = rate_delay_ms, workers
        self.strict = dict(strict or {})   # route name -> r/s of a limit_req without burst
        self.version = nginx_version()
        self.port = 0
        self.prefix: Path | None = None
        self._proc: subprocess.Popen | None = None

    def url(self, delay_ms: int) -> str:
        """The base URL (for --base-url) of the route that answers after `delay_ms`."""
        if delay_ms not in self.delays_ms:
            raise ValueError(f"no route with delay {delay_ms} ms (have {self.delays_ms})")
        return f"http://127.0.0.1:{self.port}/d{delay_ms}/v1"

    def rate_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/rl/v1"

    def strict_url(self, name: str) -> str:
        """The base URL of strict route `name` (limit_req at its rate, no burst: even pacing only)."""
        return f"http://127.0.0.1:{self.port}/{name}/v1"

    def set_strict_rate(self, name: str, rate: float) -> None:
        """Change a strict route's limit now (nginx reloads its config; the zone's state is kept)."""
        self.strict[name] = rate
        (self.prefix / "nginx.conf").write_text(self._config())
        self._proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)   # new nginx workers take over within a few ms; be sure before going on

    def start(self) -> NginxServer:
        self.prefix = Path(tempfile.mkdtemp(prefix="mpdistill-bench-nginx-"))
        (self.prefix / "tmp").mkdir()
        for attempt in range(5):
            self.port = free_port()
            conf = self.prefix / "nginx.conf"
            conf.write_text(self._config())
            self._proc = subprocess.Popen(["nginx", "-p", str(self.prefix), "-c", str(conf)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                _wait_port(self.port, self._proc)
                return self
            except RuntimeError as err:
                self._kill()
                log.warning("nginx did not start (try %d): %s %s", attempt + 1, err, self._errors())
        raise RuntimeError(f"nginx would not start: {self._errors()}")

    def _config(self) -> str:
        locations = []
        for ms in self.delays_ms:
            sleep = f"            echo_sleep {ms / 1000:.3f};\n" if ms else ""
            locations.append(f"        location = /d{ms}/v1/chat/completions {{\n"
                             f"            echo_read_request_body;\n{sleep}"
                             f"            echo '{{{{BODY}}}}';\n        }}\n")
        zones = "".join(f"    limit_req_zone $server_port zone=bench_{name}:1m rate={rate:g}r/s;\n"
                        for name, rate in self.strict.items())
        strict = "".join(f"        location = /{name}/v1/chat/completions {{\n"
                         f"            limit_req zone=bench_{name};\n"
                         f"            error_page 429 = @rate_limited;\n"
                         f"            echo_read_request_body;\n"
                         f"            echo_sleep {self.rate_delay_ms / 1000:.3f};\n"
                         f"            echo '{{{{BODY}}}}';\n        }}\n" for name in self.strict)
        values = {"STRICT_ZONES": zones, "STRICT_LOCATIONS": strict, "LOAD_MODULE": echo_module() or "", "WORKERS": str(self.workers), "PREFIX": str(self.prefix),
                  "RATE": f"{self.rate:g}", "BURST": str(self.burst), "PORT": str(self.port),
                  "RATE_DELAY_S": f"{self.rate_delay_ms / 1000:.3f}",
                  "DELAY_LOCATIONS": "".join(locations)}
        text = TEMPLATE.read_text()
        for name, value in values.items():
            text = text.replace("{{" + name + "}}", value)
        return text.replace("{{BODY}}", BODY)

    def _errors(self) -> str:
        path = self.prefix / "error.log" if self.prefix else None
        return path.read_text(errors="replace")[-500:] if path and path.exists() else ""

    def mark_log(self) -> int:
        """The access log's size now: status counts can be taken from this point on."""
        path = self.prefix / "access.log"
        return path.stat().st_size if path.exists() else 0

    def status_counts(self, route: str = "/rl/", since: int = 0) -> collections.Counter:
        """HTTP status → count of requests to `route` logged after byte `since` of the access log."""
        return collections.Counter(status for status, _ in self.status_log(route, since))

    def status_log(self, route: str = "/rl/", since: int = 0) -> list[tuple[int, float]]:
        """(status, epoch seconds) of every request to `route` logged after byte `since`."""
        out = []
        with open(self.prefix / "access.log", "rb") as f:
            f.seek(since)
            for line in f:
                status, uri, stamp = line.decode("latin-1").split()
                if uri.startswith(route):
                    out.append((int(status), float(stamp)))
        return out

    def stop(self) -> None:
        """Stop nginx by its pid (fast shutdown), then remove the prefix directory."""
        self._kill()
        if self.prefix is not None:
            shutil.rmtree(self.prefix, ignore_errors=True)
            self.prefix = None

    def _kill(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class MockFallback:
    """The same routes served by mpdistill's built-in mock (one MockServer per route)."""

    kind = "mock"

    def __init__(self, delays_ms=(0, 200), rate: float = 50, burst: int = 5, rate_delay_ms: int = 50,
                 workers: int = 1, strict: dict | None = None) -> None:
        from mpdistill.mock.server import MockServer
        self.version = "mpdistill.mock.server"
        self._servers = {ms: MockServer(latency_ms=ms, reasoning=False) for ms in delays_ms}
        self._rate = MockServer(latency_ms=rate_delay_ms, rate_limit_rps=rate, reasoning=False)
        # The mock's limiter is a sliding window, not nginx's strict one: the figures only approximate.
        self._strict = {name: MockServer(latency_ms=rate_delay_ms, rate_limit_rps=r, reasoning=False)
                        for name, r in (strict or {}).items()}
        self._marks: dict = {}

    def strict_url(self, name: str) -> str:
        return self._strict[name].url

    def set_strict_rate(self, name: str, rate: float) -> None:
        raise RuntimeError("the built-in mock cannot change its limit mid-run; install nginx for this workload")

    def url(self, delay_ms: int) -> str:
        return self._servers[delay_ms].url

    def rate_url(self) -> str:
        return self._rate.url

    def start(self) -> MockFallback:
        for server in (*self._servers.values(), self._rate, *self._strict.values()):
            server.start()
        return self

    def mark_log(self) -> int:
        self._rate.reset_stats()
        return 0

    def status_counts(self, route: str = "/rl/", since: int = 0) -> collections.Counter:
        by_status = self._rate.stats()["by_status"]
        return collections.Counter({int(k): v for k, v in by_status.items()})

    def status_log(self, route: str = "/rl/", since: int = 0) -> list[tuple[int, float]]:
        return []   # the mock keeps counters, not a log

    def stop(self) -> None:
        for server in (*self._servers.values(), self._rate, *self._strict.values()):
            server.stop()

    def __enter__(self) -> MockFallback:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def open_server(**kw) -> tuple[NginxServer | MockFallback, str]:
    """nginx when it can run here, else the mock; with a line saying which and why."""
    ok, why = nginx_available()
    if ok:
        return NginxServer(**kw), f"nginx {why} with the echo module"
    return MockFallback(**kw), f"FALLBACK: built-in mock server ({why}); figures are bounded by the mock"


def wrk_ceiling(base_url: str, seconds: float = 5, connections: int = 64, threads: int = 2) -> dict | None:
    """Requests/s the server answers to wrk (POST with a small body) at `base_url`; None without wrk."""
    if not wrk_available():
        return None
    url = base_url.rstrip("/") + "/chat/completions"
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "-s", str(POST_LUA), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=seconds + 30)
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out.stdout)
    errors = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out.stdout)
    latency = re.search(r"Latency\s+([\d.]+)(us|ms|s)\b", out.stdout)
    latency_ms = float(latency.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[latency.group(2)] if latency else None
    return {"rps": float(rps.group(1)) if rps else None, "non_2xx": int(errors.group(1)) if errors else 0,
            "latency_ms": latency_ms,
            "command": " ".join(cmd[:-3] + ["-s", "bench/post.lua", "/" + url.split("/", 3)[-1]]),
            "connections": connections}
