"""Stream input rows from a JSONL file (plain rows, `messages` rows, OpenAI Batch API lines).

Nothing is loaded whole: rows are read one line at a time from a byte offset, and rows that are
already done are skipped before they are parsed, so a resume costs little per skipped row.
In follow mode a source yields `IDLE` when nothing new is there yet, instead of ending.
"""
from __future__ import annotations

import json
import logging
import os
import re
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..errors import InputFileError, RowFormatError
from ..outputs import identity as rowid
from ..lines import count_lines

log = logging.getLogger(__name__)

ROW_FIELDS = ("id", "prompt", "images", "system", "messages", "custom_id", "method", "url", "body")
# `{"id": "a1", …`: the common shape, whose identity is read without parsing the whole line.
_ID_FIRST = re.compile(rb'\{\s*"id"\s*:\s*("(?:[^"\\\n]|\\.)+")\s*[,}]')
# Request fields a prompt or messages row may carry; they are sent (and, like any field, kept in the output).
REQUEST_FIELDS = ("tools", "tool_choice", "parallel_tool_calls", "response_format")


@dataclass(frozen=True)
class Row:
    """One usable input row. `key` is its line number; `request` has messages and row params.

    `id` is the row's own id as a JSON value, or (`implied`) its line number as text.
    """

    key: int
    id: object
    request: dict
    prompt: str | None
    images: tuple[str, ...]
    extra: dict = field(default_factory=dict)
    end_offset: int | None = None
    batch: dict | None = None   # custom_id/method/url of an OpenAI Batch API line
    implied: bool = False       # no id of its own: known by its line number

    @property
    def identity(self) -> str:
        """The row's identity under the one row-id rule (`outputs.identity`)."""
        return rowid.line_key(self.key) if self.implied else rowid.id_key(self.id)


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be used: it goes to the errors file with this reason."""

    key: int
    id: object | None
    reason: str
    end_offset: int | None = None


@dataclass(frozen=True)
class Blank:
    """A blank line: nothing to do, but its key is done so the checkpoint watermark moves on."""

    key: int
    end_offset: int | None = None


@dataclass(frozen=True)
class Idle:
    """Follow mode: nothing new to read right now. Call `next()` again after a poll interval."""


IDLE = Idle()


class IdSet:
    """A compact set of 64-bit id hashes (open addressing in one array) to catch duplicate ids.

    A Python set of millions of strings would make manager memory grow with the dataset.
    """

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._table = array("q", bytes(8 * capacity))
        self._mask = capacity - 1
        self._size = 0

    def add(self, value: str) -> bool:
        """Add `value`; False if it was already there."""
        if (self._size + 1) * 2 > len(self._table):
            self._grow()
        h = hash(value) or 1
        return self._insert(h)

    def _insert(self, h: int) -> bool:
        table, mask = self._table, self._mask
        i = h & mask
        while table[i]:
            if table[i] == h:
                return False
            i = (i + 1) & mask
        table[i] = h
        self._size += 1
        return True

    def _grow(self) -> None:
        old = self._table
        self._table = array("q", bytes(8 * len(old) * 2))
        self._mask = len(self._table) - 1
        self._size = 0
        for h in old:
            if h:
                self._insert(h)


def parse_row(key: int, raw: bytes, system: str | None, ids: IdSet | None,
              end_offset: int | None = None) -> Row | BadRow | Blank:
    """Turn one input line into a Row, a BadRow with the reason, or a Blank."""
    if not raw.strip():
        return Blank(key, end_offset)
    try:
        # A BOM (Windows editors write one) may open the file; anywhere else it is the row's problem.
        obj = json.loads(raw.decode("utf-8-sig" if key == 1 else "utf-8"))
    except UnicodeDecodeError as err:
        return BadRow(key, None, f"line {key} is not valid UTF-8 ({err.reason} at byte {err.start})", end_offset)
    except json.JSONDecodeError as err:
        return BadRow(key, None, f"line {key} is not valid JSON: {err.msg} (column {err.colno})", end_offset)
    return parse_object(key, obj, system, ids, end_offset)


def parse_object(key: int, obj, system: str | None, ids: IdSet | None,
                 end_offset: int | None = None) -> Row | BadRow:
    """A decoded row (from a file or from Python) as a Row, or a BadRow naming the problem."""
    try:
        row = row_from_object(key, obj, system, end_offset)
    except RowFormatError as err:
        return BadRow(key, rowid.explicit_id(obj), str(err), end_offset)
    if ids is not None and not ids.add(row.identity):
        return BadRow(key, row.id, f"line {key}: duplicate id {rowid.shown(row.id)!r}", end_offset)
    return row


def find_keys(entries, wanted: set[str]) -> dict[str, int]:
    """The key (line) of each wanted identity among a source's entries (the first one holding it)."""
    found: dict[str, int] = {}
    for entry in entries:
        if isinstance(entry, Row):
            ident = entry.identity
        elif isinstance(entry, BadRow):
            ident = rowid.line_key(entry.key) if entry.id is None else rowid.id_key(entry.id)
        else:
            continue
        if ident in wanted:
            found.setdefault(ident, entry.key)
    return found


def python_rows(rows, is_done: Callable[[int], bool]) -> Iterator[Row | BadRow]:
    """Rows given from Python (key = 1-based position); bad rows become error rows, not exceptions."""
    ids = IdSet()
    for key, obj in enumerate(rows, start=1):
        if not is_done(key):
            yield parse_object(key, obj, None, ids)


def row_from_object(key: int, obj, system: str | None, end_offset: int | None = None) -> Row:
    """Build a Row from a decoded JSON object of any accepted shape."""
    if not isinstance(obj, dict):
        raise RowFormatError(f"line {key}: a row must be a JSON object, not {type(obj).__name__}")
    rid = rowid.explicit_id(obj)
    implied = rid is None
    rid = str(key) if implied else rid
    extra = {k: v for k, v in obj.items() if k not in ROW_FIELDS}
    if "body" in obj and "custom_id" in obj:
        return _batch_row(key, rid, obj, system, extra, end_offset, implied)
    images = obj.get("images") or []
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        raise RowFormatError(f"line {key}: images must be a list of paths or URLs")
    row_system = obj.get("system", system)
    if "messages" in obj:
        messages = _check_messages(key, obj["messages"])
        messages = with_system(messages, row_system)
        if images:
            messages = _attach_images(messages, images)
        return Row(key, rid, _request(obj, messages), _last_user_text(messages), tuple(images), extra, end_offset,
                   implied=implied)
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RowFormatError(f"line {key}: no prompt or messages")
    content = prompt if not images else [{"type": "text", "text": prompt}] + _image_parts(images)
    messages = with_system([{"role": "user", "content": content}], row_system)
    return Row(key, rid, _request(obj, messages), prompt, tuple(images), extra, end_offset,
               implied=implied)


def _request(obj: dict, messages: list) -> dict:
    """The request of a prompt or messages row: its messages and the REQUEST_FIELDS it has."""
    return {"messages": messages, **{k: obj[k] for k in REQUEST_FIELDS if k in obj}}


def _batch_row(key, rid, obj, system, extra, end_offset, implied) -> Row:
    body = obj["body"]
    if not isinstance(body, dict):
        raise RowFormatError(f"line {key}: batch line body must be an object")
    messages = with_system(_check_messages(key, body.get("messages")), system)
    params = {k: v for k, v in body.items() if k not in ("messages", "model")}
    batch = {"custom_id": obj["custom_id"], "method": obj.get("method", "POST"),
             "url": obj.get("url", "/v1/chat/completions")}
    return Row(key, rid, {"messages": messages, **params}, _last_user_text(messages), (),
               extra, end_offset, batch, implied)


def _check_messages(key: int, messages) -> list:
    if not isinstance(messages, list) or not messages:
        raise RowFormatError(f"line {key}: messages must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowFormatError(f"line {key}: every message needs a role and content")
    return messages


def with_system(messages: list, system: str | None) -> list:
    """`messages` with a system message first, unless there is one already or `system` is empty."""
    if system and not any(m.get("role") == "system" for m in messages):
        return [{"role": "system", "content": system}] + messages
    return messages


def _image_parts(images) -> list:
    return [{"type": "image_url", "image_url": {"url": ref}} for ref in images]


def _attach_images(messages: list, images) -> list:
    """Add a row's `images` to its last user message."""
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        if out[i].get("role") == "user":
            content = out[i]["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
            out[i] = {**out[i], "content": parts + _image_parts(images)}
            break
    return out


def _last_user_text(messages: list) -> str | None:
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return None


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
                m = _ID_FIRST.match(raw)
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
