"""What a run attaches around the manager: its observers (request counters, endpoint logs,
metrics, traces) built from the config, and the `--on-finish` command run when it ends."""
from __future__ import annotations

import logging
import os
import subprocess
from contextlib import ExitStack
from pathlib import Path

from .observe import Observers, RequestCounters

log = logging.getLogger(__name__)

ON_FINISH_ENV = ("MPDISTILL_OUTPUT", "MPDISTILL_ERRORS", "MPDISTILL_SUMMARY", "MPDISTILL_RUN_STATE",
                 "MPDISTILL_RUN_NAME")


def open_observers(cfg, stack: ExitStack) -> Observers:
    """The observers `cfg` asks for; each is closed when `stack` closes."""
    observers = Observers([RequestCounters()])
    if cfg.endpoint_logs and cfg.log_dir:
        from .endpointlog import EndpointLogs
        observers.add(EndpointLogs(cfg.log_dir, cfg.name))
    if cfg.metrics_port is not None:
        from .metrics import MetricsServer
        observers.add(MetricsServer(cfg.metrics_port, cfg.metrics_host))
    if cfg.trace == "otlp":
        from .trace import OtlpTracer
        observers.add(OtlpTracer(cfg.name, content=cfg.trace_content))
    stack.callback(observers.close)
    return observers


def on_finish(command: str, summary: dict) -> dict:
    """Run `command` in a shell with the run's file paths in its environment; returns the summary
    with `on_finish: {command, returncode}`. A failure is logged; the output is never touched."""
    env = {**os.environ, **finish_env(summary)}
    log.info("running --on-finish: %s", command)
    try:
        code = subprocess.call(command, shell=True, env=env)
    except OSError as err:
        log.error("--on-finish %r could not start: %s", command, err)
        code = 127
    if code != 0:
        log.error("--on-finish %r failed with exit code %d (the output is intact)", command, code)
    return {**summary, "on_finish": {"command": command, "returncode": code}}


def finish_env(summary: dict) -> dict:
    """The variables an --on-finish command gets (absolute paths)."""
    paths = [summary.get(key) for key in ("output", "errors", "summary")]
    values = [str(Path(p).resolve()) if p else None for p in paths] + [summary.get("state"), summary.get("run")]
    return {name: str(value) for name, value in zip(ON_FINISH_ENV, values) if value is not None}
