"""The real pool against the mock server: happy path, bad input, retries, failures, Ctrl-C."""
from __future__ import annotations

import json
import signal
import time

import pytest

from PIL import Image

from tests.conftest import MODES, line_count, wait_for, write_jsonl


def _image(path, size=(40, 30), fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "red").save(path, fmt)
    return path


def test_happy_path_text_images_messages_and_batch(workdir):
    """Every accepted row shape is answered once, images are sent encoded, extra fields carried."""
    _image(workdir.root / "pics" / "a.png")
    _image(workdir.root / "pics" / "b.jpg", fmt="JPEG")
    rows = [{"id": f"t{i}", "prompt": f"question {i}", "topic": "x"} for i in range(30)]
    rows += [{"id": "img", "prompt": "look", "images": ["pics/a.png", "pics/b.jpg"]},
             {"id": "msg", "messages": [{"role": "user", "content": "hello there"}]},
             {"custom_id": "b1", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "x", "messages": [{"role": "user", "content": "batch q"}], "max_tokens": 64}},
             {"prompt": "no id here"}]
    write_jsonl(workdir.input, rows)
    proc = workdir.run()
    assert proc.returncode == 0, proc.stderr
    results = {r["id"]: r for r in workdir.results()}
    assert len(results) == len(rows) == len(workdir.results())
    assert results["img"]["answer"].endswith("[images: 2]")
    assert results["img"]["images"] == ["pics/a.png", "pics/b.jpg"]
    assert results["t3"]["topic"] == "x" and results["t3"]["answer"] == "mock answer: question 3"
    assert results["b1"]["custom_id"] == "b1"
    assert results["34"]["input_prompt"] == "no id here"  # no id: the line number
    for r in results.values():
        for field in ("id", "input_prompt", "images", "answer", "processed_at", "model", "reasoning",
                      "finish_reason", "usage", "latency_s", "attempts", "endpoint"):
            assert field in r
        assert "sk-test-0001" not in json.dumps(r)
    summary = json.loads(workdir.summary.read_text())
    assert summary["succeeded"] == len(rows) and summary["failed"] == 0
    assert workdir.failures() == []


@pytest.mark.parametrize("mode", MODES)
def test_bad_rows_go_to_errors_file_and_run_goes_on(workdir, mode):
    """Each kind of bad row becomes an error line naming its line and reason; good rows finish."""
    workdir.mode = mode
    _image(workdir.root / "ok.png")
    (workdir.root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    _image(workdir.root / "pic.tiff", fmt="TIFF")
    lines = [
        json.dumps({"id": "good1", "prompt": "fine"}),
        "{not json",
        json.dumps({"id": "noprompt", "temperature": 1}),
        json.dumps({"id": "missing", "prompt": "p", "images": ["nope.png"]}),
        json.dumps({"id": "corrupt", "prompt": "p", "images": ["corrupt.png"]}),
        json.dumps({"id": "tiff", "prompt": "p", "images": ["pic.tiff"]}),
        json.dumps({"id": "long", "prompt": "x" * 5000}),
        json.dumps({"id": "good1", "prompt": "duplicate id"}),
        json.dumps([1, 2, 3]),
        json.dumps({"id": "good2", "prompt": "fine too", "images": ["ok.png"]}),
    ]
    workdir.input.write_bytes(("\n".join(lines[:2]) + "\n").encode() + b'{"id": "bad-utf8", "prompt": "\xff\xfe"}\n'
                              + ("\n".join(lines[2:]) + "\n").encode())
    proc = workdir.run("--max-line-bytes", "2000")
    assert proc.returncode == 3, proc.stderr
    assert sorted(r["id"] for r in workdir.results()) == ["good1", "good2"]
    failures = {f["line"]: f for f in workdir.failures()}
    assert sorted(failures) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert "not valid JSON" in failures[2]["reason"]
    assert "UTF-8" in failures[3]["reason"]
    assert "no prompt" in failures[4]["reason"]
    assert "nope.png" in failures[5]["reason"]
    assert failures[6]["id"] == "corrupt" and failures[7]["id"] == "tiff"
    assert "longer than" in failures[8]["reason"]
    assert "duplicate id" in failures[9]["reason"]
    assert "JSON object" in failures[10]["reason"]


@pytest.mark.parametrize("mode", MODES)
def test_retries_after_429_500_and_timeouts_then_success(workdir, mock_server, mode):
    """Transient failures are retried by the manager and the rows succeed with their attempts counted."""
    workdir.mode = mode
    rows = [{"id": "r429", "prompt": "[[fail:429:2:0.05]] a"},
            {"id": "r500", "prompt": "[[fail:500:2]] b"},
            {"id": "bad", "prompt": "[[malformed:1]] c"},
            {"id": "plain", "prompt": "d"}]
    write_jsonl(workdir.input, rows)
    proc = workdir.run()
    assert proc.returncode == 0, proc.stderr
    results = {r["id"]: r for r in workdir.results()}
    assert results["r429"]["attempts"] == 3
    assert results["r500"]["attempts"] == 3
    assert results["bad"]["attempts"] == 2
    assert results["plain"]["attempts"] == 1
    assert mock_server.stats()["by_status"].get(429) == 2


@pytest.mark.parametrize("mode", MODES)
def test_timeout_is_retried(workdir, mode):
    """A request slower than --timeout is retried, and fails for good once retries run out."""
    workdir.mode = mode
    write_jsonl(workdir.input, [{"id": "slow", "prompt": "[[sleep:3]] zzz"}, {"id": "fast", "prompt": "ok"}])
    proc = workdir.run("--timeout", "0.3", "--max-retries", "1")
    assert proc.returncode == 3, proc.stderr
    assert [r["id"] for r in workdir.results()] == ["fast"]
    (failure,) = workdir.failures()
    assert failure["id"] == "slow" and failure["attempts"] == 2
    assert [h["error"] for h in failure["history"]] == ["CallTimeoutError", "CallTimeoutError"]


@pytest.mark.parametrize("mode", MODES)
def test_row_that_fails_for_good(workdir, mode):
    """400 fails at once; a 500 that never ends fails after --max-retries with its history."""
    workdir.mode = mode
    write_jsonl(workdir.input, [{"id": "rej", "prompt": "[[fail:400:*]] x"},
                                {"id": "srv", "prompt": "[[fail:500:*]] y"},
                                {"id": "ok", "prompt": "z"}])
    proc = workdir.run("--max-retries", "2")
    assert proc.returncode == 3
    failures = {f["id"]: f for f in workdir.failures()}
    assert failures["rej"]["attempts"] == 1 and failures["rej"]["status"] == 400
    assert failures["srv"]["attempts"] == 3 and len(failures["srv"]["history"]) == 3
    assert all(h["endpoint"] == "default" for h in failures["srv"]["history"])
    assert [r["id"] for r in workdir.results()] == ["ok"]
    assert "sk-test-0001" not in workdir.errors.read_text()


@pytest.mark.parametrize("mode", MODES)
def test_sigint_mid_run_saves_checkpoint_and_resume_finishes(tmp_path, mode):
    """Ctrl-C stops dispatch, keeps every durable row, exits 130; the rerun completes exactly once."""
    from mpdistill.mock.server import MockServer
    from tests.conftest import Workdir
    with MockServer(latency_ms=100) as server:
        wd = Workdir(tmp_path, server.url, mode)
        write_jsonl(wd.input, [{"id": f"r{i}", "prompt": f"p{i}"} for i in range(150)])
        proc = wd.popen(processes=4)
        wait_for(lambda: line_count(wd.output) >= 20, proc=proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        first = [r["id"] for r in wd.results()]
        assert 20 <= len(first) < 150 and len(set(first)) == len(first)
        assert list(wd.checkpoints.glob("*_checkpoint.pkl"))
    with MockServer() as fast:     # the rerun resumes; it need not be slow too
        wd.url = fast.url
        proc = wd.run(processes=4)
        assert proc.returncode == 0, proc.stderr
        assert "Resuming:" in proc.stderr
        ids = [r["id"] for r in wd.results()]
        assert sorted(ids) == sorted(f"r{i}" for i in range(150)) and len(ids) == 150
        assert not list(wd.checkpoints.glob("*_checkpoint.pkl"))  # cleared on completion


def test_missing_input_and_bad_flag_exit_2(workdir):
    """A missing input file or a bad flag is one clear line and exit code 2."""
    proc = workdir.run()
    assert proc.returncode == 2
    assert "input file not found" in proc.stderr and str(workdir.input) in proc.stderr
    proc = workdir.run("--processes", "many")
    assert proc.returncode == 2 and "invalid int value" in proc.stderr
    proc = workdir.run("-p", "0")
    assert proc.returncode == 2


def _slow_run(tmp_path, latency_ms=2000, rows=100, mode="process"):
    from mpdistill.mock.server import MockServer
    from tests.conftest import Workdir
    server = MockServer(latency_ms=latency_ms).start()
    wd = Workdir(tmp_path, server.url, mode)
    write_jsonl(wd.input, [{"id": f"r{i}", "prompt": f"p{i}"} for i in range(rows)])
    return server, wd


def _wait_busy(wd, proc, timeout=30, at_least=1):
    """Until the run's status file shows `at_least` requests in flight."""
    path = wd.checkpoints / "mock-model_status.json"
    wait_for(lambda: path.exists() and json.loads(path.read_text()).get("in_flight", 0) >= at_least, timeout, proc)


def test_second_ctrl_c_exits_at_once_without_losing_durable_lines(tmp_path):
    """The first Ctrl-C waits for in-flight calls; a second one exits at once, every line intact."""
    server, wd = _slow_run(tmp_path, latency_ms=3000)
    try:
        proc = wd.popen("--grace", "60", processes=4)
        _wait_busy(wd, proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert time.monotonic() - started < 2.5  # did not wait for the 3 s calls
        for line in wd.output.read_bytes().splitlines() if wd.output.exists() else []:
            json.loads(line)
        assert list(wd.checkpoints.glob("*_checkpoint.pkl"))
        assert wd.failures() == []
    finally:
        server.stop()


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_lets_in_flight_calls_finish(tmp_path, mode):
    """SIGTERM stops dispatch, the calls in flight finish and are written, exit 130."""
    server, wd = _slow_run(tmp_path, latency_ms=1000, rows=40, mode=mode)
    try:
        proc = wd.popen(processes=4)
        _wait_busy(wd, proc, at_least=4)   # the pool grows in bursts
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert 4 <= len(wd.results()) < 40   # the four in flight were written
        from mpdistill.mock.server import MockServer
        with MockServer() as fast:     # the rerun resumes; it need not wait 1 s a row too
            wd.url = fast.url
            rerun = wd.run(processes=8)
        assert rerun.returncode == 0
        assert sorted(r["id"] for r in wd.results()) == sorted(f"r{i}" for i in range(40))
    finally:
        server.stop()


def test_stop_now_cancels_in_flight_calls(tmp_path):
    """`--stop --now` ends the run without waiting for in-flight calls; they are redone next run."""
    import subprocess
    import sys
    from tests.conftest import clean_env
    server, wd = _slow_run(tmp_path, latency_ms=4000, rows=20)
    try:
        proc = wd.popen("--grace", "60", processes=4)
        _wait_busy(wd, proc)
        started = time.monotonic()
        stop = subprocess.run([sys.executable, "-m", "mpdistill", "stop", "--now", "--checkpoint-dir",
                               str(wd.checkpoints)], cwd=tmp_path, env=clean_env(), capture_output=True, text=True)
        assert stop.returncode == 0, stop.stdout
        proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert time.monotonic() - started < 3.5 and wd.results() == []
    finally:
        server.stop()
