"""The `Source` protocol every input implements (JSONL file, numbered files, rows from Python).

The engine reads rows only through it: `rows()` streams Row / BadRow / Blank / Idle items from a
resume point, `count()` gives the progress total, `status_fields()` what the status file shows of
the source, `checkpoint_fields()` what the checkpoint keeps of it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, runtime_checkable

from .jsonl import JsonlSource

from .rows import BadRow, Blank, Idle, Row, find_keys, python_rows

Item = Row | BadRow | Blank | Idle


@runtime_checkable
class Source(Protocol):
    """Where the rows of a run come from."""

    first_key: int                 # key of the first row (1, or --start of numbered files)
    input_file: Path | None        # the one input file, whose fingerprint guards a resume; else None
    base_dir: str | None           # where relative image paths are resolved
    follow_stopped: str | None     # why following ended early (file removed, replaced …), else None

    def rows(self, start: tuple[int, int] | None = None, is_done: Callable[[int], bool] = ...,
             follow: bool = False, done_below: int | None = None) -> Iterator[Item]:
        """Items from `start` = (key, byte offset); done keys are skipped, keys below `done_below`
        are known done."""

    def count(self, follow: bool = False) -> int | None:
        """Rows in the source (the progress total); None when unknown (following)."""

    def status_fields(self) -> dict:
        """Extra fields of the status file (numbered files: the range and the current number)."""

    def checkpoint_fields(self) -> dict:
        """Extra fields of the checkpoint's meta."""


class PythonSource:
    """Rows given from Python (`run(cfg, rows)`): key = 1-based position."""

    first_key = 1
    input_file = None
    base_dir = None
    follow_stopped = None

    def __init__(self, rows: Iterable[dict]) -> None:
        self._rows = rows

    def rows(self, start=None, is_done: Callable[[int], bool] = lambda key: False, follow: bool = False,
             done_below: int | None = None) -> Iterator[Item]:
        return python_rows(self._rows, is_done)

    def count(self, follow: bool = False) -> int | None:
        try:
            return len(self._rows)   # type: ignore[arg-type]
        except TypeError:
            return None

    def status_fields(self) -> dict:
        return {}

    def checkpoint_fields(self) -> dict:
        return {}


def identity_lookup(source: Source) -> Callable[[set], dict] | None:
    """How a resume finds the input line of an id (`outputs.identity`): a JSONL file's fast reader,
    another source's rows, or a list of Python rows; None for a one-shot iterable (read only once)."""
    if isinstance(source, JsonlSource):
        return source.find_keys
    if isinstance(source, PythonSource):
        if not isinstance(source._rows, (list, tuple)):
            return None
    return lambda wanted: find_keys(source.rows(), wanted)
