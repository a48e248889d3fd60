"""Carry out a task file (`mpdistill run-task TASK.yaml`): a distill run over several models,
a split of the input into chunks, or a merge of chunk results."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import api
from ..plan import JobSpec
from ..config import build_config, load_config_py
from .merge import merge_dir
from .split import split_file
from .tasks import Task, endpoint_for, layer_job, load_env_file, load_task

_PARAMS_FROM_CONFIG = {"temperature": "temperature", "max_tokens": "max_tokens", "system": "system"}


def run_task(path: str, cli: Mapping[str, Any], announce: Callable[[str], None]) -> dict:
    """Run the task at `path`; CLI values win over the task file. Returns a summary/stats dict."""
    task = load_task(path)
    if task.task_type == "split":
        chunks = split_file(task.input, task.chunks, task.out_dir)
        announce(f"Split {task.input} into {len(chunks)} chunks in {task.out_dir}")
        return {"state": "finished", "chunks": [str(c) for c in chunks], "failed": 0}
    if task.task_type == "merge":
        stats = merge_dir(task.dir, list(task.model_names) or None, task.merge_errors, task.input)
        announce(f"Merged {task.dir} into {Path(task.dir) / 'merged'}")
        for alias, model in stats["models"].items():
            missing = "" if model["missing"] is None else f", {model['missing']} missing"
            announce(f"  {alias}: {model['succeeded']} succeeded, {model['failed']} failed{missing}")
        return {"state": "finished", **stats, **_merge_totals(stats)}
    if task.task_type == "submit":
        from ..cluster.task import run_submit_task
        load_env_file(task)
        return run_submit_task(task, cli, announce)
    return _distill(task, cli, announce)


def _merge_totals(stats: dict) -> dict:
    """The failed and missing rows of every merged model: the CLI's exit code reads them."""
    models = stats["models"].values()
    return {"failed": sum(m["failed"] for m in models), "missing": sum(m["missing"] or 0 for m in models)}


def _distill(task: Task, cli: Mapping[str, Any], announce) -> dict:
    load_env_file(task)
    config_py = Path(os.environ.get("MPDISTILL_CONFIG_PY", "config.py"))
    settings = {"run_name": task.path.stem, **task.settings}
    cfg = build_config(cli, yaml_values=settings, config_py=config_py)
    below = _config_py_params(config_py)
    above = {key: cli.get(key) for key in _PARAMS_FROM_CONFIG}
    if above["system"] is None:
        above["system"] = task.settings.get("system")
    jobs = [layer_job(job, above, below) for job in task.models]
    specs = [JobSpec(job.alias, job.model, task.output_for(job.alias), dict(job.params), job.system,
                         prices=(job.price_per_million_input, job.price_per_million_output))
             for job in jobs]
    own = tuple(e for e in (endpoint_for(job) for job in jobs) if e is not None)
    return api.run(cfg, jobs=specs, job_endpoints=own, announce=announce)


def _config_py_params(path: Path) -> dict:
    """The generation settings of config.py: below the model YAML in precedence."""
    if not path.is_file():
        return {}
    values = load_config_py(path)
    return {key: values.get(field) for key, field in _PARAMS_FROM_CONFIG.items()}
