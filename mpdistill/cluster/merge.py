"""`mpdistill merge OUTDIR`: one output, errors file and summary with every answered row once, in input order.

Shards are read in order (their byte ranges follow the input), and each shard's lines are sorted
by their row key (the input line number), so the merged file follows the input. A row is kept
once by its key, and once by its id: an id seen on an earlier line wins, the later row becomes an
error row, as in a single run. Refuses while a shard is unfinished, unless `partial`.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import sibling
from ..errors import ConfigError, OutputError
from ..inputs.rows import IdSet
from ..outputs import identity
from ..state.files import atomic_write
from .job import Job, load_job
from .status import shard_state

log = logging.getLogger(__name__)


@dataclass
class MergeCounts:
    """What a merge wrote and dropped."""

    ok: int = 0
    failed: int = 0
    duplicates: int = 0
    bad_lines: int = 0
    shards: list = field(default_factory=list)


def row_identity(obj: dict) -> str:
    """The row's identity as a run gives it (`outputs.identity`, the one row-id rule)."""
    return identity.record_identity(obj) or identity.line_key(obj["line"])


def merge_job(outdir, output: str | os.PathLike | None = None, *, partial: bool = False) -> dict:
    """Merge the shards' parts into `output` (default OUTDIR/results.jsonl) and write its summary."""
    job = load_job(outdir)
    states = [shard_state(job, i) for i in range(job.shards)]
    unfinished = [s for s in states if s.state != "done"]
    if unfinished and not partial:
        names = ", ".join(f"{s.index:05d} ({s.state})" for s in unfinished[:20])
        more = f" and {len(unfinished) - 20} more" if len(unfinished) > 20 else ""
        raise ConfigError(f"{len(unfinished)} shard(s) not finished: {names}{more}; wait for them, "
                          "resubmit, or merge what is done with --partial")
    target = Path(output) if output else job.dir / "results.jsonl"
    counts = MergeCounts(shards=[s.index for s in states if s.state == "done" or partial])
    ids = IdSet()
    duplicates: list[tuple[int, bytes]] = []
    _write(target, _answered(job, counts, ids, duplicates))
    _write(sibling(target, ".errors.jsonl"), _failed(job, counts, ids, duplicates))
    summary = _summary(job, target, counts, states, partial)
    atomic_write(sibling(target, ".summary.json"), json.dumps(summary, indent=2).encode())
    return summary


def _part(job: Job, index: int, which: str, counts: MergeCounts) -> list[tuple[int, str, bytes]]:
    """(key, id, line) of every readable line of one shard's output (or errors) part, in key order."""
    path = getattr(job.shard(index), which)
    rows = []
    for raw in _complete_lines(path):
        try:
            obj = json.loads(raw)
            key = obj["line"]
            if not isinstance(key, int) or isinstance(key, bool):
                raise TypeError(key)
        except (ValueError, KeyError, TypeError):
            counts.bad_lines += 1
            log.warning("%s: a line that is not a row of ours is left out of the merge", path)
            continue
        rows.append((key, row_identity(obj), raw))
    rows.sort(key=lambda row: row[0])
    return rows


def _answered(job: Job, counts: MergeCounts, ids: IdSet, duplicates: list):
    """Answered lines once by key and by id, shard after shard; a later line repeating an id is noted."""
    for index in counts.shards:
        last = None
        for key, rid, line in _part(job, index, "output", counts):
            if key == last:
                counts.duplicates += 1
                continue
            last = key
            if not ids.add(rid):
                counts.duplicates += 1
                duplicates.append((key, _duplicate_error(key, identity.record_id(json.loads(line)))))
                continue
            counts.ok += 1
            yield line


def _failed(job: Job, counts: MergeCounts, ids: IdSet, duplicates: list):
    """Error lines of rows never answered (first one kept), with the duplicate-id rows, in key order."""
    noted = sorted(duplicates)
    for index in counts.shards:
        answered = {key for key, _, _ in _part(job, index, "output", MergeCounts())}
        lo, hi = job.ranges[index][0].first_line, job.ranges[index][0].first_line + job.ranges[index][1]
        rows = [(key, line) for key, line in noted if lo <= key < hi]
        last = None
        for key, rid, line in _part(job, index, "errors", counts):
            if key in answered or key == last or not ids.add(rid):
                continue
            last = key
            rows.append((key, line))
        rows.sort()
        counts.failed += len(rows)
        yield from (line for _, line in rows)


def _duplicate_error(key: int, rid) -> bytes:
    record = {"line": key, "id": rid, "reason": f"line {key}: duplicate id {identity.shown(rid)!r} (an earlier line has it)",
              "error": "RowFormatError", "status": None, "attempts": 0}
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def _complete_lines(path: Path):
    """The complete lines of a part (a torn last line of a shard killed mid-write is left out)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        for raw in f:
            if raw.endswith(b"\n") and raw.strip():
                yield raw


def _write(path: Path, lines) -> None:
    try:
        atomic_write(path, lines)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror}") from err


def _summary(job: Job, target: Path, counts: MergeCounts, states, partial: bool) -> dict:
    unfinished = [s.index for s in states if s.state != "done"]
    return {"output": str(target), "errors": str(sibling(target, ".errors.jsonl")), "input": str(job.input),
            "total": job.total_rows, "succeeded": counts.ok, "failed": counts.failed,
            "missing": max(0, job.total_rows - counts.ok - counts.failed) if not unfinished else None,
            "duplicates_dropped": counts.duplicates, "bad_lines": counts.bad_lines,
            "shards": job.shards, "merged_shards": len(counts.shards), "partial": partial and bool(unfinished),
            "unfinished_shards": unfinished}
