"""Record which rows of a run are done, so that a rerun resumes exactly.

State is a contiguous watermark plus the sparse set of done keys above it, so a save costs
O(rows in flight), not O(rows done). Files are written atomically and read with a restricted unpickler.
"""
from __future__ import annotations

import functools
import glob
import logging
import os
import pickle
import threading
import time
from pathlib import Path

from mpdistill.config import CHECKPOINT_SUFFIX
from mpdistill.errors import CheckpointError
from mpdistill.state.ckptfile import FORMAT_VERSION, check_plain, read_state
from mpdistill.state.files import atomic_write, move_aside, safe_name

log = logging.getLogger(__name__)

SUFFIX = CHECKPOINT_SUFFIX


def _locked(method):
    """Run `method` holding the manager's lock: the writer thread marks rows while the manager
    thread reads them, and no reader may see a done row as not done mid-update."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper


class CheckpointManager:
    """The done keys of one run (watermark + sparse set), its offsets and counters, and their file.

    Every access goes through one lock (the writer thread marks, the manager thread reads).
    `path` names the file (runs name it after their output); else it is `directory/<name>_checkpoint.pkl`.
    """

    def __init__(self, save_interval: int = 10, name: str = "default",
                 directory: str | os.PathLike = "checkpoints", start: int = 1,
                 path: str | os.PathLike | None = None) -> None:
        if save_interval < 1:
            raise ValueError("save_interval must be >= 1")
        self._lock = threading.RLock()
        self.name = name
        self.path = Path(path) if path is not None else checkpoint_path(name, directory)
        self.save_interval = save_interval
        self.start = start
        self.reset()

    @_locked
    def reset(self) -> None:
        """Forget all state (start over); the file is left alone."""
        self.watermark: int = self.start
        self.sparse: set[int] = set()
        self._offsets: dict[int, int] = {}     # end offsets of sparse keys only
        self.input_position: tuple[int, int] | None = None
        self.output_offset = 0
        self.errors_offset = 0
        self.ok = 0
        self.failed = 0
        self.elapsed = 0.0
        self.meta: dict = {}
        self.saved_at: float | None = None
        self.output_lines: int | None = 0
        self.errors_lines: int | None = 0
        self.marks = 0
        self._unsaved_rows = 0

    # --- done keys -------------------------------------------------------------------------

    @_locked
    def is_done(self, key: int) -> bool:
        """True when row `key` is recorded as done."""
        return self.start <= key < self.watermark or key in self.sparse

    @_locked
    def mark_done(self, key: int, end_offset: int | None = None) -> None:
        """Record row `key` as done; `end_offset` is the input byte offset just after it, if known."""
        if key < self.start:
            raise ValueError(f"key {key} is below this run's start key {self.start}")
        if self.is_done(key):
            return
        if key != self.watermark:
            self.sparse.add(key)
            if end_offset is not None:
                self._offsets[key] = end_offset
            return
        self._pass(key, end_offset)
        self._advance()

    @_locked
    def mark_range(self, start: int, stop: int) -> None:
        """Record keys [start, stop) as done at once (a resume scan found them); offsets unknown."""
        if start > self.watermark or stop <= self.watermark:
            for key in range(max(start, self.start), stop):
                self.mark_done(key)
            return
        self.watermark = stop
        self.sparse = {k for k in self.sparse if k >= stop}
        self._offsets = {k: v for k, v in self._offsets.items() if k >= stop}
        self._advance()

    def _advance(self) -> None:
        """Move the watermark over the sparse keys that now continue it (watermark first, then the
        set: under the lock no reader sees it anyway, and without one a key is never in neither)."""
        while self.watermark in self.sparse:
            key = self.watermark
            self._pass(key, self._offsets.pop(key, None))
            self.sparse.discard(key)

    def _pass(self, key: int, end_offset: int | None) -> None:
        """Move the watermark over `key`; a known end offset becomes the new safe seek point."""
        self.watermark = key + 1
        if end_offset is not None:
            self.input_position = (key + 1, end_offset)

    @property
    def processed_indices(self) -> set[int]:
        """The full set of done keys (materialised: O(rows done))."""
        with self._lock:
            return set(range(self.start, self.watermark)) | self.sparse

    @property
    def processed_count(self) -> int:
        """How many keys are done, without materialising them."""
        with self._lock:
            return self.watermark - self.start + len(self.sparse)

    # --- counters and saving ---------------------------------------------------------------

    @_locked
    def record(self, *, output_offset: int, errors_offset: int, ok: int = 0, failed: int = 0,
               rows: int = 0, output_lines: int = 0, errors_lines: int = 0, marks: int = 0) -> bool:
        """Note what an fsync covered; save once `save_interval` rows were recorded. True if saved."""
        self.output_offset = output_offset
        self.errors_offset = errors_offset
        self.ok += ok
        self.failed += failed
        self.marks += marks
        if self.output_lines is not None:
            self.output_lines += output_lines
        if self.errors_lines is not None:
            self.errors_lines += errors_lines
        self._unsaved_rows += rows
        if self._unsaved_rows < self.save_interval:
            return False
        self.save()
        return True

    @_locked
    def to_dict(self) -> dict:
        """The plain data that is pickled (`offsets`: end offsets of sparse keys, when known)."""
        return {
            "version": FORMAT_VERSION, "name": self.name, "start": self.start,
            "watermark": self.watermark, "sparse": sorted(self.sparse),
            "offsets": dict(self._offsets), "input_position": self.input_position,
            "output_offset": self.output_offset, "errors_offset": self.errors_offset,
            "ok": self.ok, "failed": self.failed, "elapsed": float(self.elapsed),
            "saved_at": self.saved_at, "meta": dict(self.meta),
            "output_lines": self.output_lines, "errors_lines": self.errors_lines, "marks": self.marks,
        }

    @_locked
    def save(self) -> None:
        """Write the state atomically (temp file, fsync, rename, fsync dir), mode 0o600."""
        check_plain(self.meta)
        previous, self.saved_at = self.saved_at, time.time()
        data = pickle.dumps(self.to_dict(), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            atomic_write(self.path, data, mode=0o600, dir_mode=0o700)
        except OSError as err:
            self.saved_at = previous
            raise CheckpointError(f"cannot save checkpoint {self.path}: {err}") from err
        except BaseException:
            self.saved_at = previous
            raise
        self._unsaved_rows = 0
        log.debug("checkpoint %s saved: %d rows done (watermark %d, %d sparse)",
                  self.path, self.processed_count, self.watermark, len(self.sparse))

    @_locked
    def load(self) -> bool:
        """Load the file into this manager; False if there is none. Raises CheckpointError if unusable."""
        try:
            state = read_state(self.path)
        except FileNotFoundError:
            return False
        self._apply(state)
        log.info("resuming from checkpoint %s: %d rows done, watermark %d, %d sparse",
                 self.path, self.processed_count, self.watermark, len(self.sparse))
        return True

    def _apply(self, state: dict) -> None:
        """Adopt validated state; the file's start key wins, since the done keys are counted from it."""
        if state["start"] != self.start:
            log.warning("checkpoint %s starts at key %d, not %d; using the file's start",
                        self.path, state["start"], self.start)
        self.start, self.watermark = state["start"], state["watermark"]
        # A hand-edited file may list keys at or below the watermark: fold them in rather than refuse.
        self.sparse = {key for key in state["sparse"] if key >= self.watermark}
        self._offsets = {k: v for k, v in state["offsets"].items() if k in self.sparse}
        self.input_position = state["input_position"]
        self._advance()
        for name in ("output_offset", "errors_offset", "ok", "failed", "saved_at", "meta",
                     "output_lines", "errors_lines"):
            setattr(self, name, state[name])
        self.marks = state["marks"] or 0
        self.elapsed = float(state["elapsed"])
        self._unsaved_rows = 0

    def clear(self) -> None:
        """Remove the checkpoint file (and temp files a killed save left behind), if present."""
        _remove_checkpoint(self.path)


# --- module-level helpers ------------------------------------------------------------------


def checkpoint_path(name: str, directory: str | os.PathLike = "checkpoints") -> Path:
    """Where the checkpoint of run `name` lives."""
    return Path(directory) / f"{safe_name(name)}{SUFFIX}"


def _resolve(name: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """A run/model name, an output file or a path to a .pkl file -> the checkpoint path.

    Runs name checkpoints after their output, so a name is looked up among the checkpoints'
    recorded run names and outputs (an older version's `<name>_checkpoint.pkl` first).
    """
    if str(name).endswith(".pkl"):
        as_path, in_dir = Path(name), Path(directory) / name
        return in_dir if not as_path.exists() and in_dir.exists() else as_path
    named = checkpoint_path(str(name), directory)
    if named.exists():
        return named
    output = str(Path(name).resolve()) if str(name).endswith(".jsonl") else None
    for path in _checkpoint_files(directory):
        try:
            state = read_state(path)
        except (CheckpointError, OSError):
            continue
        if state["name"] == str(name) or (output and state["meta"].get("output") == output):
            return path
    return named


def _summary(state: dict, path: Path) -> dict:
    processed = state["watermark"] - state["start"] + len(state["sparse"])
    return {"name": state["name"], "path": path, "output": state["meta"].get("output"),
            "processed": processed, "ok": state["ok"],
            "failed": state["failed"], "elapsed": float(state["elapsed"]),
            "saved_at": state["saved_at"], "error": None}


def load_checkpoint(name: str | os.PathLike, directory: str | os.PathLike = "checkpoints") -> dict | None:
    """The checkpoint of `name` as a plain dict (processed_indices is the full set); None if missing."""
    path = _resolve(name, directory)
    try:
        state = read_state(path)
    except FileNotFoundError:
        return None
    info = dict(state)
    info.update(_summary(state, path))
    del info["error"]
    info["processed_indices"] = set(range(state["start"], state["watermark"])) | state["sparse"]
    return info


def _remove_checkpoint(path: Path) -> list[Path]:
    """Remove one checkpoint file and its leftover temp files; return what was removed."""
    leftovers = sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp")) if path.parent.is_dir() else []
    removed = []
    for victim in [path, *leftovers]:
        try:
            victim.unlink()
        except FileNotFoundError:
            continue
        removed.append(victim)
    return removed


def clear_checkpoint(name: str | os.PathLike | None = None,
                     directory: str | os.PathLike = "checkpoints") -> list[Path]:
    """Remove the checkpoint of `name`, or every checkpoint in `directory` when `name` is None.

    Each is removed holding its output's lock, so a running run's checkpoint is never pulled from
    under it: OutputInUseError (exit 2) names the holder, and nothing of that run is removed.
    """
    paths = [_resolve(name, directory)] if name is not None else _checkpoint_files(directory)
    removed = []
    for path in paths:
        with _output_lock(path):
            removed += _remove_checkpoint(path)
    for path in removed:
        log.info("removed checkpoint file %s", path)
    return removed


def _output_lock(path: Path):
    """The lock of the output a checkpoint file belongs to (recorded in it), or a no-op."""
    from contextlib import nullcontext
    from mpdistill.config import OutputFiles
    from mpdistill.state.lock import OutputLock
    try:
        output = read_state(path)["meta"].get("output")
    except (FileNotFoundError, CheckpointError, OSError):
        output = None
    if not output or not Path(output).parent.is_dir():
        return nullcontext()
    files = OutputFiles(Path(output))
    return OutputLock(files.lock, files.output, purpose="checkpoint clear")


def _checkpoint_files(directory: str | os.PathLike) -> list[Path]:
    folder = Path(directory)
    return sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []


def list_checkpoints(directory: str | os.PathLike = "checkpoints") -> list[dict]:
    """One summary per checkpoint in `directory`; unreadable ones carry an `error` string."""
    summaries = []
    for path in _checkpoint_files(directory):
        try:
            summaries.append(_summary(read_state(path), path))
        except (CheckpointError, OSError) as err:
            summaries.append({"name": path.name[:-len(SUFFIX)], "path": path, "output": None, "processed": None,
                              "ok": None, "failed": None, "elapsed": None, "saved_at": None,
                              "error": str(err)})
    return summaries


def backup_file(path: str | os.PathLike) -> Path:
    """Rename `path` to `path.bak-YYYYmmdd-HHMMSS` (plus `-N` if taken); return the new path."""
    return move_aside(path)
