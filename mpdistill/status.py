"""The live status file of a run (rewritten atomically about once a second) and `--status`."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

STALE_AFTER_S = 15.0


def status_path(checkpoint_dir: str | Path, safe_run_name: str) -> Path:
    return Path(checkpoint_dir) / f"{safe_run_name}_status.json"


def write_status(path: Path, status: dict) -> None:
    """Replace the status file atomically, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status, indent=1, default=str))
    os.replace(tmp, path)


def read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_state(status: dict, now: float | None = None) -> str:
    """running, stale (alive but silent), or the state the run last wrote (finished, stopped, …)."""
    now = time.time() if now is None else now
    if status.get("state") not in ("running", "stopping", "waiting for input"):
        return status.get("state", "unknown")
    if not pid_alive(status.get("pid")):
        return "stopped (crashed)"
    if now - status.get("updated_at", 0) > STALE_AFTER_S:
        return "stale"
    return status["state"]


def find_statuses(checkpoint_dir: str | Path) -> list[Path]:
    directory = Path(checkpoint_dir)
    return sorted(directory.glob("*_status.json")) if directory.is_dir() else []


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_status(status: dict, now: float | None = None) -> str:
    """A short human report of one status file."""
    now = time.time() if now is None else now
    state = live_state(status, now)
    done, total = status.get("done", 0), status.get("total")
    pct = f" ({done / total:.1%})" if total else ""
    workers = status.get("workers", [])
    busy = sum(1 for w in workers if w.get("busy"))
    lines = [
        f"run {status.get('run')}  [{state}]  pid {status.get('pid')}  updated {format_duration(now - status.get('updated_at', now))} ago",
        f"  progress {done}/{total if total is not None else '?'}{pct}  ok {status.get('ok', 0)}  failed {status.get('failed', 0)}",
        f"  rate {status.get('rows_per_s', 0):.1f} rows/s  ETA {format_duration(status.get('eta_s'))}  "
        f"elapsed {format_duration(status.get('elapsed_s'))}  in flight {status.get('in_flight', 0)}",
        f"  workers busy {busy}/{len(workers)}",
        f"  output {status.get('output')}",
    ]
    for e in status.get("endpoints", []):
        flag = "disabled" if e.get("disabled") else ("cooling" if e.get("cooldown_until") else "ok")
        lines.append(f"  endpoint {e.get('name')}: {e.get('requests', 0)} req, {e.get('ok', 0)} ok, "
                     f"{e.get('rate_limited', 0)} x429, {e.get('errors', 0)} err, in flight {e.get('in_flight', 0)} [{flag}]")
    return "\n".join(lines)
