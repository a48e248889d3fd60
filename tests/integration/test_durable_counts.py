"""The one count of durable rows: summary, status and progress read the checkpoints' counts."""
from __future__ import annotations

import json

from tests.conftest import line_count, run_until_disk_full


def test_summary_and_status_count_only_rows_on_disk_after_a_failed_write(workdir):
    """After a write fails (file size limit standing in for a full disk) the summary and the status
    file count exactly the rows whose lines are in the output, not the answers that never landed."""
    proc = run_until_disk_full(workdir)
    assert proc.returncode == 75, proc.stderr
    on_disk = line_count(workdir.output)
    assert 0 < on_disk < 200
    summary = json.loads(workdir.summary.read_text())
    assert summary["succeeded"] == on_disk and summary["failed"] == 0
    (status_file,) = workdir.checkpoints.glob("*_status.json")
    status = json.loads(status_file.read_text())
    assert status["ok"] == on_disk and status["done"] == on_disk
