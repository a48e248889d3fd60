"""The life cycle of one shard, the same under every executor: skip if done, run, mark complete.

A shard is an ordinary run (its own output part, errors, checkpoint, status and summary in its
folder) over the lines of its byte range. It ends in one of four ways: DONE written (every row
answered or failed for good), interrupted (SIGTERM/SIGINT/SIGUSR1: checkpoint saved, rerun
resumes), FAILED written (a run-level fault or a crash), or killed (the next run resumes).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from .. import api
from ..errors import ConfigError, MpdistillError
from ..state.files import atomic_write
from .budget import budget_for_shard
from .job import Job, ShardPaths, load_job

log = logging.getLogger(__name__)

# Where an engine's task finds its shard index (Slurm array, Kubernetes Indexed Job).
INDEX_VARS = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")
COUNT_VARS = ("SLURM_ARRAY_TASK_COUNT",)


@dataclass(frozen=True)
class ShardResult:
    """How a shard run ended: done, skipped (done before), interrupted or failed; and its counts."""

    index: int
    state: str
    ok: int = 0
    failed: int = 0
    reason: str | None = None


def shard_identity(spec: str, env: Mapping[str, str], shards: int) -> int:
    """The shard index from `--shard I/N` or, with `auto`, from the engine's environment."""
    if spec != "auto":
        index, sep, count = spec.partition("/")
        try:
            i, n = int(index), int(count) if sep else shards
        except ValueError as err:
            raise ConfigError(f"--shard must be auto or I/N, e.g. 3/8 (got {spec!r})") from err
        if n != shards:
            raise ConfigError(f"--shard {spec}: the job has {shards} shards, not {n}")
        return _in_range(i, shards, "--shard")
    for var in INDEX_VARS:
        if env.get(var, "").strip():
            try:
                index = int(env[var])
            except ValueError as err:
                raise ConfigError(f"{var}={env[var]!r} is not a shard index") from err
            for count_var in COUNT_VARS:
                if env.get(count_var, "").isdigit() and int(env[count_var]) > shards:
                    raise ConfigError(f"{count_var}={env[count_var]} but the job has only {shards} shards")
            return _in_range(index, shards, var)
    raise ConfigError("--shard auto found no shard index: set SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX, "
                      "or give --shard I/N")


def _in_range(index: int, shards: int, where: str) -> int:
    if not 0 <= index < shards:
        raise ConfigError(f"{where}: shard {index} is out of range 0-{shards - 1}")
    return index


def run_shard(outdir, index: int, *, env: Mapping[str, str] | None = None,
              announce: Callable[[str], None] | None = None,
              on_preempt: Callable[[], None] | None = None) -> ShardResult:
    """Run shard `index` of the job in `outdir` to its end; a shard already done does nothing.

    SIGUSR1 (Slurm's warning before a time limit) stops it like SIGTERM; then `on_preempt` runs
    (the Slurm executor's asks Slurm to requeue the task), after the checkpoint is saved.
    """
    env = os.environ if env is None else env
    announce = announce or log.info
    job = load_job(outdir)
    paths = job.shard(index)
    if paths.done.exists():
        announce(f"shard {index:05d} is already done ({paths.done}); nothing to do")
        return ShardResult(index, "skipped", *_counts(paths))
    paths.dir.mkdir(parents=True, exist_ok=True)
    paths.failed.unlink(missing_ok=True)
    preempted = []
    previous = _on_usr1(lambda: preempted.append(True))
    try:
        summary = _run(job, index, env, announce)
    except MpdistillError as err:
        _mark(paths.failed, {"reason": str(err), "kind": type(err).__name__})
        raise
    except Exception as err:   # a bug: record it so status shows the shard failed, then crash as usual
        _mark(paths.failed, {"reason": f"crash: {err!r}", "kind": "crash"})
        raise
    finally:
        _restore_usr1(previous)
    return _finish(index, paths, summary, bool(preempted), on_preempt)


def _run(job: Job, index: int, env: Mapping[str, str], announce) -> dict:
    cfg = job.shard_config(index, env)
    factory, cfg = budget_for_shard(job, index, cfg, env)
    announce(f"shard {index:05d}/{job.shards}: lines {job.ranges[index][0].first_line}-"
             f"{job.ranges[index][0].first_line + job.ranges[index][1] - 1} of {job.input}")
    try:
        return api.run(cfg, announce=announce, keypool_factory=factory)
    finally:
        leased = getattr(factory, "pool", None)
        if leased is not None:
            leased.close()   # unused grants go back to the shared budget


def _finish(index: int, paths: ShardPaths, summary: dict, preempted: bool, on_preempt) -> ShardResult:
    complete = summary.get("state") == "finished" and not paths.checkpoint.exists()
    if not complete:
        if preempted and on_preempt is not None:
            on_preempt()
        return ShardResult(index, "interrupted", *_counts(paths))
    ok, failed = _counts(paths)
    _mark(paths.done, {"ok": ok, "failed": failed, "rows": ok + failed})
    return ShardResult(index, "done", ok, failed)


def _counts(paths: ShardPaths) -> tuple[int, int]:
    """(answered, failed) rows of a shard, from its files: the files are the truth."""
    return _lines(paths.output), _lines(paths.errors)


def _lines(path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def _mark(path, fields: dict) -> None:
    """Write a marker file atomically: who, when, and `fields`."""
    data = {**fields, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}
    atomic_write(path, json.dumps(data).encode())


def read_marker(path) -> dict | None:
    """A marker's fields, {} when it exists but cannot be read, None when absent."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _on_usr1(note: Callable[[], None]):
    """SIGUSR1 stops the run like SIGTERM (the runner's own handler does the stopping)."""
    def handler(signum, frame):
        note()
        os.kill(os.getpid(), signal.SIGTERM)
    try:
        return signal.signal(signal.SIGUSR1, handler)
    except ValueError:   # not the main thread: the engine's signals cannot reach us here anyway
        return None


def _restore_usr1(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGUSR1, previous)
