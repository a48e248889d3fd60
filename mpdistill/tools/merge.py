"""Merge the chunks' results of a split input back into one output per model (`mpdistill merge`).

    DIR/merged/<alias>/results.jsonl       written by merge (+ results.errors.jsonl, stats.json)

Merge finds `chunk_NNNN/<alias>/results.jsonl`, `<alias>_results.jsonl` files and a plain
`results.jsonl` in a chunk folder (alias "default"). Merged lines carry their original line number
in `"line"`, and rows known by their line number (no id) get that number as their id, so merged
ids equal those of an unsplit run (`outputs.identity` is the one rule).
"""
from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterator

from ..config import OutputFiles
from ..state.files import atomic_write, atomic_writer
from ..state.lock import OutputLock
from ..errors import ConfigError, InputFileError, OutputError
from ..outputs import identity

log = logging.getLogger(__name__)

from .split import _CHUNK_NAME, DEFAULT_ALIAS, MERGED, read_manifest, row_id


# ---- merge: finding the parts --------------------------------------------------------------------

@dataclass
class Part:
    """The result and error files of one model for one chunk."""

    label: str                      # the chunk folder, relative to the merged dir ("." for none)
    alias: str
    offset: int | None = None       # original line = chunk line + offset (from the manifest)
    order: int = 1 << 30
    results: Path | None = None
    errors: Path | None = None


def _classify(rel: Path, chunk_dirs: set[str]) -> tuple[str, str, str] | None:
    """(kind, alias, chunk label) of a file under the merged dir, or None when it is not a result file."""
    name, parent = rel.name, rel.parent
    if name in ("results.jsonl", "results.errors.jsonl", "errors.jsonl"):
        kind = "results" if name == "results.jsonl" else "errors"
        if parent == Path(".") or parent.name in chunk_dirs or _CHUNK_NAME.match(parent.name):
            return kind, DEFAULT_ALIAS, str(parent)
        return kind, parent.name, str(parent.parent)
    for suffix, kind in (("_results.jsonl", "results"), ("_results.errors.jsonl", "errors")):
        if name.endswith(suffix) and len(name) > len(suffix):
            return kind, name[:-len(suffix)], str(parent)
    return None


def find_parts(directory: Path, manifest: dict | None) -> dict[str, list[Part]]:
    """Every model's parts under `directory` (not under merged/), in chunk order."""
    offsets = {Path(e["file"]).stem: (i, e["first_line"] - 1)
               for i, e in enumerate((manifest or {}).get("files", []))}
    parts: dict[tuple[str, str], Part] = {}
    for path in sorted(directory.rglob("*.jsonl")):
        rel = path.relative_to(directory)
        found = _classify(rel, set(offsets)) if rel.parts[0] != MERGED else None
        if found is None:
            continue
        kind, alias, label = found
        # No manifest: the parts are runs over the input itself, so their line numbers are its own.
        order, offset = offsets.get(Path(label).name, (1 << 30, None if manifest else 0))
        part = parts.setdefault((alias, label), Part(label, alias, offset, order))
        if kind == "errors" and part.errors is not None:
            log.warning("%s: two errors files for %s; using %s", label, alias, part.errors)
            continue
        setattr(part, kind, path)
    by_alias: dict[str, list[Part]] = {}
    for part in sorted(parts.values(), key=lambda p: (p.order, p.label)):
        by_alias.setdefault(part.alias, []).append(part)
    return by_alias


# ---- merge: one model ---------------------------------------------------------------------------

@dataclass
class ModelMerge:
    """Counts and id sets of one model's merge (the sets are what `missing` is counted against)."""

    files: int = 0
    rows: int = 0
    duplicates: int = 0
    bad_lines: int = 0
    succeeded: set = field(default_factory=set)
    failed: set = field(default_factory=set)
    missing: int | None = None

    def as_dict(self, output: Path, errors: Path | None) -> dict:
        return {"files": self.files, "rows": self.rows, "duplicates": self.duplicates,
                "succeeded": len(self.succeeded), "failed": len(self.failed), "missing": self.missing,
                "bad_lines": self.bad_lines, "output": str(output),
                "errors": None if errors is None else str(errors)}


def _records(path: Path, part: Part, merge: ModelMerge) -> Iterator[tuple[str, bytes]]:
    """(identity, line to write) for each readable line of a part's file."""
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                merge.bad_lines += 1
                continue
            if not isinstance(obj, dict):
                merge.bad_lines += 1
                continue
            yield _identity(obj, part), _relined(obj, raw, part)


def _identity(obj: dict, part: Part) -> str:
    """The identity of an output/errors line in the unsplit input (rows known by their line number
    are placed by the manifest's offset; without one, by their chunk)."""
    found = identity.record_identity(obj)
    line = identity.record_line(obj)
    if found is None or (line is not None and found == identity.line_key(line)):
        if line is not None and part.offset is not None:
            return identity.line_key(line + part.offset)
        return f"{part.label}#{line}"
    return found


def _relined(obj: dict, raw: bytes, part: Part) -> bytes:
    """The line with `"line"` (first key) set to the original input line number when known, and
    the id of a row known by its line number set to that number."""
    line = identity.record_line(obj)
    if part.offset is None or line is None:
        return raw if raw.endswith(b"\n") else raw + b"\n"
    rest = {k: v for k, v in obj.items() if k != "line"}
    if rest.get(identity.IMPLIED) is True:
        rest[_implied_field(rest)] = str(line + part.offset)
    return (json.dumps({"line": line + part.offset, **rest}, ensure_ascii=False) + "\n").encode("utf-8")


def _implied_field(record: dict) -> str:
    """Where a written line keeps a line-number id: `custom_id` in Batch output lines, else `id`."""
    return "custom_id" if identity.is_batch_output(record) else "id"


def _merge_results(parts: list[Part], out: IO[bytes], merge: ModelMerge) -> None:
    for part in parts:
        if part.results is None:
            continue
        merge.files += 1
        for rid, line in _records(part.results, part, merge):
            merge.rows += 1
            if rid in merge.succeeded:
                merge.duplicates += 1
                continue
            merge.succeeded.add(rid)
            out.write(line)


def _merge_errors(parts: list[Part], out: IO[bytes] | None, merge: ModelMerge) -> None:
    """Failed ids: error rows whose id never succeeded, first one kept."""
    for part in parts:
        if part.errors is None:
            continue
        for rid, line in _records(part.errors, part, merge):
            if rid in merge.succeeded or rid in merge.failed:
                continue
            merge.failed.add(rid)
            if out is not None:
                out.write(line)


def merge_model(parts: list[Part], target: Path, merge_errors: bool) -> ModelMerge:
    """Write one model's merged results (and errors) under `target`; return its counts."""
    target.mkdir(parents=True, exist_ok=True)
    merge = ModelMerge()
    files = OutputFiles(target / "results.jsonl")
    results, errors = files.output, files.errors
    with OutputLock(files.lock, results, purpose="merge"):   # never under a run writing there
        with _atomic_file(results) as out:
            _merge_results(parts, out, merge)
        if merge_errors:
            with _atomic_file(errors) as out:
                _merge_errors(parts, out, merge)
        else:
            errors.unlink(missing_ok=True)    # a stale file from an earlier merge would mislead
            _merge_errors(parts, None, merge)
    return merge


# ---- merge: the whole folder -------------------------------------------------------------------

def merge_dir(dir: str | os.PathLike, models: list[str] | None = None, merge_errors: bool = False,
              input: str | os.PathLike | None = None) -> dict:
    """Merge every chunk's results per model into DIR/merged/; write and return the stats."""
    directory = Path(dir)
    if not directory.is_dir():
        raise InputFileError(f"merge: directory not found: {directory}")
    manifest = read_manifest(directory)
    by_alias = _select(find_parts(directory, manifest), models, directory)
    input_path = _input_for_missing(input, manifest)
    merges = {alias: merge_model(parts, directory / MERGED / alias, merge_errors)
              for alias, parts in by_alias.items()}
    if input_path is not None:
        count_missing(input_path, merges)
    stats = {"dir": str(directory), "input": None if input_path is None else str(input_path),
             "merged_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "models": {a: m.as_dict(directory / MERGED / a / "results.jsonl",
                                     directory / MERGED / a / "results.errors.jsonl" if merge_errors else None)
                        for a, m in merges.items()}}
    atomic_write(directory / MERGED / "stats.json", (json.dumps(stats, indent=2) + "\n").encode("utf-8"))
    return stats


def _select(by_alias: dict[str, list[Part]], models: list[str] | None, directory: Path) -> dict:
    if not by_alias:
        raise ConfigError(f"merge: no results under {directory} "
                          f"(expected {directory}/<chunk>/<model>/results.jsonl)")
    if not models:
        return by_alias
    unknown = [m for m in models if m not in by_alias]
    if unknown:
        raise ConfigError(f"merge: no results for model(s) {', '.join(unknown)} under {directory} "
                          f"(found: {', '.join(sorted(by_alias))})")
    return {m: by_alias[m] for m in dict.fromkeys(models)}


def _input_for_missing(input, manifest: dict | None) -> Path | None:
    """The input to count missing rows against: the one given, else the manifest's if it still exists."""
    if input is not None:
        path = Path(input)
        if not path.is_file():
            raise InputFileError(f"merge: input file not found: {path}")
        return path
    if manifest and manifest.get("input"):
        path = Path(manifest["input"])
        if path.is_file():
            return path
        log.warning("the split input %s is gone: missing rows are not counted", path)
    return None


def input_ids(path: Path) -> Iterator[str]:
    """The identity of every non-blank input line, as a run gives it."""
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = None
            yield row_id(obj, line)


def count_missing(path: Path, merges: dict[str, ModelMerge]) -> None:
    """Set each model's `missing`: input rows with neither a result nor an error row."""
    for merge in merges.values():
        merge.missing = 0
    for rid in input_ids(path):
        for merge in merges.values():
            if rid not in merge.succeeded and rid not in merge.failed:
                merge.missing += 1


# ---- files -------------------------------------------------------------------------------------

@contextmanager
def _atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A merged file, written beside its target and renamed over it only when complete."""
    try:
        with atomic_writer(path) as f:
            yield f
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
