"""`mpdistill status OUTDIR`: each shard's state and the whole job's progress, from files only.

Works from any machine that sees the job folder: it reads job.json, the markers and each
shard's status file, never an engine's queue.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from .job import Job, load_job
from .shard import read_marker

STALE_S = 30.0   # a running shard whose status file is older than this has died (or is requeued)


@dataclass(frozen=True)
class ShardState:
    """One shard as its files show it."""

    index: int
    state: str           # pending | running | stopped | done | failed
    rows: int            # lines of its range
    done: int            # rows answered or failed for good
    failed: int
    rows_per_s: float = 0.0
    reason: str | None = None


def shard_state(job: Job, index: int, now: float | None = None) -> ShardState:
    """The state of shard `index`: its marker wins, then its status file, else pending."""
    now = time.time() if now is None else now
    paths, rows = job.shard(index), job.ranges[index][1]
    done = read_marker(paths.done)
    if done is not None:
        return ShardState(index, "done", rows, int(done.get("rows", rows)), int(done.get("failed", 0)))
    status = _read_json(paths.status)
    failed = read_marker(paths.failed)
    if failed is not None:
        return ShardState(index, "failed", rows, int(status.get("done") or 0), int(status.get("failed") or 0),
                          reason=failed.get("reason"))
    if not status:
        return ShardState(index, "pending", rows, 0, 0)
    fresh = now - float(status.get("updated_at") or 0) < STALE_S
    live = status.get("state") in ("running", "stopping", "waiting for input")
    state = "running" if live and fresh else "stopped"
    reason = None if state == "running" else ("no update for over 30 s: killed or requeued" if live else
                                              f"stopped ({status.get('state')}); resubmit to resume")
    return ShardState(index, state, rows, int(status.get("done") or 0), int(status.get("failed") or 0),
                      float(status.get("rows_per_s") or 0.0) if state == "running" else 0.0, reason)


def _read_json(path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def job_status(outdir) -> dict:
    """The job's figures: per-shard states, rows done, rows/s and an ETA for the whole job."""
    job = load_job(outdir)
    now = time.time()
    shards = [shard_state(job, i, now) for i in range(job.shards)]
    done = sum(s.done for s in shards)
    rate = sum(s.rows_per_s for s in shards)
    left = max(0, job.total_rows - done)
    counts = {state: sum(1 for s in shards if s.state == state)
              for state in ("pending", "running", "stopped", "done", "failed")}
    return {"dir": str(job.dir), "input": str(job.input), "shards": job.shards, "total": job.total_rows,
            "done": done, "failed": sum(s.failed for s in shards), "rows_per_s": round(rate, 2),
            "eta_s": left / rate if rate > 0 and left else (0.0 if not left else None),
            "states": counts, "per_shard": [s.__dict__ for s in shards]}


def format_status(status: dict) -> str:
    """The status as an 80-column table."""
    eta = status["eta_s"]
    eta_text = "-" if eta is None else f"{eta:.0f} s"
    states = ", ".join(f"{n} {k}" for k, n in status["states"].items() if n)
    lines = [f"job {status['dir']}: {status['done']}/{status['total']} rows, {status['failed']} failed, "
             f"{status['rows_per_s']:.1f} rows/s, ETA {eta_text}", f"shards: {states}",
             f"{'shard':>6} {'state':<9}{'done':>10}{'rows':>10}{'failed':>8}{'rows/s':>9}  note"]
    for s in status["per_shard"]:
        lines.append(f"{s['index']:>6} {s['state']:<9}{s['done']:>10}{s['rows']:>10}{s['failed']:>8}"
                     f"{s['rows_per_s']:>9.1f}  {s['reason'] or ''}")
    return "\n".join(lines)
