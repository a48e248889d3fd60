"""Sick servers end to end: faults that follow one row end in an error row, and the log says what happened."""
from __future__ import annotations

import json
import socketserver
import threading
import time

import yaml

from mpdistill.mock.server import MockServer
from tests.conftest import Workdir, write_jsonl

EXIT_FAILED_ROWS = 3
EXIT_ABORTED = 75
GOOD_KEY, BAD_KEY = "sk-test-good-0011", "sk-test-poison-0401"


def _rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(n)]


def _ok_ids(wd: Workdir) -> list[str]:
    return sorted(r["id"] for r in wd.results())


def test_a_row_whose_connection_always_resets_ends_in_an_error_row(workdir):
    """A row the server always cuts mid-body uses up its retries; the endpoint stays healthy, exit 3."""
    write_jsonl(workdir.input, [{"id": "poison", "prompt": "[[reset]] cut me"}, *_rows(20)])
    proc = workdir.run("--max-retries", "3", "--max-outage", "5", processes=2, timeout=60)
    assert proc.returncode == EXIT_FAILED_ROWS, proc.stderr
    (failure,) = workdir.failures()
    assert failure["id"] == "poison" and failure["error"] == "ConnectError" and failure["attempts"] == 4
    assert _ok_ids(workdir) == sorted(f"r{i}" for i in range(20))
    assert "unreachable" not in proc.stderr


def test_a_row_refused_with_401_while_the_key_serves_others_fails_alone(tmp_path):
    """A 401 that follows one row ends in its error row; the key is not disabled for the other rows."""
    with MockServer() as server:
        wd = Workdir(tmp_path, None)
        write_jsonl(wd.input, [{"id": "poison", "prompt": "[[fail:401:*]] refused"}, *_rows(20)])
        endpoints = wd.root / "endpoints.yaml"
        endpoints.write_text(yaml.safe_dump({"endpoints": [
            {"name": "main", "base_url": server.url, "api_key": GOOD_KEY}]}))
        proc = wd.run("--endpoints", str(endpoints), "--max-retries", "2", processes=2, timeout=60)
    assert proc.returncode == EXIT_FAILED_ROWS, proc.stderr
    (failure,) = wd.failures()
    assert failure["id"] == "poison" and failure["status"] == 401 and failure["attempts"] == 3
    assert _ok_ids(wd) == sorted(f"r{i}" for i in range(20))
    assert "disabled" not in proc.stderr and GOOD_KEY not in proc.stderr


def test_garbage_200_bodies_are_error_rows_not_an_outage(workdir):
    """Every answer a torn 200 body: error rows after the retries, and no "unreachable" in the log."""
    write_jsonl(workdir.input, [{"id": f"g{i}", "prompt": f"[[malformed:*]] garbage {i}"} for i in range(6)])
    proc = workdir.run("--max-retries", "1", "--max-outage", "2", processes=2, timeout=60)
    assert proc.returncode == EXIT_FAILED_ROWS, proc.stderr
    assert {f["error"] for f in workdir.failures()} == {"BadResponseError"} and len(workdir.failures()) == 6
    assert "unreachable" not in proc.stderr


def test_a_server_that_stalls_for_every_row_is_reported_as_not_answering(workdir):
    """Every call past --timeout: the outage message says the endpoints do not answer in time, exit 75."""
    write_jsonl(workdir.input, [{"id": f"s{i}", "prompt": f"[[sleep:5]] slow {i}"} for i in range(4)])
    proc = workdir.run("--timeout", "0.5", "--max-outage", "1", processes=2, timeout=60)
    assert proc.returncode == EXIT_ABORTED, proc.stderr
    assert "not answering within --timeout" in proc.stderr and "unreachable" not in proc.stderr
    assert workdir.failures() == []


def test_an_answer_over_max_response_bytes_fails_its_row(workdir):
    """--max-response-bytes below the mock's answer size: each row is an error row naming the cap."""
    write_jsonl(workdir.input, _rows(3))
    proc = workdir.run("--max-response-bytes", "64", processes=2, timeout=60)
    assert proc.returncode == EXIT_FAILED_ROWS, proc.stderr
    failures = workdir.failures()
    assert {f["error"] for f in failures} == {"ResponseTooLargeError"} and len(failures) == 3
    assert all(f["attempts"] == 1 and "max-response-bytes" in f["reason"] for f in failures)


class _Drip(socketserver.StreamRequestHandler):
    """Reads a request, then answers it one byte every 0.5 s (a minute for the whole answer)."""

    def handle(self) -> None:
        length = 0
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        self.rfile.read(length)
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "late"}}]}).encode()
        reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        try:
            for byte in reply:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass  # the client gave up at its deadline


def test_timeout_is_a_total_deadline_against_a_dripping_server(tmp_path):
    """A server dripping a byte every 0.5 s fails the row at --timeout 1.5, not after the whole answer."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        wd = Workdir(tmp_path, f"http://127.0.0.1:{server.server_address[1]}/v1")
        write_jsonl(wd.input, _rows(1))
        proc = wd.run("--timeout", "1.5", "--max-retries", "0", processes=1, timeout=40)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == EXIT_FAILED_ROWS, proc.stderr
    (failure,) = wd.failures()
    assert failure["error"] == "CallTimeoutError" and "deadline" in failure["reason"]
