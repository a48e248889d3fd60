"""Read back what a run has made durable: the keys in an output or errors file after an offset.

On resume the output is the truth; this scan is what lets it win over the checkpoint. Our lines
are written with `"line"` first, so their keys are read without parsing them (a regex over whole
chunks); every other line is parsed and known by its id (`identity`, the one rule). A line with
neither is recorded, with its line number, as unknown: the resume refuses to guess.
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

from . import identity
from ..lines import count_newlines

log = logging.getLogger(__name__)

_KEY = re.compile(rb'\{"line": (\d+)(?:, "iteration": (\d+))?[,}]')
# Matched after a newline, not with ^ and MULTILINE: a literal prefix lets the regex engine skip ahead fast.
_KEY_AFTER_NEWLINE = re.compile(rb'\n\{"line": (\d+)(?:, "iteration": (\d+))?[,}]')
# Every newline, with the key of the line after it when that line is ours (rounds ignored).
_KEY_OR_NEWLINE = re.compile(rb'\n(?:\{"line": (\d+)[,}])?')
_CHUNK = 1 << 22
_PARALLEL_BYTES = 64 << 20   # from this size on, a resume scan uses a second process


@dataclass
class Scan:
    """What a scan found: the keys of our lines, the identities of other tools' lines (`foreign`,
    to be found in the input), lines with no identity (`unknown`: (line number from the scan's
    start, why)), how many complete lines it read and the offset it reached."""

    keys: list[int] = field(default_factory=list)
    end_offset: int = 0
    lines: int = 0
    foreign: list[str] = field(default_factory=list)
    unknown: list[tuple[int, str]] = field(default_factory=list)
    max_iteration: int = 0
    torn_backup: Path | None = None

    @property
    def bad_lines(self) -> int:
        return len(self.unknown)

    def extend(self, other: "Scan") -> None:
        """Append the scan of the range that follows this one."""
        self.keys.extend(other.keys)
        self.foreign.extend(other.foreign)
        self.unknown.extend((self.lines + n, why) for n, why in other.unknown)
        self.lines += other.lines
        self.max_iteration = max(self.max_iteration, other.max_iteration)


def line_key(line: bytes) -> int | None:
    """The row key of one output/errors line, or None if the line is not ours."""
    found = line_key_iteration(line)
    return None if found is None else found[0]


def line_key_iteration(line: bytes) -> tuple[int, int | None] | None:
    """(row key, iteration or None) of one output/errors line, or None if the line is not ours."""
    m = _KEY.match(line)
    if m:
        return int(m.group(1)), (int(m.group(2)) if m.group(2) else None)
    obj = _parse(line)
    key = identity.record_line(obj) if isinstance(obj, dict) else None
    if key is None:
        return None
    iteration = obj.get("iteration")
    return key, iteration if isinstance(iteration, int) and not isinstance(iteration, bool) else None


def _parse(line: bytes):
    try:
        return json.loads(line)
    except ValueError:   # JSONDecodeError and UnicodeDecodeError alike
        return None


def read_line(line: bytes, scan: Scan, number: int, iteration: int | None) -> None:
    """Note one complete line that is not in our fast form: by its key, by its id, or as unknown."""
    obj = _parse(line)
    if not isinstance(obj, dict):
        scan.unknown.append((number, "not a JSON object"))
        return
    key, it = identity.record_line(obj), obj.get("iteration")
    it = it if isinstance(it, int) and not isinstance(it, bool) else None
    if it and it > scan.max_iteration:
        scan.max_iteration = it
    found = identity.record_identity(obj)
    if found is None:
        scan.unknown.append((number, "no id, custom_id or line"))
    elif iteration is not None and it != iteration:
        return
    elif key is not None and found == identity.line_key(key):
        scan.keys.append(key)      # a row known by its line number
    else:
        scan.foreign.append(found)  # known by its id: the input says which line that is


def scan_file(path: Path, offset: int = 0, iteration: int | None = None, rounds: bool = False,
              by_id: bool = False) -> Scan:
    """Keys of the complete lines of `path` from `offset`; a torn last line is backed up and cut.

    With `iteration`, only lines of that round count (repeated runs of one input); with `rounds`,
    `max_iteration` is filled in. A large plain scan uses both halves of the file at once. With
    `by_id` every line, ours too, is parsed and known by its identity (`foreign`), not its `line`.
    """
    rounds = rounds or iteration is not None
    if not path.exists():
        return Scan(end_offset=offset)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if by_id:
            scan, tail = _scan_range(f, offset, size, None, False, by_id=True)
        elif rounds or size - offset < _PARALLEL_BYTES or not hasattr(os, "fork"):
            scan, tail = _scan_range(f, offset, size, iteration, rounds)
        else:
            scan, tail = _scan_halves(f, offset, size)
    if tail:
        scan.torn_backup = cut_torn_tail(path, scan.end_offset)
    return scan


def count_lines(path: Path, upto: int) -> int:
    """Newlines in the first `upto` bytes of `path` (0 when it does not exist)."""
    if upto <= 0 or not path.exists():
        return 0
    with open(path, "rb") as f:
        return count_newlines(f, upto)[0]


def _scan_range(f, start: int, stop: int, iteration: int | None, rounds: bool,
                by_id: bool = False) -> tuple[Scan, bool]:
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
        if by_id:
            _scan_ids(lines, scan)
        elif rounds:
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
            payload = pickle.dumps((array("q", half.keys).tobytes(), half.foreign, half.unknown, half.lines,
                                    half.max_iteration, half.end_offset, tail))
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
        keys, foreign, unknown, lines, top, end, tail = pickle.loads(raw)
        second = Scan(keys=array("q", keys).tolist(), end_offset=end, lines=lines, foreign=foreign,
                      unknown=unknown, max_iteration=top)
    first.extend(second)
    first.end_offset = second.end_offset if mid < stop else first.end_offset
    return first, tail or first_tail


def _scan_keys(data: bytes, scan: Scan) -> None:
    """Keys of complete lines, rounds ignored: the hot path of a resume without checkpoint.

    One regex pass finds every newline and the key of the line after it, if that line is ours
    (b"" if not): the line count and the keys in one walk over the bytes, not two.
    """
    first = _KEY.match(data)
    found = _KEY_OR_NEWLINE.findall(data) if first else []
    # The chunk's last newline has no line after it: the only b"" when every line is ours.
    if found and found.index(b"") == len(found) - 1:
        scan.lines += len(found)
        del found[-1]
        scan.keys.append(int(first.group(1)))
        scan.keys.extend(map(int, found))
    else:
        _scan_lines(data, None, scan)


def _scan_ids(data: bytes, scan: Scan) -> None:
    """Identities of every complete line, ours included (a resume by id)."""
    for number, line in enumerate(data.split(b"\n")[:-1], start=scan.lines + 1):
        if not line.strip():
            continue
        obj = _parse(line)
        found = identity.record_identity(obj)
        if found is None:
            scan.unknown.append((number, "no id, custom_id or line" if isinstance(obj, dict)
                                 else "not a JSON object"))
        else:
            scan.foreign.append(found)
    scan.lines += data.count(b"\n")


def _scan_lines(data: bytes, iteration: int | None, scan: Scan) -> None:
    """Keys of complete lines: one regex pass when every line starts as ours, else line by line."""
    first = _KEY.match(data)
    found = _KEY_AFTER_NEWLINE.findall(data) if first else []
    count = data.count(b"\n")
    if first and len(found) + 1 == count:
        pairs = [(int(first.group(1)), int(first.group(2)) if first.group(2) else None)]
        pairs += [(int(k), int(i) if i else None) for k, i in found]
    else:
        pairs = []
        for number, line in enumerate(data.split(b"\n")[:-1], start=scan.lines + 1):
            m = _KEY.match(line)
            if m:
                pairs.append((int(m.group(1)), int(m.group(2)) if m.group(2) else None))
            elif line.strip():
                read_line(line, scan, number, iteration)
    scan.lines += count
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
