"""The lines a run writes: one output record per answered row, one error record per failed row.

The head (`line`, then `iteration` in repeated runs) and the id fields come from `identity`, which
owns the line format and the row-id rule; a resume reads the keys without parsing whole lines.
"""
from __future__ import annotations

from datetime import datetime, timezone

from ..provider.answer import Completion
from ..inputs.rows import BadRow, Row
from .identity import head, id_fields


# Parts of an answer written only when the answer has them (tool calling, refusals, citations).
ANSWER_EXTRAS = ("tool_calls", "refusal", "annotations")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def result_record(row: Row, c: Completion, *, model: str, latency: float, attempts: int, endpoint: str,
                  iteration: int | None = None) -> dict:
    """The output line of an answered row; the row's own extra fields are carried through."""
    record = {**head(row.key, iteration), **id_fields(row.id, row.implied), "input_prompt": row.prompt, "images": list(row.images),
              "answer": c.answer, "reasoning": c.reasoning, "finish_reason": c.finish_reason,
              "usage": c.usage, "model": c.model or model, "latency_s": round(latency, 4),
              "attempts": attempts, "endpoint": endpoint, "processed_at": now_iso()}
    if c.extracted is not None:
        record["extracted"] = c.extracted
    for name in ANSWER_EXTRAS:
        if getattr(c, name) is not None:
            record[name] = getattr(c, name)
    if row.batch:
        record["custom_id"] = row.batch["custom_id"]
    for key, value in row.extra.items():
        record.setdefault(key, value)
    return record


def with_samples(record: dict, samples, explode: bool) -> dict | list[dict]:
    """n > 1: keep every sample in one row (`samples`), or one row per sample (explode)."""
    if not samples:
        return record
    if not explode:
        return {**record, "samples": list(samples)}
    return [{**record, **sample, "sample": i} for i, sample in enumerate(samples)]


def error_record(row: Row, err: Exception, *, model: str, attempts: int, history: list,
                 iteration: int | None = None) -> dict:
    """The errors-file line of a row that failed for good, with the history of its attempts."""
    record = {**head(row.key, iteration), **id_fields(row.id, row.implied), "model": model, "reason": str(err)[:2500],
              "error": type(err).__name__, "status": getattr(err, "status", None),
              "attempts": attempts, "history": history, "failed_at": now_iso()}
    if row.batch:
        record["custom_id"] = row.batch["custom_id"]
    return record


def bad_row_record(row: BadRow, iteration: int | None = None) -> dict:
    """The errors-file line of an input row that could not be used at all."""
    return {**head(row.key, iteration), "id": row.id, "reason": row.reason, "error": "RowFormatError",
            "status": None, "attempts": 0, "history": [], "failed_at": now_iso()}
