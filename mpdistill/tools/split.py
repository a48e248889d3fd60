"""Split an input JSONL into line-range chunks for separate runs (`mpdistill split`).

Layout (one folder holds everything; runs write beside their chunk):

    DIR/manifest.json                      written by split, last (input, size, line ranges)
    DIR/chunk_0000.jsonl …                 chunk i = input lines [i*S+1, (i+1)*S], S = ceil(N/chunks)
    DIR/chunk_0000/<alias>/results.jsonl   a run's output for that chunk (+ results.errors.jsonl)

Chunks are byte-for-byte copies of the input lines; `merge` puts the results back together.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from ..state.files import atomic_write, atomic_writer
from ..errors import ConfigError, InputFileError
from ..lines import count_lines
from ..outputs import identity

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MERGED = "merged"
DEFAULT_ALIAS = "default"
_CHUNK_NAME = re.compile(r"^chunk_\d{4,}$")


# ---- ids and lines -----------------------------------------------------------------------------

def row_id(obj: object, line: int) -> str:
    """The identity mpdistill gives input line `line` (the one rule, `outputs.identity`)."""
    return identity.identity(obj, line)




# ---- split -------------------------------------------------------------------------------------

def chunk_ranges(lines: int, chunks: int) -> list[tuple[int, int]]:
    """0-based [start, end) line ranges: chunk i gets [i*S, (i+1)*S) with S = ceil(lines/chunks)."""
    size = max(1, math.ceil(lines / chunks))
    return [(min(i * size, lines), min((i + 1) * size, lines)) for i in range(chunks)]


def chunk_name(index: int) -> str:
    return f"chunk_{index:04d}"


def split_file(input: str | os.PathLike, chunks: int, out_dir: str | os.PathLike) -> list[Path]:
    """Write `chunks` chunk files (some may be empty) and the manifest; return the chunk paths."""
    src, out = Path(input), Path(out_dir)
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks <= 0:
        raise ConfigError(f"--chunks must be an integer > 0, got {chunks!r}")
    if not src.is_file():
        raise InputFileError(f"input file not found: {src}")
    lines = count_lines(src)
    manifest = _manifest(src, lines, chunks)
    _check_previous(out, manifest)
    out.mkdir(parents=True, exist_ok=True)
    paths = _write_chunks(src, out, manifest["files"])
    atomic_write(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    log.info("split %s (%d lines) into %d chunks in %s", src, lines, chunks, out)
    return paths


def _manifest(src: Path, lines: int, chunks: int) -> dict:
    stat = src.stat()
    files = [{"file": f"{chunk_name(i)}.jsonl", "first_line": start + 1, "last_line": end,
              "lines": end - start} for i, (start, end) in enumerate(chunk_ranges(lines, chunks))]
    return {"format": 1, "input": str(src.resolve()), "input_size": stat.st_size,
            "input_mtime_ns": stat.st_mtime_ns, "lines": lines, "chunks": chunks,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "files": files}


_SAME_SPLIT = ("input", "input_size", "input_mtime_ns", "chunks")


def _check_previous(out: Path, manifest: dict) -> None:
    """A folder may be split into again only for the same input and chunk count (runs may live there)."""
    old = read_manifest(out)
    if old is not None and any(old.get(k) != manifest[k] for k in _SAME_SPLIT):
        raise ConfigError(f"{out} already holds a different split ({old.get('input')}, "
                          f"{old.get('chunks')} chunks); choose another --out-dir")


def _write_chunks(src: Path, out: Path, files: list[dict]) -> list[Path]:
    paths = []
    with open(src, "rb") as f:
        for entry in files:
            path = out / entry["file"]
            with atomic_writer(path) as chunk:
                for _ in range(entry["lines"]):
                    raw = f.readline()
                    chunk.write(raw if raw.endswith(b"\n") else raw + b"\n")
            paths.append(path)
    return paths


def read_manifest(directory: Path) -> dict | None:
    """The split manifest of `directory`, or None when there is none."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the split manifest: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise ConfigError(f"{path}: not a split manifest")
    return data
