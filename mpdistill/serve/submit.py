"""Turn a submitted job (a JSON run config, or a task YAML) into a checked job folder.

The config is checked by the same code the CLI uses (`build_config`, `load_task`), so a wrong
key is the same error naming the same key; a job that passes is written as files the child CLI
reads (`config.json` with `--config`, or `<id>.yaml` with `run-task`).
"""
from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import api
from ..config import build_config
from ..errors import ConfigError
from ..report.status import status_path
from ..state.files import atomic_write, safe_name

YAML_TYPES = ("yaml", "yml")
SECRET_KEYS = ("api_key",)


@dataclass(frozen=True)
class Submission:
    """A checked job: what the child runs and where its files will be."""

    kind: str                 # run | task
    name: str                 # the run name (status, checkpoint and log files)
    argv: tuple[str, ...]
    status_file: str
    summary_file: str
    output: str
    config: dict              # what was submitted, secrets removed (for GET /api/jobs/{id})


def new_job_id() -> str:
    return time.strftime("j%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def is_yaml(content_type: str | None) -> bool:
    return any(t in (content_type or "").lower() for t in YAML_TYPES)


def prepare_job(body: bytes, content_type: str | None, job_dir: Path) -> Submission:
    """Check the submission and write its config into `job_dir`; ConfigError names the key."""
    if is_yaml(content_type):
        return _task_job(body, job_dir)
    return _run_job(_json_mapping(body), job_dir)


def _json_mapping(body: bytes) -> dict:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"request body: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError("request body: expected a JSON object of run settings (RunConfig field names)")
    return data


def _config_py() -> Path:
    return Path(os.environ.get("MPDISTILL_CONFIG_PY", "config.py"))


def _run_job(values: dict, job_dir: Path) -> Submission:
    """A JSON run config: the settings of `--config FILE`, checked the way the CLI checks them."""
    cfg = build_config({"progress": False}, yaml_values=values, config_py=_config_py())
    if not cfg.input:
        raise ConfigError("YAML config: input is required: a job needs an input path")
    if not Path(cfg.input).exists():
        raise ConfigError(f"YAML config: input {cfg.input}: no such file or folder")
    path = job_dir / "config.json"
    _write_private(path, json.dumps(values, indent=1).encode())
    return Submission("run", cfg.name, ("run", "--config", str(path.resolve()), "--no-progress"),
                      str(status_path(cfg.checkpoint_dir, safe_name(cfg.name)).resolve()),
                      str(cfg.summary_path.resolve()), str(cfg.output_path.resolve()), _public(values))


def _task_job(body: bytes, job_dir: Path) -> Submission:
    """A task YAML: written as `<job id>.yaml` (so the run is named after the job) and loaded like
    `run-task` loads it; model configs it names are looked up from the server's folder."""
    from ..tools.tasks import load_task
    path = job_dir / f"{job_dir.name}.yaml"
    _write_private(path, body)
    try:
        task = load_task(path, cwd=Path.cwd())
    except ConfigError as err:
        raise ConfigError(str(err).replace(str(path), "task YAML")) from err
    cfg = build_config({}, yaml_values={"run_name": path.stem, **task.settings}, config_py=_config_py())
    if task.task_type == "distill":
        outputs = [task.output_for(m.alias) for m in task.models]
        summary, output = api.summary_path(outputs), outputs[0]
    else:
        summary = output = job_dir / "no-summary.json"
    data = yaml.safe_load(body.decode("utf-8"))
    return Submission("task", cfg.name, ("run-task", str(path.resolve()), "--no-progress"),
                      str(status_path(cfg.checkpoint_dir, safe_name(cfg.name)).resolve()),
                      str(Path(summary).resolve()), str(Path(output).resolve()), _public(data))


def _public(values: dict) -> dict:
    return {k: ("(hidden)" if k in SECRET_KEYS else v) for k, v in values.items()}


def _write_private(path: Path, data: bytes) -> None:
    """Job configs may hold a key: only the server's user may read them."""
    atomic_write(path, data, mode=0o600, dir_mode=0o700)
