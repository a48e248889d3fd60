"""The mock's Files and Batches subset: upload, create, poll, cancel, list, download.

Each request line of a batch is answered by the mock's own chat logic (markers included), so
partial failures are scripted in the prompts; whole-batch outcomes (`failed`, `expired`) are
scripted per created batch by `MockOptions.batch_script`. Files and batches belong to the key
that made them: another key sees a 404, as with a real provider's projects.
"""
from __future__ import annotations

import collections
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from .replies import Reply, error_reply, json_reply

_BATCH_PATH = re.compile(r"^/batches/([^/]+)(/cancel)?$")
_FILE_PATH = re.compile(r"^/files/([^/]+)(/content)?$")
_TERMINAL = ("completed", "failed", "expired", "cancelled")
_EXPIRED_ERROR = {"code": "batch_expired",
                  "message": "This request could not be executed before the completion window expired."}
_CANCELLED_ERROR = {"code": "batch_cancelled", "message": "This request was cancelled with its batch."}

Chat = Callable[[int, str, bytes], Awaitable[Reply]]


@dataclass
class _Batch:
    id: str
    owner: str | None
    input_file_id: str
    endpoint: str
    metadata: dict
    created_at: float
    lines: list
    outcome: str                      # ok | failed | expired, scripted at create time
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: dict | None = None
    counts: dict = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    cancel_at: float | None = None
    created_wall: float = field(default_factory=time.time)

    def body(self) -> dict:
        return {"id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": self.errors,
                "input_file_id": self.input_file_id, "completion_window": "24h", "status": self.status,
                "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
                "created_at": int(self.created_wall), "request_counts": dict(self.counts),
                "metadata": self.metadata or None}


class BatchStore:
    """In-memory files and batches; `handle` answers one Files/Batches request."""

    def __init__(self, options, chat: Chat) -> None:
        self.options = options
        self._chat = chat
        self._files: dict[str, tuple[str | None, bytes, str]] = {}   # id -> (owner, data, purpose)
        self._batches: dict[str, _Batch] = {}
        self._script = collections.deque(options.batch_script)
        self._ids = 0
        self._lock = threading.Lock()
        self.created = 0
        self.rows: collections.Counter[str] = collections.Counter()   # custom_id -> batches created with it
        self.outcomes: list[str] = []
        self.by_owner: collections.Counter[str] = collections.Counter()   # key -> batches it created

    def stats(self) -> dict:
        with self._lock:
            return {"batches_created": self.created, "batch_rows": dict(self.rows),
                    "batch_outcomes": list(self.outcomes), "batches_by_key": dict(self.by_owner)}

    def handles(self, path: str) -> bool:
        return path == "/files" or path == "/batches" or path.startswith(("/files/", "/batches/"))

    async def handle(self, method: str, path: str, query: str, owner: str | None, headers: dict,
                     body: bytes) -> Reply:
        if method == "POST" and path == "/files":
            return self._upload(owner, headers, body)
        if method == "POST" and path == "/batches":
            return self._create(owner, body)
        if method == "GET" and path == "/batches":
            return self._list(owner, query)
        match = _BATCH_PATH.match(path)
        if match:
            batch = self._batches.get(match.group(1))
            if batch is None or batch.owner != owner:
                return error_reply(404, f"No batch found with id '{match.group(1)}'.", "not_found")
            if method == "POST" and match.group(2):
                return self._cancel(batch)
            if method == "GET" and not match.group(2):
                await self._advance(batch)
                return json_reply(200, batch.body())
        match = _FILE_PATH.match(path)
        if match and method == "GET":
            return self._file(owner, match.group(1), bool(match.group(2)))
        return error_reply(404, f"Unknown request URL: {method} {path}", "unknown_url")

    # ---- files ---------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-mock{self._ids:06d}"

    def _upload(self, owner, headers: dict, body: bytes) -> Reply:
        fields = parse_multipart(headers.get("content-type", ""), body)
        if fields is None or "file" not in fields:
            return error_reply(400, "expected multipart/form-data with a 'file' field", "invalid_file")
        purpose = fields.get("purpose", (None, b"batch"))[1].decode("utf-8", "replace")
        name, data = fields["file"]
        return json_reply(200, self._store(owner, data, purpose, name or "upload.jsonl"))

    def _store(self, owner, data: bytes, purpose: str, name: str) -> dict:
        file_id = self._new_id("file")
        self._files[file_id] = (owner, data, purpose)
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": name, "purpose": purpose, "status": "processed"}

    def _file(self, owner, file_id: str, content: bool) -> Reply:
        entry = self._files.get(file_id)
        if entry is None or entry[0] != owner:
            return error_reply(404, f"No such File object: {file_id}", "not_found")
        if content:
            return Reply(200, entry[1])
        return json_reply(200, {"id": file_id, "object": "file", "bytes": len(entry[1]),
                                "purpose": entry[2], "status": "processed"})

    # ---- batches -------------------------------------------------------------------------

    def _create(self, owner, body: bytes) -> Reply:
        try:
            request = json.loads(body)
        except ValueError:
            return error_reply(400, "request body is not valid JSON", "invalid_json")
        entry = self._files.get(request.get("input_file_id"))
        if entry is None or entry[0] != owner:
            return error_reply(400, f"No such File object: {request.get('input_file_id')}", "invalid_file")
        if request.get("completion_window") != "24h" or request.get("endpoint") != "/v1/chat/completions":
            return error_reply(400, "completion_window must be 24h and endpoint /v1/chat/completions")
        lines, problem = _read_lines(entry[1], request["endpoint"], self.options.batch_max_requests)
        outcome = self._script.popleft() if self._script else "ok"
        batch = _Batch(self._new_id("batch"), owner, request["input_file_id"], request["endpoint"],
                       request.get("metadata") or {}, time.monotonic(), lines, outcome)
        batch.counts["total"] = len(lines)
        if problem:
            batch.outcome, batch.errors = "failed", {"object": "list", "data": [problem]}
        with self._lock:
            self._batches[batch.id] = batch
            self.created += 1
            self.by_owner[str(owner)] += 1
            self.rows.update(str(line.get("custom_id")) for line in lines)
            self.outcomes.append(batch.outcome)
        return json_reply(200, batch.body())

    def _list(self, owner, query: str) -> Reply:
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        limit = max(1, min(100, int(params.get("limit") or 20)))
        mine = [b for b in reversed(list(self._batches.values())) if b.owner == owner]
        after = params.get("after")
        if after:
            ids = [b.id for b in mine]
            mine = mine[ids.index(after) + 1:] if after in ids else []
        page = mine[:limit]
        return json_reply(200, {"object": "list", "data": [b.body() for b in page],
                                "first_id": page[0].id if page else None,
                                "last_id": page[-1].id if page else None, "has_more": len(mine) > limit})

    def _cancel(self, batch: _Batch) -> Reply:
        if batch.status not in _TERMINAL:
            batch.status = "cancelling"
            batch.cancel_at = time.monotonic()
        return json_reply(200, batch.body())

    async def _advance(self, batch: _Batch) -> None:
        """Move the batch along its life cycle by the time passed since it was created."""
        if batch.status in _TERMINAL:
            return
        if batch.status == "cancelling":
            await self._finish(batch, "cancelled")
            return
        if batch.outcome == "failed":
            batch.status = "failed"
            batch.errors = batch.errors or {"object": "list", "data": [
                {"code": "scripted_failure", "message": "scripted batch failure", "line": None, "param": None}]}
            return
        share = (time.monotonic() - batch.created_at) / max(self.options.batch_seconds, 1e-9)
        if share < 0.1:
            batch.status = "validating"
        elif share < 0.9:
            batch.status = "in_progress"
            batch.counts["completed"] = int(len(batch.lines) * (share - 0.1) / 0.8)
        elif share < 1.0:
            batch.status = "finalizing"
        else:
            await self._finish(batch, "expired" if batch.outcome == "expired" else "completed")

    async def _finish(self, batch: _Batch, status: str) -> None:
        """Answer the requests (all, or the first half of an expired or cancelled batch) into files."""
        answered = len(batch.lines) if status == "completed" else len(batch.lines) // 2
        out, err = [], []
        for index, line in enumerate(batch.lines):
            if index >= answered:
                error = _EXPIRED_ERROR if status == "expired" else _CANCELLED_ERROR
                err.append(_result_line(batch, index, line, None, error))
                continue
            reply = await self._chat(index + 1, "/chat/completions", json.dumps(line.get("body")).encode())
            response = {"status_code": reply.status, "request_id": f"req_{batch.id}_{index}",
                        "body": json.loads(reply.body)}
            (out if reply.status == 200 else err).append(_result_line(batch, index, line, response, None))
        batch.counts.update(completed=len(out), failed=len(err))
        if out:
            batch.output_file_id = self._store(batch.owner, _jsonl(out), "batch_output", "output.jsonl")["id"]
        if err:
            batch.error_file_id = self._store(batch.owner, _jsonl(err), "batch_output", "errors.jsonl")["id"]
        batch.status = status
        batch.lines = []


def _read_lines(data: bytes, endpoint: str, max_requests: int) -> tuple[list, dict | None]:
    """The request lines of an input file, or the validation error that fails the batch."""
    lines, seen = [], set()
    for number, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            return [], _problem("invalid_json_line", f"line {number} is not valid JSON", number)
        if not isinstance(line, dict) or line.get("url") != endpoint or not isinstance(line.get("body"), dict):
            return [], _problem("invalid_request", f"line {number}: expected url {endpoint} and a body", number)
        if line.get("custom_id") in seen:
            return [], _problem("duplicate_custom_id", f"line {number}: custom_id repeated", number)
        seen.add(line.get("custom_id"))
        lines.append(line)
    if len(lines) > max_requests:
        return [], _problem("too_many_requests", f"{len(lines)} requests; at most {max_requests}", None)
    return lines, None


def _problem(code: str, message: str, line: int | None) -> dict:
    return {"code": code, "message": message, "line": line, "param": None}


def _result_line(batch: _Batch, index: int, line: dict, response: dict | None, error: dict | None) -> dict:
    return {"id": f"batch_req_{batch.id}_{index}", "custom_id": line.get("custom_id"),
            "response": response, "error": error}


def _jsonl(lines: list) -> bytes:
    return b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines)


def parse_multipart(content_type: str, body: bytes) -> dict | None:
    """`multipart/form-data` fields as {name: (filename, bytes)}, or None when it cannot be read."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or match is None:
        return None
    fields = {}
    for part in body.split(b"--" + match.group(1).encode())[1:]:
        if part.startswith(b"--"):
            break
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            return None
        disposition = head.decode("latin-1")
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'filename="([^"]*)"', disposition)
        if name:
            fields[name.group(1)] = (filename.group(1) if filename else None, data[:-2] if data.endswith(b"\r\n") else data)
    return fields
