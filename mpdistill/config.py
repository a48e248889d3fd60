"""Build the frozen `RunConfig` of a run from CLI flags, the environment, YAML, `config.py` and defaults.

Precedence: CLI flags > environment (and `.env`) > YAML > `config.py` > built-in defaults.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .provider.endpoint import Endpoint
from .errors import ConfigError
from .state.files import safe_name

SAMPLE_INPUT = Path(__file__).parent / "sample" / "sample.jsonl"
MOCK_MODEL = "mock-model"


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; built once, never mutated, passed to every component."""

    input: str | None = None
    output: str = "output/{model}_results.jsonl"
    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key: str = field(default="", repr=False)
    endpoints: tuple[Endpoint, ...] = ()
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)  # other generation params (top_p, stop, …)
    timeout: float = 120.0
    max_retries: int = 5
    retry_base: float = 1.0
    retry_max: float = 60.0
    processes: int = 64
    concurrency: int = 1
    mode: str = "process"            # process | thread | async: how workers make their calls
    limit: int | None = None
    image_max_side: int | None = None
    image_roots: tuple[str, ...] = ()     # folders local images may come from, besides the input's
    max_image_bytes: int = 20 * 1024 * 1024
    max_line_bytes: int = 20 * 1024 * 1024
    max_response_bytes: int = 16 * 1024 * 1024   # a longer answer fails its row
    checkpoint_interval: int = 10
    checkpoint_dir: str = "checkpoints"
    log_dir: str = "logs"
    run_name: str | None = None
    restart: bool = False
    retry_failed: bool = False
    grace: float = 30.0
    max_outage: float = 300.0
    rpm: float | None = None
    tpm: float | None = None
    pool: str | None = None
    endpoints_file: str | None = None
    mock: bool = False
    progress: bool = True
    output_format: str = "mpdistill"  # mpdistill | openai-batch
    explode_samples: bool = False     # n > 1: one output row per sample
    response_format: str = "text"   # text | json (ask for a JSON object, parse it into `extracted`)
    pattern: str = "report_{n}.txt"  # -i DIR: numbered files, one row each
    start: int | None = None
    end: int | None = None
    template: str | None = None      # prompt template file with {content}, {id}, {n}
    follow: bool = False             # keep waiting for new rows / files until stopped
    iterations: int = 1          # rounds over the same input; 0 = until stopped
    delay: float = 0.0           # seconds between rounds
    resume_by_id: bool = False   # resume an edited input: run exactly the rows whose ids are not done
    metrics_port: int | None = None  # serve Prometheus /metrics from the run itself on this port
    metrics_host: str = "127.0.0.1"
    trace: str | None = None         # otlp: one OpenTelemetry span per request
    trace_content: bool = False      # put prompt and answer text into the spans
    endpoint_logs: bool = True       # logs/<run>/<endpoint>.log: one line per request
    on_finish: str | None = None     # shell command run when the run ends
    via: str = "online"          # online (the worker pool) | batch (the provider's Batch API)
    batch_max_requests: int = 50_000            # requests per batch input file
    batch_max_bytes: int = 200 * 1024 * 1024    # bytes per batch input file
    batch_max_in_flight: int = 10    # open batches per endpoint (endpoints YAML: batch_max_in_flight)
    batch_max_tokens: int | None = None   # enqueued tokens per endpoint (endpoints YAML: batch_max_tokens)
    batch_poll: float = 30.0         # seconds between polls of one batch
    batch_price: float = 0.5         # batch price as a share of the model's price, for the summary's cost
    cancel_batches: bool = False     # cancel the open batches, collect what they answered, submit nothing
    cache: str | None = None         # response cache (SQLite file); None: off
    cache_only: bool = False         # answer from the cache only; misses fail
    cache_sampled: bool = False      # cache requests with temperature > 0 too
    input_range: tuple[int, int, int] | None = None   # one shard's lines: (begin byte, end byte, first line)

    @property
    def name(self) -> str:
        """The run's name: status, stop and log files are keyed by it (checkpoints by the output)."""
        return self.run_name or self.model

    @property
    def output_path(self) -> Path:
        return Path(self.output.replace("{model}", safe_name(self.model)))

    @property
    def files(self) -> OutputFiles:
        """The files derived from this run's output."""
        return OutputFiles(self.output_path, Path(self.checkpoint_dir))

    @property
    def errors_path(self) -> Path:
        return self.files.errors

    @property
    def summary_path(self) -> Path:
        return self.files.summary

    @property
    def status_path(self) -> Path:
        return status_path(self.checkpoint_dir, self.name)

    def fingerprint_fields(self) -> dict:
        """The settings that change answers: a resume with other values gets a warning."""
        return {"model": self.model, "system": self.system, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "params": dict(self.params),
                "image_max_side": self.image_max_side, "response_format": self.response_format}


def sibling(output: Path, suffix: str) -> Path:
    """`out/a.jsonl` + `.errors.jsonl` → `out/a.errors.jsonl`."""
    stem = output.name[:-len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(stem + suffix)


CHECKPOINT_SUFFIX = "_checkpoint.pkl"


@dataclass(frozen=True)
class OutputFiles:
    """Every file name derived from one output: this is the only place they are computed."""

    output: Path
    checkpoint_dir: Path = Path("checkpoints")

    @property
    def errors(self) -> Path:
        return sibling(self.output, ".errors.jsonl")

    @property
    def summary(self) -> Path:
        return sibling(self.output, ".summary.json")

    @property
    def lock(self) -> Path:
        """The `flock` file: one run per output."""
        return sibling(self.output, ".lock")

    @property
    def job(self) -> Path:
        """The job fingerprint sidecar: which job (input, model, params, system, format) wrote it."""
        return sibling(self.output, ".job.json")

    @property
    def checkpoint_name(self) -> str:
        """Named after the output (its folder, its stem and a hash of its resolved path), never after
        the model, so two jobs in one folder never share a checkpoint: `out/a.jsonl` -> `out_a-1f2e3d4c`."""
        stem = self.output.name[:-len(".jsonl")] if self.output.name.endswith(".jsonl") else self.output.name
        where = self.output.resolve()
        digest = hashlib.sha1(str(where).encode("utf-8", "surrogatepass")).hexdigest()[:8]
        folder = f"{where.parent.name}_" if where.parent.name else ""
        return f"{safe_name(folder + stem)}-{digest}"

    @property
    def checkpoint(self) -> Path:
        return self.checkpoint_dir / f"{self.checkpoint_name}{CHECKPOINT_SUFFIX}"


def status_path(checkpoint_dir: str | Path, run_name: str) -> Path:
    """The live status file of run `run_name`."""
    return Path(checkpoint_dir) / f"{safe_name(run_name)}_status.json"


# config.py constant → RunConfig field. Only these names may appear in a config.py.
CONFIG_PY_NAMES = {
    "PROCESSES": "processes", "CONCURRENCY": "concurrency", "MODE": "mode",
    "CHECKPOINT_SAVE_INTERVAL": "checkpoint_interval", "CHECKPOINT_DIR": "checkpoint_dir",
    "LOG_DIR": "log_dir", "INPUT_FILE": "input", "OUTPUT_FILE": "output", "MODEL": "model",
    "BASE_URL": "base_url", "SYSTEM_PROMPT": "system", "MAX_TOKENS": "max_tokens",
    "TEMPERATURE": "temperature", "TIMEOUT": "timeout", "MAX_RETRIES": "max_retries",
    "RETRY_BASE_DELAY": "retry_base", "RETRY_MAX_DELAY": "retry_max", "GRACE_PERIOD": "grace",
    "MAX_OUTAGE": "max_outage", "IMAGE_MAX_SIDE": "image_max_side",
    "MAX_LINE_BYTES": "max_line_bytes", "MAX_RESPONSE_BYTES": "max_response_bytes",
    "IMAGE_ROOTS": "image_roots", "MAX_IMAGE_BYTES": "max_image_bytes", "RPM": "rpm", "TPM": "tpm", "ENDPOINTS_FILE": "endpoints_file",
}

# environment variable → RunConfig field
ENV_NAMES = {
    "OPENAI_API_KEY": "api_key", "OPENAI_BASE_URL": "base_url", "MPDISTILL_MODEL": "model",
    "MPDISTILL_PROCESSES": "processes", "MPDISTILL_MODE": "mode", "MPDISTILL_ENDPOINTS": "endpoints_file",
}

_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def coerce(name: str, value: Any, where: str) -> Any:
    """Convert `value` to the type of RunConfig field `name`, or raise ConfigError naming `where`."""
    kind = str(_FIELDS[name].type)
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{where}: {name} must not be empty")
    try:
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind == "bool":
            return _as_bool(value)
        if kind.startswith("tuple[str"):
            return _strings(value)
        if kind.startswith("str"):
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {name} has a wrong value {value!r} (expected {kind})") from err
    return value


def _strings(value: Any) -> tuple[str, ...]:
    """A list of strings (or one string) as a tuple, so the frozen config holds no mutable list."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) and i for i in items):
        raise ValueError(value)
    return tuple(items)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


def load_config_py(path: Path) -> dict:
    """Read the UPPERCASE constants of a user `config.py`; unknown names are an error."""
    spec = importlib.util.spec_from_file_location("_mpdistill_user_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # a user file can raise anything; report it as config
        raise ConfigError(f"{path}: cannot be loaded: {err}") from err
    values = {}
    for key, value in vars(module).items():
        if not key.isupper() or key.startswith("_"):
            continue
        if key not in CONFIG_PY_NAMES:
            raise ConfigError(f"{path}: unknown setting {key} (known: {', '.join(sorted(CONFIG_PY_NAMES))})")
        fname = CONFIG_PY_NAMES[key]
        values[fname] = coerce(fname, value, f"{path}: {key}")
    return values


def env_values(env: Mapping[str, str]) -> dict:
    """The RunConfig fields that the environment sets."""
    values = {}
    for var, fname in ENV_NAMES.items():
        if env.get(var):
            values[fname] = coerce(fname, env[var], f"environment variable {var}")
    return values


def check_values(values: Mapping[str, Any], where: str) -> dict:
    """Validate a mapping of field names (from YAML or the Python API); unknown keys are errors."""
    out = {}
    for key, value in values.items():
        if key not in _FIELDS:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        out[key] = coerce(key, value, where) if key not in ("params", "endpoints", "input_range") else value
    return out


def validate(cfg: RunConfig) -> RunConfig:
    """Reject values no run can use, with a message naming the setting."""
    positive = {"processes": cfg.processes, "concurrency": cfg.concurrency,
                "checkpoint_interval": cfg.checkpoint_interval, "timeout": cfg.timeout,
                "max_line_bytes": cfg.max_line_bytes, "max_image_bytes": cfg.max_image_bytes,
                "max_response_bytes": cfg.max_response_bytes}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be > 0 (got {value})")
    for key in ("limit", "image_max_side", "rpm", "tpm"):
        value = getattr(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{key} must be > 0 (got {value})")
    if cfg.mode not in ("process", "thread", "async"):
        raise ConfigError(f"mode must be process, thread or async (got {cfg.mode!r})")
    if cfg.output_format not in ("mpdistill", "openai-batch"):
        raise ConfigError(f"output_format must be mpdistill or openai-batch (got {cfg.output_format!r})")
    if cfg.response_format not in ("text", "json"):
        raise ConfigError(f"response_format must be text or json (got {cfg.response_format!r})")
    if cfg.iterations < 0 or cfg.delay < 0:
        raise ConfigError("iterations and delay must be >= 0")
    for root in cfg.image_roots:
        if not Path(root).expanduser().is_dir():
            raise ConfigError(f"image_roots: {root} is not a folder")
    _check_batch(cfg)
    if (cfg.cache_only or cfg.cache_sampled) and cfg.cache is None:
        raise ConfigError("--cache-only and --cache-sampled need --cache")
    if cfg.max_retries < 0:
        raise ConfigError(f"max_retries must be >= 0 (got {cfg.max_retries})")
    if cfg.trace not in (None, "otlp"):
        raise ConfigError(f"trace must be otlp (got {cfg.trace!r})")
    if cfg.metrics_port is not None and not 0 <= cfg.metrics_port <= 65535:
        raise ConfigError(f"metrics_port must be a port number 0-65535 (got {cfg.metrics_port})")
    if cfg.input_range is not None and (cfg.follow or cfg.iterations != 1):
        raise ConfigError("a shard of a cluster job reads a fixed byte range: no --follow or --iterations")
    return cfg


def _check_batch(cfg: RunConfig) -> None:
    if cfg.via not in ("online", "batch"):
        raise ConfigError(f"via must be online or batch (got {cfg.via!r})")
    if cfg.cancel_batches and cfg.via != "batch":
        raise ConfigError("--cancel-batches needs --via batch")
    if cfg.via != "batch":
        return
    if cfg.follow or cfg.iterations != 1:
        raise ConfigError("--via batch runs the input once: it cannot be combined with --follow or --iterations")
    if cfg.output_format != "mpdistill":
        raise ConfigError("--via batch writes mpdistill output lines; leave out --output-format")
    for key in ("batch_max_requests", "batch_max_bytes", "batch_max_in_flight", "batch_poll"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0 (got {getattr(cfg, key)})")
    if cfg.batch_max_tokens is not None and cfg.batch_max_tokens <= 0:
        raise ConfigError(f"batch_max_tokens must be > 0 (got {cfg.batch_max_tokens})")
    if not 0 <= cfg.batch_price:
        raise ConfigError(f"batch_price must be >= 0 (got {cfg.batch_price})")


_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)


def read_env_file(path: Path) -> bool:
    """Load a `.env` file into os.environ (variables already set win); warn if others can read its keys."""
    from dotenv import dotenv_values, load_dotenv
    path = Path(path)
    if not path.is_file():
        return False
    try:
        mode = path.stat().st_mode
        holds_key = any(value and _SECRET_NAME.search(name) for name, value in dotenv_values(path).items())
    except (OSError, UnicodeDecodeError):
        return False     # load_dotenv below reports nothing either: an unreadable .env sets nothing
    if holds_key and mode & 0o077:
        logging.getLogger(__name__).warning(
            "%s holds an API key and is readable by group or others (mode %03o): run chmod 600 %s",
            path, mode & 0o777, path)
    return load_dotenv(path, override=False)


def default_checkpoint_dir(config_py: Path = Path("config.py")) -> str:
    """Where checkpoints are when no flag says: config.py's CHECKPOINT_DIR, else `checkpoints`."""
    try:
        return build_config({}, config_py=config_py).checkpoint_dir
    except ConfigError:
        return "checkpoints"


def build_config(cli: Mapping[str, Any] | None = None, *, env: Mapping[str, str] | None = None,
                 yaml_values: Mapping[str, Any] | None = None,
                 config_py: Path | None = None) -> RunConfig:
    """Merge every source by precedence into one validated RunConfig."""
    merged: dict[str, Any] = {}
    if config_py is not None and config_py.is_file():
        merged.update(load_config_py(config_py))
    merged.update(check_values(yaml_values or {}, "YAML config"))
    merged.update(env_values(os.environ if env is None else env))
    merged.update({k: v for k, v in (cli or {}).items() if v is not None})
    if "image_roots" in merged:
        merged["image_roots"] = coerce("image_roots", merged["image_roots"], "image roots")
    unknown = set(merged) - set(_FIELDS)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return validate(RunConfig(**merged))
