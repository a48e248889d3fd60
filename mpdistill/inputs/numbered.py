"""Stream rows from a directory of numbered text files (`report_1.txt`, `report_2.txt`, …); follow mode.

Each file is one row: key = its number, id = its file stem, prompt = a template filled with its text.
A number without a file is a `Blank`, so the checkpoint watermark moves past gaps.
"""
from __future__ import annotations

import logging
import os
import stat
import re
import string
import time
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ConfigError, InputFileError
from .rows import IDLE, BadRow, Blank, Idle, Row, with_system

log = logging.getLogger(__name__)

DEFAULT_PATTERN = "report_{n}.txt"
DEFAULT_TEMPLATE = "{content}"
_PLACEHOLDER = re.compile(r"\{(content|id|n)\}")
# Numbered rows have no byte offset; 0 still lets the checkpoint record (next number, 0) as the
# place to resume from, so a resume starts at the watermark instead of testing every number.
_NO_OFFSET = 0


class FilePattern:
    """A file name with one `{n}` field, e.g. `report_{n}.txt` or `img_{n:05d}.png`."""

    def __init__(self, pattern: str) -> None:
        fields = _parse_pattern(pattern)
        self.pattern = pattern
        self._regex = re.compile(re.escape(fields[0]) + r"(\d+)" + re.escape(fields[1]) + r"\Z")

    def name(self, n: int) -> str:
        """The file name of number `n`."""
        return self.pattern.format(n=n)

    def number(self, name: str) -> int | None:
        """The number of file `name`, or None if the name is not one this pattern makes."""
        match = self._regex.match(name)
        if not match:
            return None
        n = int(match.group(1))
        return n if self.name(n) == name else None  # `{n:04d}` makes "0007", not "7"


def _parse_pattern(pattern: str) -> tuple[str, str]:
    """(text before, text after) the single `{n}` field; ConfigError for anything else."""
    try:
        parts = list(string.Formatter().parse(pattern))
        pattern.format(n=1)
    except (ValueError, KeyError, IndexError) as err:
        raise ConfigError(f"--pattern {pattern!r} is not a valid file name pattern: {err}") from err
    fields = [p for p in parts if p[1] is not None]
    if len(fields) != 1 or fields[0][1] != "n" or fields[0][3]:
        raise ConfigError(f"--pattern {pattern!r} must hold exactly one {{n}} field (e.g. report_{{n}}.txt)")
    if "/" in pattern or os.sep in pattern:
        raise ConfigError(f"--pattern {pattern!r} must be a file name, not a path")
    cut = next(i for i, p in enumerate(parts) if p[1] is not None)
    before = "".join(p[0] for p in parts[:cut + 1])
    after = "".join(p[0] for p in parts[cut + 1:])
    return before, after


def fill_template(template: str, *, content: str, id: str, n: int) -> str:
    """The template with `{content}`, `{id}` and `{n}` replaced; every other character kept as is.

    Only these three placeholders are touched (in one pass, so text inside the content is never
    substituted again); other braces, such as a JSON example in the template, stay literal.
    """
    values = {"content": content, "id": id, "n": str(n)}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def read_template(path: str | os.PathLike) -> str:
    """The text of a `--template` file."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--template {path}: cannot be read: {err}") from err
    if "{content}" not in text:
        log.warning("template %s has no {content} placeholder: the files' text will not be sent", path)
    return text


class NumberedSource:
    """Rows of the numbered files of one directory, in number order, from `start` to `end` (a `source.Source`).

    Without `follow`, the directory is scanned once and reading stops at the highest existing
    number in [start, end]. With `follow`, a missing number yields IDLE until its file appears;
    it is skipped (a Blank) only once a later number's file has existed for `settle_s` seconds.
    A file is read only when it has not changed for `quiet_s` seconds, so a file still being
    written is not read half-way (producers that write a temp file and rename it may use 0).
    """

    def __init__(self, directory: str | os.PathLike, pattern: str = DEFAULT_PATTERN, start: int = 1,
                 end: int | None = None, template: str | None = None, system: str | None = None,
                 max_bytes: int = 20 << 20, *, settle_s: float = 2.0, quiet_s: float = 1.0,
                 lookahead: int = 64, rescan_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise InputFileError(f"input directory not found: {self.directory}")
        if end is not None and end < start:
            raise ConfigError(f"--end {end} is below --start {start}")
        self.pattern = FilePattern(pattern)
        self.start, self.end = start, end
        self.template = DEFAULT_TEMPLATE if template is None else template
        self.system, self.max_bytes = system, max_bytes
        self.settle_s, self.quiet_s, self.lookahead, self.rescan_s = settle_s, quiet_s, lookahead, rescan_s
        self.clock, self.wall = clock, wall
        self.path = self.directory
        self.input_file = None                # many files: no single fingerprint
        self.base_dir = str(self.directory.resolve())
        self.last_number: int | None = None   # the last number handed out
        self.waiting_for: str | None = None   # follow mode: the file name we are waiting for
        self.follow_stopped: str | None = None  # following a folder never ends early
        self._highest: tuple[int | None] | None = None   # (highest,) once scanned
        self._unchanged: tuple | None = None  # ((n, size, mtime_ns), first seen): the quiet rule
        self._later: tuple | None = None      # (m, first seen): the settle rule
        self._scanned: tuple | None = None    # (directory mtime_ns, next scan allowed at)

    @property
    def first_key(self) -> int:
        return self.start

    def status_fields(self) -> dict:
        """The range and the last number handed out; what --follow waits for."""
        return {"start_number": self.start, "current_number": self.last_number,
                "end_number": self.end, "waiting_for": self.waiting_for}

    def checkpoint_fields(self) -> dict:
        return {} if self.last_number is None else {"last_number": self.last_number}

    # ---- totals -----------------------------------------------------------------------------

    def count(self, follow: bool = False) -> int | None:
        """Numbers from `start` to the last one that will be read (gaps included, as the checkpoint
        counts them done), or None when following without `end`."""
        if follow:
            return None if self.end is None else self.end - self.start + 1
        last = self._last()
        return 0 if last is None else last - self.start + 1

    def _last(self) -> int | None:
        """The highest existing number in [start, end]: one scan of the directory, then cached."""
        if self._highest is None:
            self._highest = (max(self._numbers(self.start - 1, self.end), default=None),)
            if self._highest[0] is None:
                log.warning("no file in %s matches %r from number %d", self.directory,
                            self.pattern.pattern, self.start)
        return self._highest[0]

    def _numbers(self, above: int, upto: int | None) -> Iterator[int]:
        """The numbers n with above < n <= upto that have a file (one directory scan, streamed)."""
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    n = self.pattern.number(entry.name)
                    if n is not None and n > above and (upto is None or n <= upto):
                        yield n
        except OSError as err:
            raise InputFileError(f"cannot list input directory {self.directory}: {err.strerror}") from err

    # ---- rows -------------------------------------------------------------------------------

    def rows(self, start: int | tuple[int, int] | None = None,
             is_done: Callable[[int], bool] = lambda key: False,
             follow: bool = False, done_below: int | None = None) -> Iterator[Row | BadRow | Blank | Idle]:
        """Yield one item per number from `start` (an int, or the checkpoint's (key, offset)).

        `done_below` is accepted for the `Source` protocol; `is_done` already skips those numbers
        without touching their files."""
        n = self.start if start is None else (start[0] if isinstance(start, tuple) else int(start))
        last = self.end if follow else self._last()
        if not follow and last is None:
            return
        while last is None or n <= last:
            if is_done(n):
                n += 1
                continue
            item = self._item(n, follow)
            if item is IDLE:
                self.waiting_for = self.pattern.name(n)
                yield IDLE
                continue
            self.waiting_for = None
            self.last_number = n
            yield item
            n += 1

    def _item(self, n: int, follow: bool) -> Row | BadRow | Blank | Idle:
        name = self.pattern.name(n)
        path = self.directory / name
        try:
            st = path.stat()
        except FileNotFoundError:
            if follow and not self._gap_settled(n):
                return IDLE
            return Blank(n, _NO_OFFSET)
        except OSError as err:
            return BadRow(n, _stem(name), f"{name}: cannot be read: {err.strerror}", _NO_OFFSET)
        if not stat.S_ISREG(st.st_mode):   # a FIFO would block the manager, /dev/zero never ends
            return BadRow(n, _stem(name), f"{name} is not a regular file: only regular files are read",
                          _NO_OFFSET)
        if follow and not self._quiet(n, st):
            return IDLE
        return self._read(n, path)

    def _read(self, n: int, path: Path) -> Row | BadRow:
        """The row of one file, or a BadRow whose reason names the file."""
        name, rid = path.name, _stem(path.name)
        try:
            with open(path, "rb") as f:
                data = f.read(self.max_bytes + 1)
        except OSError as err:
            return BadRow(n, rid, f"{name}: cannot be read: {err.strerror}", _NO_OFFSET)
        if len(data) > self.max_bytes:
            return BadRow(n, rid, f"{name} is larger than {self.max_bytes} bytes", _NO_OFFSET)
        try:
            content = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            return BadRow(n, rid, f"{name} is not valid UTF-8 ({err.reason} at byte {err.start})", _NO_OFFSET)
        if not content.strip():
            return BadRow(n, rid, f"{name} is empty", _NO_OFFSET)
        prompt = fill_template(self.template, content=content, id=rid, n=n)
        messages = with_system([{"role": "user", "content": prompt}], self.system)
        return Row(n, rid, {"messages": messages}, prompt, (), {"n": n, "file": name}, _NO_OFFSET)

    # ---- follow-mode rules ------------------------------------------------------------------

    def _quiet(self, n: int, st: os.stat_result) -> bool:
        """True once the file has not changed for `quiet_s`, by its mtime or by our own watching."""
        if self.quiet_s <= 0 or self.wall() - st.st_mtime >= self.quiet_s:
            return True
        seen = (n, st.st_size, st.st_mtime_ns)
        if self._unchanged is None or self._unchanged[0] != seen:
            self._unchanged = (seen, self.clock())  # our clock, in case the file's mtime is skewed
            return False
        return self.clock() - self._unchanged[1] >= self.quiet_s

    def _gap_settled(self, n: int) -> bool:
        """True if file `n` should be skipped: a later file has existed for `settle_s` already."""
        later = self._later_file(n)
        if later is None:
            return False
        m, mtime = later
        if self._later is None or self._later[0] != m:
            self._later = (m, self.clock())
        age = max(self.clock() - self._later[1], self.wall() - mtime)
        if age < self.settle_s:
            return False
        log.info("skipping %s: it does not exist and %s does", self.pattern.name(n), self.pattern.name(m))
        return True

    def _later_file(self, n: int) -> tuple[int, float] | None:
        """(number, mtime) of an existing file after `n`: a few names first, a directory scan at times."""
        if self._later is not None and self._later[0] > n:
            hit = self._mtime(self._later[0])
            if hit is not None:
                return self._later[0], hit
        for m in range(n + 1, n + 1 + self.lookahead):
            if self.end is not None and m > self.end:
                return None
            hit = self._mtime(m)
            if hit is not None:
                return m, hit
        return self._scan_after(n)

    def _scan_after(self, n: int) -> tuple[int, float] | None:
        """The first existing number after `n` by a directory scan: only if the directory changed
        since the last scan and not more often than every `rescan_s`, since a scan costs O(files)."""
        try:
            changed = os.stat(self.directory).st_mtime_ns
        except OSError:
            return None
        now = self.clock()
        if self._scanned is not None and (self._scanned[0] == changed or now < self._scanned[1]):
            return None
        m = min(self._numbers(n, self.end), default=None)
        # A huge directory takes long to list: scan it at most 5% of the time.
        self._scanned = (changed, now + max(self.rescan_s, 20 * (self.clock() - now)))
        hit = None if m is None else self._mtime(m)
        return None if hit is None else (m, hit)

    def _mtime(self, n: int) -> float | None:
        try:
            return (self.directory / self.pattern.name(n)).stat().st_mtime
        except OSError:
            return None


def _stem(name: str) -> str:
    return Path(name).stem
