"""The process of one job started by `mpdistill serve`: the normal CLI, then its exit code on disk.

    python -m mpdistill.cli.child JOB_DIR

Runs `mpdistill <argv of JOB_DIR/job.json>` in this process and writes `JOB_DIR/exit.json`, so a
server restarted after a crash still knows how the job ended.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..state.files import atomic_write
from .main import main


def run_job(job_dir: Path) -> int:
    job = json.loads((job_dir / "job.json").read_text())
    code = main(list(job["argv"]))
    atomic_write(job_dir / "exit.json", json.dumps({"code": code, "ended_at": time.time()}).encode())
    return code


if __name__ == "__main__":
    sys.exit(run_job(Path(sys.argv[1])))
