"""Which job and which input an output belongs to: input fingerprints and the job sidecar.

The sidecar `OUT.job.json` (written atomically, before the first line of a new output) records the
job's settings that change answers (model, params, system prompt, formats) and the fingerprint of
the input the answered rows came from. A rerun compares itself with it before anything is called.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OutputMismatchError
from .files import atomic_write

log = logging.getLogger(__name__)

SIDECAR_FORMAT = 1
HEAD_BYTES = 1 << 20          # legacy fingerprint: hash of the first 1 MiB
TAIL_BYTES = 64 << 10         # legacy fingerprint: hash of the last 64 KiB before the recorded size
_BLOCK = 1 << 20
WAYS_OUT = "rerun with --restart (the old output is kept as a backup) or write to another -o"


def config_fingerprint(fields: dict) -> str:
    """A short digest of job settings (what older checkpoints recorded)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- the input ------------------------------------------------------------------------------


def _sha256_range(fh, start: int, length: int) -> str:
    fh.seek(start)
    return hashlib.sha256(fh.read(length)).hexdigest()


def fingerprint_input(path: str | os.PathLike) -> dict:
    """The identity of an input file: its size and the SHA-256 of all of it (plus the head/tail
    hashes older checkpoints compare)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        digest = _hash_prefix(fh, size)
        return {"size": size, "mtime": os.fstat(fh.fileno()).st_mtime, "sha256": digest.hexdigest(),
                "head_sha256": _sha256_range(fh, 0, min(HEAD_BYTES, size)),
                "tail_sha256": _sha256_range(fh, max(0, size - TAIL_BYTES), min(TAIL_BYTES, size))}


def _hash_prefix(fh, size: int):
    fh.seek(0)
    digest, left = hashlib.sha256(), size
    while left > 0:
        block = fh.read(min(_BLOCK, left))
        if not block:
            break
        digest.update(block)
        left -= len(block)
    return digest


def input_change(fp: dict, path: str | os.PathLike) -> str | None:
    """None if the file still starts with the bytes `fp` saw (appended rows are no change), else
    what changed, in words."""
    try:
        size = int(fp["size"])
        with open(path, "rb") as fh:
            now = os.fstat(fh.fileno()).st_size
            if now < size:
                return f"it shrank from {size} to {now} bytes"
            if "sha256" in fp:
                same = _hash_prefix(fh, size).hexdigest() == fp["sha256"]
            else:   # a fingerprint from an older checkpoint: head and tail only
                same = (_sha256_range(fh, 0, min(HEAD_BYTES, size)) == fp.get("head_sha256") and
                        _sha256_range(fh, max(0, size - TAIL_BYTES), min(TAIL_BYTES, size)) == fp.get("tail_sha256"))
    except FileNotFoundError:
        return "it is gone"
    except (KeyError, TypeError, ValueError):
        log.warning("input fingerprint %r is malformed; treating the input as changed", fp)
        return "its recorded fingerprint is unreadable"
    if same:
        return None
    return f"its first {size} bytes are not the ones the answered rows were read from"


def input_unchanged(fp: dict, path: str | os.PathLike) -> bool:
    """True if the file still starts with the content `fp` saw; appended rows are not a change."""
    return input_change(fp, path) is None


# ---- the job sidecar -------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRecord:
    """What a sidecar says: the job's settings, its input's fingerprint, how its rows are keyed."""

    job: dict
    input: dict | None
    by_id: bool = False     # the output was resumed by id over an edited input: keep reading it by id

    def to_json(self) -> bytes:
        return (json.dumps({"format": SIDECAR_FORMAT, "job": self.job, "input": self.input,
                            "by_id": self.by_id}, indent=1, sort_keys=True, default=str) + "\n").encode()


def read_job(path: Path) -> JobRecord | None:
    """The sidecar at `path`, or None when there is none; an unreadable one is an error (exit 2)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise OutputMismatchError(f"the job file {path} cannot be read ({err}); it says which job the "
                                  f"output belongs to: repair or remove it, or {WAYS_OUT}") from err
    if not isinstance(data, dict) or not isinstance(data.get("job"), dict):
        raise OutputMismatchError(f"the job file {path} is not an mpdistill job file; {WAYS_OUT}")
    return JobRecord(data["job"], data.get("input"), bool(data.get("by_id")))


def write_job(path: Path, record: JobRecord) -> None:
    atomic_write(Path(path), record.to_json())


def job_differences(recorded: dict, current: dict) -> list[str]:
    """`model: 'm1' -> 'm2'` for every setting that differs (settings only one side has included)."""
    names = sorted(set(recorded) | set(current))
    return [f"{name}: {_shown(recorded.get(name))} -> {_shown(current.get(name))}"
            for name in names if _canon(recorded.get(name)) != _canon(current.get(name))]


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _shown(value: Any) -> str:
    text = _canon(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---- the checks a run makes before anything is touched ---------------------------------------

RESUME_BY_ID = ("rerun with --resume-by-id to answer exactly the rows whose ids are not in the output, "
                "with --restart to start over (the old output is kept as a backup), or write to another -o")


@dataclass(frozen=True)
class JobCheck:
    """What `check_job` found: the output's record, whether to resume by id, and whether the
    input was verified unchanged against the record (so its fingerprint need not be recomputed)."""

    record: JobRecord | None
    by_id: bool
    input_verified: bool = False


def check_job(files, job: dict, input_path: Path | None, resume_by_id: bool) -> JobCheck:
    """Refuse (OutputMismatchError, exit 2) another job's output or a changed input, before
    anything but the sidecar is read. `files` is the job's `config.OutputFiles`."""
    record = read_job(files.job)
    if record is None or not (_has_rows(files.output) or _has_rows(files.errors)):
        return JobCheck(record, resume_by_id)
    diffs = job_differences(record.job, job)
    if diffs:
        raise OutputMismatchError(f"{files.output} belongs to another job ({'; '.join(diffs)}); {WAYS_OUT}")
    change, verified = None, False
    if record.input and input_path is not None and Path(input_path).is_file():
        change = input_change(record.input, input_path)
        verified = change is None
    if change and not resume_by_id:
        raise OutputMismatchError(f"the input {input_path} changed since {files.output} was written "
                                  f"({change}); {RESUME_BY_ID}")
    return JobCheck(record, record.by_id or resume_by_id or change is not None, verified)


def record_job(files, job: dict, input_path: Path | None, check: JobCheck, by_id: bool) -> None:
    """Write the sidecar (atomically) for the job about to append to the output."""
    fp, previous = None, check.record
    if input_path is not None and Path(input_path).is_file():
        reuse = (check.input_verified and "sha256" in previous.input
                 and previous.input.get("size") == Path(input_path).stat().st_size)
        fp = previous.input if reuse else fingerprint_input(input_path)
    record = JobRecord(job, fp, by_id)
    if previous is None or record.to_json() != previous.to_json():
        write_job(files.job, record)


def _has_rows(path: Path) -> bool:
    try:
        return Path(path).stat().st_size > 0
    except FileNotFoundError:
        return False
