"""`task_type: submit` in a run-task YAML: the cluster-submit workflow of the old scripts, from a file.

    task_type: submit
    input: data.jsonl
    output_dir: output/job          # the job folder (OUTDIR)
    model: gpt-4o-mini
    shards: 8
    executor: slurm                 # local | slurm | ray | k8s
    wait: false
    parallel: 4                     # shards at once
    budget_share: 0.25              # optional
    slurm: {partition: cpu, time: "04:00:00", cpus: 4, mem: 8G, sbatch: ["--account=abc"]}
    ray: {address: "head:6379", cpus: 1}
    k8s: {image: reg/mpdistill:1, secret: openai-keys, pvc: data, namespace: ml}
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from ..config import build_config
from ..errors import ConfigError, RunAbortedError
from .budget import parse_share
from .executors import EXECUTORS, ExecOptions, executor_for
from ..exitcodes import EXIT_FAILED_ROWS, EXIT_OK
from .job import create_job

_SECTIONS = {"slurm": ("partition", "time", "cpus", "mem", "sbatch"), "ray": ("address", "cpus"),
             "k8s": ("image", "secret", "namespace", "pvc")}


def exec_options(task, cli_argv: tuple[str, ...] = ()) -> tuple[str, int, ExecOptions]:
    """(executor, shards, options) from a submit task's keys; errors name the file and key."""
    c, where = task.cluster, str(task.path)
    executor = c.get("executor", "local")
    if executor not in EXECUTORS:
        raise ConfigError(f"{where}: key 'executor' must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    shards = c.get("shards")
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise ConfigError(f"{where}: key 'shards' must be a positive whole number, got {shards!r}")
    sections = {}
    for name, keys in _SECTIONS.items():
        value = c.get(name) or {}
        if not isinstance(value, Mapping) or set(value) - set(keys):
            raise ConfigError(f"{where}: key {name!r} must be a mapping of {', '.join(keys)}")
        sections[name] = value
    share = c.get("budget_share")
    options = ExecOptions(
        parallel=c.get("parallel"), wait=bool(c.get("wait", False)),
        budget_share=None if share is None else parse_share(share, f"{where}: budget_share"),
        partition=sections["slurm"].get("partition"), time=_text(sections["slurm"].get("time")),
        cpus=sections["slurm"].get("cpus"), mem=_text(sections["slurm"].get("mem")),
        sbatch=tuple(sections["slurm"].get("sbatch") or ()), ray_address=sections["ray"].get("address"),
        ray_cpus=float(sections["ray"].get("cpus", 1.0)), image=sections["k8s"].get("image"),
        secret=sections["k8s"].get("secret"), namespace=sections["k8s"].get("namespace"),
        pvc=sections["k8s"].get("pvc"), argv=cli_argv)
    return executor, shards, options


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def run_submit_task(task, cli: Mapping[str, Any], announce: Callable[[str], None]) -> dict:
    """Create (or resume) the task's job and hand it to its executor; a summary-like dict back."""
    cfg = build_config(cli, yaml_values=task.settings,
                       config_py=Path(os.environ.get("MPDISTILL_CONFIG_PY", "config.py")))
    executor, shards, options = exec_options(task, ("-o", str(task.output_dir), "--executor",
                                                    task.cluster.get("executor", "local")))
    job, created = create_job(cfg, task.output_dir, shards)
    announce(f"{'Created' if created else 'Resubmitting'} job {job.dir} ({job.shards} shards, {job.total_rows} rows)")
    code = executor_for(executor, job, options).submit(announce)
    if code not in (EXIT_OK, EXIT_FAILED_ROWS):
        raise RunAbortedError(f"job {job.dir}: some shards did not finish; see mpdistill status {job.dir}, "
                              "then run the task again to resume")
    return {"state": "finished", "failed": int(code == EXIT_FAILED_ROWS), "job": str(job.dir)}
