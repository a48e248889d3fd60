"""Run a job from Python: `run(RunConfig(...))` (or rows given as an iterable) → summary dict.

This is the library entry the CLI calls too, and one pass down: assemble the plan (endpoints →
jobs → source), hand it to the engine, and let the reporter turn what happens into status,
progress and summary.
"""
from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any, Callable, Iterable

from .config import RunConfig
from .engine.rounds import run_plan
from .plan import JobSpec, assemble
from .report.summary import summary_path
from .provider.endpoint import Endpoint
from .report.hooks import on_finish, open_observers
from .report.reporter import Reporter

log = logging.getLogger(__name__)

__all__ = ["run", "JobSpec", "summary_path"]


def run(cfg: RunConfig, rows: Iterable[dict] | None = None, *, jobs: list[JobSpec] | None = None,
        job_endpoints: tuple[Endpoint, ...] = (), announce: Callable[[str], None] | None = None,
        progress: bool | None = None, keypool_factory: Callable[[list[Endpoint]], Any] | None = None) -> dict:
    """Run a whole job (one or several models over the same rows) and return its summary.

    `job_endpoints` are endpoints of particular models (a model config's own base_url/key); the
    run's endpoints serve the rest, or the built-in mock when no key is configured at all.
    After the run (its files closed), `cfg.on_finish` runs with the output paths in its environment.
    `keypool_factory` replaces the run's own KeyPool with one that has its interface (a cluster
    shard's pool that leases its budget from a service shared by every shard).
    """
    announce = announce or log.info
    with ExitStack() as stack:
        plan = assemble(cfg, rows, jobs, tuple(job_endpoints), stack, announce)
        reporter = Reporter([s.alias for s in plan.specs], [s.output for s in plan.specs],
                            status_file=plan.status_file,
                            progress=plan.cfg.progress if progress is None else progress, announce=announce,
                            observers=open_observers(plan.cfg, stack))
        run_plan(plan, reporter, keypool_factory)
    summary = reporter.summary
    if cfg.on_finish and summary is not None:
        summary = on_finish(cfg.on_finish, summary)
    return summary
