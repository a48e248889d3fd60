"""One shard run by hand: SIGUSR1 (Slurm's time-limit warning) saves the checkpoint; the rerun resumes exactly."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.conftest import wait_for
from .conftest import cli, cluster_env, submit_args

pytestmark = pytest.mark.timeout(300)


def test_sigusr1_stops_a_shard_with_its_checkpoint_and_the_rerun_finishes_it(tmp_path, job_input, fast_server):
    """SIGUSR1 ends a shard with exit 130 and a checkpoint, no DONE; `shard` again finishes it, each row once."""
    outdir = tmp_path / "job"
    made = subprocess.run(submit_args(job_input, outdir, fast_server.url, 4, "k8s", "--image", "unused"),
                          capture_output=True, text=True, env=cluster_env(), timeout=120)
    assert made.returncode == 0, made.stderr       # k8s only writes its manifest: the job folder is ready
    shard = outdir / "shards" / "00001"
    cmd = [sys.executable, "-m", "mpdistill", "shard", str(outdir), "--shard", "1/4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster_env())
    part = shard / "results.jsonl"
    assert wait_for(lambda: part.exists() and part.read_bytes().count(b"\n") >= 25, 120, proc)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert list(shard.glob("*_checkpoint.pkl")) and not (shard / "DONE").exists()
    again = cli("shard", str(outdir), "--shard", "auto", env=cluster_env(JOB_COMPLETION_INDEX="1"))
    assert again.returncode == 0, again.stderr
    keys = [json.loads(line)["line"] for line in part.read_text().splitlines()]
    rng = json.loads((outdir / "job.json").read_text())["ranges"][1]
    first, count = rng["first_line"], rng["lines"]
    assert sorted(keys) == list(range(first, first + count)) and (shard / "DONE").exists()
    done = cli("shard", str(outdir), "--shard", "1/4")
    assert done.returncode == 0 and "already done" in done.stderr
