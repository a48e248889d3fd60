"""Ask a running run to stop, through a stop file beside its status file.

The stop file names the pid of the run it is meant for, so a file left behind by a crashed run
never stops the next one.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ..exitcodes import EXIT_FAILED, EXIT_OK
from .files import atomic_write
from ..report.status import LIVE_STATES, find_statuses, live_state, read_status, waiting_status, write_status

log = logging.getLogger(__name__)
_STARTED = time.time()   # imported when the run's process starts: the default "run start"


def stop_path(status_file: Path) -> Path:
    """The stop file of a run: beside its status file (`NAME_status.json` -> `NAME.stop`)."""
    return status_file.with_name(status_file.name.replace("_status.json", ".stop"))


def write_stop(status_file: Path, pid: int, now: bool = False) -> Path:
    path = stop_path(status_file)
    atomic_write(path, json.dumps({"pid": pid, "now": now, "requested_at": time.time()}).encode())
    return path


def check_stop(status_file: Path, pid: int, since: float | None = None) -> dict | None:
    """The stop request meant for run `pid`, if any; stale requests are removed with a warning.

    A request written by `--stop` names its pid. A file without one (`touch checkpoints/RUN.stop`,
    how the older continuous system was stopped) is honoured when it is newer than the run's
    start (`since`, default: this process's start), so a flag left over from before never stops it.
    """
    path = stop_path(status_file)
    try:
        text, mtime = path.read_text(errors="replace"), path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError:
        text, mtime = "", 0.0
    path.unlink(missing_ok=True)
    request = _parse(text)
    if request is None:
        started = _STARTED if since is None else since
        if mtime >= started:
            return {"pid": pid, "now": False, "requested_at": mtime, "touched": True}
        log.warning("ignored a stale stop file %s (made at %s, before this run started)",
                    path, time.strftime("%H:%M:%S", time.localtime(mtime)))
        return None
    if request.get("pid") != pid:
        log.warning("ignored a stale stop file %s (it was for pid %s, this run is %d)",
                    path, request.get("pid"), pid)
        return None
    return request


def wait_between_rounds(status_file: Path | None, seconds: float, poll_s: float = 0.5) -> bool:
    """Sleep until the next --iterations round with the status saying `waiting` and when the round
    starts; a stop request (--stop, a touched stop file) ends the wait: False, the run stops."""
    next_at = time.time() + seconds
    last = (read_status(status_file) if status_file is not None else None) or {}
    while True:
        if status_file is not None:
            write_status(status_file, waiting_status(last, next_at))
            if check_stop(status_file, os.getpid()) is not None:
                write_status(status_file, {**waiting_status(last, next_at), "state": "stopped"})
                log.info("stop requested between rounds: the next round does not start")
                return False
        left = next_at - time.time()
        if left <= 0:
            return True
        time.sleep(min(poll_s, left))


def _parse(text: str) -> dict | None:
    """The request a stop file holds; None for a file without a pid (empty, or made by hand)."""
    try:
        request = json.loads(text)
    except ValueError:
        return None
    return request if isinstance(request, dict) and "pid" in request else None


def stop_command(cfg, now: bool = False) -> int:
    """`--stop`: ask the run(s) going on under cfg.checkpoint_dir to stop; 0 if one was asked."""
    named = cfg.status_path
    candidates = [named] if cfg.run_name else find_statuses(cfg.checkpoint_dir)
    asked = 0
    for path in candidates:
        status = read_status(path)
        if not status or live_state(status) not in (*LIVE_STATES, "stale"):
            continue
        write_stop(path, status["pid"], now)
        print(f"Asked run {status.get('run')} (pid {status['pid']}) to stop"
              + (" now (in-flight calls are cancelled and redone next run)." if now
                 else "; in-flight calls finish first."))
        asked += 1
    if not asked:
        print(f"No running run found in {cfg.checkpoint_dir}")
        return EXIT_FAILED
    return EXIT_OK
