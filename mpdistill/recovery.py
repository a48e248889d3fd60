"""Read back what a run has made durable: the keys in an output or errors file after an offset.

On resume the output is the truth; this scan is what lets it win over the checkpoint. Lines are
written with `"line"` first, so keys are read without parsing whole JSON lines.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path


log = logging.getLogger(__name__)

_KEY = re.compile(rb'\{"line": (\d+)(?:, "iteration": (\d+))?[,}]')
_KEY_AT_LINE_START = re.compile(rb'^\{"line": (\d+)(?:, "iteration": (\d+))?[,}]', re.MULTILINE)
_CHUNK = 1 << 22


@dataclass
class Scan:
    """What a scan found: the keys, the offset it reached, and lines it could not read."""

    keys: list[int] = field(default_factory=list)
    end_offset: int = 0
    bad_lines: int = 0
    max_iteration: int = 0
    torn_backup: Path | None = None


def line_key(line: bytes) -> int | None:
    """The row key of one output/errors line, or None if the line is not ours."""
    found = line_key_iteration(line)
    return None if found is None else found[0]


def line_key_iteration(line: bytes) -> tuple[int, int | None] | None:
    """(row key, iteration or None) of one output/errors line, or None if the line is not ours."""
    m = _KEY.match(line)
    if m:
        return int(m.group(1)), (int(m.group(2)) if m.group(2) else None)
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    key, iteration = obj.get("line"), obj.get("iteration")
    if not isinstance(key, int) or isinstance(key, bool):
        return None
    return key, iteration if isinstance(iteration, int) else None


def scan_file(path: Path, offset: int = 0, iteration: int | None = None) -> Scan:
    """Keys of the complete lines of `path` from `offset`; a torn last line is backed up and cut.

    With `iteration`, only lines of that round count (repeated runs of one input).
    """
    scan = Scan(end_offset=offset)
    if not path.exists():
        return scan
    with open(path, "rb") as f:
        f.seek(offset)
        tail = b""
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            data = tail + chunk
            cut = data.rfind(b"\n") + 1
            complete, tail = data[:cut], data[cut:]
            _scan_lines(complete, iteration, scan)
            scan.end_offset += len(complete)
    if tail:
        scan.torn_backup = cut_torn_tail(path, scan.end_offset)
    return scan


def _scan_lines(data: bytes, iteration: int | None, scan: Scan) -> None:
    """Keys of complete lines: one regex pass when every line starts as ours, else line by line."""
    found = _KEY_AT_LINE_START.findall(data)
    if len(found) == data.count(b"\n"):
        pairs = [(int(k), int(i) if i else None) for k, i in found]
    else:
        pairs = []
        for line in data.split(b"\n")[:-1]:
            if not line.strip():
                continue
            pair = line_key_iteration(line)
            if pair is None:
                scan.bad_lines += 1
            else:
                pairs.append(pair)
    for key, it in pairs:
        if iteration is None or it == iteration:
            scan.keys.append(key)
        if it and it > scan.max_iteration:
            scan.max_iteration = it


def cut_torn_tail(path: Path, good_size: int) -> Path:
    """Save the torn bytes beside the file, then truncate it to its last complete line."""
    backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
    with open(path, "r+b") as f:
        f.seek(good_size)
        backup.write_bytes(f.read())
        f.truncate(good_size)
        os.fsync(f.fileno())
    log.warning("%s ended in a torn line (a crash mid-write): cut it off, the torn bytes are in %s",
                path, backup)
    return backup
