"""Check an output file line by line, repair it (keep a backup copy), and list the rows still to do.

Checks: every line a JSON object with the required fields, no duplicate ids or lines, no ids the
input does not have, no torn last line. `validate_command` is the `--validate` mode of the CLI.
"""
from __future__ import annotations

import heapq
import json
import logging
import os
import stat
import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..state.checkpoint import CheckpointManager, checkpoint_path
from ..config import RunConfig
from ..errors import InputFileError, OutputError, OutputInUseError
from ..outputs import identity as rowid
from ..outputs.identity import is_batch_output
from ..state.files import atomic_write, copy_aside
from ..state.lock import OutputLock
from ..inputs.jsonl import JsonlSource
from ..inputs.rows import BadRow, Blank

log = logging.getLogger(__name__)

from ..exitcodes import EXIT_OK, EXIT_REPAIRED, EXIT_USAGE

REQUIRED_KEYS = ("input_prompt", "images", "answer", "processed_at")
_NO_ROW = 0      # the code of a blank input line


def _id_code(ident: str) -> int:
    """A 64-bit code of an identity: the input index keeps codes, not strings, to stay small."""
    h = hash(ident)
    return h if h != _NO_ROW else 1


class InputIndex:
    """The identity of every input line (`outputs.identity`, the one rule), as one 64-bit code per
    line (line k at index k-1), and the line each identity is on."""

    def __init__(self) -> None:
        self._codes = array("q")
        self._where: dict[int, int] = {}
        self.rows = 0

    @classmethod
    def from_rows(cls, rows: Iterable, limit: int | None = None) -> "InputIndex":
        """Index `JsonlSource.rows()` output; past `limit` usable-or-bad rows, lines count as blank."""
        index = cls()
        for entry in rows:
            usable = not isinstance(entry, Blank) and (limit is None or index.rows < limit)
            code = _id_code(_identity(entry)) if usable else _NO_ROW
            index._codes.append(code)
            if usable:
                index._where.setdefault(code, entry.key)
            index.rows += usable
        return index

    def __len__(self) -> int:
        return len(self._codes)

    def key_of(self, ident: str) -> int | None:
        """The input line holding the row of this identity, or None when the input has none."""
        return self._where.get(_id_code(ident))

    def row_keys(self) -> Iterator[int]:
        """The keys of the lines that are rows (not blank), in order."""
        return (k for k, code in enumerate(self._codes, start=1) if code != _NO_ROW)


def _identity(entry) -> str:
    """A source entry's identity; a bad row is known by its id when it has one, else by its line."""
    if isinstance(entry, BadRow):
        return rowid.line_key(entry.key) if entry.id is None else rowid.id_key(entry.id)
    return entry.identity


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
    """(verdict, input line, identity) of one complete output line; verdict: ok, bad, fields or unknown.

    A line is known by its identity (`outputs.identity`), whoever wrote it: lines of other tools
    with the required fields and an id count as rows too.
    """
    try:
        obj = json.loads(raw)
    except ValueError:       # JSONDecodeError and UnicodeDecodeError alike
        return "bad", None, None
    if not isinstance(obj, dict):
        return "bad", None, None
    ident = rowid.record_identity(obj)
    required = ("response",) if is_batch_output(obj) else REQUIRED_KEYS
    if ident is None or any(name not in obj for name in required):
        return "fields", None, None
    if inputs is None:
        return "ok", None, ident
    key = inputs.key_of(ident)
    return ("unknown", None, ident) if key is None else ("ok", key, ident)


class _Tally:
    """Counters filled while one output file is read."""

    def __init__(self, inputs: InputIndex | None) -> None:
        self.counts = {"lines": 0, "valid": 0, "bad": 0, "fields": 0, "duplicates": 0, "unknown": 0}
        self.drop: set[int] = set()
        self.torn = False
        self.seen_ids: set[str] = set()
        self.present = bytearray(len(inputs) + 1) if inputs is not None else None

    def add(self, number: int, raw: bytes, inputs: InputIndex | None) -> None:
        self.counts["lines"] += 1
        if not raw.endswith(b"\n"):
            self.torn = True
            self.drop.add(number)
            return
        verdict, key, rid = classify(raw, inputs)
        if verdict == "ok" and rid in self.seen_ids:
            verdict = "duplicates"
        if verdict != "ok":
            self.counts[verdict] += 1
            self.drop.add(number)
            return
        self.counts["valid"] += 1
        self.seen_ids.add(rid)
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


def error_identities(errors: Path) -> Iterator[str]:
    """The identities of the complete lines of an errors file (none if there is no file)."""
    if not errors.exists():
        return
    with open(errors, "rb") as f:
        for raw in f:
            try:
                ident = rowid.record_identity(json.loads(raw)) if raw.endswith(b"\n") else None
            except ValueError:
                continue
            if ident is not None:
                yield ident


def todo(inputs: InputIndex, report: Report, errors: Path) -> Todo:
    """The input rows the output does not hold, split by whether the errors file has them."""
    in_errors = bytearray(len(inputs) + 1)
    for ident in error_identities(Path(errors)):
        key = inputs.key_of(ident)
        if key is not None:
            in_errors[key] = 1
    missing, failed = array("q"), array("q")
    for key in inputs.row_keys():
        if not report.present[key]:
            (failed if in_errors[key] else missing).append(key)
    return Todo(inputs.rows, missing, failed)


# --- writing ------------------------------------------------------------------------------


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
    """Remove the run's checkpoint (named after the output; or after the model, as older versions
    named it) so the next run rebuilds its progress from the repaired files."""
    for path in (cfg.files.checkpoint, checkpoint_path(cfg.name, cfg.checkpoint_dir)):
        ckpt = CheckpointManager(cfg.checkpoint_interval, name=cfg.name, path=path)
        if ckpt.path.exists():
            ckpt.clear()
            return ckpt.path
    return None


# --- the command ----------------------------------------------------------------------------


def validate_command(cfg: RunConfig, emit_retry: str | None = None) -> int:
    """`--validate [--emit-retry FILE]`: check, repair if needed, report; exit 0, 4, or 2."""
    output, dest = cfg.output_path, emit_retry
    usage = _usage_problem(cfg, output, dest)
    if usage:
        print(f"mpdistill: error: {usage}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with OutputLock(cfg.files.lock, output, purpose="validate"):   # never under a running run
            return _validate_locked(cfg, output, dest)
    except OutputInUseError as err:
        print(f"mpdistill: error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _validate_locked(cfg: RunConfig, output: Path, dest: str | None) -> int:
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
