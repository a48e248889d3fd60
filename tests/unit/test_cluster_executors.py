"""Executors' outputs that need no engine: the Kubernetes manifest's shape and the sbatch script."""
from __future__ import annotations

import yaml

from mpdistill.cluster.executors import ExecOptions, executor_for
from mpdistill.cluster.executors.slurm import _array_spec
from mpdistill.cluster.job import create_job
from mpdistill.config import build_config


def _job(tmp_path, shards=4):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "a"}\n' * 12)
    return create_job(build_config({"input": str(path), "model": "m"}, env={}), tmp_path / "job", shards)[0]


def test_k8s_manifest_is_an_indexed_job_running_each_shard(tmp_path):
    """The manifest is an Indexed Job: completions = parallelism = N, the shard command, env from the Secret."""
    job = _job(tmp_path)
    options = ExecOptions(image="reg/mpdistill:1", secret="openai-keys", pvc="data", namespace="ml")
    executor_for("k8s", job, options).submit(lambda msg: None)
    manifest = yaml.safe_load((job.dir / "k8s-job.yaml").read_text())
    spec = manifest["spec"]
    container = spec["template"]["spec"]["containers"][0]
    assert manifest["kind"] == "Job" and manifest["apiVersion"] == "batch/v1"
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 4
    assert container["command"] == ["mpdistill", "shard", str(job.dir), "--shard", "auto"]
    assert container["envFrom"] == [{"secretRef": {"name": "openai-keys"}}]
    assert {"name": "MPDISTILL_BUDGET_SHARE", "value": "0.25"} in container["env"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never" and manifest["metadata"]["namespace"] == "ml"


def test_sbatch_script_is_a_requeueable_array_of_the_unfinished_shards(tmp_path):
    """The sbatch script arrays the given shards with %MAX, --requeue, the signal and the extra lines."""
    job = _job(tmp_path, 8)
    options = ExecOptions(parallel=2, partition="gpu", time="01:00:00", mem="4G", sbatch=("--account=abc",))
    script = executor_for("slurm", job, options).script([0, 1, 2, 5, 7])
    for line in ("#SBATCH --array=0-2,5,7%2", "#SBATCH --requeue", "#SBATCH --signal=USR1@120",
                 "#SBATCH --partition=gpu", "#SBATCH --time=01:00:00", "#SBATCH --mem=4G", "#SBATCH --account=abc",
                 "export MPDISTILL_BUDGET_SHARE=0.5"):
        assert line in script
    assert script.rstrip().endswith(f"shard {job.dir} --shard auto")
    assert _array_spec([3]) == "3" and _array_spec([0, 1, 2, 3]) == "0-3"
