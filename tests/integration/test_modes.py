"""Run modes: repeated rounds, JSON answers, per-item export, monitor panel, --stop."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from mpdistill.mock.server import MockServer
from tests.conftest import Workdir, clean_env, wait_for, write_jsonl


def test_iterations_with_delay_record_their_round(workdir):
    """--iterations 3 --delay runs the input three times; each row records its iteration."""
    write_jsonl(workdir.input, [{"id": f"r{i}", "prompt": f"p{i}"} for i in range(5)])
    started = time.monotonic()
    proc = workdir.run("--iterations", "3", "--delay", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started >= 1.0
    rounds = sorted((r["iteration"], r["id"]) for r in workdir.results())
    assert rounds == sorted((i, f"r{k}") for i in (1, 2, 3) for k in range(5))
    assert not list(workdir.checkpoints.glob("*_checkpoint.pkl"))


def test_iterations_resume_in_the_right_round(workdir):
    """A rerun of an interrupted repeated run continues in the round it was in."""
    write_jsonl(workdir.input, [{"id": f"r{i}", "prompt": f"p{i}"} for i in range(6)])
    assert workdir.run("--iterations", "2", "--limit", "4").returncode == 0  # round 1 stops at 4 rows
    proc = workdir.run("--iterations", "2")
    assert proc.returncode == 0, proc.stderr
    rounds = sorted((r["iteration"], r["id"]) for r in workdir.results())
    assert rounds == sorted((i, f"r{k}") for i in (1, 2) for k in range(6))


def test_json_answers_are_extracted_with_a_retry(workdir):
    """--response-format json parses answers into `extracted`; a bad one is retried, then fails."""
    write_jsonl(workdir.input, [{"id": "good", "prompt": "a"}, {"id": "retry", "prompt": "[[badjson:1]] b"},
                                {"id": "never", "prompt": "[[badjson:99]] c"}])
    proc = workdir.run("--response-format", "json", "--max-retries", "2")
    assert proc.returncode == 3, proc.stderr
    results = {r["id"]: r for r in workdir.results()}
    assert results["good"]["extracted"]["answer"] == "mock answer: a"
    assert results["retry"]["attempts"] == 2 and "extracted" in results["retry"]
    (failure,) = workdir.failures()
    assert failure["id"] == "never" and "mock answer" in failure["reason"]


def test_export_per_item_files(workdir):
    """`mpdistill export OUT --per-item DIR` writes one JSON and one thinking file per row."""
    write_jsonl(workdir.input, [{"id": "a", "prompt": "[[reasoning]] x"}, {"id": "b", "prompt": "y"}])
    assert workdir.run("--response-format", "json").returncode == 0
    out_dir = workdir.root / "items"
    proc = subprocess.run([sys.executable, "-m", "mpdistill", "export", str(workdir.output), "--per-item",
                           str(out_dir)], cwd=workdir.root, env=clean_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out_dir / "json_results" / "a_extracted.json").read_text())["answer"]
    assert (out_dir / "thinking_chains" / "a.txt").read_text().startswith("mock reasoning")
    assert not (out_dir / "thinking_chains" / "b.txt").exists()


def test_stop_from_another_process_and_monitor(tmp_path):
    """--stop ends a running run gracefully with exit 0; monitor --once renders it live and stopped."""
    with MockServer(latency_ms=150) as server:
        wd = Workdir(tmp_path, server.url)
        write_jsonl(wd.input, [{"id": f"r{i}", "prompt": f"p{i}"} for i in range(400)])
        proc = wd.popen(processes=4)
        status = wd.checkpoints / "mock-model_status.json"
        assert wait_for(lambda: status.exists() and json.loads(status.read_text())["done"] >= 8, proc=proc)
        cli = [sys.executable, "-m", "mpdistill"]
        kw = dict(cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=30)
        panel = subprocess.run(cli + ["monitor", "--once", "--checkpoint-dir", str(wd.checkpoints)], **kw)
        assert panel.returncode == 0 and "running" in panel.stdout
        assert all(len(line) <= 80 for line in panel.stdout.splitlines())
        stop = subprocess.run(cli + ["stop", "--checkpoint-dir", str(wd.checkpoints)], **kw)
        assert stop.returncode == 0, stop.stdout
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        ids = [r["id"] for r in wd.results()]
        assert len(ids) == len(set(ids)) and 8 <= len(ids) < 400
        panel = subprocess.run(cli + ["monitor", "--once", "--checkpoint-dir", str(wd.checkpoints)], **kw)
        assert "stopped" in panel.stdout
    with MockServer() as fast:     # the rerun resumes the stopped run; it need not be slow too
        wd.url = fast.url
        assert wd.run(processes=4).returncode == 0
    assert len({r["id"] for r in wd.results()}) == 400 == len(wd.results())


def test_stale_stop_file_does_not_stop_a_new_run(workdir):
    """A stop file left by a dead run is ignored by the next run, which finishes."""
    write_jsonl(workdir.input, [{"id": f"r{i}", "prompt": f"p{i}"} for i in range(30)])
    workdir.checkpoints.mkdir(parents=True)
    (workdir.checkpoints / "mock-model.stop").write_text(json.dumps({"pid": 999999, "now": False}))
    proc = workdir.run()
    assert proc.returncode == 0, proc.stderr
    assert len(workdir.results()) == 30
