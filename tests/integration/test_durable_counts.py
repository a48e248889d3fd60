"""The one count of durable rows: summary, status and progress read the checkpoints' counts."""
from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys

from tests.conftest import clean_env, line_count, write_jsonl


def test_summary_and_status_count_only_rows_on_disk_after_a_failed_write(workdir):
    """After a write fails (file size limit standing in for a full disk) the summary and the status
    file count exactly the rows whose lines are in the output, not the answers that never landed."""
    write_jsonl(workdir.input, [{"id": f"r{i}", "prompt": "x" * 300 + str(i)} for i in range(200)])

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

    cmd = [sys.executable, "-m", "mpdistill", *workdir.args(processes=4)]
    proc = subprocess.run(cmd, cwd=workdir.root, env=clean_env(), capture_output=True, text=True,
                          timeout=120, preexec_fn=limit_file_size)
    assert proc.returncode == 75, proc.stderr
    on_disk = line_count(workdir.output)
    assert 0 < on_disk < 200
    summary = json.loads(workdir.summary.read_text())
    assert summary["succeeded"] == on_disk and summary["failed"] == 0
    (status_file,) = workdir.checkpoints.glob("*_status.json")
    status = json.loads(status_file.read_text())
    assert status["ok"] == on_disk and status["done"] == on_disk
