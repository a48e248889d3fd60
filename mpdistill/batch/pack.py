"""Pack rows into one batch's local files: the input file to upload (one request line per row) and
the rows file (what the output line needs back: id, prompt, images, extra fields, and the body).

A batch holds at most `max_requests` lines and `max_bytes` bytes, and no more estimated tokens
than its endpoint still has room for; both files are fsynced before the batch is journaled.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..inputs.rows import Row
from . import crash
from .calls import ENDPOINT

CUSTOM_ID_PREFIX = "mpd-"
# chat.completions.create options that are not part of a request body
_NOT_BODY = ("timeout", "extra_headers", "extra_query")


@dataclass(frozen=True)
class Limits:
    """How big one batch may be (OpenAI: 50,000 requests and 200 MB)."""

    max_requests: int = 50_000
    max_bytes: int = 200 * 1024 * 1024


def custom_id(key: int) -> str:
    return f"{CUSTOM_ID_PREFIX}{key}"


def key_of(custom: object) -> int | None:
    """The row key of one of our custom ids, None for anything else."""
    if isinstance(custom, str) and custom.startswith(CUSTOM_ID_PREFIX) and custom[len(CUSTOM_ID_PREFIX):].isdigit():
        return int(custom[len(CUSTOM_ID_PREFIX):])
    return None


def body_of(request: dict) -> dict:
    """A Batch API body from a chat.completions request: extra_body merged in, client options dropped."""
    body = {k: v for k, v in request.items() if k not in _NOT_BODY and k != "extra_body"}
    body.update(request.get("extra_body") or {})
    return body


def request_line(key: int, body: dict) -> bytes:
    line = {"custom_id": custom_id(key), "method": "POST", "url": ENDPOINT, "body": body}
    return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def meta_line(row: Row, body: dict, cache_key: str | None = None) -> bytes:
    meta = {"key": row.key, "id": row.id, "prompt": row.prompt, "images": list(row.images),
            "extra": row.extra, "end": row.end_offset, "batch": row.batch, "body": body}
    if cache_key:
        meta["cache_key"] = cache_key
    return (json.dumps(meta, ensure_ascii=False, default=str, separators=(",", ":")) + "\n").encode()


def row_of(meta: dict) -> Row:
    """The Row an output line is built from, read back from a rows-file line."""
    return Row(meta["key"], meta["id"], {}, meta["prompt"], tuple(meta["images"]), meta["extra"],
               meta["end"], meta["batch"])


class Pack:
    """One batch being filled."""

    def __init__(self, input_path: Path, rows_path: Path, limits: Limits, token_room: int | None) -> None:
        input_path.parent.mkdir(parents=True, exist_ok=True)
        self.input_path, self.rows_path = input_path, rows_path
        self._input = open(input_path, "wb")
        self._rows = open(rows_path, "wb")
        self.limits = limits
        self.token_room = token_room
        self.keys: list[int] = []
        self.bytes = 0
        self.tokens = 0

    def fits(self, line: bytes, tokens: int) -> bool:
        """True when one more line (of `tokens` estimated tokens) stays within every limit."""
        if len(self.keys) >= self.limits.max_requests or self.bytes + len(line) > self.limits.max_bytes:
            return False
        return self.token_room is None or not self.keys or self.tokens + tokens <= self.token_room

    @property
    def full(self) -> bool:
        return len(self.keys) >= self.limits.max_requests

    def add(self, key: int, line: bytes, meta: bytes, tokens: int) -> None:
        self._input.write(line)
        self._rows.write(meta)
        self.keys.append(key)
        self.bytes += len(line)
        self.tokens += tokens
        crash.point("packing")

    def finish(self) -> None:
        """Make both files durable (the journal entry that follows names them)."""
        for f in (self._input, self._rows):
            f.flush()
            os.fsync(f.fileno())
            f.close()

    def discard(self) -> None:
        for f in (self._input, self._rows):
            f.close()
        self.input_path.unlink(missing_ok=True)
        self.rows_path.unlink(missing_ok=True)
