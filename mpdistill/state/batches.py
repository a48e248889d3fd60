"""The batch journal of one job: every provider batch it packs, uploads, creates and closes.

An append-only JSONL file beside the checkpoint (`<run>_batches.jsonl`), one fsynced line per
event, written *before* the step it announces can have effects the run must remember: a batch is
journaled `creating` (with the marker it is created under) before `batches.create` is called, so
a kill at any moment leaves either no batch or one that a rerun finds at the provider by marker.
Separate from the checkpoint pickle: the output stays the truth for done rows; this file only
says which rows are owned by batches still open, and how often each row was resubmitted.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError

log = logging.getLogger(__name__)

VERSION = 1
OPEN_STATES = ("packed", "uploaded", "creating", "created")


@dataclass
class BatchEntry:
    """One batch as the journal knows it."""

    local: str                      # b000001: names its local files and its marker
    endpoint: str                   # endpoint name (never the key)
    key_hash: str                   # short hash of the key, to find the endpoint again after a rename
    keys: list[int]
    tokens: int
    state: str = "packed"           # packed | uploaded | creating | created | closed
    file_id: str | None = None
    batch_id: str | None = None
    marker: str | None = None
    status: str | None = None       # the provider's status, last seen (not journaled until closed)
    counts: dict = field(default_factory=dict)
    errors: str | None = None       # the provider's reason for a failed batch

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES


def ranges(keys: list[int]) -> list[list[int]]:
    """Sorted keys as inclusive [first, last] runs: contiguous rows cost one pair."""
    out: list[list[int]] = []
    for key in sorted(keys):
        if out and key == out[-1][1] + 1:
            out[-1][1] = key
        else:
            out.append([key, key])
    return out


def unranges(runs) -> list[int]:
    return [key for first, last in runs for key in range(int(first), int(last) + 1)]


class BatchJournal:
    """The batches of one job; `load` replays the file, every event method appends and fsyncs."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.dir = self.path.with_suffix("")          # <run>_batches/: local input and result files
        self.token = ""
        self.entries: dict[str, BatchEntry] = {}
        self.attempts: dict[int, int] = {}            # row key -> resubmissions so far
        self._owned: set[int] = set()
        self._next = 1
        self._fd: int | None = None

    # ---- reading --------------------------------------------------------------------------

    def load(self) -> None:
        """Replay the journal; a torn last line (a kill mid-append) is cut off."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good = data[:data.rfind(b"\n") + 1]
        if len(good) != len(data):
            log.warning("batch journal %s: cutting a torn last line", self.path)
            with open(self.path, "r+b") as f:
                f.truncate(len(good))
        for number, line in enumerate(good.splitlines(), 1):
            try:
                self._apply(json.loads(line))
            except (ValueError, KeyError, TypeError) as err:
                raise CheckpointError(f"batch journal {self.path}, line {number}: unreadable ({err}); "
                                      "check the batches it lists at the provider before removing it") from err

    def _apply(self, ev: dict) -> None:
        kind = ev["ev"]
        if kind == "journal":
            if ev["v"] != VERSION:
                raise ValueError(f"format version {ev['v']}, this mpdistill reads {VERSION}")
            self.token = ev["token"]
            return
        if kind == "packed":
            entry = BatchEntry(ev["local"], ev["endpoint"], ev["key_hash"], unranges(ev["keys"]), ev["tokens"])
            self.entries[entry.local] = entry
            self._owned.update(entry.keys)
            self._next = max(self._next, int(entry.local[1:]) + 1)
            return
        entry = self.entries[ev["local"]]
        if kind == "uploaded":
            entry.state, entry.file_id = "uploaded", ev["file_id"]
        elif kind == "creating":
            entry.state, entry.marker = "creating", ev["marker"]
        elif kind == "created":
            entry.state, entry.batch_id = "created", ev["batch_id"]
        elif kind == "moved":
            entry.state, entry.endpoint, entry.key_hash = "packed", ev["endpoint"], ev["key_hash"]
            entry.file_id = entry.marker = None
        elif kind == "closed":
            self._close(entry, unranges(ev["retry"]), ev.get("count", True), ev.get("status"))
        else:
            raise ValueError(f"unknown event {kind!r}")

    def _close(self, entry: BatchEntry, retry: list[int], count: bool, status) -> None:
        entry.state, entry.status = "closed", status
        self._owned.difference_update(entry.keys)
        if count:
            for key in retry:
                self.attempts[key] = self.attempts.get(key, 0) + 1
        entry.keys = []

    def owns(self, key: int) -> bool:
        """True while row `key` belongs to a batch that is not closed."""
        return key in self._owned

    def open_batches(self) -> list[BatchEntry]:
        return [e for e in self.entries.values() if e.open]

    def input_file(self, entry: BatchEntry) -> Path:
        return self.dir / f"{entry.local}.jsonl"

    def rows_file(self, entry: BatchEntry) -> Path:
        return self.dir / f"{entry.local}.rows.jsonl"

    # ---- writing --------------------------------------------------------------------------

    def new_local(self) -> str:
        local, self._next = f"b{self._next:06d}", self._next + 1
        return local

    def packed(self, entry: BatchEntry) -> None:
        self._append({"ev": "packed", "local": entry.local, "endpoint": entry.endpoint,
                      "key_hash": entry.key_hash, "keys": ranges(entry.keys), "tokens": entry.tokens})

    def uploaded(self, entry: BatchEntry, file_id: str) -> None:
        self._append({"ev": "uploaded", "local": entry.local, "file_id": file_id})

    def creating(self, entry: BatchEntry) -> None:
        self._append({"ev": "creating", "local": entry.local, "marker": f"{self.token}:{entry.local}"})

    def created(self, entry: BatchEntry, batch_id: str) -> None:
        self._append({"ev": "created", "local": entry.local, "batch_id": batch_id})

    def moved(self, entry: BatchEntry, endpoint: str, key_hash: str) -> None:
        """A batch the provider never created goes to another endpoint (its key was rejected)."""
        self._append({"ev": "moved", "local": entry.local, "endpoint": endpoint, "key_hash": key_hash})

    def closed(self, entry: BatchEntry, retry: list[int], *, count: bool = True) -> None:
        """The batch is done with: its answers are durable; `retry` rows go round again."""
        self._append({"ev": "closed", "local": entry.local, "retry": ranges(retry), "count": count,
                      "status": entry.status})

    def _append(self, event: dict) -> None:
        if self._fd is None:
            self._open()
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        try:
            os.write(self._fd, line)
            os.fsync(self._fd)
        except OSError as err:
            raise CheckpointError(f"cannot write batch journal {self.path}: {err}") from err
        self._apply(event)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if fresh:
            self.token = secrets.token_hex(6)
            os.write(self._fd, (json.dumps({"ev": "journal", "v": VERSION, "token": self.token}) + "\n").encode())
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def clear(self) -> None:
        """The job is complete: remove the journal and the batches' local files."""
        self.close()
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def journal_path(checkpoint_path: Path) -> Path:
    """`checkpoints/<run>_checkpoint.pkl` → `checkpoints/<run>_batches.jsonl`."""
    name = checkpoint_path.name
    stem = name[:-len("_checkpoint.pkl")] if name.endswith("_checkpoint.pkl") else checkpoint_path.stem
    return checkpoint_path.with_name(f"{stem}_batches.jsonl")
