"""Reconcile a run's checkpoint with its output before it starts: the output is the truth.

In order, before any call: refuse another job's output or a changed input (the job sidecar),
load the checkpoint (or adopt one an older version named after the model), let the files win
when the checkpoint disagrees with them (bytes or row counts), read the output and errors files
beyond the offsets it covers (our lines by their key, other tools' lines by their id, a line with
neither stops the run), cut a torn last line, and record the job beside the output.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import CheckpointManager, backup_file
from .fingerprint import JobCheck, check_job, record_job
from .legacy import Lookup, adopt_checkpoint, check_legacy, check_unrecorded
from ..errors import CheckpointError, ConfigError, OutputMismatchError
from ..outputs.scan import Scan, count_lines, scan_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumeInfo:
    """What was found on disk before the run started."""

    from_checkpoint: bool
    saved_at: float | None
    done: int
    recovered: int      # rows found in the files beyond what the checkpoint covered
    by_id: bool = False   # the rows were matched to the input by id (an edited input)


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


def start_over(files, ckpt: CheckpointManager) -> None:
    """--restart: keep the old files as backups, forget the checkpoint and the job record."""
    for path in (files.output, files.errors):
        if path.exists() and path.stat().st_size:
            log.warning("--restart: old %s kept as %s", path, backup_file(path))
    files.job.unlink(missing_ok=True)
    ckpt.clear()
    ckpt.reset()


def load_or_rebuild(ckpt: CheckpointManager, legacy: Path | None = None, input_path: Path | None = None,
                    fingerprint: str = "") -> bool:
    """Load the checkpoint (or the one an older version named after the model, `legacy`, which is
    then saved under the new name); an unreadable one is backed up and rebuilt from the output."""
    try:
        if not ckpt.path.exists() and legacy is not None and legacy.exists():
            return adopt_checkpoint(ckpt, legacy, input_path, fingerprint)
        return ckpt.load()
    except CheckpointError as err:
        backup = backup_file(ckpt.path) if ckpt.path.exists() else None
        log.warning("checkpoint unusable (%s); kept as %s, rebuilding from the output", err, backup)
        ckpt.reset()
        return False


def disagreement(ckpt: CheckpointManager, output: Path, errors: Path, lines: tuple[int, int]) -> str | None:
    """Why the checkpoint cannot be believed, or None: it must not claim more bytes, lines or rows
    than the files hold up to the offsets it covers. `lines` = newlines before those offsets."""
    out_lines, err_lines = lines
    if _size(output) < ckpt.output_offset or _size(errors) < ckpt.errors_offset:
        return "claims more bytes than the files hold"
    for have, want, path in ((out_lines, ckpt.output_lines, output), (err_lines, ckpt.errors_lines, errors)):
        if want is not None and have != want:
            return f"counts {want} line(s) in {path}, which holds {have} there"
    if ckpt.processed_count > out_lines + err_lines + ckpt.marks:
        return (f"marks {ckpt.processed_count} row(s) done, but the files hold only "
                f"{out_lines + err_lines} line(s)")
    if ckpt.ok > out_lines or ckpt.failed > err_lines:
        return f"counts {ckpt.ok} answered and {ckpt.failed} failed row(s), more than the files hold"
    return None


def reconcile(ckpt: CheckpointManager, output: Path, errors: Path, *, loaded: bool,
              retry_failed: bool = False, iteration: int | None = None, lookup: Lookup | None = None) -> int:
    """Mark every row the files hold beyond the checkpoint; returns how many were found."""
    base = (count_lines(output, ckpt.output_offset), count_lines(errors, ckpt.errors_offset)) if loaded else (0, 0)
    why = disagreement(ckpt, output, errors, base) if loaded else None
    if why:
        log.warning("checkpoint %s %s; the output wins: rebuilding from it", ckpt.path, why)
        backup_file(ckpt.path)
        ckpt.reset()
        base = (0, 0)
    out = scan_file(output, ckpt.output_offset, iteration)
    err = scan_file(errors, ckpt.errors_offset, iteration)
    refuse_unknown(output, out, base[0])
    refuse_unknown(errors, err, base[1])
    new_ok = _mark_keys(ckpt, out.keys + place(out, lookup, output))
    new_failed = 0 if retry_failed else _mark_keys(ckpt, err.keys + place(err, lookup, errors))
    _account(ckpt, out, err, base, new_ok, new_failed)
    return new_ok + new_failed


def rebuild_by_id(ckpt: CheckpointManager, output: Path, errors: Path, *, lookup: Lookup | None,
                  retry_failed: bool = False) -> int:
    """An edited input: every line of the files is matched to the input by its id (rows known by
    their line number, by that number), so exactly the rows not in them are run."""
    if lookup is None:
        raise ConfigError("--resume-by-id needs the rows from a file or a list, to find their ids")
    ckpt.reset()
    out = scan_file(output, 0, by_id=True)
    err = scan_file(errors, 0, by_id=True)
    refuse_unknown(output, out, 0)
    refuse_unknown(errors, err, 0)
    new_ok = _mark_keys(ckpt, place(out, lookup, output))
    new_failed = 0 if retry_failed else _mark_keys(ckpt, place(err, lookup, errors))
    _account(ckpt, out, err, (0, 0), new_ok, new_failed)
    log.info("resumed by id: %d row(s) of the input are answered in %s, %d failed", new_ok, output, new_failed)
    return new_ok + new_failed


def _account(ckpt: CheckpointManager, out: Scan, err: Scan, base: tuple[int, int], ok: int, failed: int) -> None:
    ckpt.ok += ok
    ckpt.failed += failed
    ckpt.output_offset, ckpt.errors_offset = out.end_offset, err.end_offset
    ckpt.output_lines, ckpt.errors_lines = base[0] + out.lines, base[1] + err.lines


def refuse_unknown(path: Path, scan: Scan, base: int) -> None:
    """Stop before any call when a line names no row: guessing would resend or skip rows."""
    if not scan.unknown:
        return
    number, why = scan.unknown[0]
    more = f" (and {len(scan.unknown) - 1} more)" if len(scan.unknown) > 1 else ""
    raise OutputMismatchError(
        f"{path} line {base + number}{more}: {why}: it has neither mpdistill's key nor an id, so it "
        f"cannot be matched to a row. Nothing was sent. Drop such lines with --validate (the original "
        f"is kept as a backup), or start over with --restart")


def place(scan: Scan, lookup: Lookup | None, path: Path) -> list[int]:
    """The input keys of the lines known by their id (written by other tools, or read by id)."""
    if not scan.foreign:
        return []
    if lookup is None:
        raise OutputMismatchError(f"{path} holds {len(scan.foreign)} line(s) known only by their id; "
                                  f"they can be matched to rows read from a file only")
    found = lookup(set(scan.foreign))
    keys = [found[i] for i in scan.foreign if i in found]
    if len(keys) < len(scan.foreign):
        log.info("%s: %d line(s) name ids this input does not have (kept, not counted)",
                 path, len(scan.foreign) - len(keys))
    return keys


def prepare(ckpt: CheckpointManager, files, *, input_path: Path | None, job: dict, fingerprint: str,
            restart: bool, retry_failed: bool, rounds: bool = False, legacy: Path | None = None,
            lookup: Lookup | None = None, resume_by_id: bool = False) -> ResumeInfo:
    """Everything a job needs before its first request: the checkpoint, in line with the files.

    `files` is the job's `config.OutputFiles`; `job` its settings (the sidecar compares them).
    """
    if resume_by_id and rounds:
        raise ConfigError("--resume-by-id cannot be combined with --iterations")
    output, errors = files.output, files.errors
    if restart:
        start_over(files, ckpt)
        legacy = None
    check: JobCheck = check_job(files, job, input_path, resume_by_id)
    by_id = check.by_id
    if check.record is None and not restart and not by_id:
        by_id = check_unrecorded(output, lookup, input_path, resume_by_id)
    loaded = load_or_rebuild(ckpt, legacy, input_path, fingerprint)
    if loaded and check.record is None:
        by_id = check_legacy(ckpt, input_path, fingerprint, by_id)
    if retry_failed:
        _retry_failed(ckpt, errors)
        loaded = False
    saved_at = ckpt.saved_at if loaded and not by_id else None
    if by_id:
        recovered = rebuild_by_id(ckpt, output, errors, lookup=lookup, retry_failed=retry_failed)
    else:
        iteration = current_round(ckpt, output, loaded) if rounds else None
        recovered = reconcile(ckpt, output, errors, loaded=loaded, retry_failed=retry_failed,
                              iteration=iteration, lookup=lookup)
        if rounds:
            ckpt.meta["iteration"] = iteration
    sticky = by_id and (check.record is not None and check.record.by_id or _size(output) > 0)
    record_job(files, job, input_path, check, sticky)
    ckpt.meta["config_fingerprint"] = fingerprint
    ckpt.meta["output"] = str(output.resolve())
    ckpt.meta.pop("input_fingerprint", None)   # the job record beside the output holds it now
    if ckpt.meta.pop("adopted_from", None):
        ckpt.save()
        legacy.unlink(missing_ok=True)
    return ResumeInfo(loaded and not by_id, saved_at, ckpt.processed_count, recovered, by_id)


def current_round(ckpt: CheckpointManager, output: Path, loaded: bool) -> int:
    """The round a repeated run is in: the checkpoint's, else the last one the output shows."""
    if loaded and ckpt.meta.get("iteration"):
        return int(ckpt.meta["iteration"])
    return max(1, scan_file(output, 0, rounds=True).max_iteration)


def next_round(ckpt: CheckpointManager) -> int:
    """A round is complete: forget its done rows, keep the file offsets, count the next round."""
    keep = {name: getattr(ckpt, name) for name in ("output_offset", "errors_offset", "ok", "failed", "elapsed",
                                                   "output_lines", "errors_lines", "marks")}
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
