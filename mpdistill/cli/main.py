"""The command line: flags → config → library call → exit code. No logic lives here.

    mpdistill [run] [flags]           run a job (also: python run_multiprocess.py [flags])
    mpdistill status | validate | stop | monitor | mock-server | checkpoints [list|clear [NAME]]
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from pathlib import Path

from .. import __version__
from ..config import build_config, read_env_file
from ..state.files import safe_name
from ..errors import ConfigError, InputFileError, MpdistillError, OutputError, CheckpointError, RunAbortedError
from ..exitcodes import (EXIT_ABORTED, EXIT_CRASH, EXIT_FAILED_ROWS, EXIT_INTERRUPTED,  # noqa: F401
                         EXIT_ON_FINISH_FAILED, EXIT_OK, EXIT_REPAIRED, EXIT_USAGE)
from .parsing import Parser as _Parser
from .tools import checkpoints_command, export_command, merge_command, split_command

log = logging.getLogger(__name__)

COMMANDS = ("run", "run-task", "status", "validate", "stop", "monitor", "mock-server", "checkpoints", "export",
            "split", "merge", "serve")


def run_parser(prog: str = "mpdistill") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Run OpenAI-compatible chat completions over a JSONL dataset, "
                "crash-safe and resumable.")
    p.add_argument("--version", action="version", version=f"mpdistill {__version__}")
    _mode_flags(p)
    _io_flags(p)
    _api_flags(p)
    _run_flags(p)
    _batch_flags(p)
    _checkpoint_flags(p)
    _display_flags(p)
    _observe_flags(p)
    return p


def _mode_flags(p: argparse.ArgumentParser) -> None:
    """The modes besides a run: status, validate, stop."""
    mode = p.add_argument_group("other modes (python run_multiprocess.py …)")
    mode.add_argument("--status", action="store_true", help="show the progress of a running or stopped run")
    mode.add_argument("--watch", action="store_true", help="with --status: refresh until interrupted")
    mode.add_argument("--once", action="store_true", help="with monitor: print the panel once")
    mode.add_argument("--interval", type=float, default=3.0, help="with --watch: seconds between refreshes")
    mode.add_argument("--count-rows", action="store_true", help="with --status: count the output's rows")
    mode.add_argument("--validate", action="store_true", help="check (and repair) the output file")
    mode.add_argument("--emit-retry", metavar="FILE", help="with --validate: write the rows still to do to FILE")
    mode.add_argument("--stop", action="store_true", help="ask a running run to stop gracefully")
    mode.add_argument("--now", action="store_true", help="with --stop: cancel in-flight calls too")


def _io_flags(p: argparse.ArgumentParser) -> None:
    """Input and output files and formats."""
    io = p.add_argument_group("input and output")
    io.add_argument("-i", "--input", help="input JSONL (default: config.py INPUT_FILE, else the bundled sample)")
    io.add_argument("-o", "--output", help="output JSONL; {model} is replaced (default output/{model}_results.jsonl)")
    io.add_argument("--limit", type=int, help="process at most N rows of the input")
    io.add_argument("--follow", action="store_true", default=None,
                    help="at the end of the input, wait for new rows / files until stopped")
    io.add_argument("--pattern", help="with -i DIR: numbered file names, default report_{n}.txt")
    io.add_argument("--start", type=int, help="with -i DIR: first number (default 1)")
    io.add_argument("--end", type=int, help="with -i DIR: last number")
    io.add_argument("--template", help="with -i DIR: prompt template file with {content}, {id}, {n}")
    io.add_argument("--max-line-bytes", type=int, help="longer input lines are error rows (default 20 MiB)")
    io.add_argument("--image-max-side", type=int, help="downscale local images to at most N pixels a side")
    io.add_argument("--image-root", dest="image_roots", action="append", metavar="DIR",
                    help="local images may also come from DIR (repeatable; default: the input's folder only)")
    io.add_argument("--max-image-bytes", type=int, help="larger local images are error rows (default 20 MB)")
    io.add_argument("--config", metavar="YAML", help="YAML file of settings (the RunConfig field names)")
    io.add_argument("--output-format", choices=("mpdistill", "openai-batch"),
                    help="openai-batch: write OpenAI Batch API output lines")
    io.add_argument("--explode-samples", action="store_true", default=None,
                    help="with n > 1: one output row per sample instead of a `samples` list")


def _api_flags(p: argparse.ArgumentParser) -> None:
    """Model, endpoints and request parameters."""
    api = p.add_argument_group("model and API")
    api.add_argument("-m", "--model", help="model name (default gpt-4o-mini; mock-model with the mock)")
    api.add_argument("--base-url", help="OpenAI-compatible base URL (env OPENAI_BASE_URL)")
    api.add_argument("--api-key", help="API key (env OPENAI_API_KEY; prefer the environment or .env)")
    api.add_argument("--endpoints", dest="endpoints_file", metavar="YAML", help="endpoints file: many keys/servers")
    api.add_argument("--pool", help="use only these endpoints of the file, by name: api_1,api_3")
    api.add_argument("--rpm", type=float, help="requests per minute limit (single endpoint)")
    api.add_argument("--tpm", type=float, help="tokens per minute limit (single endpoint)")
    api.add_argument("--mock", action="store_true", default=None, help="use the built-in mock endpoint even if a key is set")
    api.add_argument("--system", help="system prompt for rows that have none")
    api.add_argument("--max-tokens", type=int)
    api.add_argument("--temperature", type=float)
    api.add_argument("--response-format", choices=("text", "json"),
                     help="json: ask for a JSON object and store it parsed as `extracted`")


def _run_flags(p: argparse.ArgumentParser) -> None:
    """Pool shape, timeouts, retries, rounds."""
    run = p.add_argument_group("running")
    run.add_argument("-p", "--processes", type=int, help="worker processes (default config.PROCESSES, 64)")
    run.add_argument("-c", "--concurrency", type=int, help="requests in flight per process (default 1)")
    run.add_argument("--mode", choices=("process", "thread", "async"),
                     help="how workers make calls: process (default; -p processes × -c threads), thread "
                          "(one process, -c threads), async (-p processes, each an event loop with -c calls)")
    run.add_argument("--timeout", type=float, help="total seconds per request, connect to last byte (default 120)")
    run.add_argument("--max-response-bytes", type=int, help="a longer answer fails its row (default 16 MiB)")
    run.add_argument("--max-retries", type=int, help="retries per row after the first attempt (default 5)")
    run.add_argument("--retry-base-delay", dest="retry_base", type=float, help="first backoff in seconds (default 1)")
    run.add_argument("--retry-max-delay", dest="retry_max", type=float, help="longest backoff in seconds (default 60)")
    run.add_argument("--iterations", type=int, help="run the input N times (0: until stopped; default 1)")
    run.add_argument("--delay", type=float, help="seconds between iterations")
    run.add_argument("--grace", type=float, help="seconds in-flight calls may finish after Ctrl-C (default 30)")
    run.add_argument("--max-outage", type=float, help="stop after every endpoint is down this long (default 300)")


def _batch_flags(p: argparse.ArgumentParser) -> None:
    """Batch API and response cache."""
    bt = p.add_argument_group("Batch API and cache (see README: Batch API, Cache)")
    bt.add_argument("--via", choices=("online", "batch"), help="batch: run through the provider's Batch API")
    bt.add_argument("--batch-size", dest="batch_max_requests", type=int, help="requests per batch (default 50000)")
    bt.add_argument("--batch-max-bytes", type=int, help="bytes per batch input file (default 200 MB)")
    bt.add_argument("--batch-max-in-flight", type=int, help="open batches per endpoint (default 10)")
    bt.add_argument("--batch-max-tokens", type=int, help="enqueued tokens per endpoint (default unlimited)")
    bt.add_argument("--batch-poll", type=float, help="seconds between polls of a batch (default 30)")
    bt.add_argument("--batch-price", type=float, help="batch price as a share of the model's (default 0.5)")
    bt.add_argument("--cancel-batches", action="store_true", default=None,
                    help="cancel the open batches, collect what they answered, submit nothing")
    bt.add_argument("--cache", nargs="?", const="", metavar="PATH",
                    help="response cache (SQLite; default PATH: CHECKPOINT_DIR/response_cache.sqlite)")
    bt.add_argument("--cache-only", action="store_true", default=None, help="answer from the cache; misses fail")
    bt.add_argument("--cache-sampled", action="store_true", default=None,
                    help="cache requests with temperature > 0 too (off: a sample is not replayed)")


def _checkpoint_flags(p: argparse.ArgumentParser) -> None:
    """Checkpoints and resume."""
    ck = p.add_argument_group("checkpoints and resume")
    ck.add_argument("--checkpoint-interval", type=int, help="save every N durable rows (default 10)")
    ck.add_argument("--checkpoint-dir", help="default checkpoints/")
    ck.add_argument("--run-name", help="name of the checkpoint/status files (default: the model)")
    ck.add_argument("--restart", action="store_true", default=None, help="start over; old output kept as a backup")
    ck.add_argument("--retry-failed", action="store_true", default=None, help="try the rows of the errors file again")
    ck.add_argument("--resume-by-id", action="store_true", default=None,
                    help="the input was edited: match the output to it by id and run exactly the rows not in it")


def _display_flags(p: argparse.ArgumentParser) -> None:
    """Logs and progress; refused short flags."""
    out = p.add_argument_group("display")
    out.add_argument("--log-dir", help="default logs/")
    out.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    out.add_argument("--verbose", action="store_true", help="verbose log on stderr")
    out.add_argument("-v", action=_RefusedShortFlag, hint="use --verbose (more log) or --validate "
                     "(check the output; what -v meant in the older tool)")
    out.add_argument("-s", action=_RefusedShortFlag, hint="use --status (what -s meant in the older tool)")


def _observe_flags(p: argparse.ArgumentParser) -> None:
    """Metrics, traces and hooks."""
    obs = p.add_argument_group("metrics, traces, hooks")
    obs.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics of this run on this port")
    obs.add_argument("--metrics-host", help="address for --metrics-port (default 127.0.0.1)")
    obs.add_argument("--trace", choices=("otlp",), help="otlp: one OpenTelemetry span per request (OTEL_* env)")
    obs.add_argument("--trace-content", action="store_true", default=None,
                     help="with --trace: put prompt and answer text into the spans")
    obs.add_argument("--no-endpoint-logs", dest="endpoint_logs", action="store_false", default=None,
                     help="do not write logs/<run>/<endpoint>.log")
    obs.add_argument("--on-finish", metavar="CMD",
                     help="shell command run when the run ends (env MPDISTILL_OUTPUT, _ERRORS, _SUMMARY)")

class _RefusedShortFlag(argparse.Action):
    """A short flag the older tool gave another meaning: refused with a hint, so it never starts a run."""

    def __init__(self, option_strings, dest, hint: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                         **kwargs)
        self.hint = hint

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is not a flag of mpdistill: {self.hint}")


_NOT_CONFIG = {"status", "watch", "once", "interval", "count_rows", "validate", "emit_retry", "stop", "now",
               "config", "verbose"}


def config_from_args(args: argparse.Namespace, env=None):
    """Flags + environment + YAML + config.py → RunConfig."""
    read_env_file(Path.cwd() / ".env")
    cli = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG and v is not None}
    yaml_values = _read_yaml(args.config) if args.config else None
    config_py = Path(os.environ.get("MPDISTILL_CONFIG_PY", "config.py"))
    return build_config(cli, env=env, yaml_values=yaml_values, config_py=config_py)


def _read_yaml(path: str) -> dict:
    import yaml
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    return data


def program(argv: list[str] | None = None, prog: str = "mpdistill") -> None:
    """Entry point of the `mpdistill` command and the scripts: run, then exit with the code."""
    # httpcore imports trio when it is installed (~0.1 s of every start-up), yet every async call
    # here runs on asyncio: the command (never the library) tells it trio is absent.
    sys.modules.setdefault("trio", None)
    code = main(argv, prog)
    # Nothing is left to free: spare the interpreter's exit a full collection of the SDK's many
    # objects (~0.15 s, much of what resuming a nearly finished run costs).
    gc.freeze()
    sys.exit(code)


def main(argv: list[str] | None = None, prog: str = "mpdistill") -> int:
    """Run the command line; every error ends as a message and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(argv, prog)
    except (ConfigError, InputFileError) as err:
        print(f"mpdistill: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except RunAbortedError as err:
        print(f"mpdistill: stopped: {err}", file=sys.stderr)
        return EXIT_ABORTED
    except (OutputError, CheckpointError) as err:
        print(f"mpdistill: stopped: {err} (rows already written are safe; fix it and rerun to resume)",
              file=sys.stderr)
        return EXIT_ABORTED
    except KeyboardInterrupt:
        print("mpdistill: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MpdistillError as err:
        print(f"mpdistill: error: {err}", file=sys.stderr)
        return EXIT_CRASH


def _dispatch(argv: list[str], prog: str) -> int:
    from . import cluster
    if argv and cluster.claims(argv):
        return cluster.main(argv, prog)
    if argv and argv[0] in COMMANDS:
        command, rest = argv[0], argv[1:]
        if command == "mock-server":
            from ..mock.server import run_forever
            return run_forever(rest)
        if command == "checkpoints":
            return checkpoints_command(rest)
        if command == "export":
            return export_command(rest)
        if command in ("split", "merge"):
            return split_command(rest) if command == "split" else merge_command(rest)
        if command == "run-task":
            return run_task_command(rest, prog)
        if command == "serve":
            from .serve import serve_command
            return serve_command(rest)
        if command != "run":
            rest = [f"--{command}" if command != "monitor" else "--status", *rest]
            if command == "monitor" and "--once" not in rest:
                rest.append("--watch")
        return run_command(rest, prog)
    return run_command(argv, prog)


def run_task_command(argv: list[str], prog: str) -> int:
    """`run-task TASK.yaml [flags]`: the flags override the task file."""
    if not argv or argv[0].startswith("-"):
        print(f"{prog} run-task: error: give the task file first: run-task configs/tasks/NAME.yaml",
              file=sys.stderr)
        return EXIT_USAGE
    args = run_parser(f"{prog} run-task").parse_args(argv[1:])
    read_env_file(Path.cwd() / ".env")
    cli = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG and v is not None}
    from ..tools.taskrun import run_task
    return _run(None, args.verbose, lambda announce: run_task(argv[0], cli, announce), name=Path(argv[0]).stem)


def run_command(argv: list[str], prog: str = "mpdistill") -> int:
    args = run_parser(prog).parse_args(argv)
    cfg = config_from_args(args)
    if args.status:
        from ..report.monitor import status_command
        return status_command(cfg, watch=args.watch and not args.once, once=args.once,
                              interval=args.interval, count_rows=args.count_rows)
    if args.validate:
        from ..tools.validate import validate_command
        return validate_command(cfg, emit_retry=args.emit_retry)
    if args.stop:
        from ..state.stopfile import stop_command
        return stop_command(cfg, now=args.now)
    from .. import api
    from ..plan import log_name
    return _run(cfg, args.verbose, lambda announce: api.run(cfg, announce=announce), name=log_name(cfg))


def _run(cfg, verbose: bool, job, name: str | None = None) -> int:
    """Set up logging, run `job(announce)`, map its summary to an exit code."""
    from ..logs import setup_logging
    secrets = ([cfg.api_key, cfg.base_url or ""] + [s for e in cfg.endpoints for s in e.secrets]
               if cfg else []) + _env_secrets()
    log_file = setup_logging(cfg.log_dir if cfg else "logs", safe_name(name or cfg.name), secrets, verbose)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)
    if log_file:
        log.info("log file %s", log_file)
    try:
        summary = job(lambda m: (say(m), log.info(m)))
    except (MpdistillError, KeyboardInterrupt):
        raise
    except Exception:
        log.exception("crash")
        say(f"mpdistill: crashed (see {log_file}); rows already written are safe, rerun to resume")
        return EXIT_CRASH
    if summary["state"] == "interrupted":
        say("Interrupted: checkpoint saved; run the same command again to resume.")
        return EXIT_INTERRUPTED
    if (summary.get("on_finish") or {}).get("returncode"):
        say(f"mpdistill: --on-finish failed with exit code {summary['on_finish']['returncode']} (output intact)")
        return EXIT_ON_FINISH_FAILED
    incomplete = summary.get("failed") or summary.get("failed_total") or summary.get("missing")
    return EXIT_FAILED_ROWS if incomplete else EXIT_OK


def _env_secrets() -> list[str]:
    keys = os.environ.get("OPENAI_API_KEYS", "").split(",")
    return [k.strip() for k in keys if k.strip()] + [os.environ.get(v, "") for v in ("OPENAI_API_KEY",
                                                                                     "OPENAI_BASE_URL")]
