"""The cluster commands: submit, shard, and `status` / `merge` of a job folder. No logic lives here.

    mpdistill submit -i IN -o OUTDIR --shards N --executor local|slurm|ray|k8s [--wait] [run flags]
    mpdistill shard OUTDIR [--shard auto|I/N]
    mpdistill status OUTDIR
    mpdistill merge OUTDIR [-o FILE] [--partial]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from ..errors import ConfigError

log = logging.getLogger(__name__)

from ..exitcodes import EXIT_FAILED_ROWS, EXIT_INTERRUPTED, EXIT_OK
COMMANDS = ("submit", "shard")
_EXEC_FIELDS = ("shards", "executor", "wait", "parallel", "budget_share", "partition", "time", "cpus", "mem",
                "sbatch", "ray_address", "ray_cpus", "image", "secret", "namespace", "pvc")


def claims(argv: list[str]) -> bool:
    """True when the command line is a cluster command (status/merge of a folder that holds a job.json)."""
    if argv[0] in COMMANDS:
        return True
    rest = [a for a in argv[1:] if not a.startswith("-")]
    if argv[0] not in ("status", "merge") or not rest:
        return False
    from ..cluster.job import is_job_dir   # only here: the cluster package imports the whole engine
    return is_job_dir(rest[0])


def main(argv: list[str], prog: str = "mpdistill") -> int:
    command, rest = argv[0], argv[1:]
    return {"submit": submit_command, "shard": shard_command, "status": status_command,
            "merge": merge_command}[command](rest, f"{prog} {command}")


def submit_parser(prog: str) -> argparse.ArgumentParser:
    from .main import run_parser
    p = run_parser(prog)
    p.description = "Run one job as N shards on an executor; OUTDIR is the job folder."
    g = p.add_argument_group("cluster job")
    g.add_argument("--shards", type=int, help="number of shards (byte ranges of the input)")
    g.add_argument("--executor", default="local", choices=("local", "slurm", "ray", "k8s"))
    g.add_argument("--wait", action="store_true", help="block until every shard ends; exit like a run")
    g.add_argument("--parallel", type=int, help="shards at once (local processes, Slurm %%MAX, k8s parallelism)")
    g.add_argument("--budget-share", type=float, help="each shard's share of every rate limit "
                   "(default: 1 / shards at once; with Ray a shared budget unless given)")
    g.add_argument("--partition", help="Slurm partition")
    g.add_argument("--time", help="Slurm time limit, e.g. 04:00:00")
    g.add_argument("--cpus", type=int, help="Slurm cpus per task")
    g.add_argument("--mem", help="Slurm memory per task, e.g. 8G")
    g.add_argument("--sbatch", action="append", default=[], metavar="LINE",
                   help="extra #SBATCH option, e.g. --sbatch=--account=abc (repeatable)")
    g.add_argument("--ray-address", help="Ray cluster address (default: start a local Ray instance)")
    g.add_argument("--ray-cpus", type=float, default=1.0, help="Ray CPUs per shard (default 1)")
    g.add_argument("--image", help="Kubernetes: container image with mpdistill installed")
    g.add_argument("--secret", help="Kubernetes: Secret whose keys become the shards' environment (API keys)")
    g.add_argument("--namespace", help="Kubernetes namespace")
    g.add_argument("--pvc", help="Kubernetes: PersistentVolumeClaim mounted at OUTDIR's parent (shared storage)")
    return p


def submit_command(argv: list[str], prog: str) -> int:
    from ..cluster.executors import ExecOptions, executor_for
    from ..cluster.job import create_job, is_job_dir, load_job
    from .main import config_from_args
    args = submit_parser(prog).parse_args(argv)
    if not args.output:
        raise ConfigError("submit needs -o OUTDIR (the job folder)")
    cluster = {k: getattr(args, k) for k in _EXEC_FIELDS}
    for key in _EXEC_FIELDS:
        delattr(args, key)
    _setup_logging(args.verbose)
    if args.input is None and is_job_dir(args.output):
        job = load_job(args.output)          # resubmit the job in OUTDIR as it is
    else:
        if not cluster["shards"]:
            raise ConfigError("submit needs --shards N")
        job, created = create_job(config_from_args(args), args.output, cluster["shards"])
        _say(f"{'Created' if created else 'Resubmitting'} job {job.dir} ({job.shards} shards, {job.total_rows} rows)")
    options = ExecOptions(parallel=cluster["parallel"], budget_share=cluster["budget_share"], wait=cluster["wait"],
                          partition=cluster["partition"], time=cluster["time"], cpus=cluster["cpus"],
                          mem=cluster["mem"], sbatch=tuple(cluster["sbatch"]), ray_address=cluster["ray_address"],
                          ray_cpus=cluster["ray_cpus"], image=cluster["image"], secret=cluster["secret"],
                          namespace=cluster["namespace"], pvc=cluster["pvc"],
                          argv=tuple(a for a in argv if a != "--wait"))
    return executor_for(cluster["executor"], job, options).submit(_say)


def shard_command(argv: list[str], prog: str) -> int:
    import os
    from ..cluster.job import load_job
    from ..cluster.shard import run_shard, shard_identity
    p = argparse.ArgumentParser(prog=prog, description="Run one shard of a submitted job.")
    p.add_argument("outdir")
    p.add_argument("--shard", default="auto", help="auto (SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX) or I/N")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    job = load_job(args.outdir)
    index = shard_identity(args.shard, os.environ, job.shards)
    from ..logs import setup_logging
    from .main import _env_secrets
    setup_logging(str(job.shard(index).dir / "logs"), f"shard-{index:05d}", _env_secrets(), args.verbose)
    on_preempt = None
    if os.environ.get("SLURM_JOB_ID"):
        from ..cluster.executors.slurm import requeue_self
        on_preempt = requeue_self
    result = run_shard(job.dir, index, announce=_say, on_preempt=on_preempt)
    if result.state == "interrupted":
        _say(f"shard {index:05d} interrupted: checkpoint saved; run it again to resume")
        return EXIT_INTERRUPTED
    return EXIT_FAILED_ROWS if result.failed else EXIT_OK


def status_command(argv: list[str], prog: str) -> int:
    from ..cluster.status import format_status, job_status
    p = argparse.ArgumentParser(prog=prog, description="Per-shard state and progress of a job folder.")
    p.add_argument("outdir")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    status = job_status(args.outdir)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return EXIT_OK


def merge_command(argv: list[str], prog: str) -> int:
    from ..cluster.merge import merge_job
    p = argparse.ArgumentParser(prog=prog, description="Merge a job's shards: every answered row once, in input order.")
    p.add_argument("outdir")
    p.add_argument("-o", "--output", help="merged output (default OUTDIR/results.jsonl)")
    p.add_argument("--partial", action="store_true", help="merge what is done while shards are unfinished")
    args = p.parse_args(argv)
    s = merge_job(args.outdir, args.output, partial=args.partial)
    _say(f"Merged {s['merged_shards']}/{s['shards']} shards: {s['succeeded']} succeeded, {s['failed']} failed"
         + ("" if s["missing"] is None else f", {s['missing']} missing")
         + f", {s['duplicates_dropped']} duplicates dropped -> {s['output']}")
    return EXIT_FAILED_ROWS if s["failed"] or s["missing"] or s["partial"] else EXIT_OK


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
