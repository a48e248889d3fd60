"""The one row-id rule, and the head of every output/errors line: how a row is known and read back.

A row is known by its explicit `id` (else `custom_id`), kept as the JSON value it is. A row with
neither is known by its line number, in a namespace of its own (`#7`), so `"id": "7"` never
collides with line 7. Lines this tool writes begin `{"line": N` (then `"iteration"`), so a resume
reads their key without parsing them; lines written by other tools are read by their id.
"""
from __future__ import annotations

import json
from typing import Any

IMPLIED = "id_is_line"     # output field: this row had no id of its own; `id` is its line number
_NO_ID = (None, "")


def explicit_id(obj: Any) -> Any | None:
    """A decoded input or output row's own id: `id`, else `custom_id`; None (or "") is no id."""
    if not isinstance(obj, dict):
        return None
    rid = obj.get("id")
    if rid in _NO_ID:
        rid = obj.get("custom_id")
    return None if rid in _NO_ID else rid


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode  # built once


def id_key(value: Any) -> str:
    """The identity of an explicit id: its canonical JSON (`"a1"`, `7`, `[1, 2]` differ)."""
    return _CANONICAL(value)


def line_key(line: int) -> str:
    """The identity of a row without an id: its line number, never equal to an id's key."""
    return f"#{line}"


def identity(obj: Any, line: int) -> str:
    """THE rule: the identity of input line `line` holding `obj` (None when it is not JSON)."""
    rid = explicit_id(obj)
    return line_key(line) if rid is None else id_key(rid)


def shown(value: Any) -> str:
    """An id as text for messages, file names and Batch `custom_id`s: strings as they are."""
    return value if isinstance(value, str) else id_key(value)


def head(line: int, iteration: int | None = None) -> dict:
    """The first keys of every line this tool writes: `line`, then `iteration` in repeated runs."""
    return {"line": line} if iteration is None else {"line": line, "iteration": iteration}


def id_fields(rid: Any, implied: bool) -> dict:
    """The id fields of a written line: the row's own id, or its line number marked as such."""
    return {"id": rid, IMPLIED: True} if implied else {"id": rid}


def record_identity(record: Any) -> str | None:
    """The identity of a line read back from an output or errors file (ours, Batch or foreign).

    Ours and Batch output lines say when their id is a line number; other lines are known by
    `id` / `custom_id` (a Batch output line's `id` is the request's, so `custom_id` comes first
    there); an error line of a row that had no id at all is known by its `line`. None: no identity.
    """
    if not isinstance(record, dict):
        return None
    line = record.get("line")
    has_line = isinstance(line, int) and not isinstance(line, bool)
    if record.get(IMPLIED) is True and has_line:
        return line_key(line)
    rid = record.get("custom_id") if is_batch_output(record) else explicit_id(record)
    if rid not in _NO_ID:
        return id_key(rid)
    return line_key(line) if has_line else None


def record_id(record: dict) -> Any | None:
    """The id value of a read-back line (a Batch output line: its `custom_id`); None if it has none."""
    if is_batch_output(record):
        return record.get("custom_id")
    return explicit_id(record) if record.get(IMPLIED) is not True else record.get("id")


def record_line(record: dict) -> int | None:
    """The input line number a read-back line names, if it names one."""
    line = record.get("line")
    return line if isinstance(line, int) and not isinstance(line, bool) else None


def is_batch_output(obj: Any) -> bool:
    """True for a Batch API output line (ours, OpenAI's or vLLM's), False for an mpdistill row."""
    return isinstance(obj, dict) and "custom_id" in obj and "response" in obj and "error" in obj
