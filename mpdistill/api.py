"""Run a job from Python: `run(RunConfig(...))` (or rows given as an iterable) → summary dict.

This is the library entry the CLI calls too: resolve endpoints (or start the built-in mock),
prepare every job's checkpoint against its output, run the manager loop, write the summary.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterable

from .checkpoint import CheckpointManager, safe_name
from .config import MOCK_MODEL, SAMPLE_INPUT, RunConfig
from .endpoint import Endpoint
from .endpoints import endpoints_from_env, load_endpoints, select_pool
from .errors import ConfigError
from .keypool import KeyPool
from .resume import ResumeInfo, config_fingerprint, prepare
from .runner import Job, Runner
from .source import JsonlSource, row_from_object
from .stats import format_summary
from .status import status_path
from .worker import WorkerSpec
from .writer import Writer

log = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"


def resolve_endpoints(cfg: RunConfig, env=None) -> tuple[Endpoint, ...]:
    """The endpoints of the run: a file, OPENAI_API_KEYS, one key/base URL, or none (mock)."""
    env = os.environ if env is None else env
    if cfg.endpoints:
        endpoints = list(cfg.endpoints)
    elif cfg.endpoints_file:
        endpoints = load_endpoints(cfg.endpoints_file)
    elif env.get("OPENAI_API_KEYS"):
        endpoints = endpoints_from_env(cfg.base_url or OPENAI_URL, env["OPENAI_API_KEYS"], rpm=cfg.rpm, tpm=cfg.tpm)
    elif cfg.api_key or cfg.base_url:
        # A local server (vLLM, Ollama, llama.cpp) often needs no key, but the SDK wants one.
        endpoints = [Endpoint("default", cfg.base_url or OPENAI_URL, cfg.api_key or "EMPTY", rpm=cfg.rpm, tpm=cfg.tpm)]
    else:
        return ()
    if cfg.pool:
        endpoints = select_pool(endpoints, cfg.pool)
    if not endpoints:
        raise ConfigError("no endpoints configured")
    return tuple(endpoints)


def with_mock(cfg: RunConfig, stack: ExitStack, announce: Callable[[str], None]) -> RunConfig:
    """No key and no endpoint: start the built-in mock endpoint (and the sample data if no input)."""
    from .mockserver import MockServer
    server = stack.enter_context(MockServer(reasoning=False, latency_ms=20))
    changes = {"endpoints": (Endpoint("mock", server.url, "sk-mock-local", rpm=cfg.rpm, tpm=cfg.tpm),),
               "mock": True}
    if cfg.model == RunConfig.model:
        changes["model"] = MOCK_MODEL
    announce(f"No API key configured: using the built-in mock endpoint at {server.url} "
             f"(set OPENAI_API_KEY / --api-key, or --base-url, to call a real API)")
    return dataclasses.replace(cfg, **changes)


def _with_input(cfg: RunConfig, announce) -> RunConfig:
    if cfg.input:
        return cfg
    announce(f"No input given: using the bundled sample dataset {SAMPLE_INPUT}")
    return dataclasses.replace(cfg, input=str(SAMPLE_INPUT))


def _open_job(cfg: RunConfig, input_path: Path | None, announce) -> tuple[Job, ResumeInfo]:
    name = cfg.name
    ckpt = CheckpointManager(cfg.checkpoint_interval, name=name, directory=cfg.checkpoint_dir)
    output, errors = cfg.output_path, cfg.errors_path
    info = prepare(ckpt, output, errors, input_path=input_path, restart=cfg.restart,
                   retry_failed=cfg.retry_failed, fingerprint=config_fingerprint(cfg.fingerprint_fields()))
    params = {k: v for k, v in (("max_tokens", cfg.max_tokens), ("temperature", cfg.temperature)) if v is not None}
    params.update(cfg.params)
    return Job(name, cfg.model, Writer(output, errors, ckpt), ckpt, params), info


def _resume_line(info: ResumeInfo, total: int | None) -> str | None:
    if not info.done:
        return None
    when = time.strftime("%H:%M:%S", time.localtime(info.saved_at)) if info.saved_at else None
    source = f"checkpoint from {when}" if when else "recovered from the output"
    if total is None:
        return f"Resuming: {info.done} done ({source})"
    return f"Resuming: {info.done}/{total} done, {max(total - info.done, 0)} to go ({source})"


def run(cfg: RunConfig, rows: Iterable[dict] | None = None, *,
        announce: Callable[[str], None] | None = None, progress: bool | None = None) -> dict:
    """Run a whole job and return its summary (also written as JSON beside the output)."""
    announce = announce or log.info
    with ExitStack() as stack:
        endpoints = () if cfg.mock else resolve_endpoints(cfg)
        cfg = dataclasses.replace(cfg, endpoints=endpoints) if endpoints else with_mock(cfg, stack, announce)
        if rows is None:
            cfg = _with_input(cfg, announce)
            source = JsonlSource(Path(cfg.input), system=cfg.system, max_line_bytes=cfg.max_line_bytes)
            total, input_path, base_dir = source.count(), source.path, source.base_dir
        else:
            source, total, input_path, base_dir = None, _len(rows), None, None
        job, info = _open_job(cfg, input_path, announce)
        line = _resume_line(info, total)
        if line:
            announce(line)
        if total is not None and info.done >= total and info.done:
            announce(f"Nothing to do: all {total} rows are already done (output: {cfg.output_path})")
        start = job.checkpoint.input_position
        if source is not None:
            row_iter = source.rows(start, is_done=job.checkpoint.is_done)
        else:
            row_iter = _python_rows(rows, cfg.system, job.checkpoint.is_done)
        spec = WorkerSpec(endpoints=cfg.endpoints, timeout=cfg.timeout, concurrency=cfg.concurrency,
                          image_max_side=cfg.image_max_side, base_dir=base_dir)
        bar = stack.enter_context(_progress_bar(cfg, total, info.done, progress))
        runner = Runner(cfg, [job], row_iter, KeyPool(list(cfg.endpoints)), spec, total=total,
                        status_file=status_path(cfg.checkpoint_dir, safe_name(cfg.name)),
                        progress=bar, elapsed_before=job.checkpoint.elapsed)
        stack.callback(job.writer.close)
        state = "failed"
        try:
            state = runner.run()
        finally:
            bar.close()
            summary = runner.summary(state, info.done)
            summary["output"], summary["errors"] = str(cfg.output_path), str(cfg.errors_path)
            _write_summary(cfg.summary_path, summary)
        announce(format_summary(summary))
        announce(f"Output: {cfg.output_path}  (errors: {cfg.errors_path}, summary: {cfg.summary_path})")
        return summary


def _len(rows) -> int | None:
    try:
        return len(rows)
    except TypeError:
        return None


def _python_rows(rows: Iterable[dict], system, is_done):
    """Rows given from Python: key = position (1-based); bad rows become error rows, not exceptions."""
    from .errors import RowFormatError
    from .source import BadRow, IdSet
    ids = IdSet()
    for key, obj in enumerate(rows, start=1):
        if is_done(key):
            continue
        try:
            row = row_from_object(key, obj, system)
        except RowFormatError as err:
            yield BadRow(key, None, str(err))
            continue
        yield row if ids.add(row.id) else BadRow(key, row.id, f"row {key}: duplicate id {row.id!r}")


def _write_summary(path: Path, summary: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=str))
        os.replace(tmp, path)
    except OSError as err:
        log.warning("cannot write the summary %s: %s", path, err)


class _progress_bar:
    """A tqdm bar fed by the writer's commits; silent when disabled."""

    def __init__(self, cfg: RunConfig, total: int | None, done: int, enabled: bool | None) -> None:
        self.enabled = cfg.progress if enabled is None else enabled
        self.total, self.done = total, done
        self.ok = self.failed = 0
        self.bar = None

    def __enter__(self):
        if self.enabled:
            from tqdm import tqdm
            tqdm.monitor_interval = 0  # no monitor thread: the manager forks workers later
            self.bar = tqdm(total=self.total, initial=min(self.done, self.total or self.done),
                            unit="row", dynamic_ncols=True, mininterval=0.5, smoothing=0.1)
        return self

    def __call__(self, ok: int, failed: int) -> None:
        self.ok += ok
        self.failed += failed
        if self.bar is not None:
            self.bar.update(ok + failed)
            self.bar.set_postfix(ok=self.ok, failed=self.failed, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __exit__(self, *exc) -> None:
        self.close()
