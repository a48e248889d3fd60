"""A real CLI run observed from outside: --metrics-port scraped mid-run, --trace otlp received by a
local collector stub, --on-finish's exit code, per-endpoint log files."""
from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest

from mpdistill.mock.server import MockServer
from tests.conftest import Workdir, clean_env, wait_for, write_jsonl

PROMPT = "tell me about otters"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(n: int, extra: str = ""):
    return [{"id": f"r{i}", "prompt": f"{PROMPT} {i}{extra}"} for i in range(n)]


def scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_port_serves_live_figures_of_a_cli_run(tmp_path):
    """/metrics of a running CLI run parses and shows rows done and requests by status class."""
    with MockServer(latency_ms=150) as server:
        wd = Workdir(tmp_path, server.url)
        write_jsonl(wd.input, rows(24))
        port = free_port()
        proc = wd.popen("--metrics-port", str(port), processes=2)
        seen = {}

        def progressed():
            try:
                seen.update(scrape(port))
            except OSError:
                return False
            return seen.get(("mpdistill_rows_done_total", (("run", "mock-model"),)), 0) >= 2

        try:
            assert wait_for(progressed, timeout=30, proc=proc), proc.stderr.read() if proc.poll() else seen
        finally:
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        requests = [v for (name, labels), v in seen.items() if name == "mpdistill_requests_total"
                    and ("status_class", "2xx") in labels and ("endpoint", "default") in labels]
        assert requests and requests[0] >= 2
        assert ("mpdistill_request_latency_seconds_count", (("endpoint", "default"), ("run", "mock-model"))) in seen


class _Collector(http.server.BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).bodies.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_otlp_spans_reach_a_collector_without_key_or_prompt(tmp_path):
    """Each request becomes one span with model/endpoint/status/tokens; no key, no prompt text."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    _Collector.bodies = []
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        with MockServer() as server:
            wd = Workdir(tmp_path, server.url)
            write_jsonl(wd.input, rows(6))
            env = clean_env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"http://127.0.0.1:{collector.server_port}/v1/traces")
            proc = subprocess.run([sys.executable, "-m", "mpdistill", *wd.args("--trace", "otlp", processes=2)],
                                  cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)
            assert proc.returncode == 0, proc.stderr
    finally:
        collector.shutdown()
    assert _Collector.bodies and all(path == "/v1/traces" for path, _ in _Collector.bodies)
    spans = []
    for _, body in _Collector.bodies:
        assert b"sk-test-0001" not in body and PROMPT.encode() not in body
        request = ExportTraceServiceRequest.FromString(body)
        spans += [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(spans) == 6
    attrs = {kv.key: kv.value for kv in spans[0].attributes}
    assert attrs["gen_ai.request.model"].string_value == "mock-model"
    assert attrs["mpdistill.endpoint"].string_value == "default"
    assert attrs["http.response.status_code"].int_value == 200
    assert attrs["mpdistill.attempt"].int_value == 1
    assert attrs["gen_ai.usage.output_tokens"].int_value > 0
    assert spans[0].end_time_unix_nano > spans[0].start_time_unix_nano


def test_on_finish_failure_sets_exit_code_and_keeps_output(workdir):
    """A failing --on-finish exits 5 after the run; every row is still in the output."""
    write_jsonl(workdir.input, rows(5))
    marker = workdir.root / "hook.txt"
    proc = workdir.run("--on-finish", f'echo "$MPDISTILL_OUTPUT $MPDISTILL_RUN_STATE" > {marker}; exit 9',
                       processes=2)
    assert proc.returncode == 5, proc.stderr
    assert "--on-finish" in proc.stderr and "9" in proc.stderr
    assert len(workdir.results()) == 5
    assert marker.read_text().split() == [str(workdir.output.resolve()), "finished"]


def test_per_endpoint_logs_name_each_call_and_hide_keys(tmp_path):
    """Two keys: each endpoint's calls go to logs/<run>/<endpoint>.log, with no key inside."""
    with MockServer() as server:
        wd = Workdir(tmp_path, None)
        write_jsonl(wd.input, rows(8, " [[fail:429:1:0]]"))
        keys = "sk-alpha-000000000001,sk-bravo-000000000002"
        env = clean_env(OPENAI_API_KEYS=keys, OPENAI_BASE_URL=server.url)
        proc = subprocess.run([sys.executable, "-m", "mpdistill", *wd.args(processes=2)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=90)
        assert proc.returncode == 0, proc.stderr
    files = sorted((tmp_path / "logs" / "mock-model").glob("*.log"))
    assert len(files) == 2, files
    text = "".join(f.read_text() for f in files)
    assert "sk-alpha" not in text and "sk-bravo" not in text
    lines = text.splitlines()
    assert sum("status=200" in line for line in lines) == 8
    assert sum("status=429" in line for line in lines) == 8   # each row's first call was scripted to 429
    assert all("row=r" in line and "latency=" in line and "attempt=" in line for line in lines)
