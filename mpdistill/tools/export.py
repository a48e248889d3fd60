"""`mpdistill export OUTPUT --per-item DIR`: one file per answered row, streamed from the output.

    DIR/json_results/<id>_extracted.json   the row's `extracted` object, else {"answer": …}
    DIR/thinking_chains/<id>.txt           the row's reasoning, when it has any
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

from ..outputs import identity
from ..outputs.batch import from_batch_output, is_batch_output

log = logging.getLogger(__name__)

JSON_DIR, THINKING_DIR = "json_results", "thinking_chains"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_NAME_MAX = 120   # leaves room for the suffixes within the usual 255-byte file name limit


def export_per_item(output_path: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Write the per-row files of `output_path` under `out_dir`; returns the counts.

    Counts: rows (lines read as rows), json, thinking (files written), skipped (lines that are
    torn, not a JSON object, or carry no id). A later line with the same id overwrites the file.
    """
    json_dir, thinking_dir = Path(out_dir) / JSON_DIR, Path(out_dir) / THINKING_DIR
    json_dir.mkdir(parents=True, exist_ok=True)
    thinking_dir.mkdir(parents=True, exist_ok=True)
    counts = {"rows": 0, "json": 0, "thinking": 0, "skipped": 0}
    with open(output_path, "rb") as fh:
        for raw in fh:
            row = _row(raw)
            if row is None or _row_id(row) is None:
                counts["skipped"] += bool(raw.strip())
                continue
            counts["rows"] += 1
            name = safe_file_name(_row_id(row))
            _write(json_dir / f"{name}_extracted.json", json.dumps(_answer_object(row), ensure_ascii=False, indent=2))
            counts["json"] += 1
            reasoning = row.get("reasoning")
            if isinstance(reasoning, str) and reasoning.strip():
                _write(thinking_dir / f"{name}.txt", reasoning)
                counts["thinking"] += 1
    if counts["skipped"]:
        log.warning("%s: %d line(s) skipped (torn, not a row, or no id)", output_path, counts["skipped"])
    return counts


def safe_file_name(row_id: object) -> str:
    """A file name for a row id that stays inside its folder and never collides with another id's.

    Ids that are already safe are kept; others get unsafe characters replaced and a short hash of
    the real id appended, so `a/b` and `a_b` stay two files. `..`, `.` and `` become `_…` names.
    """
    text = identity.shown(row_id)
    safe = _UNSAFE.sub("_", text)
    if safe == text and not safe.startswith(".") and 0 < len(safe) <= _NAME_MAX:
        return safe
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{('_' + safe.lstrip('.'))[:_NAME_MAX]}-{digest}"


def _row(raw: bytes) -> dict | None:
    try:
        row = json.loads(raw)
    except ValueError:      # a torn last line of a run in progress, or garbage
        return None
    if is_batch_output(row):    # --output-format openai-batch: read the answer out of the body
        return from_batch_output(row)
    return row if isinstance(row, dict) else None


def _row_id(row: dict) -> object | None:
    """The row's id under the one rule (`outputs.identity`), else the line number it names."""
    rid = identity.record_id(row)
    return identity.record_line(row) if rid is None else rid


def _answer_object(row: dict) -> object:
    extracted = row.get("extracted")
    return extracted if extracted is not None else {"answer": row.get("answer")}


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
