"""What older versions left behind: checkpoints named after the model, outputs without a job record.

Such files are adopted when they are this job's (same input and settings, checked as well as they
allow) and refused, before anything is touched, when they are not.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from .checkpoint import CheckpointManager
from .fingerprint import RESUME_BY_ID, WAYS_OUT, input_unchanged
from ..errors import OutputMismatchError
from ..outputs.identity import IMPLIED, line_key, record_identity, record_line

log = logging.getLogger(__name__)

Lookup = Callable[[set], dict]   # identities -> their input lines (the source's `find_keys`)


def adopt_checkpoint(ckpt: CheckpointManager, legacy: Path, input_path: Path | None, fingerprint: str) -> bool:
    """Load a checkpoint named the old way (after the model) when it is this job's: same input and
    settings. From now on it lives under the output's name; another job's is left alone."""
    own, ckpt.path = ckpt.path, legacy
    try:
        loaded = ckpt.load()
    finally:
        ckpt.path = own
    if not loaded:
        return False
    fp = ckpt.meta.get("input_fingerprint")
    theirs = ckpt.meta.get("config_fingerprint") not in (None, fingerprint) or (
        fp and input_path is not None and not input_unchanged(fp, input_path))
    if theirs:
        log.info("checkpoint %s belongs to another job (another input or settings); not used", legacy)
        ckpt.reset()
        return False
    log.info("checkpoint %s (named after the model, as older versions did) is now %s", legacy, own)
    ckpt.meta["adopted_from"] = str(legacy)
    return True


def check_legacy(ckpt: CheckpointManager, input_path: Path | None, fingerprint: str, resume_by_id: bool) -> bool:
    """An output with no job record (an older version's): its checkpoint's fingerprints decide.
    Returns whether to resume by id; refuses another job's checkpoint or a changed input."""
    if ckpt.meta.get("config_fingerprint") not in (None, fingerprint):
        raise OutputMismatchError(f"checkpoint {ckpt.path} was saved by a job with other settings "
                                  f"(model, params, system prompt or format); {WAYS_OUT}")
    fp = ckpt.meta.get("input_fingerprint")
    if fp and input_path is not None and not input_unchanged(fp, input_path):
        if resume_by_id:
            return True
        raise OutputMismatchError(f"the input {input_path} changed since checkpoint {ckpt.path} was saved; "
                                  f"{RESUME_BY_ID}")
    return resume_by_id


def check_unrecorded(output: Path, lookup: Lookup | None, input_path: Path | None, resume_by_id: bool) -> bool:
    """An output with no job record (an older version's): its own lines, sampled, must still name
    the input's rows at their line numbers. Returns whether to resume by id; refuses a changed input."""
    samples = sample_lines(output)
    if not samples or lookup is None:
        return resume_by_id
    wanted = {ident for _, ident, _ in samples} | {line_key(n) for n, _, old in samples if old}
    found = lookup(wanted)
    for number, ident, old in samples:
        if found.get(ident) == number or (old and found.get(line_key(number)) == number):
            continue
        if resume_by_id:
            return True
        raise OutputMismatchError(f"the input {input_path} no longer matches {output}: the row answered "
                                  f"as line {number} ({ident}) is not on that line of the input; {RESUME_BY_ID}")
    return resume_by_id


def sample_lines(path: Path, count: int = 64) -> list[tuple[int, str, bool]]:
    """(line, identity, written by an older version without `id_is_line`) of up to `count` of our
    lines spread over `path`."""
    size = path.stat().st_size if path.exists() else 0
    if not size:
        return []
    found = {}
    with open(path, "rb") as f:
        for i in range(count):
            f.seek(size * i // count)
            if i:
                f.readline()        # the rest of a line cut by the seek
            raw = f.readline()
            obj = _json(raw) if raw.endswith(b"\n") else None
            number, ident = (record_line(obj), record_identity(obj)) if isinstance(obj, dict) else (None, None)
            if number is not None and ident is not None:
                found[number] = (number, ident, obj.get("id") == str(number) and IMPLIED not in obj)
    return list(found.values())


def _json(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:
        return None
