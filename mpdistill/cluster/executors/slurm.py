"""The Slurm executor: one sbatch array job, task i = shard i, requeued on preemption.

The script asks for `--requeue` and `--signal=USR1@120`: before a time limit the shard gets
SIGUSR1, saves its checkpoint and asks Slurm to requeue it (`requeue_self`); a preempted or
`scontrol requeue`d task gets SIGTERM, saves its checkpoint and Slurm starts it again. Either
way the next start resumes from the shard's own files.
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import time

from ...errors import ConfigError
from .base import Executor

log = logging.getLogger(__name__)

SIGNAL_BEFORE_END_S = 120
SQUEUE_PATIENCE_S = 120.0


class SlurmExecutor(Executor):
    name = "slurm"

    def script(self, indices: list[int]) -> str:
        """The sbatch array script for `indices`."""
        o, job = self.options, self.job
        array = _array_spec(indices) + (f"%{o.parallel}" if o.parallel else "")
        logs = job.dir / "slurm"
        lines = ["#!/bin/bash", f"#SBATCH --job-name=mpdistill-{job.fingerprint()[:8]}", f"#SBATCH --array={array}",
                 "#SBATCH --requeue", "#SBATCH --open-mode=append", f"#SBATCH --signal=USR1@{SIGNAL_BEFORE_END_S}",
                 f"#SBATCH --output={logs}/%A_%a.out", f"#SBATCH --chdir={os.getcwd()}"]
        for flag, value in (("partition", o.partition), ("time", o.time), ("cpus-per-task", o.cpus), ("mem", o.mem)):
            if value:
                lines.append(f"#SBATCH --{flag}={value}")
        lines += [f"#SBATCH {extra}" for extra in o.sbatch]
        at_once = o.parallel or len(indices)
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.shard_env(at_once).items()]
        lines.append("exec " + shlex.join(self.shard_command(None)))
        return "\n".join(lines) + "\n"

    def launch(self, indices: list[int], announce) -> dict:
        for extra in self.options.sbatch:
            if not extra.startswith("-") or "\n" in extra:
                raise ConfigError(f"--sbatch {extra!r}: give one sbatch option per flag, e.g. --sbatch=--account=abc")
        (self.job.dir / "slurm").mkdir(exist_ok=True)
        path = self.job.dir / "slurm" / "submit.sbatch"
        path.write_text(self.script(indices))
        out = _slurm(["sbatch", "--parsable", str(path)])   # the environment (keys too) goes with the job
        job_id = out.strip().split(";")[0]
        announce(f"Submitted Slurm array job {job_id} ({path}); watch with squeue -j {job_id}")
        return {"slurm_job_id": job_id, "script": str(path)}

    def alive(self, record: dict) -> bool:
        """True while squeue still lists a task of the array (pending, running or requeued).

        If squeue keeps failing for SQUEUE_PATIENCE_S, waiting ends (the job folder tells the rest).
        """
        try:
            out = _slurm(["squeue", "-h", "-j", record["slurm_job_id"], "-o", "%i %T"])
        except ConfigError as err:
            now = time.monotonic()
            self._failing_since = getattr(self, "_failing_since", None) or now
            log.warning("squeue failed (%s); going by the job folder only", err)
            return now - self._failing_since < SQUEUE_PATIENCE_S
        self._failing_since = None
        return bool(out.strip())


def _array_spec(indices: list[int]) -> str:
    """0-7 for a full range, else a list of ranges: 1,3-5."""
    parts, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            parts.append(f"{start}" if start == index else f"{start}-{index}")
            start = None
    return ",".join(parts)


def _slurm(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as err:
        raise ConfigError(f"{cmd[0]} not found: is Slurm installed on this machine?") from err
    except subprocess.TimeoutExpired as err:
        raise ConfigError(f"{cmd[0]} did not answer within 60 s") from err
    if done.returncode != 0:
        raise ConfigError(f"{shlex.join(cmd)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def requeue_self() -> None:
    """Ask Slurm to requeue this array task (after SIGUSR1: the time limit is near)."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    target = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID", "")
    try:
        _slurm(["scontrol", "requeue", target])
        log.warning("requeued Slurm task %s: it resumes from its checkpoint", target)
    except ConfigError as err:
        log.error("could not requeue Slurm task %s (%s); resubmit the job to resume", target, err)


EXECUTOR = SlurmExecutor
