"""Stream input rows from a JSONL file (plain rows, `messages` rows, OpenAI Batch API lines).

Nothing is loaded whole: rows are read one line at a time from a byte offset, and rows that are
already done are skipped before they are parsed, so a resume costs little per skipped row.
In follow mode a source yields `IDLE` when nothing new is there yet, instead of ending.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import InputFileError
from ..outputs import identity as rowid
from ..lines import count_lines
from .rows import IDLE, ID_FIRST, BadRow, Blank, Idle, IdSet, Row, parse_row

log = logging.getLogger(__name__)


class JsonlSource:
    """Rows of a JSONL file, read from a byte offset, one line at a time (a `source.Source`).

    With `byte_range` = LineRange (a shard of a cluster job) only the lines that start inside the
    range are read, and they keep their line numbers in the whole file as keys.
    """

    def __init__(self, path: Path, *, system: str | None = None, max_line_bytes: int = 20 << 20,
                 byte_range: LineRange | None = None) -> None:
        self.path = Path(path)
        self.input_file = self.path
        self.system = system
        self.max_line_bytes = max_line_bytes
        self.range = byte_range
        self.start = byte_range.first_line if byte_range else 1   # the first key (checkpoint start)
        self.base_dir = str(self.path.resolve().parent)
        self.follow_stopped: str | None = None   # why following ended early: removed, replaced, …
        if not self.path.is_file():
            raise InputFileError(f"input file not found: {self.path}")

    @property
    def first_key(self) -> int:
        return self.start

    def count(self, follow: bool = False) -> int | None:
        """Number of lines (for the progress total): one fast pass over the bytes; None when following."""
        if follow:
            return None
        if self.range is not None:
            return count_lines(self.path, self.range.begin, self.range.end)
        return count_lines(self.path)

    def rows(self, start: tuple[int, int] | None = None,
             is_done: Callable[[int], bool] = lambda key: False,
             follow: bool = False, done_below: int | None = None) -> Iterator[Row | BadRow | Blank | Idle]:
        """Yield rows from `start` = (key, byte offset), skipping done keys without parsing them.

        Every key below `done_below` (a checkpoint watermark) is known done: those lines are passed
        over by counting newlines, without reading them one by one.

        With `follow`, the end of the file yields IDLE (once per `next()`) until more lines are
        appended; a last line without its "\n" waits until it is complete. Following ends, with a
        warning, if the file is removed, replaced, truncated or rewritten under us.
        """
        key, offset = start or ((self.range.first_line, self.range.begin) if self.range else (1, 0))
        stop = self.range.end if self.range else None
        ids = IdSet()
        with self._open() as f:
            lines = _LineReader(f, offset, self.max_line_bytes, follow)
            if done_below is not None and done_below > key:
                key += lines.skip_lines(done_below - key)
                offset = lines.offset
            anchor = os.pread(f.fileno(), 1, offset - 1) if follow and offset else b""
            while True:
                line = None if stop is not None and lines.offset >= stop else lines.read()
                if line is None:
                    if not follow:
                        return
                    yield IDLE
                    if self._stop_following(f, lines, anchor):  # checked before any new byte is used
                        return
                    continue
                raw, too_long = line
                anchor = b"\n"  # in follow mode every line read is complete
                if not is_done(key):
                    if too_long:
                        yield BadRow(key, None, f"line {key} is longer than {self.max_line_bytes} bytes",
                                     lines.offset)
                    else:
                        yield parse_row(key, raw, self.system, ids, lines.offset)
                key += 1

    def find_keys(self, wanted: set[str]) -> dict[str, int]:
        """The line of each wanted identity (`outputs.identity`), read without building rows."""
        found: dict[str, int] = {}
        if not wanted:
            return found
        with self._open() as f:
            for key, raw in enumerate(f, start=1):
                m = ID_FIRST.match(raw)
                token = m.group(1) if m else b"\\"
                if b"\\" not in token and token.isascii():   # a plain ASCII string is its own canonical form
                    ident = token.decode("ascii")
                elif raw.strip():
                    ident = rowid.identity(_loads(raw), key)
                else:
                    continue
                if ident in wanted and ident not in found:
                    found[ident] = key
                    if len(found) == len(wanted):
                        break
        return found

    def status_fields(self) -> dict:
        return {}

    def checkpoint_fields(self) -> dict:
        return {}

    def _open(self):
        try:
            return open(self.path, "rb")
        except OSError as err:
            raise InputFileError(f"cannot open input {self.path}: {err.strerror}") from err

    def _stop_following(self, f, lines: _LineReader, anchor: bytes) -> bool:
        """True (with a warning) if the file we follow is no longer the file we have been reading."""
        change = _file_change(self.path, f.fileno(), lines.offset, lines.position, anchor)
        self.follow_stopped = change
        if change:
            log.warning("input %s was %s while being followed; stopping at byte %d "
                        "(rows read so far are kept)", self.path, change, lines.offset)
        return change is not None


def _loads(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:   # not JSON or not UTF-8: a bad row, known by its line number
        return None


def _file_change(path: Path, fd: int, offset: int, position: int, anchor: bytes) -> str | None:
    """How the file at `path` differs from the open `fd`, or None if it does not.

    `position` is how far we have read; `anchor` is the byte just before `offset` (the start of the
    next line) as we read it: if that byte changed, the file was rewritten in place.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "removed"
    mine = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
        return "replaced"
    if mine.st_size < position:
        return "truncated"
    if offset and os.pread(fd, 1, offset - 1) != anchor:
        return "rewritten"
    return None


@dataclass(frozen=True)
class LineRange:
    """The lines of a file that start in bytes [begin, end); the first of them is line `first_line`."""

    begin: int
    end: int
    first_line: int


class _LineReader:
    """Lines of an open binary file from `offset`; an over-long line is reported, never held whole.

    In follow mode only complete lines (ending in "\n") are returned: a line still being written
    is left for a later call, which goes on from where this one stopped.
    """

    def __init__(self, f, offset: int, max_bytes: int, follow: bool) -> None:
        self.f, self.offset, self.max_bytes, self.follow = f, offset, max_bytes, follow
        self._skipped = 0   # bytes of an over-long line passed over so far
        f.seek(offset)

    @property
    def position(self) -> int:
        """How far the file has been read: the next line's start plus any over-long part passed."""
        return self.offset + self._skipped

    def skip_lines(self, count: int) -> int:
        """Pass over up to `count` complete lines by counting newlines; returns how many were passed."""
        passed = 0
        while passed < count:
            chunk = self.f.read(1 << 20)
            if not chunk:
                break
            newlines = chunk.count(b"\n")
            if passed + newlines < count:
                passed += newlines
                self.offset += len(chunk)
                continue
            cut = -1
            for _ in range(count - passed):
                cut = chunk.index(b"\n", cut + 1)
            self.offset += cut + 1
            passed = count
        self.f.seek(self.offset)
        return passed

    def read(self) -> tuple[bytes, bool] | None:
        """(line, too_long) for the next line; None at the end of the file (for now, in follow mode)."""
        if self._skipped:
            return self._skip()
        raw = self.f.readline(self.max_bytes + 1)
        if raw.endswith(b"\n") or (raw and not self.follow and len(raw) <= self.max_bytes):
            self.offset += len(raw)
            return raw, False
        if len(raw) > self.max_bytes:
            self._skipped = len(raw)
            return self._skip()
        if raw:
            self.f.seek(self.offset)  # half-written last line: read it again once it is complete
        return None

    def _skip(self) -> tuple[bytes, bool] | None:
        while True:
            piece = self.f.readline(1 << 20)
            self._skipped += len(piece)
            if piece.endswith(b"\n") or (not piece and not self.follow):
                break
            if not piece:
                return None  # follow: the rest of the over-long line is not written yet
        self.offset += self._skipped
        self._skipped = 0
        return b"", True
