"""The end-of-run summary: durable counts and the answers' latency and tokens → JSON file and words.

Counts are the durable rows of this round (from the checkpoints); nothing is counted before its
line is fsynced, so the summary never claims a row the output does not hold.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..config import OutputFiles
from ..state.files import atomic_write
from .stats import ModelStats

log = logging.getLogger(__name__)


def build_summary(view, per_model: dict[str, ModelStats], state: str) -> dict:
    """The summary of a round: totals over all models, then each model and each endpoint."""
    total = ModelStats()
    for stats in per_model.values():
        total.merge(stats)
    ok, failed = sum(j.ok_now for j in view.jobs), sum(j.failed_now for j in view.jobs)
    figures = total.as_dict(ok, failed)
    costs = [s.cost() for s in per_model.values() if s.cost() is not None]
    figures["cost"] = round(sum(costs), 6) if costs else None
    if figures["cost"] is not None and view.price_factor not in (1.0, 0):
        figures["cost_at_online_price"] = round(figures["cost"] / view.price_factor, 6)
    elapsed, done = view.round_s, figures["total"]
    summary = {
        "state": state, **figures, "already_done": view.already_done,
        "elapsed_s": round(elapsed, 3), "rows_per_s": round(done / elapsed, 3) if elapsed > 0 else None,
        "models": {j.alias: per_model[j.alias].as_dict(j.ok_now, j.failed_now) for j in view.jobs},
        "endpoints": list(view.endpoints), "outputs": {j.alias: j.output for j in view.jobs},
        "failed_total": view.failed,   # earlier runs included
        "output": view.jobs[0].output, "errors": view.jobs[0].errors,
    }
    if view.iteration is not None:
        summary["iteration"] = view.iteration
    return summary


def summary_path(outputs: list[Path]) -> Path:
    """Beside the output; for several models, in the folder their outputs share."""
    if len(outputs) == 1:
        return OutputFiles(Path(outputs[0])).summary
    common = Path(os.path.commonpath([str(Path(o).resolve().parent) for o in outputs]))
    return common / "summary.json"


def write_summary(path: Path, summary: dict) -> None:
    try:
        atomic_write(path, json.dumps(summary, indent=2, default=str).encode())
    except OSError as err:
        log.warning("cannot write the summary %s: %s", path, err)


def format_summary(summary: dict) -> str:
    """The summary as a few human lines."""
    rate = summary["success_rate"]
    lines = [
        f"Run {summary['state']}: {summary['total']} rows this run "
        f"({summary['succeeded']} ok, {summary['failed']} failed"
        + (f", success rate {rate:.1%})" if rate is not None else ")")
        + (f"; {summary['already_done']} were already done" if summary["already_done"] else ""),
        f"  time {summary['elapsed_s']:.1f} s, {summary['rows_per_s'] or 0:.1f} rows/s, "
        f"latency mean {_fmt(summary['latency_mean_s'])} p95 {_fmt(summary['latency_p95_s'])}, "
        f"tokens {summary['prompt_tokens']} in / {summary['completion_tokens']} out",
    ]
    if len(summary["endpoints"]) > 1:
        lines.append(f"  {'endpoint':<16}{'requests':>9}{'ok':>8}{'429':>6}{'errors':>8}  state")
        for e in summary["endpoints"]:
            state = "disabled: " + str(e.get("disabled_reason")) if e.get("disabled") else "ok"
            lines.append(f"  {e['name'][:16]:<16}{e.get('requests', 0):>9}{e.get('ok', 0):>8}"
                         f"{e.get('rate_limited', 0):>6}{e.get('errors', 0):>8}  {state}")
    return "\n".join(lines)


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}s"
