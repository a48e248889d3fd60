"""What every executor shares: which shards still need a run, the shard command, waiting, exit codes.

An executor only implements `launch(indices)` (start or submit those shards) and, to wait,
`alive(record)` (is anything of that submission still queued or running?).
"""
from __future__ import annotations

import abc
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import import_module

from ...errors import ConfigError
from ...exitcodes import EXIT_ABORTED, EXIT_FAILED_ROWS, EXIT_OK
from ...state.files import atomic_write
from ..budget import env_secrets, share_env
from ..job import Job
from ..status import job_status, shard_state

log = logging.getLogger(__name__)

EXIT_SHARD_FAILED = EXIT_ABORTED   # a shard did not finish: resubmit to go on
EXECUTORS = ("local", "slurm", "ray", "k8s")
SUBMIT_FILE = "submit.json"


@dataclass(frozen=True)
class ExecOptions:
    """How and where to run the shards; each executor reads the fields that concern it."""

    parallel: int | None = None          # shards at once (Slurm %MAX, Kubernetes parallelism, local processes)
    budget_share: float | None = None    # each shard's share of every limit (default: 1 / shards at once)
    wait: bool = False
    poll_s: float = 2.0
    partition: str | None = None         # Slurm
    time: str | None = None
    cpus: int | None = None
    mem: str | None = None
    sbatch: tuple[str, ...] = ()         # extra #SBATCH lines
    ray_address: str | None = None       # Ray: None starts a local instance
    ray_cpus: float = 1.0                # Ray resources per shard
    image: str | None = None             # Kubernetes
    secret: str | None = None
    namespace: str | None = None
    pvc: str | None = None
    argv: tuple[str, ...] = field(default=(), repr=False)   # the submit command, for a detached driver


def executor_for(name: str, job: Job, options: ExecOptions) -> "Executor":
    """The executor called `name` for this job."""
    if name not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)} (got {name!r})")
    module = import_module(f"{__package__}.{name}")
    return module.EXECUTOR(job, options)


class Executor(abc.ABC):
    """Start the shards of `job` that are not done; optionally wait and return a run-like exit code."""

    name = "base"
    foreground = False   # runs shards from this process (local, ray): without --wait a detached driver does

    def __init__(self, job: Job, options: ExecOptions) -> None:
        self.job, self.options = job, options

    def pending(self) -> list[int]:
        """Shards without a completion marker."""
        return [i for i in range(self.job.shards) if shard_state(self.job, i).state != "done"]

    def submit(self, announce) -> int:
        """Launch what is not done; with `wait`, block until the shards end and return the exit code."""
        indices = self.pending()
        if not indices:
            announce(f"every shard of {self.job.dir} is done; merge with: mpdistill merge {self.job.dir}")
            return exit_code(self.job)
        if self.foreground and not self.options.wait:
            record = self.detach()
        else:
            record = self.launch(indices, announce)
        record = {"executor": self.name, "shards": indices, "at": time.time(), **record}
        atomic_write(self.job.dir / SUBMIT_FILE, json.dumps(record, indent=2, default=str).encode())
        announce(f"{self.name}: {len(indices)} shard(s) of {self.job.shards} started; watch with "
                 f"`mpdistill status {self.job.dir}`, merge with `mpdistill merge {self.job.dir}`")
        if not self.options.wait:
            return EXIT_OK
        self.wait(record)
        return exit_code(self.job)

    @abc.abstractmethod
    def launch(self, indices: list[int], announce) -> dict:
        """Start or submit the shards `indices`; return what `alive` needs to find them again."""

    @abc.abstractmethod
    def alive(self, record: dict) -> bool:
        """True while the submission still has shards queued or running."""

    def wait(self, record: dict) -> None:
        while self.alive(record) and self.pending():
            time.sleep(self.options.poll_s)

    def detach(self) -> dict:
        """Run this same submission with --wait in a process of its own, which outlives this one."""
        log_path = self.job.dir / f"{self.name}-driver.log"
        cmd = [sys.executable, "-m", "mpdistill", "submit", *self.options.argv, "--wait"]
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=os.environ.copy())
        return {"driver_pid": proc.pid, "driver_log": str(log_path)}

    def shard_command(self, index: int | None) -> list[str]:
        """The command that runs one shard (index None: taken from the engine's environment)."""
        spec = "auto" if index is None else f"{index}/{self.job.shards}"
        return [sys.executable, "-m", "mpdistill", "shard", str(self.job.dir), "--shard", spec]

    def shard_env(self, at_once: int | None) -> dict:
        """Variables every shard gets: its budget share (keys travel in the environment separately)."""
        return share_env(self.options.budget_share, self.job.shards, at_once)

    def secrets(self) -> dict:
        return env_secrets()


def exit_code(job: Job) -> int:
    """Like a run's: 0 all rows done, 3 some rows failed, 75 a shard did not finish."""
    status = job_status(job.dir)
    if status["states"]["done"] < job.shards:
        return EXIT_SHARD_FAILED
    return EXIT_FAILED_ROWS if status["failed"] else EXIT_OK
