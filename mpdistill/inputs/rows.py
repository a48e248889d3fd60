"""Rows as the engine sees them: `Row`, `BadRow`, `Blank`, `Idle`, and building them from JSON objects.

Every accepted input shape (plain prompt rows, `messages` rows, OpenAI Batch API lines) becomes a
`Row` here, whichever source read it; a row that cannot be used becomes a `BadRow` naming why.
"""
from __future__ import annotations

import json
import logging
import re
from array import array
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..errors import RowFormatError
from ..outputs import identity as rowid

log = logging.getLogger(__name__)

ROW_FIELDS = ("id", "prompt", "images", "system", "messages", "custom_id", "method", "url", "body")
# `{"id": "a1", …`: the common shape, whose identity is read without parsing the whole line.
ID_FIRST = re.compile(rb'\{\s*"id"\s*:\s*("(?:[^"\\\n]|\\.)+")\s*[,}]')
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
