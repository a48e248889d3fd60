"""The job folder and its `job.json`: the frozen run config (no secrets), the shards, the input's identity.

    OUTDIR/job.json                     written once by `submit`, read by every shard and command
    OUTDIR/shards/00007/results.jsonl   shard 7's output part (+ .errors.jsonl, .summary.json)
    OUTDIR/shards/00007/<output name>-<hash>_checkpoint.pkl, shard_status.json, logs/
    OUTDIR/shards/00007/DONE            completion marker (counts inside); FAILED when it gave up

This module is the one owner of those paths.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from ..config import OutputFiles, RunConfig, build_config
from ..errors import ConfigError
from ..inputs.jsonl import LineRange
from ..state.fingerprint import fingerprint_input, input_unchanged
from ..state.files import atomic_write
from .plan import plan_ranges

FORMAT = 1
JOB_FILE = "job.json"
RUN_NAME = "shard"          # names each shard's checkpoint and status files inside its folder
# Settings a shard sets itself, or that make no sense for a fixed byte range of the input.
_PER_SHARD = ("output", "checkpoint_dir", "log_dir", "run_name", "input_range", "progress")
_NOT_FOR_JOBS = ("follow", "iterations", "delay", "limit", "pattern", "start", "end", "template")
_SECRET = ("api_key", "endpoints")   # keys travel by environment (or a Kubernetes Secret), never in files
_DROPPED = ("restart", "retry_failed")


@dataclass(frozen=True)
class ShardPaths:
    """Every file of one shard, in its own folder."""

    dir: Path

    @property
    def output(self) -> Path:
        return self.dir / "results.jsonl"

    @property
    def errors(self) -> Path:
        return OutputFiles(self.output, self.dir).errors

    @property
    def summary(self) -> Path:
        return OutputFiles(self.output, self.dir).summary

    @property
    def checkpoint(self) -> Path:
        """Named after the shard's output, like every run's checkpoint."""
        return OutputFiles(self.output, self.dir).checkpoint

    @property
    def status(self) -> Path:
        return self.dir / f"{RUN_NAME}_status.json"

    @property
    def done(self) -> Path:
        return self.dir / "DONE"

    @property
    def failed(self) -> Path:
        return self.dir / "FAILED"


@dataclass(frozen=True)
class Job:
    """A loaded job.json: where it lives, its config values and shards."""

    dir: Path
    input: Path
    input_fingerprint: Mapping[str, Any]
    config: Mapping[str, Any]
    ranges: tuple[tuple[LineRange, int], ...]
    created_at: float = 0.0

    @property
    def shards(self) -> int:
        return len(self.ranges)

    @property
    def total_rows(self) -> int:
        return sum(lines for _, lines in self.ranges)

    def shard(self, index: int) -> ShardPaths:
        if not 0 <= index < self.shards:
            raise ConfigError(f"shard {index} does not exist: the job in {self.dir} has shards 0-{self.shards - 1}")
        return ShardPaths(self.dir / "shards" / f"{index:05d}")

    def shard_config(self, index: int, env: Mapping[str, str] | None = None) -> RunConfig:
        """The frozen config of shard `index`: the job's values, its own files and byte range."""
        rng, _ = self.ranges[index]
        paths = self.shard(index)
        tuples = {k: tuple(v) for k, v in self.config.items() if isinstance(v, list) and isinstance(_DEFAULTS.get(k), list)}
        values = {**self.config, **tuples, "output": str(paths.output), "checkpoint_dir": str(paths.dir),
                  "log_dir": str(paths.dir / "logs"), "run_name": RUN_NAME, "progress": False,
                  "input": str(self.input), "input_range": (rng.begin, rng.end, rng.first_line)}
        return build_config(values, env=os.environ if env is None else env, config_py=None)

    def fingerprint(self) -> str:
        """What makes two submissions the same job: config, shards and input size."""
        data = {"config": _settings(self.config), "ranges": [[r.begin, r.end, r.first_line, n] for r, n in self.ranges],
                "input": str(self.input), "size": self.input_fingerprint.get("size")}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "input": str(self.input), "input_fingerprint": dict(self.input_fingerprint),
                "shards": self.shards, "total_rows": self.total_rows,
                "ranges": [{"begin": r.begin, "end": r.end, "first_line": r.first_line, "lines": n}
                           for r, n in self.ranges],
                "config": dict(self.config), "created_at": self.created_at, "fingerprint": self.fingerprint()}


def job_values(cfg: RunConfig) -> dict:
    """The run config as plain values for job.json: no secrets, no per-shard paths, absolute paths."""
    for name in _NOT_FOR_JOBS:
        if getattr(cfg, name) != getattr(RunConfig, name):
            raise ConfigError(f"--{name.replace('_', '-')} cannot be used with a cluster job "
                              "(each shard reads a fixed byte range of the input once)")
    values = {}
    for f in dataclasses.fields(RunConfig):
        if f.name in _PER_SHARD + _NOT_FOR_JOBS + _SECRET + _DROPPED + ("input",):
            continue
        value = getattr(cfg, f.name)
        if value is not None:   # every setting, defaults too: a shard's environment must not change the job
            values[f.name] = dict(value) if f.name == "params" else value
    if values.get("endpoints_file"):
        values["endpoints_file"] = str(Path(values["endpoints_file"]).resolve())
    if values.get("base_url") and _has_credentials(values["base_url"]):
        del values["base_url"]   # a URL with user:password@ comes from OPENAI_BASE_URL at each shard
    return _plain(values)


def _plain(value):
    """As JSON gives it back (tuples become lists), so a loaded job equals the one that was written."""
    return json.loads(json.dumps(value, default=str))


_DEFAULTS = {f.name: _plain(f.default) for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}


def _settings(config: Mapping[str, Any]) -> dict:
    """The values that differ from the defaults: what identifies a job across mpdistill versions."""
    return {k: v for k, v in config.items() if k not in _DEFAULTS or _DEFAULTS[k] != v and v != {}}


def _has_credentials(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.username or parts.password)


def create_job(cfg: RunConfig, outdir: str | os.PathLike, shards: int) -> tuple[Job, bool]:
    """Write OUTDIR/job.json for a new job, or load the same job submitted before; (job, created).

    A different job in the same folder is refused: its shards would mix two jobs' rows.
    """
    if not cfg.input:
        raise ConfigError("submit needs -i INPUT (a JSONL file)")
    source = Path(cfg.input).resolve()
    if not source.is_file():
        raise ConfigError(f"the input of a cluster job must be a JSONL file: {cfg.input}")
    outdir = Path(outdir).resolve()
    new = Job(outdir, source, fingerprint_input(source), job_values(cfg), tuple(plan_ranges(source, shards)),
              time.time())
    if (outdir / JOB_FILE).exists():
        old = load_job(outdir)
        _check_same(old, new)
        return old, False
    outdir.mkdir(parents=True, exist_ok=True)
    atomic_write(outdir / JOB_FILE, json.dumps(new.to_dict(), indent=2, default=str).encode())
    return new, True


def _check_same(old: Job, new: Job) -> None:
    if old.fingerprint() != new.fingerprint():
        before, after = _settings(old.config), _settings(new.config)
        changed = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
        what = ", ".join(changed) or ("shards" if old.shards != new.shards else "input")
        raise ConfigError(f"{old.dir} holds another job (differs in: {what}); use another -o folder, "
                          "or the same settings to resume it")
    if not input_unchanged(old.input_fingerprint, old.input):
        raise ConfigError(f"the input {old.input} changed since the job in {old.dir} was submitted")


def load_job(outdir: str | os.PathLike) -> Job:
    """Read OUTDIR/job.json; a missing or damaged file is a ConfigError naming it."""
    outdir = Path(outdir).resolve()
    path = outdir / JOB_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ranges = tuple((LineRange(int(r["begin"]), int(r["end"]), int(r["first_line"])), int(r["lines"]))
                       for r in data["ranges"])
        job = Job(outdir, Path(data["input"]), dict(data["input_fingerprint"]), dict(data["config"]), ranges,
                  float(data.get("created_at") or 0))
    except FileNotFoundError as err:
        raise ConfigError(f"{outdir} is not a cluster job folder (no {JOB_FILE}); create it with mpdistill submit") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path} is damaged or not a job file: {err}") from err
    if data.get("format") != FORMAT:
        raise ConfigError(f"{path}: unknown job format {data.get('format')!r} (this mpdistill reads {FORMAT})")
    return job


def is_job_dir(path: str | os.PathLike) -> bool:
    """True when `path` is a folder holding a job.json."""
    return (Path(path) / JOB_FILE).is_file()
