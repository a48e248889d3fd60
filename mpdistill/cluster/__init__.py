"""Many machines: a job of N shards over byte ranges of one input, run by an executor, merged once.

`plan` cuts the input, `job` owns OUTDIR/job.json and every path in the job folder, `shard` is the
one life cycle every executor runs (skip if done, run, mark complete), `status` and `merge` read
only files, `budget` shares the endpoints' rate limits across shards, `executors/` only decide
where shards run (local processes, a Slurm array, Ray tasks, a Kubernetes Indexed Job).

May import the engine through `api`, and config, errors, inputs, outputs, state.
"""
from .job import Job, create_job, load_job
from .merge import merge_job
from .shard import run_shard
from .status import job_status

__all__ = ["Job", "create_job", "job_status", "load_job", "merge_job", "run_shard"]
