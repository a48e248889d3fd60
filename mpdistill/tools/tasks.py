"""Read YAML task files (distill | split | merge | submit) and the model configs they name into frozen records.

A distill task yields one `ModelJob` per model plus the RunConfig values it sets, handed to
`build_config(yaml_values=...)` so CLI flags and the environment still win over the task file.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..config import check_values, read_env_file
from ..provider.endpoint import Endpoint
from ..errors import ConfigError

log = logging.getLogger(__name__)

TASK_TYPES = ("distill", "split", "merge", "submit")
OPENAI_URL = "https://api.openai.com/v1"
_COMMON_KEYS = ("task_type", "description")
_TASK_KEYS = {
    "distill": ("input", "output_dir", "models", "endpoints", "processes", "concurrency", "limit",
                "max_retries", "timeout", "checkpoint_interval", "run_name", "system", "environment"),
    "split": ("input", "chunks", "out_dir"),
    "merge": ("dir", "models", "merge_errors", "input"),
    # a cluster job (see mpdistill.cluster.task): one model, N shards on an executor
    "submit": ("input", "output_dir", "model", "endpoints", "environment", "shards", "executor", "wait",
               "parallel", "budget_share", "slurm", "ray", "k8s", "processes", "concurrency", "max_retries",
               "timeout", "checkpoint_interval", "system"),
}
# Task keys that are RunConfig fields with the same name and meaning.
_RUN_KEYS = ("processes", "concurrency", "limit", "max_retries", "timeout", "checkpoint_interval",
             "run_name", "system")
_MODEL_KEYS = ("name", "alias", "model", "base_url", "api_key_env", "temperature", "top_p",
               "max_tokens", "n", "stop", "extra_body", "system", "price_per_million_input",
               "price_per_million_output")
PARAM_KEYS = ("temperature", "top_p", "max_tokens", "n", "stop", "extra_body")
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ModelJob:
    """One model of a distill task: who answers, with which request params, at what price."""

    alias: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)   # temperature, top_p, max_tokens, n, stop, extra_body
    system: str | None = None
    price_per_million_input: float | None = None
    price_per_million_output: float | None = None
    source: str = "(inline)"                                  # the model config file, for messages


@dataclass(frozen=True)
class Task:
    """A loaded task file. Fields that do not apply to `task_type` stay None / empty."""

    path: Path
    task_type: str
    input: Path | None = None
    output_dir: Path | None = None
    models: tuple[ModelJob, ...] = ()        # distill
    model_names: tuple[str, ...] = ()        # merge: aliases to merge (empty: all)
    endpoints: Path | None = None
    env_file: Path | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)   # RunConfig field values
    chunks: int | None = None
    out_dir: Path | None = None
    dir: Path | None = None
    merge_errors: bool = False
    cluster: Mapping[str, Any] = field(default_factory=dict)   # submit: shards, executor and its options

    def output_for(self, alias: str) -> Path:
        """Where a distill task writes the answers of model `alias`."""
        if self.output_dir is None:
            raise ConfigError(f"{self.path}: a {self.task_type} task has no output_dir")
        return self.output_dir / alias / "results.jsonl"


# ---- reading files ---------------------------------------------------------------------------

def read_yaml_mapping(path: Path, what: str) -> dict:
    """A YAML file that must hold a mapping; errors name the file and what it was for."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: {what} not found") from err
    except (OSError, UnicodeDecodeError) as err:
        why = getattr(err, "strerror", None) or type(err).__name__
        raise ConfigError(f"{path}: cannot read the {what}: {why}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(err, 'problem', None) or err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the {what} must be a YAML mapping of keys")
    return data


def _check_keys(data: Mapping, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")


# ---- value checks: each names the file and the key --------------------------------------------

def _text(data: Mapping, key: str, where: str, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: key {key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def _number(data: Mapping, key: str, where: str, low: float = 0.0, high: float = math.inf) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        span = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ConfigError(f"{where}: key {key!r} must be a number {span}, got {value!r}")
    return float(value)


def _count(data: Mapping, key: str, where: str, required: bool = False) -> int | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}: key {key!r} must be an integer > 0, got {value!r}")
    return value


def _stop(data: Mapping, where: str) -> str | list[str] | None:
    value = data.get("stop")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise ConfigError(f"{where}: key 'stop' must be a string or a list of strings, got {value!r}")


def _mapping(data: Mapping, key: str, where: str) -> dict | None:
    value = data.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise ConfigError(f"{where}: key {key!r} must be a mapping, got {type(value).__name__}")


# ---- model configs ---------------------------------------------------------------------------

def model_from_mapping(data: Mapping, where: str, default_alias: str | None = None) -> ModelJob:
    """A ModelJob from the keys of a model config (a file's content or an inline mapping)."""
    _check_keys(data, _MODEL_KEYS, where)
    if data.get("name") is not None and data.get("alias") is not None:
        raise ConfigError(f"{where}: give 'name' or 'alias', not both")
    model = _text(data, "model", where, required=True)
    alias = _text(data, "name", where) or _text(data, "alias", where) or default_alias or model
    if not _ALIAS.match(alias):
        raise ConfigError(f"{where}: key 'name' must be letters, digits, '.', '_' or '-' "
                          f"(it names the output folder), got {alias!r}")
    env_name = _text(data, "api_key_env", where)
    if env_name is not None and not _ENV_NAME.match(env_name):
        raise ConfigError(f"{where}: key 'api_key_env' must name an environment variable, got {env_name!r}")
    return ModelJob(alias=alias, model=model, base_url=_text(data, "base_url", where),
                    api_key_env=env_name, params=_params(data, where), system=_text(data, "system", where),
                    price_per_million_input=_number(data, "price_per_million_input", where),
                    price_per_million_output=_number(data, "price_per_million_output", where),
                    source=where)


def _params(data: Mapping, where: str) -> dict:
    params = {"temperature": _number(data, "temperature", where, 0.0, 2.0),
              "top_p": _number(data, "top_p", where, 0.0, 1.0),
              "max_tokens": _count(data, "max_tokens", where), "n": _count(data, "n", where),
              "stop": _stop(data, where), "extra_body": _mapping(data, "extra_body", where)}
    return {k: v for k, v in params.items() if v is not None}


def load_model(path: str | os.PathLike) -> ModelJob:
    """A model config file; its alias defaults to the file name without `.yaml`."""
    path = Path(path)
    return model_from_mapping(read_yaml_mapping(path, "model config"), str(path), default_alias=path.stem)


def model_candidates(ref: str, task_dir: Path, cwd: Path | None = None) -> list[Path]:
    """Where a model reference may live: an explicit path, else `<task dir>/../models/` and `configs/models/`."""
    cwd = Path.cwd() if cwd is None else cwd
    if ref.endswith((".yaml", ".yml")) or "/" in ref or os.sep in ref:
        ref_path = Path(ref).expanduser()
        return [ref_path] if ref_path.is_absolute() else [task_dir / ref_path, cwd / ref_path]
    names = [f"{ref}.yaml", f"{ref}.yml"]
    return [d / n for d in (task_dir.parent / "models", cwd / "configs" / "models") for n in names]


def find_model(ref: str, task_dir: Path, where: str, cwd: Path | None = None) -> ModelJob:
    """Load the model config that `ref` names (see `model_candidates`)."""
    tried = model_candidates(ref, task_dir, cwd)
    for candidate in tried:
        if candidate.is_file():
            return load_model(candidate)
    raise ConfigError(f"{where}: no model config {ref!r} (looked in: {', '.join(str(p) for p in tried)})")


# ---- tasks -----------------------------------------------------------------------------------

def load_task(path: str | os.PathLike, cwd: Path | None = None) -> Task:
    """Read and check a task file. Config files it names are resolved against the task's folder."""
    path = Path(path)
    data = read_yaml_mapping(path, "task file")
    where = str(path)
    task_type = data.get("task_type")
    if task_type not in TASK_TYPES:
        raise ConfigError(f"{where}: key 'task_type' must be one of {', '.join(TASK_TYPES)}, got {task_type!r}")
    _check_keys(data, _COMMON_KEYS + _TASK_KEYS[task_type], f"{where} (task_type {task_type})")
    if data.get("description") is not None and not isinstance(data["description"], str):
        raise ConfigError(f"{where}: key 'description' must be a string")
    build = {"distill": _distill_task, "split": _split_task, "merge": _merge_task, "submit": _submit_task}[task_type]
    return build(path, data, cwd)


def _data_path(data: Mapping, key: str, where: str, required: bool = False) -> Path | None:
    """Data paths (input, outputs) are taken like CLI flags: relative to the working directory."""
    value = _text(data, key, where, required)
    return None if value is None else Path(value).expanduser()


def _config_path(data: Mapping, key: str, where: str, task_dir: Path, what: str) -> Path | None:
    """Config files a task names (endpoints, env file) are relative to the task file and must exist."""
    value = _text(data, key, where)
    if value is None:
        return None
    resolved = Path(value).expanduser()
    resolved = resolved if resolved.is_absolute() else task_dir / resolved
    if not resolved.is_file():
        raise ConfigError(f"{where}: key {key!r}: {what} {resolved} not found")
    return resolved


def _distill_task(path: Path, data: Mapping, cwd: Path | None) -> Task:
    where, task_dir = str(path), path.parent
    input_path = _data_path(data, "input", where)
    output_dir = _data_path(data, "output_dir", where, required=True)
    endpoints = _config_path(data, "endpoints", where, task_dir, "endpoints file")
    env_file = _env_file(data, where, task_dir)
    models = _task_models(data.get("models"), task_dir, where, cwd)
    settings = check_values({k: data[k] for k in _RUN_KEYS if data.get(k) is not None}, where)
    if input_path is not None:
        settings["input"] = str(input_path)
    if endpoints is not None:
        settings["endpoints_file"] = str(endpoints)
    # {model} is the job's alias for task runs: one folder per model under output_dir.
    settings["output"] = str(output_dir / "{model}" / "results.jsonl")
    return Task(path=path, task_type="distill", input=input_path, output_dir=output_dir, models=models,
                endpoints=endpoints, env_file=env_file, settings=settings)


def _env_file(data: Mapping, where: str, task_dir: Path) -> Path | None:
    env = _mapping(data, "environment", where)
    if not env:
        return None
    _check_keys(env, ("env_file",), f"{where}: environment")
    return _config_path(env, "env_file", f"{where}: environment", task_dir, "env file")


def _task_models(value: Any, task_dir: Path, where: str, cwd: Path | None) -> tuple[ModelJob, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: key 'models' must be a non-empty list of model config names, "
                          f"paths or mappings")
    jobs = []
    for number, item in enumerate(value, 1):
        at = f"{where}: models[{number}]"
        if isinstance(item, str) and item.strip():
            jobs.append(find_model(item.strip(), task_dir, at, cwd))
        elif isinstance(item, dict):
            jobs.append(model_from_mapping(item, at))
        else:
            raise ConfigError(f"{at}: must be a model config name, a path or a mapping, got {item!r}")
    _check_unique_aliases(jobs, where)
    return tuple(jobs)


def _check_unique_aliases(jobs: list[ModelJob], where: str) -> None:
    """Aliases name output folders and checkpoints, so two models may not share one."""
    seen: set[str] = set()
    for job in jobs:
        if job.alias in seen:
            raise ConfigError(f"{where}: key 'models': two models share the name {job.alias!r}; "
                              f"give one a different 'name'")
        seen.add(job.alias)


def _split_task(path: Path, data: Mapping, cwd: Path | None) -> Task:
    where = str(path)
    return Task(path=path, task_type="split", input=_data_path(data, "input", where, required=True),
                chunks=_count(data, "chunks", where, required=True),
                out_dir=_data_path(data, "out_dir", where, required=True))


def _merge_task(path: Path, data: Mapping, cwd: Path | None) -> Task:
    where = str(path)
    names = data.get("models")
    if names is not None and (not isinstance(names, list)
                              or not all(isinstance(n, str) and n.strip() for n in names)):
        raise ConfigError(f"{where}: key 'models' must be a list of model names, got {names!r}")
    merge_errors = data.get("merge_errors", False)
    if not isinstance(merge_errors, bool):
        raise ConfigError(f"{where}: key 'merge_errors' must be true or false, got {merge_errors!r}")
    return Task(path=path, task_type="merge", dir=_data_path(data, "dir", where, required=True),
                model_names=tuple(n.strip() for n in names or ()), merge_errors=merge_errors,
                input=_data_path(data, "input", where))


def _submit_task(path: Path, data: Mapping, cwd: Path | None) -> Task:
    """A cluster job: the run settings as for distill (one model), the rest for the executor."""
    where, task_dir = str(path), path.parent
    settings = check_values({k: data[k] for k in _RUN_KEYS + ("model",) if data.get(k) is not None}, where)
    input_path = _data_path(data, "input", where, required=True)
    output_dir = _data_path(data, "output_dir", where, required=True)
    endpoints = _config_path(data, "endpoints", where, task_dir, "endpoints file")
    settings["input"] = str(input_path)
    if endpoints is not None:
        settings["endpoints_file"] = str(endpoints)
    cluster = {k: data[k] for k in ("shards", "executor", "wait", "parallel", "budget_share", "slurm", "ray", "k8s")
               if data.get(k) is not None}
    return Task(path=path, task_type="submit", input=input_path, output_dir=output_dir, endpoints=endpoints,
                env_file=_env_file(data, where, task_dir), settings=settings, cluster=cluster)


# ---- using a task ----------------------------------------------------------------------------

def load_env_file(task: Task) -> Path | None:
    """Load `environment.env_file` into os.environ; variables already set win (override=False)."""
    if task.env_file is None:
        return None
    if not task.env_file.is_file():
        raise ConfigError(f"{task.path}: key 'environment.env_file': env file {task.env_file} not found")
    read_env_file(task.env_file)
    log.info("loaded environment from %s", task.env_file)
    return task.env_file


def layer_job(job: ModelJob, above: Mapping[str, Any] | None = None,
              below: Mapping[str, Any] | None = None) -> ModelJob:
    """The job with its request params and system settled by precedence.

    `above` (CLI flags, environment, task file) beats the model config, which beats `below`
    (config.py, built-in defaults). Keys are PARAM_KEYS and `system`; None means "not set".
    """
    wanted = PARAM_KEYS + ("system",)
    pick = lambda values: {k: v for k, v in (values or {}).items() if k in wanted and v is not None}
    own = {**job.params, **({"system": job.system} if job.system is not None else {})}
    merged = {**pick(below), **own, **pick(above)}
    system = merged.pop("system", None)
    return dataclasses.replace(job, params=merged, system=system)


def endpoint_for(job: ModelJob, env: Mapping[str, str] | None = None) -> Endpoint | None:
    """The job's own endpoint when its config names a server or a key; None: use the run's endpoints."""
    if job.base_url is None and job.api_key_env is None:
        return None
    env = os.environ if env is None else env
    key = ""
    if job.api_key_env is not None:
        key = (env.get(job.api_key_env) or "").strip()
        if not key:
            raise ConfigError(f"{job.source}: key 'api_key_env': environment variable "
                              f"{job.api_key_env} is not set")
    return Endpoint(name=job.alias, base_url=job.base_url or OPENAI_URL, api_key=key, models=(job.model,))


def cost(job: ModelJob, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Price in the config's currency for the given tokens; None when the config sets no price."""
    if job.price_per_million_input is None and job.price_per_million_output is None:
        return None
    return (prompt_tokens * (job.price_per_million_input or 0.0)
            + completion_tokens * (job.price_per_million_output or 0.0)) / 1e6
