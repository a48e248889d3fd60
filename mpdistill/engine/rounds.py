"""Run a plan: one `Runner` per round over the input (once, or --iterations times with --delay).

The engine's entry: it builds the key pool and the workers' spec from the plan, and tells the
observer (`report.reporter.Reporter`) when each round starts and ends.
"""
from __future__ import annotations

from ..errors import ConfigError
from ..state.stopfile import wait_between_rounds
from .job import Job
from .keypool import KeyPool
from .runner import Runner
from .worker import WorkerSpec


def run_plan(plan, observer, keypool_factory=None) -> str:
    """Run every round of `plan`; returns the last round's state. `keypool_factory` makes the key
    pool (default `KeyPool`; a cluster shard's leases a shared budget)."""
    cfg, jobs = plan.cfg, plan.jobs
    spec = WorkerSpec(endpoints=cfg.endpoints, timeout=cfg.timeout, concurrency=cfg.concurrency,
                      image_max_side=cfg.image_max_side, base_dir=plan.source.base_dir,
                      image_roots=cfg.image_roots, max_image_bytes=cfg.max_image_bytes, mode=cfg.mode,
                      max_response_bytes=cfg.max_response_bytes)
    keypool = (keypool_factory or KeyPool)(list(cfg.endpoints))
    runner_class = _runner_class(cfg, jobs)
    repeated = cfg.iterations != 1
    number = int(jobs[0].checkpoint.meta.get("iteration") or 1) if repeated else None
    while True:
        last = not repeated or bool(cfg.iterations and number >= cfg.iterations)
        if repeated:
            observer.say(f"Round {number}" + (f" of {cfg.iterations}" if cfg.iterations else ""))
        runner = runner_class(cfg, jobs, _rows(plan, jobs), keypool, spec, observer, source=plan.source,
                              total=plan.total, status_file=plan.status_file, cache=plan.cache,
                              elapsed_before=max(j.checkpoint.elapsed for j in jobs), iteration=number,
                              last_round=last)
        state = _run_round(runner, observer)
        if last or state != "finished" or not runner.complete:
            return state
        number += 1
        if cfg.delay:
            observer.say(f"Next round in {cfg.delay:g} s (--stop or Ctrl-C to stop; the checkpoint is saved)")
        if not wait_between_rounds(plan.status_file, cfg.delay):
            observer.say(f"Stopped between rounds (--stop); round {number} starts when the same command is rerun")
            return state


def _runner_class(cfg, jobs: list[Job]):
    """The online manager loop, or the Batch API one (--via batch)."""
    if cfg.via != "batch":
        return Runner
    if len(jobs) != 1:
        raise ConfigError("--via batch runs one model at a time; give each model its own run")
    from ..batch.runner import BatchRunner
    return BatchRunner


def _run_round(runner: Runner, observer) -> str:
    observer.round_started(runner.view("running"))
    state = "failed"
    try:
        state = runner.run()
    finally:
        observer.round_ended(runner.view(state), state)
    return state


def _rows(plan, jobs: list[Job]):
    """The source's rows from the earliest safe seek point of all jobs, done rows skipped."""
    is_done = jobs[0].checkpoint.is_done if len(jobs) == 1 else (
        lambda key: all(j.checkpoint.is_done(key) for j in jobs))
    positions = [j.checkpoint.input_position for j in jobs]
    start = None if any(p is None for p in positions) else min(positions)
    done_below = min(j.checkpoint.watermark for j in jobs)
    return plan.source.rows(start, is_done, plan.cfg.follow, done_below)
