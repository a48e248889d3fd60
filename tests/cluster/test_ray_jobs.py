"""Cluster jobs on a real local Ray: shards as Ray tasks sharing one budget actor, and a SIGKILLed shard."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.conftest import wait_for
from .conftest import cluster_env, expected_ids, merged_ids, submit_args

pytestmark = pytest.mark.timeout(400)


def _args(job_input, outdir, url, ray_cluster, *extra):
    return submit_args(job_input, outdir, url, 4, "ray", "--ray-address", ray_cluster.address, "--ray-cpus", "1",
                       "--rpm", "60000", "--wait", *extra)


def test_ray_killed_shard_then_resubmit_is_exactly_once(tmp_path, job_input, fast_server, ray_cluster):
    """4 Ray tasks sharing a budget actor, one SIGKILLed mid-run: exit 75; the resubmitted job gives every id once."""
    outdir = tmp_path / "job"
    args = _args(job_input, outdir, fast_server.url, ray_cluster)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster_env())
    status = outdir / "shards" / "00001" / "shard_status.json"
    part = outdir / "shards" / "00001" / "results.jsonl"
    assert wait_for(lambda: part.exists() and part.read_bytes().count(b"\n") >= 50 and status.exists(), 180, proc)
    os.kill(json.loads(status.read_text())["pid"], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err
    again = subprocess.run(args, capture_output=True, text=True, env=cluster_env(), timeout=300)
    assert again.returncode == 0, again.stderr
    assert merged_ids(outdir) == expected_ids()
    summary = json.loads((outdir / "shards" / "00001" / "results.summary.json").read_text())
    assert summary["endpoints"][0].get("shared") is True   # its calls were leased from the budget actor
