"""The checkpoint list as a table (`python test_checkpoint.py`, `mpdistill checkpoints`)."""
from __future__ import annotations

import time

from .status import format_duration


def format_checkpoints(entries: list[dict], directory) -> str:
    """One line a checkpoint: run, processed, ok, failed, elapsed, saved at; unreadable ones say why."""
    if not entries:
        return f"No checkpoints in {directory}"
    lines = [f"{'run / model':<32}{'processed':>10}{'ok':>9}{'failed':>8}{'elapsed':>10}  saved at"]
    for e in entries:
        if e.get("error"):
            lines.append(f"{e['name']:<32}  unreadable: {e['error']}")
            continue
        saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["saved_at"])) if e.get("saved_at") else "-"
        lines.append(f"{e['name']:<32}{e['processed']:>10}{e['ok']:>9}{e['failed']:>8}"
                     f"{format_duration(e['elapsed']):>10}  {saved}")
    return "\n".join(lines)
