"""Cut an input into N byte ranges that start at line starts, with each range's first line number.

One pass over the file counts the newlines of each range, so every shard keeps the line numbers
of the whole input as its row keys, and no copy of the input is made.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, InputFileError
from ..inputs.jsonl import LineRange
from ..lines import count_lines


def line_start_at_or_after(f, target: int) -> int:
    """The first line start at byte `target` or later (the file's size when there is none)."""
    if target <= 0:
        return 0
    f.seek(target - 1)
    f.readline()          # ends just after the newline at or after target - 1
    return f.tell()


def plan_ranges(path: str | os.PathLike, shards: int) -> list[tuple[LineRange, int]]:
    """(range, lines in it) for each of `shards` shards; ranges may be empty on tiny inputs."""
    if shards < 1:
        raise ConfigError(f"--shards must be >= 1 (got {shards})")
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            starts = [line_start_at_or_after(f, size * i // shards) for i in range(shards)] + [size]
    except OSError as err:
        raise InputFileError(f"cannot read input {path}: {err.strerror}") from err
    for i in range(1, len(starts)):
        starts[i] = max(starts[i], starts[i - 1])
    plan, first = [], 1
    for begin, end in zip(starts, starts[1:]):
        lines = count_lines(path, begin, end) if end > begin else 0
        plan.append((LineRange(begin, end, first), lines))
        first += lines
    return plan
