"""Cluster jobs on a real single-node Slurm: array job, SIGKILLed shard, and a requeued (preempted) shard."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.conftest import wait_for
from .conftest import cluster_env, expected_ids, merged_ids, submit_args


pytestmark = pytest.mark.timeout(400)


def _env(slurm) -> dict:
    return cluster_env(SLURM_CONF=str(slurm.conf))


def _pid_when_busy(outdir, index: int, proc=None, rows: int = 50) -> int:
    """The pid of shard `index`'s manager once it has written `rows` rows."""
    status = outdir / "shards" / f"{index:05d}" / "shard_status.json"
    part = outdir / "shards" / f"{index:05d}" / "results.jsonl"
    assert wait_for(lambda: part.exists() and part.read_bytes().count(b"\n") >= rows and status.exists(), 180, proc)
    return json.loads(status.read_text())["pid"]


def _state(slurm, task: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", task, "-o", "%T"], capture_output=True, text=True, env=_env(slurm))
    return out.stdout.strip()


def test_slurm_killed_shard_then_resubmit_is_exactly_once(tmp_path, job_input, fast_server, slurm):
    """A 4-task array job with one shard SIGKILLed mid-run ends 75; resubmitting runs only that shard; every id once."""
    outdir = tmp_path / "job"
    args = submit_args(job_input, outdir, fast_server.url, 4, "slurm", "--wait")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(slurm))
    os.kill(_pid_when_busy(outdir, 1, proc), signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err
    again = subprocess.run(args, capture_output=True, text=True, env=_env(slurm), timeout=300)
    assert again.returncode == 0, again.stderr
    script = (outdir / "slurm" / "submit.sbatch").read_text()
    assert "#SBATCH --array=1\n" in script and "#SBATCH --requeue" in script   # only the unfinished shard
    assert merged_ids(outdir) == expected_ids()


def test_requeued_slurm_shard_resumes_exactly(tmp_path, job_input, fast_server, slurm):
    """`scontrol requeue` of a running task (preemption) stops it with a checkpoint; Slurm reruns it, exactly once."""
    outdir = tmp_path / "job"
    args = submit_args(job_input, outdir, fast_server.url, 2, "slurm", "--wait")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(slurm))
    first_pid = _pid_when_busy(outdir, 0, proc)
    assert wait_for(lambda: (outdir / "submit.json").exists(), 30)
    job_id = json.loads((outdir / "submit.json").read_text())["slurm_job_id"]
    task = f"{job_id}_0"
    requeue = subprocess.run(["scontrol", "requeue", task], capture_output=True, text=True, env=_env(slurm))
    assert requeue.returncode == 0, requeue.stderr
    # A requeued task waits out Slurm's begin-time delay (minutes); let it start again at once.
    assert wait_for(lambda: _state(slurm, task) == "PENDING", 60)
    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], check=True, env=_env(slurm))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    log = (outdir / "shards" / "00000" / "stdout.log")
    status = json.loads((outdir / "shards" / "00000" / "shard_status.json").read_text())
    assert status["pid"] != first_pid    # a second start of the task finished the shard
    assert merged_ids(outdir) == expected_ids()
    assert not log.exists() or "Traceback" not in log.read_text()
