"""Executors decide where a job's shards run (local processes, a Slurm array, Ray, Kubernetes);
what a shard does is `cluster.shard`, the same everywhere."""
from __future__ import annotations

from .base import EXECUTORS, ExecOptions, Executor, executor_for

__all__ = ["EXECUTORS", "ExecOptions", "Executor", "executor_for"]
