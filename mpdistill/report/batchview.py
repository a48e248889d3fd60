"""The monitor's lines for a `--via batch` run (each endpoint's open batches and enqueued tokens,
then each open batch with its provider status and request counts) and for the response cache.

A pure function of the status dict, like the rest of the panel.
"""
from __future__ import annotations

from .status import clip, format_count, pad, printable

BATCHES_SHOWN = 8
_STATUS_ORDER = ("validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
                 "cancelled")


def mode_lines(status: dict, width: int) -> list[str]:
    """The batch lines of a batch run, then the cache line of a run with --cache."""
    lines = batch_lines(status, width) if status.get("via") == "batch" else []
    cache = status.get("cache")
    if cache:
        saved = f", saved {cache['saved_cost']:.4f}" if cache.get("saved_cost") is not None else ""
        lines.append(clip(f"cache: {cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses, "
                          f"{cache.get('stored', 0)} stored, {format_count(cache.get('saved_tokens') or 0)} tokens "
                          f"saved{saved}", width))
    return [clip(line, width) for line in lines]


def batch_lines(status: dict, width: int) -> list[str]:
    """Endpoints (batches open, tokens enqueued, created) and the open batches, within `width`."""
    lines = []
    endpoints = status.get("endpoints") or []
    if endpoints:
        lines.append("  " + pad("endpoint", 18) + "batches".rjust(9) + "tokens".rjust(10) + "created".rjust(9)
                     + "  state")
        for e in endpoints:
            state = "disabled" if e.get("disabled") else "ok"
            lines.append("  " + pad(printable(e.get("name", "?")), 18)
                         + format_count(e.get("batches_in_flight") or 0, 8).rjust(9)
                         + format_count(e.get("tokens_enqueued") or 0, 9).rjust(10)
                         + format_count(e.get("batches_created") or 0, 8).rjust(9) + "  " + state)
            if e.get("disabled") and e.get("disabled_reason"):
                lines.append("    ^ " + printable(e["disabled_reason"]))
    batches = status.get("batches") or []
    lines.append(f"batches open: {len(batches)}" + _by_status(batches))
    for b in batches[:BATCHES_SHOWN]:
        counts = b.get("counts") or {}
        done = f"{counts.get('completed', 0)}/{counts.get('total', b.get('rows', 0))}"
        failed = f", {counts['failed']} failed" if counts.get("failed") else ""
        lines.append(clip(f"  {printable(b.get('id') or b.get('local'))}  {printable(b.get('status'))}  "
                          f"{done} requests{failed}  [{printable(b.get('endpoint'))}]", width))
    if len(batches) > BATCHES_SHOWN:
        lines.append(f"  … and {len(batches) - BATCHES_SHOWN} more")
    return lines


def _by_status(batches: list[dict]) -> str:
    counts: dict[str, int] = {}
    for b in batches:
        counts[b.get("status") or "?"] = counts.get(b.get("status") or "?", 0) + 1
    order = sorted(counts, key=lambda s: _STATUS_ORDER.index(s) if s in _STATUS_ORDER else len(_STATUS_ORDER))
    return "  (" + ", ".join(f"{counts[s]} {s}" for s in order) + ")" if counts else ""
