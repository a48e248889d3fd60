"""Sick servers end to end: faults that follow one row end in an error row, and the log says what happened."""
from __future__ import annotations

import yaml

from mpdistill.mock.server import MockServer
from tests.conftest import Workdir, write_jsonl

EXIT_FAILED_ROWS = 3
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
