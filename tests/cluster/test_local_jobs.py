"""Cluster jobs on the local executor: exactly once through a SIGKILLed shard, a resubmit and a merge."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.conftest import wait_for
from .conftest import ROWS, cli, cluster_env, expected_ids, merged_ids, submit_args

pytestmark = pytest.mark.timeout(400)


def test_local_job_with_a_killed_shard_resumes_exactly_once(tmp_path, job_input, fast_server):
    """4 local shards, one SIGKILLed: exit 75, merge refuses; the resubmit gives every id once, in order."""
    outdir = tmp_path / "job"
    args = submit_args(job_input, outdir, fast_server.url, 4, "local", "--wait", "--parallel", "4")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster_env())
    status = outdir / "shards" / "00002" / "shard_status.json"
    part = outdir / "shards" / "00002" / "results.jsonl"
    assert wait_for(lambda: part.exists() and part.stat().st_size > 2000 and status.exists(), 120, proc)
    os.kill(json.loads(status.read_text())["pid"], signal.SIGKILL)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 75, err
    assert not (outdir / "shards" / "00002" / "DONE").exists()
    refused = cli("merge", str(outdir))
    assert refused.returncode == 2 and "00002" in refused.stderr
    again = subprocess.run(args, capture_output=True, text=True, env=cluster_env(), timeout=240)
    assert again.returncode == 0, again.stderr
    assert merged_ids(outdir) == expected_ids()
    status = json.loads(cli("status", str(outdir), "--json").stdout)
    assert status["states"]["done"] == 4 and status["done"] == ROWS
    assert "sk-test-cluster" not in (outdir / "job.json").read_text()
