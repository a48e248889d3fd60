"""`--status` / `mpdistill monitor`: read a run's status file (and checkpoint) and show it."""
from __future__ import annotations

import sys
import time

from .checkpoint import list_checkpoints, safe_name
from .status import find_statuses, format_status, read_status, status_path


def status_command(cfg, watch: bool = False, interval: float = 2.0) -> int:
    """Print the status of the run(s) under cfg.checkpoint_dir; refresh with watch."""
    try:
        while True:
            text = render(cfg)
            if watch:
                sys.stdout.write("\x1b[2J\x1b[H")
            print(text, flush=True)
            if not watch:
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def render(cfg) -> str:
    paths = [status_path(cfg.checkpoint_dir, safe_name(cfg.name))] if cfg.run_name else find_statuses(cfg.checkpoint_dir)
    blocks = [format_status(s) for s in (read_status(p) for p in paths) if s]
    ckpts = {c["name"]: c for c in list_checkpoints(cfg.checkpoint_dir)}
    for name, c in ckpts.items():
        if not any(f"run {name} " in b for b in blocks) and not c.get("error"):
            blocks.append(f"run {name}  [stopped]  checkpoint: {c['processed']} done, {c['ok']} ok, "
                          f"{c['failed']} failed")
    return "\n\n".join(blocks) if blocks else f"No runs found in {cfg.checkpoint_dir}"
