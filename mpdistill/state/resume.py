"""Reconcile a run's checkpoint with its output before it starts: the output is the truth.

Loads the checkpoint, checks the input did not change, reads the output and errors files only
beyond the offsets the checkpoint covers, cuts a torn last line, and rebuilds from the files
when the checkpoint is unreadable or claims more than they hold.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import (CheckpointManager, backup_file, fingerprint_input, input_unchanged)
from ..errors import CheckpointError, ConfigError
from ..outputs.scan import scan_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumeInfo:
    """What was found on disk before the run started."""

    from_checkpoint: bool
    saved_at: float | None
    done: int
    recovered: int      # rows found in the files beyond what the checkpoint covered


def config_fingerprint(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _mark_keys(ckpt: CheckpointManager, keys: list[int]) -> int:
    """Mark keys found in a file as done; returns how many were new. A run of keys that continues
    the watermark (the usual case: a whole output) is marked in one step."""
    ordered = sorted(set(keys))
    fresh = ordered[bisect.bisect_left(ordered, ckpt.watermark):]   # below the watermark: done
    if ckpt.sparse:
        fresh = [k for k in fresh if k not in ckpt.sparse]
    if not fresh:
        return 0
    run = _contiguous_prefix(fresh, ckpt.watermark)
    if run:
        ckpt.mark_range(ckpt.watermark, ckpt.watermark + run)
    for key in fresh[run:]:
        ckpt.mark_done(key)
    return len(fresh)


def _contiguous_prefix(keys: list[int], first: int) -> int:
    """How many sorted unique `keys` are exactly first, first+1, … (binary search: keys[i] - i grows)."""
    lo, hi = 0, len(keys)
    while lo < hi:
        mid = (lo + hi) // 2
        if keys[mid] == first + mid:
            lo = mid + 1
        else:
            hi = mid
    return lo


def start_over(output: Path, errors: Path, ckpt: CheckpointManager) -> None:
    """--restart: keep the old files as backups, forget the checkpoint."""
    for path in (output, errors):
        if path.exists() and path.stat().st_size:
            log.warning("--restart: old %s kept as %s", path, backup_file(path))
    ckpt.clear()
    ckpt.reset()


def load_or_rebuild(ckpt: CheckpointManager) -> bool:
    """Load the checkpoint; an unreadable one is backed up and rebuilt from the output."""
    try:
        return ckpt.load()
    except CheckpointError as err:
        backup = backup_file(ckpt.path) if ckpt.path.exists() else None
        log.warning("checkpoint unusable (%s); kept as %s, rebuilding from the output", err, backup)
        ckpt.reset()
        return False


def check_input(ckpt: CheckpointManager, input_path: Path | None, restart_hint: str) -> None:
    """Refuse to resume over an input that changed since the checkpoint."""
    fp = ckpt.meta.get("input_fingerprint")
    if fp and input_path is not None and not input_unchanged(fp, input_path):
        raise ConfigError(f"the input {input_path} changed since checkpoint {ckpt.path} was saved; "
                          f"{restart_hint}")


def reconcile(ckpt: CheckpointManager, output: Path, errors: Path, *, loaded: bool,
              retry_failed: bool = False, iteration: int | None = None) -> int:
    """Mark every row the files hold beyond the checkpoint; returns how many were found."""
    if loaded and (_size(output) < ckpt.output_offset or _size(errors) < ckpt.errors_offset):
        log.warning("checkpoint %s claims more than %s holds; the output wins: rebuilding from it",
                    ckpt.path, output)
        backup_file(ckpt.path)
        ckpt.reset()
    out = scan_file(output, ckpt.output_offset, iteration)
    new_ok = _mark_keys(ckpt, out.keys)
    err = scan_file(errors, ckpt.errors_offset, iteration)
    new_failed = 0 if retry_failed else _mark_keys(ckpt, err.keys)
    ckpt.ok += new_ok
    ckpt.failed += new_failed
    found = new_ok + new_failed
    for scan, path in ((out, output), (err, errors)):
        if scan.bad_lines:
            log.warning("%s has %d unreadable line(s); run --validate to repair it", path, scan.bad_lines)
    ckpt.output_offset, ckpt.errors_offset = out.end_offset, err.end_offset
    return found


def prepare(ckpt: CheckpointManager, output: Path, errors: Path, *, input_path: Path | None,
            fingerprint: str, restart: bool, retry_failed: bool, rounds: bool = False) -> ResumeInfo:
    """Everything a job needs before its first request: the checkpoint, in line with the files."""
    if restart:
        start_over(output, errors, ckpt)
    loaded = load_or_rebuild(ckpt)
    if loaded:
        check_input(ckpt, input_path, "rerun with --restart to start over (the old output is kept as a backup)")
        if ckpt.meta.get("config_fingerprint") not in (None, fingerprint):
            log.warning("generation settings changed since checkpoint %s; resuming anyway", ckpt.path)
    if retry_failed:
        _retry_failed(ckpt, errors)
        loaded = False
    saved_at = ckpt.saved_at if loaded else None
    iteration = current_round(ckpt, output, loaded) if rounds else None
    recovered = reconcile(ckpt, output, errors, loaded=loaded, retry_failed=retry_failed, iteration=iteration)
    if rounds:
        ckpt.meta["iteration"] = iteration
    if input_path is not None and input_path.is_file():
        ckpt.meta["input_fingerprint"] = fingerprint_input(input_path)
    ckpt.meta["config_fingerprint"] = fingerprint
    return ResumeInfo(loaded, saved_at, ckpt.processed_count, recovered)


def current_round(ckpt: CheckpointManager, output: Path, loaded: bool) -> int:
    """The round a repeated run is in: the checkpoint's, else the last one the output shows."""
    if loaded and ckpt.meta.get("iteration"):
        return int(ckpt.meta["iteration"])
    return max(1, scan_file(output, 0, rounds=True).max_iteration)


def next_round(ckpt: CheckpointManager) -> int:
    """A round is complete: forget its done rows, keep the file offsets, count the next round."""
    keep = {name: getattr(ckpt, name) for name in ("output_offset", "errors_offset", "ok", "failed", "elapsed")}
    meta = dict(ckpt.meta)
    ckpt.reset()
    for name, value in keep.items():
        setattr(ckpt, name, value)
    ckpt.meta = {**meta, "iteration": int(meta.get("iteration") or 1) + 1}
    return ckpt.meta["iteration"]


def _retry_failed(ckpt: CheckpointManager, errors: Path) -> None:
    """--retry-failed: the failed rows become undone; the old errors file is kept as a backup."""
    if errors.exists() and errors.stat().st_size:
        log.warning("--retry-failed: old errors file kept as %s", backup_file(errors))
    ckpt.reset()


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0
