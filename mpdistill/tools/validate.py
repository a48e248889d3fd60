"""Check an output file line by line, repair it (keep a backup copy), and list the rows still to do.

Checks: every line a JSON object with the required fields, no duplicate ids or lines, no ids the
input does not have, no torn last line. `validate_command` is the `--validate` mode of the CLI.
"""
from __future__ import annotations

import heapq
import json
import logging
import os
import shutil
import stat
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..state.checkpoint import CheckpointManager
from ..config import RunConfig
from ..errors import InputFileError, OutputError
from ..outputs.batch import is_batch_output
from ..state.files import atomic_write
from ..outputs.scan import line_key
from ..inputs.jsonl import BadRow, Blank, JsonlSource

log = logging.getLogger(__name__)

from ..exitcodes import EXIT_OK, EXIT_REPAIRED, EXIT_USAGE

REQUIRED_KEYS = ("input_prompt", "images", "answer", "processed_at")
_NO_ROW, _NAMELESS = 0, 1      # codes of a blank input line and of a bad input row without an id


def _id_code(rid: str) -> int:
    """A 64-bit code of an id: the input index keeps codes, not strings, to stay small."""
    h = hash(rid)
    return h if h not in (_NO_ROW, _NAMELESS) else 2


class InputIndex:
    """The id of every input line, as one 64-bit code per line (line k at index k-1)."""

    def __init__(self) -> None:
        self._codes = array("q")
        self.rows = 0

    @classmethod
    def from_rows(cls, rows: Iterable, limit: int | None = None) -> "InputIndex":
        """Index `JsonlSource.rows()` output; past `limit` usable-or-bad rows, lines count as blank."""
        index = cls()
        for entry in rows:
            usable = not isinstance(entry, Blank) and (limit is None or index.rows < limit)
            index._codes.append(index._code(entry) if usable else _NO_ROW)
            index.rows += usable
        return index

    @staticmethod
    def _code(entry) -> int:
        if isinstance(entry, BadRow) and entry.id is None:
            return _NAMELESS
        return _id_code(entry.id)

    def __len__(self) -> int:
        return len(self._codes)

    def knows(self, key: int, rid: str) -> bool:
        """True when input line `key` is a row with this id."""
        return 1 <= key <= len(self._codes) and self._codes[key - 1] == _id_code(rid)

    def row_keys(self) -> Iterator[int]:
        """The keys of the lines that are rows (not blank), in order."""
        return (k for k, code in enumerate(self._codes, start=1) if code != _NO_ROW)


@dataclass(frozen=True)
class Report:
    """What `check_output` found. `drop` holds the physical line numbers a repair removes."""

    path: Path
    size: int
    mtime_ns: int
    lines: int
    valid: int
    bad_lines: int
    missing_fields: int
    duplicates: int
    unknown: int
    torn_tail: bool
    drop: frozenset[int] = field(default=frozenset(), repr=False)
    present: bytearray | None = field(default=None, repr=False, compare=False)  # kept input keys

    @property
    def sound(self) -> bool:
        return not self.drop


@dataclass(frozen=True)
class Todo:
    """Input rows with no line in the output: `missing` (nowhere) and `failed` (in the errors file)."""

    rows: int
    missing: array
    failed: array


def classify(raw: bytes, inputs: InputIndex | None) -> tuple[str, int | None, str | None]:
    """(verdict, line, id) of one complete output line; verdict: ok, bad, fields or unknown."""
    try:
        obj = json.loads(raw)
    except ValueError:       # JSONDecodeError and UnicodeDecodeError alike
        return "bad", None, None
    if not isinstance(obj, dict):
        return "bad", None, None
    if is_batch_output(obj):   # --output-format openai-batch: the custom_id is the row's id
        key, rid = obj.get("line"), obj.get("custom_id")
        required = ("response",)
    else:
        key, rid = obj.get("line"), obj.get("id")
        required = REQUIRED_KEYS
    if (not isinstance(key, int) or isinstance(key, bool) or not isinstance(rid, str)
            or any(name not in obj for name in required)):
        return "fields", None, None
    if inputs is not None and not inputs.knows(key, rid):
        return "unknown", key, rid
    return "ok", key, rid


class _Tally:
    """Counters filled while one output file is read."""

    def __init__(self, inputs: InputIndex | None) -> None:
        self.counts = {"lines": 0, "valid": 0, "bad": 0, "fields": 0, "duplicates": 0, "unknown": 0}
        self.drop: set[int] = set()
        self.torn = False
        self.seen_ids: set[str] = set()
        self.seen_lines: set[int] = set()
        self.present = bytearray(len(inputs) + 1) if inputs is not None else None

    def add(self, number: int, raw: bytes, inputs: InputIndex | None) -> None:
        self.counts["lines"] += 1
        if not raw.endswith(b"\n"):
            self.torn = True
            self.drop.add(number)
            return
        verdict, key, rid = classify(raw, inputs)
        if verdict == "ok" and (rid in self.seen_ids or key in self.seen_lines):
            verdict = "duplicates"
        if verdict != "ok":
            self.counts[verdict] += 1
            self.drop.add(number)
            return
        self.counts["valid"] += 1
        self.seen_ids.add(rid)
        self.seen_lines.add(key)
        if self.present is not None:
            self.present[key] = 1


def check_output(path: Path, inputs: InputIndex | None = None) -> Report:
    """Read `path` once, line by line; OSError if it cannot be read."""
    path = Path(path)
    tally = _Tally(inputs)
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        for number, raw in enumerate(f, start=1):
            tally.add(number, raw, inputs)
    c = tally.counts
    return Report(path, st.st_size, st.st_mtime_ns, c["lines"], c["valid"], c["bad"], c["fields"],
                  c["duplicates"], c["unknown"], tally.torn, frozenset(tally.drop), tally.present)


def error_keys(errors: Path) -> Iterator[int]:
    """The row keys of the complete lines of an errors file (none if there is no file)."""
    if not errors.exists():
        return
    with open(errors, "rb") as f:
        for raw in f:
            key = line_key(raw.rstrip(b"\n")) if raw.endswith(b"\n") else None
            if key is not None:
                yield key


def todo(inputs: InputIndex, report: Report, errors: Path) -> Todo:
    """The input rows the output does not hold, split by whether the errors file has them."""
    in_errors = bytearray(len(inputs) + 1)
    for key in error_keys(Path(errors)):
        if 1 <= key <= len(inputs):
            in_errors[key] = 1
    missing, failed = array("q"), array("q")
    for key in inputs.row_keys():
        if not report.present[key]:
            (failed if in_errors[key] else missing).append(key)
    return Todo(inputs.rows, missing, failed)


# --- writing ------------------------------------------------------------------------------


def copy_aside(path: Path) -> Path:
    """Copy `path` to `path.bak-YYYYmmdd-HHMMSS` (plus `-N` if taken), durably; the original stays."""
    base = f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}"
    target, counter = path.with_name(base), 1
    while True:
        try:
            dst = open(target, "xb")
            break
        except FileExistsError:
            target, counter = path.with_name(f"{base}-{counter}"), counter + 1
    with dst, open(path, "rb") as src:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    shutil.copystat(path, target)
    return target


def _kept_lines(path: Path, drop: frozenset[int]) -> Iterator[bytes]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number not in drop:
                yield raw


def _ensure_unchanged(report: Report) -> None:
    st = report.path.stat()
    if (st.st_size, st.st_mtime_ns) != (report.size, report.mtime_ns):
        raise OutputError(f"{report.path} changed while it was being validated; is a run still "
                          f"writing it? Stop the run and validate again")


def repair(report: Report) -> Path:
    """Keep a backup copy, then atomically replace the file with its good lines; return the backup."""
    path = report.path
    _ensure_unchanged(report)
    try:
        backup = copy_aside(path)
        mode = stat.S_IMODE(path.stat().st_mode)
        atomic_write(path, _kept_lines(path, report.drop), mode=mode,
                     before_replace=lambda: _ensure_unchanged(report))
    except OSError as err:
        raise OutputError(f"cannot repair {path}: {err}") from err
    log.info("repaired %s: %d line(s) dropped, original kept as %s", path, len(report.drop), backup)
    return backup


def emit_retry(input_path: Path, keys: Iterable[int], dest: Path) -> int:
    """Write the raw input lines of `keys` (ascending) to `dest` as a JSONL; return how many."""
    picked = _Picker(Path(input_path), keys)
    try:
        atomic_write(Path(dest), picked.lines())
    except OSError as err:
        raise OutputError(f"cannot write retry file {dest}: {err}") from err
    return picked.count


class _Picker:
    """Streams the input lines whose keys are wanted, as they are (newline-terminated)."""

    def __init__(self, path: Path, keys: Iterable[int]) -> None:
        self.path, self.wanted, self.count = path, iter(keys), 0

    def lines(self) -> Iterator[bytes]:
        nxt = next(self.wanted, None)
        with open(self.path, "rb") as f:
            for key, raw in enumerate(f, start=1):
                if nxt is None:
                    return
                if key == nxt:
                    self.count += 1
                    nxt = next(self.wanted, None)
                    yield raw if raw.endswith(b"\n") else raw + b"\n"


def clear_run_checkpoint(cfg: RunConfig) -> Path | None:
    """Remove the run's checkpoint so the next run rebuilds its progress from the repaired files."""
    ckpt = CheckpointManager(cfg.checkpoint_interval, name=cfg.name, directory=cfg.checkpoint_dir)
    if not ckpt.path.exists():
        return None
    ckpt.clear()
    return ckpt.path


# --- the command ----------------------------------------------------------------------------


def validate_command(cfg: RunConfig, emit_retry: str | None = None) -> int:
    """`--validate [--emit-retry FILE]`: check, repair if needed, report; exit 0, 4, or 2."""
    output, dest = cfg.output_path, emit_retry
    usage = _usage_problem(cfg, output, dest)
    if usage:
        print(f"mpdistill: error: {usage}", file=sys.stderr)
        return EXIT_USAGE
    inputs = _read_input(cfg) if cfg.input else None
    try:
        report = check_output(output, inputs)
    except OSError as err:
        print(f"mpdistill: error: cannot read output {output}: {err.strerror or err}",
              file=sys.stderr)
        return EXIT_USAGE
    print(format_report(report))
    if not report.sound:
        backup = repair(report)
        cleared = clear_run_checkpoint(cfg)
        print(format_repair(report, backup, cleared))
    if inputs is not None:
        left = todo(inputs, report, cfg.errors_path)
        print(format_todo(cfg.input, left))
        if dest:
            n = emit_retry_file(cfg.input, left, Path(dest))
            print(f"Retry file {dest}: {n} row(s) to run again "
                  f"({len(left.missing)} missing + {len(left.failed)} failed)")
    return EXIT_OK if report.sound else EXIT_REPAIRED


def emit_retry_file(input_path: str, left: Todo, dest: Path) -> int:
    return emit_retry(Path(input_path), heapq.merge(left.missing, left.failed), dest)


def _usage_problem(cfg: RunConfig, output: Path, dest: str | None) -> str | None:
    if dest is None:
        return None
    if not cfg.input:
        return "--emit-retry needs the input (-i/--input) to copy the rows from"
    targets = {Path(p).resolve() for p in (cfg.input, output, cfg.errors_path)}
    if Path(dest).resolve() in targets:
        return f"--emit-retry {dest} would overwrite the run's own input, output or errors file"
    return None


def _read_input(cfg: RunConfig) -> InputIndex:
    source = JsonlSource(Path(cfg.input), system=cfg.system, max_line_bytes=cfg.max_line_bytes)
    try:
        return InputIndex.from_rows(source.rows(), cfg.limit)
    except OSError as err:
        raise InputFileError(f"cannot read input {cfg.input}: {err.strerror or err}") from err


def format_report(r: Report) -> str:
    state = "OK" if r.sound else "CORRUPT"
    return "\n".join([
        f"Output {r.path}: {state}: {r.lines} line(s), {r.valid} valid row(s)",
        f"  unreadable lines (not a JSON object): {r.bad_lines}",
        f"  missing or wrong required fields:     {r.missing_fields}",
        f"  duplicate ids or lines:               {r.duplicates}",
        f"  ids not in the input:                 {r.unknown}",
        f"  torn last line:                       {'yes' if r.torn_tail else 'no'}",
    ])


def format_repair(r: Report, backup: Path, cleared: Path | None) -> str:
    text = (f"Repaired {r.path}: {len(r.drop)} line(s) dropped, {r.valid} row(s) kept; "
            f"the original is kept as {backup}")
    if cleared is not None:
        text += (f"\nCheckpoint {cleared} removed: the next run rebuilds its progress "
                 f"from the repaired output and the errors file")
    return text


def format_todo(input_path: str, left: Todo) -> str:
    done = left.rows - len(left.missing) - len(left.failed)
    return (f"Input {input_path}: {left.rows} row(s): {done} done, {len(left.failed)} failed "
            f"(in the errors file), {len(left.missing)} missing (still to run)")
