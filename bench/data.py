"""Generated bench data: input files, an output file already holding rows, and a matching checkpoint.

The output lines have the shape `Runner._result_record` writes (`{"line": N, "id": ...`), so a
resume reads them exactly as it reads a real run's output.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from mpdistill.plan import default_jobs, job_fields
from mpdistill.config import OutputFiles, RunConfig
from mpdistill.state.checkpoint import CheckpointManager
from mpdistill.state.fingerprint import JobRecord, config_fingerprint, fingerprint_input, write_job

MODEL = "bench-model"
_CHUNK_ROWS = 20_000


def input_line(key: int) -> str:
    """Row `key` (1-based) of every bench input: a short prompt with its own id."""
    return f'{{"id": "r{key}", "prompt": "Say something short about row {key}."}}\n'


def write_input(path: Path, rows: int) -> Path:
    """An input JSONL of `rows` rows (skipped when a file of that exact row count is there)."""
    if path.exists() and _line_count(path) == rows:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for start in range(1, rows + 1, _CHUNK_ROWS):
            f.write("".join(input_line(k) for k in range(start, min(start + _CHUNK_ROWS, rows + 1))))
    return path


def _line_count(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def input_offset(key: int) -> int:
    """Where row `key` starts in a file made by `write_input`: rows differ only in their digits."""
    base = len(input_line(0)) - 2  # the line of key 0 holds two one-digit numbers
    offset, digits, lo = 0, 1, 1
    while lo < key:
        hi = min(key, lo * 10)
        offset += (hi - lo) * (base + 2 * digits)
        lo, digits = hi, digits + 1
    return offset


def output_line(key: int, stamp: str = "2025-01-01T00:00:00.000+00:00") -> str:
    """An answered row as the writer writes it (the fields `Runner._result_record` puts in)."""
    record = {"line": key, "id": f"r{key}", "input_prompt": f"Say something short about row {key}.",
              "images": [], "answer": "A fixed answer of a plausible length for a short completion.",
              "reasoning": None, "finish_reason": "stop",
              "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
              "model": MODEL, "latency_s": 0.2, "attempts": 1, "endpoint": "default", "processed_at": stamp}
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_output(path: Path, rows: int) -> int:
    """An output file holding rows 1..`rows` already answered; returns its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    template = output_line(0).replace('"line": 0', '"line": {k}').replace('"r0"', '"r{k}"') \
        .replace("about row 0.", "about row {k}.")
    with open(path, "w", encoding="utf-8") as f:
        for start in range(1, rows + 1, _CHUNK_ROWS):
            f.write("".join(template.replace("{k}", str(k)) for k in range(start, min(start + _CHUNK_ROWS, rows + 1))))
        f.flush()
        os.fsync(f.fileno())
    return path.stat().st_size


def write_foreign_output(path: Path, rows: int) -> int:
    """Rows 1..`rows` answered in the older per-process scripts' format (no `line`, ids only),
    written newest first; returns the size."""
    template = json.dumps({"id": "r{k}", "input_prompt": "Say something short about row {k}.", "images": [],
                           "answer": "A fixed answer of a plausible length for a short completion.",
                           "processed_at": "2025-01-01T00:00:00"}) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        for stop in range(rows, 0, -_CHUNK_ROWS):
            keys = range(stop, max(stop - _CHUNK_ROWS, 0), -1)
            f.write("".join(template.replace("{k}", str(k)) for k in keys))
        f.flush()
        os.fsync(f.fileno())
    return path.stat().st_size


def write_job_record(input_path: Path, output_path: Path, cfg: RunConfig | None = None) -> Path:
    """The job record (`OUT.job.json`) the run that wrote `output_path` would have left."""
    cfg = cfg or RunConfig(model=MODEL, output=str(output_path))
    fields = job_fields(cfg, default_jobs(cfg)[0])
    files = OutputFiles(Path(output_path))
    write_job(files.job, JobRecord({**fields, "output_format": cfg.output_format}, fingerprint_input(input_path)))
    return files.job


def write_checkpoint(directory: Path, input_path: Path, output_path: Path, done: int,
                     cfg: RunConfig | None = None) -> Path:
    """The checkpoint a run that made rows 1..`done` durable would have saved (named after the output)."""
    cfg = cfg or RunConfig(model=MODEL, output=str(output_path))
    files = OutputFiles(Path(output_path), Path(directory))
    ckpt = CheckpointManager(save_interval=10, name=cfg.name, path=files.checkpoint)
    ckpt.mark_range(1, done)
    ckpt.mark_done(done, input_offset(done + 1))   # where row done+1 starts: the resume's seek point
    ckpt.output_offset = output_path.stat().st_size
    ckpt.output_lines = ckpt.ok = done
    ckpt.errors_lines = 0
    ckpt.meta["config_fingerprint"] = config_fingerprint(job_fields(cfg, default_jobs(cfg)[0]))
    ckpt.meta["output"] = str(Path(output_path).resolve())
    ckpt.save()
    return ckpt.path
