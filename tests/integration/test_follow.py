"""Continuous input: numbered files from a start number, --follow on a growing JSONL and folder."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.conftest import Workdir, clean_env, read_jsonl, wait_for, write_jsonl


def _stop(wd: Workdir):
    return subprocess.run([sys.executable, "-m", "mpdistill", "stop", "--checkpoint-dir", str(wd.checkpoints)],
                          cwd=wd.root, env=clean_env(), capture_output=True, text=True, timeout=30)


def test_numbered_files_with_gaps_from_a_start_number(workdir):
    """-i DIR --start 6001: each existing file is one row, gaps are skipped, earlier numbers ignored."""
    reports = workdir.root / "reports"
    reports.mkdir()
    for n in (6000, 6001, 6002, 6004, 6007):
        (reports / f"report_{n}.txt").write_text(f"findings of {n}")
    (workdir.root / "t.txt").write_text("Summarise report {n} ({id}): {content}")
    workdir.input = reports
    proc = workdir.run("--start", "6001", "--template", str(workdir.root / "t.txt"))
    assert proc.returncode == 0, proc.stderr
    rows = sorted(workdir.results(), key=lambda r: r["line"])
    assert [r["line"] for r in rows] == [6001, 6002, 6004, 6007]
    assert rows[0]["id"] == "report_6001" and rows[0]["n"] == 6001
    assert rows[0]["input_prompt"] == "Summarise report 6001 (report_6001): findings of 6001"


def test_follow_jsonl_picks_up_appended_rows_and_stop_ends_it(workdir):
    """--follow reads rows appended later, ignores a half-written line until complete; --stop exits 0."""
    write_jsonl(workdir.input, [{"id": f"a{i}", "prompt": f"p{i}"} for i in range(5)])
    proc = workdir.popen("--follow")
    assert wait_for(lambda: len(read_jsonl(workdir.output)) == 5)
    with open(workdir.input, "a") as f:
        f.write(json.dumps({"id": "b0", "prompt": "later"}) + "\n")
        f.write('{"id": "b1", "prom')
        f.flush()
    assert wait_for(lambda: len(read_jsonl(workdir.output)) == 6)
    time.sleep(1.0)
    assert len(read_jsonl(workdir.output)) == 6  # the half line is not read yet
    status = json.loads((workdir.checkpoints / "mock-model_status.json").read_text())
    assert status["state"] == "waiting for input"
    with open(workdir.input, "a") as f:
        f.write('pt": "now whole"}\n')
    assert wait_for(lambda: len(read_jsonl(workdir.output)) == 7)
    assert _stop(workdir).returncode == 0
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert sorted(r["id"] for r in workdir.results()) == sorted([f"a{i}" for i in range(5)] + ["b0", "b1"])
    assert workdir.failures() == []


def test_follow_folder_picks_up_new_numbered_files(workdir):
    """--follow on a folder waits for the next number and processes new files as they appear."""
    reports = workdir.root / "reports"
    reports.mkdir()
    (reports / "report_1.txt").write_text("one")
    workdir.input = reports
    proc = workdir.popen("--follow")
    assert wait_for(lambda: len(read_jsonl(workdir.output)) == 1)
    (reports / "report_2.txt").write_text("two")
    assert wait_for(lambda: len(read_jsonl(workdir.output)) == 2)
    assert _stop(workdir).returncode == 0
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert [r["line"] for r in sorted(workdir.results(), key=lambda r: r["line"])] == [1, 2]
