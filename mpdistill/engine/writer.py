"""The writer: the only owner of the output and errors files.

Lines are appended, flushed and fsynced before their rows are acknowledged to the checkpoint.
Lines that are ready together share one fsync (group commit). With `start()`, commits run on
the writer's own thread, so an fsync never stalls the manager's dispatch loop.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from ..state.checkpoint import CheckpointManager
from ..errors import MpdistillError, OutputError
from ..outputs.batch import error_to_batch_output, to_batch_output


# One encoder for every line: `json.dumps` with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


def encode_line(record: dict) -> bytes:
    """One JSON line, UTF-8, newline-terminated."""
    return (_ENCODER.encode(record) + "\n").encode("utf-8")


class _File:
    """An append-only file that knows how many bytes are durable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.offset = os.fstat(self.fd).st_size

    def append(self, lines: list[bytes]) -> None:
        if not lines:
            return
        data = b"".join(lines)
        try:
            _write_all(self.fd, data)
            os.fsync(self.fd)
        except OSError as err:
            self._undo()
            raise OutputError(f"cannot write {self.path}: {err.strerror or err}") from err
        self.offset += len(data)

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


class _Batch:
    """Lines and keys waiting for the next commit."""

    def __init__(self) -> None:
        self.out_lines: list[bytes] = []
        self.out_keys: list[tuple] = []
        self.err_lines: list[bytes] = []
        self.err_keys: list[tuple] = []
        self.marks: list[tuple] = []

    def __len__(self) -> int:
        return len(self.out_keys) + len(self.err_keys) + len(self.marks)


class Writer:
    """Appends result lines to the output and failure lines to the errors file, durably,
    then acknowledges the rows to the checkpoint (the only code that marks rows done, and that
    counts durable rows: the checkpoint's `ok` and `failed` are what status, progress and summary read)."""

    def __init__(self, output: Path, errors: Path, checkpoint: CheckpointManager,
                 output_format: str = "mpdistill") -> None:
        self._format = output_format      # mpdistill, or openai-batch (Batch API output lines)
        self._out = _File(Path(output))
        self._err = _File(Path(errors))
        self.checkpoint = checkpoint
        self._batch = _Batch()
        self._cv = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.error: MpdistillError | None = None

    # ---- the manager's side ---------------------------------------------------------------

    def add_result(self, key: int, end_offset: int | None, record: dict | list[dict]) -> None:
        """The answer of row `key`: one record, or several lines (one per sample) written together."""
        records = record if isinstance(record, list) else [record]
        if self._format == "openai-batch":
            records = [to_batch_output(r) for r in records]
        lines = b"".join(encode_line(r) for r in records)
        with self._cv:
            self._batch.out_lines.append(lines)
            self._batch.out_keys.append((key, end_offset))
            self._cv.notify()

    def add_error(self, key: int, end_offset: int | None, record: dict) -> None:
        if self._format == "openai-batch":
            record = error_to_batch_output(record)
        line = encode_line(record)
        with self._cv:
            self._batch.err_lines.append(line)
            self._batch.err_keys.append((key, end_offset))
            self._cv.notify()

    def add_mark(self, key: int, end_offset: int | None) -> None:
        """A key with nothing to write (a blank input line) that is done once earlier ones are."""
        with self._cv:
            self._batch.marks.append((key, end_offset))
            self._cv.notify()

    def commit(self) -> tuple[int, int]:
        """Write and fsync what is pending now, in the caller's thread; returns (ok, failed) rows."""
        with self._cv:
            batch, self._batch = self._batch, _Batch()
        return self._persist(batch)

    def start(self) -> None:
        """Commit from a background thread from now on."""
        self._thread = threading.Thread(target=self._loop, name="mpdistill-writer", daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """Wait until everything added so far is durable (or the writer failed)."""
        if self._thread is None:
            self.commit()
            return
        with self._cv:
            while (len(self._batch) or self._busy) and self.error is None and self._thread.is_alive():
                self._cv.wait(0.5)

    def stop(self) -> None:
        """Flush, then end the background thread; raises the writer's error if it had one."""
        if self._thread is not None:
            self.flush()
            with self._cv:
                self._stopping = True
                self._cv.notify_all()
            self._thread.join()
            self._thread = None
        if self.error is None:
            self.commit()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self._thread is not None:
            try:
                self.stop()
            except MpdistillError:
                pass  # already reported by whoever stopped the run
        for f in (self._out, self._err):
            os.close(f.fd)

    # ---- the writer's side ----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not len(self._batch) and not self._stopping:
                    self._cv.wait()
                if not len(self._batch):
                    return
                batch, self._batch = self._batch, _Batch()
                self._busy = True
            try:
                self._persist(batch)
            except MpdistillError as err:
                self.error = err
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
            if self.error is not None:
                return

    def _persist(self, batch: _Batch) -> tuple[int, int]:
        try:
            self._out.append(batch.out_lines)
            self._err.append(batch.err_lines)
        except OutputError as err:
            self.error = err
            raise
        for key, end_offset in batch.out_keys + batch.err_keys + batch.marks:
            self.checkpoint.mark_done(key, end_offset)
        ok, failed = len(batch.out_keys), len(batch.err_keys)
        if ok or failed or batch.marks:
            self.checkpoint.record(output_offset=self._out.offset, errors_offset=self._err.offset,
                                   ok=ok, failed=failed, rows=ok + failed, marks=len(batch.marks),
                                   output_lines=sum(line.count(b"\n") for line in batch.out_lines),
                                   errors_lines=len(batch.err_lines))
        return ok, failed

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
