"""Read back what a run has made durable: the keys in an output or errors file after an offset.

On resume the output is the truth; this scan is what lets it win over the checkpoint. Lines are
written with `"line"` first, so keys are read without parsing whole JSON lines.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path


log = logging.getLogger(__name__)

_KEY = re.compile(rb'\{"line": (\d+)(?:, "iteration": (\d+))?[,}]')
# Matched after a newline, not with ^ and MULTILINE: a literal prefix lets the regex engine skip ahead fast.
_KEY_AFTER_NEWLINE = re.compile(rb'\n\{"line": (\d+)(?:, "iteration": (\d+))?[,}]')
_ONLY_KEY_AFTER_NEWLINE = re.compile(rb'\n\{"line": (\d+)[,}]')   # when rounds do not matter
_CHUNK = 1 << 22
_PARALLEL_BYTES = 64 << 20   # from this size on, a resume scan uses a second process


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


def scan_file(path: Path, offset: int = 0, iteration: int | None = None, rounds: bool = False) -> Scan:
    """Keys of the complete lines of `path` from `offset`; a torn last line is backed up and cut.

    With `iteration`, only lines of that round count (repeated runs of one input); with `rounds`,
    `max_iteration` is filled in. A large plain scan uses both halves of the file at once.
    """
    rounds = rounds or iteration is not None
    if not path.exists():
        return Scan(end_offset=offset)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if rounds or size - offset < _PARALLEL_BYTES or not hasattr(os, "fork"):
            scan, tail = _scan_range(f, offset, size, iteration, rounds)
        else:
            scan, tail = _scan_halves(f, offset, size)
    if tail:
        scan.torn_backup = cut_torn_tail(path, scan.end_offset)
    return scan


def _scan_range(f, start: int, stop: int, iteration: int | None, rounds: bool) -> tuple[Scan, bool]:
    """Scan the lines that begin in [start, stop); True as well when the file ends in a torn line."""
    scan = Scan(end_offset=start)
    data = b""
    fd = f.fileno()   # pread: a forked scanner shares this file's offset, so never seek it
    while scan.end_offset < stop:
        data = os.pread(fd, min(_CHUNK, stop - scan.end_offset), scan.end_offset)
        cut = data.rfind(b"\n") + 1
        while not cut and data and scan.end_offset + len(data) < stop:   # a line longer than a chunk
            more = os.pread(fd, _CHUNK, scan.end_offset + len(data))
            if not more:
                break
            data += more
            cut = data.rfind(b"\n") + 1
        if not cut:
            break
        lines = data[:cut] if cut < len(data) else data
        if rounds:
            _scan_lines(lines, iteration, scan)
        else:
            _scan_keys(lines, scan)
        scan.end_offset += cut
        data = data[cut:]
    return scan, bool(data)


def _scan_halves(f, start: int, stop: int) -> tuple[Scan, bool]:
    """Scan the second half of the range in a forked child while this process scans the first."""
    f.seek(start + (stop - start) // 2)
    f.readline()
    mid = f.tell()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: scan, send keys and counts, leave without any cleanup of the parent's
        try:
            os.close(read_end)
            half, tail = _scan_range(f, mid, stop, None, False)
            payload = pickle.dumps((array("q", half.keys).tobytes(), half.bad_lines, half.end_offset, tail))
            with os.fdopen(write_end, "wb") as out:
                out.write(payload)
        finally:
            os._exit(0)
    os.close(write_end)
    first, first_tail = _scan_range(f, start, mid, None, False)   # torn only when mid is the end
    with os.fdopen(read_end, "rb") as inp:
        raw = inp.read()
    os.waitpid(pid, 0)
    if not raw:   # the child failed: scan the second half here
        second, tail = _scan_range(f, mid, stop, None, False)
    else:
        keys, bad, end, tail = pickle.loads(raw)
        second = Scan(keys=array("q", keys).tolist(), end_offset=end, bad_lines=bad)
    first.keys.extend(second.keys)
    first.bad_lines += second.bad_lines
    first.end_offset = second.end_offset if mid < stop else first.end_offset
    return first, tail or first_tail


def _scan_keys(data: bytes, scan: Scan) -> None:
    """Keys of complete lines, rounds ignored: the hot path of a resume without checkpoint."""
    first = _KEY.match(data)
    found = _ONLY_KEY_AFTER_NEWLINE.findall(data) if first else []
    if first and len(found) + 1 == data.count(b"\n"):
        scan.keys.append(int(first.group(1)))
        scan.keys.extend(map(int, found))
    else:
        _scan_lines(data, None, scan)


def _scan_lines(data: bytes, iteration: int | None, scan: Scan) -> None:
    """Keys of complete lines: one regex pass when every line starts as ours, else line by line."""
    first = _KEY.match(data)
    found = _KEY_AFTER_NEWLINE.findall(data) if first else []
    if first and len(found) + 1 == data.count(b"\n"):
        pairs = [(int(first.group(1)), int(first.group(2)) if first.group(2) else None)]
        pairs += [(int(k), int(i) if i else None) for k, i in found]
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
