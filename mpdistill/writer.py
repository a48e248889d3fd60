"""The writer: the only owner of the output and errors files.

Lines are appended, flushed and fsynced before their rows count as processed. Several ready
lines share one fsync (group commit), so durability never costs a round trip per row.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .checkpoint import CheckpointManager
from .errors import OutputError


def encode_line(record: dict) -> bytes:
    """One JSON line, UTF-8, newline-terminated."""
    return (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")


class _File:
    """An append-only file with a list of lines waiting for the next commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.offset = os.fstat(self.fd).st_size
        self.pending: list[bytes] = []
        self.keys: list[tuple] = []

    def commit(self) -> list[tuple]:
        if not self.pending:
            return []
        data = b"".join(self.pending)
        try:
            _write_all(self.fd, data)
            os.fsync(self.fd)
        except OSError as err:
            self._undo()
            raise OutputError(f"cannot write {self.path}: {err.strerror or err}") from err
        self.offset += len(data)
        keys, self.pending, self.keys = self.keys, [], []
        return keys

    def _undo(self) -> None:
        """Cut a partly written batch, so the file never ends in a torn line we wrote."""
        try:
            os.ftruncate(self.fd, self.offset)
        except OSError:
            pass  # the resume scan cuts a torn tail anyway


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Writer:
    """Appends result lines to the output and failure lines to the errors file, durably,
    then acknowledges the rows to the checkpoint."""

    def __init__(self, output: Path, errors: Path, checkpoint: CheckpointManager) -> None:
        self._out = _File(Path(output))
        self._err = _File(Path(errors))
        self.checkpoint = checkpoint

    def add_result(self, key: int, end_offset: int | None, record: dict) -> None:
        self._out.pending.append(encode_line(record))
        self._out.keys.append((key, end_offset))

    def add_error(self, key: int, end_offset: int | None, record: dict) -> None:
        self._err.pending.append(encode_line(record))
        self._err.keys.append((key, end_offset))

    @property
    def pending(self) -> int:
        return len(self._out.pending) + len(self._err.pending)

    def commit(self) -> tuple[int, int]:
        """Write and fsync everything pending, then ack it; returns (ok rows, failed rows) made durable."""
        done_ok, done_failed = self._out.commit(), self._err.commit()
        if done_ok or done_failed:
            for key, end_offset in done_ok + done_failed:
                self.checkpoint.mark_done(key, end_offset)
            self.checkpoint.record(output_offset=self._out.offset, errors_offset=self._err.offset,
                                   ok=len(done_ok), failed=len(done_failed),
                                   rows=len(done_ok) + len(done_failed))
        return len(done_ok), len(done_failed)

    @property
    def output_path(self) -> Path:
        return self._out.path

    @property
    def errors_path(self) -> Path:
        return self._err.path

    @property
    def output_offset(self) -> int:
        return self._out.offset

    @property
    def errors_offset(self) -> int:
        return self._err.offset

    def close(self) -> None:
        for f in (self._out, self._err):
            os.close(f.fd)
