"""The live status file of a run (built from the run's facts, rewritten atomically about once a
second), its live state, and the small text helpers the status views share (durations, sizes,
terminal cell widths).
"""
from __future__ import annotations

import json
import os
import time
import unicodedata
from pathlib import Path

from ..state.files import atomic_write
from ..state.lock import pid_alive

STALE_AFTER_S = 15.0
# "waiting": between two --iterations rounds, until `next_round_at`.
LIVE_STATES = ("running", "stopping", "waiting for input", "waiting")
ELLIPSIS = "..."   # ASCII: "…" is double width in CJK terminals, which would break the layout


def status_path(checkpoint_dir: str | Path, run_name: str) -> Path:
    """The status file of a run (named by `config.status_path`, its one owner)."""
    from ..config import status_path as named
    return named(checkpoint_dir, run_name)


def status_record(view) -> dict:
    """The status file's content for a `RunView` (see `engine.view`): counts, rates, ETA, workers."""
    total, done, rate = view.total, view.done, view.rows_per_s
    eta = (total - done) / rate if total is not None and rate > 0 and total >= done else None
    return {"run": view.run, "state": view.state, "pid": view.pid, "started_at": view.started_at,
            "updated_at": view.updated_at, "input": view.input, "output": view.output,
            "total": total, "done": done, "ok": view.ok, "failed": view.failed, "in_flight": view.in_flight,
            "retry_waiting": view.retry_waiting, "rows_per_s": round(rate, 3), "eta_s": eta,
            "elapsed_s": round(view.elapsed_s, 3),
            "models": {j.alias: {"done": j.done, "ok": j.ok, "failed": j.failed} for j in view.jobs},
            "workers": list(view.workers), "endpoints": list(view.endpoints), **view.source}


def write_status(path: Path, status: dict) -> None:
    """Replace the status file atomically, so a reader never sees half of it (no fsync: it is
    rewritten every second and only informative)."""
    atomic_write(path, json.dumps(status, indent=1, default=str).encode(), durable=False)


def read_status(path: Path) -> dict | None:
    """The JSON object in `path` (a status file or any small JSON record), or None if unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def waiting_status(last: dict, next_round_at: float, now: float | None = None) -> dict:
    """The status between two rounds: the last round's figures, state `waiting` and the next start."""
    now = time.time() if now is None else now
    return {**last, "state": "waiting", "pid": os.getpid(), "updated_at": now, "next_round_at": next_round_at,
            "in_flight": 0}


def live_state(status: dict, now: float | None = None) -> str:
    """The state the run last wrote (finished, stopped, aborted …) or, for a run that claims to be
    live: `crashed` when its process is gone, `stale` when it is alive but silent."""
    now = time.time() if now is None else now
    if status.get("state") not in LIVE_STATES:
        return status.get("state", "unknown")
    if not pid_alive(status.get("pid")):
        return "crashed"
    if now - (status.get("updated_at") or 0) > STALE_AFTER_S:
        return "stale"
    return status["state"]


def find_statuses(checkpoint_dir: str | Path) -> list[Path]:
    directory = Path(checkpoint_dir)
    return sorted(directory.glob("*_status.json")) if directory.is_dir() else []


# ---- text helpers ---------------------------------------------------------------------------

def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(max(0, seconds))
    days, seconds = divmod(seconds, 86400)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if days:
        return f"{days}d {h}:{m:02d}:{s:02d}"
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # not reached


def format_count(n: int | float | None, cells_max: int = 7) -> str:
    """An integer in at most `cells_max` characters: 1234567 stays, 123456789 becomes 123.5M."""
    if n is None:
        return "-"
    text = str(int(n))
    for scale, suffix in ((1e3, "k"), (1e6, "M"), (1e9, "G"), (1e12, "T")):
        if len(text) <= cells_max:
            return text
        text = f"{n / scale:.1f}{suffix}"
    return text


def format_clock(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def printable(value: object) -> str:
    """`value` as text safe to show on a terminal: control characters (an escape sequence hidden in
    a row id or a server's message) become `?`."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def cells(text: str) -> int:
    """Terminal columns `text` takes: wide (CJK) characters take two, combining marks none."""
    if text.isascii():
        return len(text)
    return sum(_char_cells(ch) for ch in text)


def clip(text: str, width: int) -> str:
    """`text` cut to at most `width` columns, ending in `...` when it was cut."""
    if cells(text) <= width:
        return text
    if width <= len(ELLIPSIS):
        return _take_cells(text, width)
    return _take_cells(text, width - len(ELLIPSIS)) + ELLIPSIS


def clip_middle(text: str, width: int) -> str:
    """`text` cut in the middle (keeps both ends of a path) to at most `width` columns."""
    if cells(text) <= width:
        return text
    if width <= len(ELLIPSIS) + 2:
        return clip(text, width)
    room = width - len(ELLIPSIS)
    head = _take_cells(text, room // 2)
    tail = _take_cells(text[::-1], room - cells(head))[::-1]
    return head + ELLIPSIS + tail


def pad(text: str, width: int) -> str:
    """`text` clipped, then padded with spaces to exactly `width` columns."""
    text = clip(text, width)
    return text + " " * (width - cells(text))


def _char_cells(ch: str) -> int:
    if unicodedata.combining(ch) or not ch.isprintable():
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _take_cells(text: str, width: int) -> str:
    """The longest prefix of `text` that fits in `width` columns."""
    used = 0
    for i, ch in enumerate(text):
        used += _char_cells(ch) if not ch.isascii() else 1
        if used > width:
            return text[:i]
    return text
