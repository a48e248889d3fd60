"""Ask a running run to stop, through a stop file beside its status file.

The stop file names the pid of the run it is meant for, so a file left behind by a crashed run
never stops the next one.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .files import atomic_write
from ..report.status import find_statuses, live_state, read_status

log = logging.getLogger(__name__)


def stop_path(status_file: Path) -> Path:
    """The stop file of a run: beside its status file (`NAME_status.json` -> `NAME.stop`)."""
    return status_file.with_name(status_file.name.replace("_status.json", ".stop"))


def write_stop(status_file: Path, pid: int, now: bool = False) -> Path:
    path = stop_path(status_file)
    atomic_write(path, json.dumps({"pid": pid, "now": now, "requested_at": time.time()}).encode())
    return path


def check_stop(status_file: Path, pid: int) -> dict | None:
    """The stop request meant for run `pid`, if any; stale requests for other pids are removed."""
    path = stop_path(status_file)
    try:
        request = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        request = {}
    path.unlink(missing_ok=True)
    if request.get("pid") != pid:
        log.warning("ignored a stale stop file %s (it was for pid %s, this run is %d)",
                    path, request.get("pid"), pid)
        return None
    return request


def stop_command(cfg, now: bool = False) -> int:
    """`--stop`: ask the run(s) going on under cfg.checkpoint_dir to stop; 0 if one was asked."""
    named = cfg.status_path
    candidates = [named] if cfg.run_name else find_statuses(cfg.checkpoint_dir)
    asked = 0
    for path in candidates:
        status = read_status(path)
        if not status or live_state(status) not in ("running", "stopping", "waiting for input", "stale"):
            continue
        write_stop(path, status["pid"], now)
        print(f"Asked run {status.get('run')} (pid {status['pid']}) to stop"
              + (" now (in-flight calls are cancelled and redone next run)." if now
                 else "; in-flight calls finish first."))
        asked += 1
    if not asked:
        print(f"No running run found in {cfg.checkpoint_dir}")
        return 1
    return 0
