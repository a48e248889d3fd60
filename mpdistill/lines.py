"""The one line counter: lines of a file or of a byte range of it, read in 1 MiB chunks.

Used for progress totals (sources), split's chunk sizes and the monitor's row count. Imports nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


def count_newlines(fh: BinaryIO, limit: int | None = None) -> tuple[int, bytes, int]:
    """(newlines, last byte read, bytes read) from `fh`'s position, up to `limit` bytes or the end."""
    newlines, last, read = 0, b"", 0
    while limit is None or read < limit:
        chunk = fh.read(CHUNK if limit is None else min(CHUNK, limit - read))
        if not chunk:
            break
        newlines += chunk.count(b"\n")
        last = chunk[-1:]
        read += len(chunk)
    return newlines, last, read


def count_lines(path: str | Path, begin: int = 0, end: int | None = None) -> int:
    """Lines that start in bytes [begin, end) of `path` (`begin` at a line start); a last line
    without its newline counts."""
    with open(path, "rb") as fh:
        fh.seek(begin)
        newlines, last, read = count_newlines(fh, None if end is None else end - begin)
    return newlines + (read > 0 and last != b"\n")
