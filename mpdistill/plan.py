"""The plan of a run, assembled once: endpoints (or the built-in mock) → jobs → source.

`assemble` resolves every endpoint, opens each job's writer and checkpoint (reconciled with its
output), opens the source and says what it found; the engine then runs the plan as it is.
"""
from __future__ import annotations

import dataclasses
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .config import MOCK_MODEL, SAMPLE_INPUT, OutputFiles, RunConfig
from .engine.job import Job
from .engine.writer import Writer
from .errors import ConfigError
from .inputs.jsonl import JsonlSource, LineRange
from .inputs.source import PythonSource, Source, identity_lookup
from .logs import register_secrets
from .provider.endpoint import Endpoint
from .provider.registry import endpoints_from_env, load_endpoints, select_pool
from .report.summary import summary_path
from .state.checkpoint import CheckpointManager, checkpoint_path
from .state.lock import OutputLock, refuse_input_as_output
from .state.fingerprint import config_fingerprint
from .state.resume import ResumeInfo, prepare
from .state.writable import check_file, check_run_paths

OPENAI_URL = "https://api.openai.com/v1"


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
        """The files derived from this job's output (errors, lock, job record, checkpoint …)."""
        return OutputFiles(Path(self.output), Path(checkpoint_dir))


@dataclass
class Plan:
    """Everything the engine runs: the final config, the opened jobs and the source."""

    cfg: RunConfig
    specs: list[JobSpec]
    jobs: list[Job]
    source: Source
    total: int | None           # rows of the source, when known
    status_file: Path
    cache: Any = None           # engine.cached.RunCache (--cache), or None


def default_jobs(cfg: RunConfig) -> list[JobSpec]:
    """The single job of a plain run: the config's model, output and params."""
    params = {k: v for k, v in (("max_tokens", cfg.max_tokens), ("temperature", cfg.temperature)) if v is not None}
    params.update(cfg.params)
    if cfg.response_format == "json":
        params["response_format"] = {"type": "json_object"}
    return [JobSpec(cfg.name, cfg.model, cfg.output_path, params, cfg.system)]


def assemble(cfg: RunConfig, rows: Iterable[dict] | None, specs: list[JobSpec] | None,
             job_endpoints: tuple[Endpoint, ...], stack: ExitStack, announce: Callable[[str], None]) -> Plan:
    """Endpoints, then jobs, then the source: the whole plan, in one pass. Closes what it opens on `stack`."""
    cfg = _with_endpoints(cfg, specs, tuple(job_endpoints), stack, announce)
    register_secrets(s for e in cfg.endpoints for s in e.secrets)
    if rows is None and not cfg.input:
        announce(f"No input given: using the bundled sample dataset {SAMPLE_INPUT}")
        cfg = dataclasses.replace(cfg, input=str(SAMPLE_INPUT))
    specs = specs or default_jobs(cfg)
    check_run_paths([s.output for s in specs], [summary_path([s.output for s in specs])] + [
        s.files(cfg.checkpoint_dir).errors for s in specs], cfg.checkpoint_dir)
    lock_outputs(cfg, specs, stack)
    source = PythonSource(rows) if rows is not None else open_source(cfg)
    total = source.count(follow=cfg.follow)
    lookup = identity_lookup(source)
    opened = [_open_job(cfg, spec, source.input_file, source.first_key, lookup) for spec in specs]
    for job, _ in opened:
        stack.callback(job.writer.close)
    _announce_resume(opened, total, specs, announce)
    return Plan(cfg, specs, [job for job, _ in opened], source, total,
                cfg.status_path, open_cache(cfg, source.base_dir, stack))


def lock_outputs(cfg: RunConfig, specs: list[JobSpec], stack: ExitStack) -> None:
    """Before any output is read or written: refuse an output that is the input, lock every output."""
    files = [spec.files(cfg.checkpoint_dir) for spec in specs]
    refuse_input_as_output(cfg.input, [p for f in files for p in (f.output, f.errors)])
    for f in files:
        stack.enter_context(OutputLock(f.lock, f.output))


def open_cache(cfg: RunConfig, base_dir: str | None, stack: ExitStack):
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


def open_source(cfg: RunConfig) -> Source:
    """A JSONL file or a folder of numbered files."""
    path = Path(cfg.input)
    if path.is_dir():
        from .inputs.numbered import NumberedSource, read_template
        template = read_template(cfg.template) if cfg.template else None
        return NumberedSource(path, pattern=cfg.pattern, start=cfg.start or 1, end=cfg.end,
                              template=template, max_bytes=cfg.max_line_bytes)
    if cfg.template or cfg.start is not None or cfg.end is not None:
        raise ConfigError("--pattern/--start/--end/--template need -i to be a folder of numbered files")
    byte_range = LineRange(*cfg.input_range) if cfg.input_range else None
    return JsonlSource(path, max_line_bytes=cfg.max_line_bytes, byte_range=byte_range)


def job_fields(cfg: RunConfig, spec: JobSpec) -> dict:
    """The settings of a job that change its answers (its output's job record holds them)."""
    return {**cfg.fingerprint_fields(), "model": spec.model, "params": dict(spec.params), "system": spec.system}


def _open_job(cfg: RunConfig, spec: JobSpec, input_path: Path | None, start: int,
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
    return Job(spec.alias, spec.model, writer, ckpt, dict(spec.params), system=spec.system, prices=spec.prices), info


def _announce_resume(opened, total: int | None, specs: list[JobSpec], announce) -> None:
    for job, info in opened:
        line = _resume_line(job.alias, info, total, len(opened) > 1)
        if line:
            announce(line)
    if total is not None and all(0 < info.done >= total for _, info in opened):
        announce(f"Nothing to do: all {total} rows are already done (output: {specs[0].output})")


def _resume_line(alias: str, info: ResumeInfo, total: int | None, many: bool) -> str | None:
    if not info.done:
        return None
    when = time.strftime("%H:%M:%S", time.localtime(info.saved_at)) if info.saved_at else None
    source = f"checkpoint from {when}" if when else "recovered from the output"
    who = f" [{alias}]" if many else ""
    if total is None:
        return f"Resuming{who}: {info.done} done ({source})"
    return f"Resuming{who}: {info.done}/{total} done, {max(total - info.done, 0)} to go ({source})"


# ---- endpoints ------------------------------------------------------------------------------

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


def log_name(cfg: RunConfig) -> str:
    """The name of the run's log file: the run's name, or the mock's model when the mock answers."""
    if not cfg.run_name and cfg.model == RunConfig.model and (cfg.mock or not resolve_endpoints(cfg)):
        return MOCK_MODEL   # the built-in mock answers as mock-model: name the log like its output
    return cfg.name


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


def _with_endpoints(cfg: RunConfig, specs, job_endpoints: tuple[Endpoint, ...], stack: ExitStack,
                    announce) -> RunConfig:
    """The config with every endpoint of the run: the models' own, the run's, or the mock."""
    endpoints = () if cfg.mock else resolve_endpoints(cfg)
    if endpoints:
        return dataclasses.replace(cfg, endpoints=job_endpoints + endpoints)
    unserved = [s.model for s in (specs or default_jobs(cfg)) if not any(e.serves(s.model) for e in job_endpoints)]
    if job_endpoints and not unserved:
        return dataclasses.replace(cfg, endpoints=job_endpoints)
    return with_mock(cfg, stack, announce, job_endpoints, unserved)
