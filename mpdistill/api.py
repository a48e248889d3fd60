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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .state.checkpoint import CheckpointManager, checkpoint_path
from .config import MOCK_MODEL, SAMPLE_INPUT, OutputFiles, RunConfig
from .provider.endpoint import Endpoint
from .provider.registry import endpoints_from_env, load_endpoints, select_pool
from .errors import ConfigError
from .state.files import atomic_write
from .state.lock import OutputLock, refuse_input_as_output
from .engine.keypool import KeyPool
from .logs import register_secrets
from .state.resume import ResumeInfo, config_fingerprint, prepare
from .engine.runner import Job, Runner
from .inputs.jsonl import JsonlSource, LineRange, identity_lookup, python_rows
from .report.hooks import on_finish, open_observers
from .report.stats import format_summary
from .state.stopfile import wait_between_rounds
from .state.writable import check_file, check_run_paths
from .engine.worker import WorkerSpec
from .engine.writer import Writer

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


def with_mock(cfg: RunConfig, stack: ExitStack, announce: Callable[[str], None],
              others: tuple[Endpoint, ...] = (), models: list[str] | None = None) -> RunConfig:
    """No key configured: start the built-in mock endpoint for the models no other endpoint serves."""
    from .mock.server import MockServer
    server = stack.enter_context(MockServer(reasoning=False, latency_ms=20))
    mock = Endpoint("mock", server.url, "sk-mock-local", models=tuple(models) if others else (),
                    rpm=cfg.rpm, tpm=cfg.tpm)
    changes = {"endpoints": tuple(others) + (mock,), "mock": True}
    if cfg.model == RunConfig.model:
        changes["model"] = MOCK_MODEL
    announce(f"No API key configured: using the built-in mock endpoint at {server.url} "
             f"(set OPENAI_API_KEY / --api-key, or --base-url, to call a real API)")
    return dataclasses.replace(cfg, **changes)


def _with_endpoints(cfg: RunConfig, jobs, job_endpoints: tuple[Endpoint, ...], stack: ExitStack,
                    announce) -> RunConfig:
    """The config with every endpoint of the run: the models' own, the run's, or the mock."""
    endpoints = () if cfg.mock else resolve_endpoints(cfg)
    if endpoints:
        return dataclasses.replace(cfg, endpoints=job_endpoints + endpoints)
    unserved = [s.model for s in (jobs or default_jobs(cfg)) if not any(e.serves(s.model) for e in job_endpoints)]
    if job_endpoints and not unserved:
        return dataclasses.replace(cfg, endpoints=job_endpoints)
    return with_mock(cfg, stack, announce, job_endpoints, unserved)


def _with_input(cfg: RunConfig, announce) -> RunConfig:
    if cfg.input:
        return cfg
    announce(f"No input given: using the bundled sample dataset {SAMPLE_INPUT}")
    return dataclasses.replace(cfg, input=str(SAMPLE_INPUT))


@dataclass(frozen=True)
class JobSpec:
    """One model of a run: its alias (names the checkpoint), model id, output file and generation params."""

    alias: str
    model: str
    output: Path
    params: Mapping[str, Any] = field(default_factory=dict)
    system: str | None = None
    prices: tuple[float | None, float | None] | None = None   # per million input / output tokens

    def files(self, checkpoint_dir: str | os.PathLike) -> OutputFiles:
        """The files derived from this job's output (errors, lock, sidecar, checkpoint …)."""
        return OutputFiles(Path(self.output), Path(checkpoint_dir))


def lock_outputs(cfg: RunConfig, specs: list[JobSpec], stack: ExitStack) -> None:
    """Before anything is read or written: refuse an output that is the input, lock every output."""
    files = [spec.files(cfg.checkpoint_dir) for spec in specs]
    refuse_input_as_output(cfg.input, [p for f in files for p in (f.output, f.errors)])
    for f in files:
        stack.enter_context(OutputLock(f.lock, f.output))


def default_jobs(cfg: RunConfig) -> list[JobSpec]:
    """The single job of a plain run: the config's model, output and params."""
    params = {k: v for k, v in (("max_tokens", cfg.max_tokens), ("temperature", cfg.temperature)) if v is not None}
    params.update(cfg.params)
    if cfg.response_format == "json":
        params["response_format"] = {"type": "json_object"}
    return [JobSpec(cfg.name, cfg.model, cfg.output_path, params, cfg.system)]


def job_fields(cfg: RunConfig, spec: JobSpec) -> dict:
    """The settings of a job that change its answers (its output's job record holds them)."""
    return {**cfg.fingerprint_fields(), "model": spec.model, "params": dict(spec.params), "system": spec.system}


def _open_job(cfg: RunConfig, spec: JobSpec, input_path: Path | None, start: int = 1,
              lookup=None) -> tuple[Job, ResumeInfo]:
    files = spec.files(cfg.checkpoint_dir)
    ckpt = CheckpointManager(cfg.checkpoint_interval, name=spec.alias, start=start, path=files.checkpoint)
    check_file(ckpt.path, "checkpoint")
    fields = job_fields(cfg, spec)
    info = prepare(ckpt, files, input_path=input_path, job={**fields, "output_format": cfg.output_format},
                   fingerprint=config_fingerprint(fields), restart=cfg.restart, retry_failed=cfg.retry_failed,
                   rounds=cfg.iterations != 1, legacy=checkpoint_path(spec.alias, cfg.checkpoint_dir),
                   lookup=lookup, resume_by_id=cfg.resume_by_id)
    writer = Writer(files.output, files.errors, ckpt, output_format=cfg.output_format)
    job = Job(spec.alias, spec.model, writer, ckpt, dict(spec.params), system=spec.system, prices=spec.prices)
    return job, info


def _resume_line(alias: str, info: ResumeInfo, total: int | None, many: bool) -> str | None:
    if not info.done:
        return None
    when = time.strftime("%H:%M:%S", time.localtime(info.saved_at)) if info.saved_at else None
    source = f"checkpoint from {when}" if when else "recovered from the output"
    who = f" [{alias}]" if many else ""
    if total is None:
        return f"Resuming{who}: {info.done} done ({source})"
    return f"Resuming{who}: {info.done}/{total} done, {max(total - info.done, 0)} to go ({source})"


def _open_source(cfg: RunConfig, rows):
    """(source, total, input path, base dir) for a JSONL file, a folder of numbered files, or Python rows."""
    if rows is not None:
        return None, _len(rows), None, None
    path = Path(cfg.input)
    if path.is_dir():
        from .inputs.numbered import NumberedSource, read_template
        template = read_template(cfg.template) if cfg.template else None
        source = NumberedSource(path, pattern=cfg.pattern, start=cfg.start or 1, end=cfg.end,
                                template=template, max_bytes=cfg.max_line_bytes)
        return source, source.count(follow=cfg.follow), None, source.base_dir
    if cfg.template or cfg.start is not None or cfg.end is not None:
        raise ConfigError("--pattern/--start/--end/--template need -i to be a folder of numbered files")
    byte_range = LineRange(*cfg.input_range) if cfg.input_range else None
    source = JsonlSource(path, max_line_bytes=cfg.max_line_bytes, byte_range=byte_range)
    return source, None if cfg.follow else source.count(), source.path, source.base_dir


def _rows(source, start, is_done, follow: bool, done_below: int):
    """The source's rows; JSONL sources also skip the lines below the watermark in bulk."""
    if isinstance(source, JsonlSource):
        return source.rows(start, is_done=is_done, follow=follow, done_below=done_below)
    return source.rows(start, is_done=is_done, follow=follow)


def _start_position(jobs: list[Job]):
    """Where reading may start: the earliest safe seek point of all jobs."""
    positions = [j.checkpoint.input_position for j in jobs]
    if any(p is None for p in positions):
        return None
    return min(positions)


def run(cfg: RunConfig, rows: Iterable[dict] | None = None, *, jobs: list[JobSpec] | None = None,
        job_endpoints: tuple[Endpoint, ...] = (), announce: Callable[[str], None] | None = None,
        progress: bool | None = None, keypool_factory: Callable[[list[Endpoint]], KeyPool] | None = None) -> dict:
    """Run a whole job (one or several models over the same rows) and return its summary.

    `job_endpoints` are endpoints of particular models (a model config's own base_url/key); the
    run's endpoints serve the rest, or the built-in mock when no key is configured at all.
    After the run (its files closed), `cfg.on_finish` runs with the output paths in its environment.
    `keypool_factory` replaces the run's own KeyPool with one that has its interface (a cluster
    shard's pool that leases its budget from a service shared by every shard).
    """
    summary = _run(cfg, rows, jobs, job_endpoints, announce or log.info, progress, keypool_factory)
    if cfg.on_finish and summary is not None:
        summary = on_finish(cfg.on_finish, summary)
    return summary


def _run(cfg: RunConfig, rows, jobs, job_endpoints, announce, progress, keypool_factory=None) -> dict:
    with ExitStack() as stack:
        cfg = _with_endpoints(cfg, jobs, tuple(job_endpoints), stack, announce)
        register_secrets(s for e in cfg.endpoints for s in e.secrets)
        if rows is None:
            cfg = _with_input(cfg, announce)
        specs = jobs or default_jobs(cfg)
        check_run_paths([s.output for s in specs], [_summary_path(specs)] + [
            s.files(cfg.checkpoint_dir).errors for s in specs], cfg.checkpoint_dir)
        lock_outputs(cfg, specs, stack)
        source, total, input_path, base_dir = _open_source(cfg, rows)
        first_key = getattr(source, "start", 1)
        lookup = identity_lookup(source, rows)
        opened = [_open_job(cfg, spec, input_path, first_key, lookup) for spec in specs]
        job_list = [job for job, _ in opened]
        for job in job_list:
            stack.callback(job.writer.close)
        for job, info in opened:
            line = _resume_line(job.alias, info, total, len(opened) > 1)
            if line:
                announce(line)
        if total is not None and all(0 < info.done >= total for _, info in opened):
            announce(f"Nothing to do: all {total} rows are already done (output: {specs[0].output})")
        spec = WorkerSpec(endpoints=cfg.endpoints, timeout=cfg.timeout, concurrency=cfg.concurrency,
                          image_max_side=cfg.image_max_side, base_dir=base_dir,
                          image_roots=cfg.image_roots, max_image_bytes=cfg.max_image_bytes, mode=cfg.mode,
                          max_response_bytes=cfg.max_response_bytes)
        keypool = (keypool_factory or KeyPool)(list(cfg.endpoints))
        observer = open_observers(cfg, stack)
        cache = _open_cache(cfg, base_dir, stack)
        summary = None
        for runner in _rounds(cfg, job_list, source, rows, keypool, spec, total, announce, observer, cache):
            bar = _ProgressBar(total * len(job_list) if total is not None else None,
                               sum(j.checkpoint.processed_count for j in job_list),
                               cfg.progress if progress is None else progress)
            runner.progress = bar
            state = "failed"
            try:
                state = runner.run()
            finally:
                bar.close()
                summary = _finish(runner, state, specs, announce)
            if state != "finished" or not runner.complete:
                break
        return summary


def _open_cache(cfg: RunConfig, base_dir, stack: ExitStack):
    """The response cache of the run (--cache), or None."""
    if cfg.cache is None:
        return None
    from .engine.cached import RunCache
    from .state.cache import ResponseCache, cache_path
    cache = ResponseCache(cache_path(cfg.cache, cfg.checkpoint_dir), base_dir=base_dir,
                          image_max_side=cfg.image_max_side, sampled=cfg.cache_sampled, only=cfg.cache_only)
    run_cache = RunCache(cache.open(), cfg.explode_samples)
    stack.callback(run_cache.close)
    return run_cache


def _runner_class(cfg: RunConfig, jobs: list[Job]):
    """The online manager loop, or the Batch API one (--via batch)."""
    if cfg.via != "batch":
        return Runner
    if len(jobs) != 1:
        raise ConfigError("--via batch runs one model at a time; give each model its own run")
    from .batch.runner import BatchRunner
    return BatchRunner


def _rounds(cfg: RunConfig, jobs: list[Job], source, rows, keypool, spec, total, announce, observer=None,
            cache=None):
    """One Runner per round over the input: once, or --iterations times with --delay between."""
    rounds = cfg.iterations != 1
    number = int(jobs[0].checkpoint.meta.get("iteration") or 1) if rounds else None
    while True:
        last = not rounds or (cfg.iterations and number >= cfg.iterations)
        is_done = jobs[0].checkpoint.is_done if len(jobs) == 1 else (
            lambda key: all(j.checkpoint.is_done(key) for j in jobs))
        if source is not None:
            done_below = min(j.checkpoint.watermark for j in jobs)
            row_iter = _rows(source, _start_position(jobs), is_done, cfg.follow, done_below)
        else:
            row_iter = python_rows(rows, is_done)
        if rounds:
            announce(f"Round {number}" + (f" of {cfg.iterations}" if cfg.iterations else ""))
        yield _runner_class(cfg, jobs)(cfg, jobs, row_iter, keypool, spec, total=total, source=source, cache=cache,
                     status_file=cfg.status_path,
                     elapsed_before=max(j.checkpoint.elapsed for j in jobs), iteration=number, last_round=last,
                     observer=observer)
        if last:
            return
        number += 1
        if cfg.delay:
            announce(f"Next round in {cfg.delay:g} s (--stop or Ctrl-C to stop; the checkpoint is saved)")
        if not wait_between_rounds(cfg.status_path, cfg.delay):
            announce(f"Stopped between rounds (--stop); round {number} starts when the same command is rerun")
            return


def _finish(runner: Runner, state: str, specs: list[JobSpec], announce) -> dict:
    """Write and print the summary of one round (the whole run, usually)."""
    done_before = runner.already_done
    summary = runner.summary(state, done_before)
    summary["output"] = str(specs[0].output)
    summary["errors"] = str(OutputFiles(specs[0].output).errors)
    if runner.iteration is not None:
        summary["iteration"] = runner.iteration
    summary_path = _summary_path(specs)
    summary["run"], summary["summary"] = runner.cfg.name, str(summary_path)
    _write_summary(summary_path, summary)
    announce(format_summary(summary))
    if len(specs) > 1:
        announce("Outputs: " + ", ".join(str(s.output) for s in specs) + f"  (summary: {summary_path})")
    else:
        announce(f"Output: {summary['output']}  (errors: {summary['errors']}, summary: {summary_path})")
    return summary


def _summary_path(specs: list[JobSpec]) -> Path:
    return summary_path([s.output for s in specs])


def summary_path(outputs: list[Path]) -> Path:
    """Where a run's summary goes: beside the output; for several models, in the folder their outputs share."""
    if len(outputs) == 1:
        return OutputFiles(Path(outputs[0])).summary
    common = Path(os.path.commonpath([str(Path(o).resolve().parent) for o in outputs]))
    return common / "summary.json"


def _len(rows) -> int | None:
    try:
        return len(rows)
    except TypeError:
        return None


def _write_summary(path: Path, summary: dict) -> None:
    try:
        atomic_write(path, json.dumps(summary, indent=2, default=str).encode())
    except OSError as err:
        log.warning("cannot write the summary %s: %s", path, err)


class _ProgressBar:
    """A tqdm bar fed by the writer's commits (called with the rows made durable); silent when disabled."""

    def __init__(self, total: int | None, done: int, enabled: bool) -> None:
        self.ok = self.failed = 0
        self.bar = None
        if enabled:
            from tqdm import tqdm
            tqdm.monitor_interval = 0  # no monitor thread: the manager forks workers later
            self.bar = tqdm(total=total, initial=min(done, total or done), unit="row",
                            dynamic_ncols=True, mininterval=0.5, smoothing=0.1)

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
