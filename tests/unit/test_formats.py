"""OpenAI Batch API output lines: mpdistill rows → Batch lines → read back, for answers and errors."""
from __future__ import annotations

import json

from mpdistill.outputs.batch import (error_to_batch_output, from_batch_output, is_batch_output,
                               to_batch_output)
from mpdistill.outputs.scan import line_key
from mpdistill.engine.writer import encode_line

RECORD = {"line": 7, "id": "a1", "input_prompt": "hi", "images": [], "answer": "Hello.",
          "reasoning": "greet back", "finish_reason": "stop",
          "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
          "model": "gpt-4o-mini", "latency_s": 0.1, "attempts": 1, "endpoint": "api_1",
          "processed_at": "2024-05-01T12:00:00.000+00:00"}


def test_answer_round_trip():
    """to_batch_output → from_batch_output gives back the id, answer, reasoning, usage and model."""
    line = to_batch_output(RECORD)
    assert is_batch_output(line) and line["error"] is None
    body = line["response"]["body"]
    assert line["response"]["status_code"] == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello.",
                                             "reasoning_content": "greet back"}
    assert body["created"] == 1714564800 and line["id"].startswith("batch_req_")
    back = from_batch_output(json.loads(json.dumps(line)))
    assert {k: back[k] for k in ("line", "id", "custom_id", "answer", "reasoning", "finish_reason",
                                 "usage", "model", "error")} == \
        {"line": 7, "id": "a1", "custom_id": "a1", "answer": "Hello.", "reasoning": "greet back",
         "finish_reason": "stop", "usage": RECORD["usage"], "model": "gpt-4o-mini", "error": None}


def test_batch_line_keeps_line_first_for_resume_scans():
    """The encoded Batch line starts with "line", so recovery.line_key reads it without parsing."""
    encoded = encode_line(to_batch_output(RECORD))
    assert encoded.startswith(b'{"line": 7,') and line_key(encoded.rstrip(b"\n")) == 7
    assert "line" not in to_batch_output({k: v for k, v in RECORD.items() if k != "line"})


def test_custom_id_of_a_batch_input_row_wins_and_ids_are_stable():
    """A row from a Batch input line answers under its custom_id; converting twice gives the same ids."""
    row = dict(RECORD, id="x", custom_id="req-9")
    assert to_batch_output(row)["custom_id"] == "req-9"
    assert to_batch_output(row) == to_batch_output(row)
    assert to_batch_output(row)["id"] != to_batch_output(RECORD)["id"]


def test_error_with_status_round_trip():
    """An error row with an HTTP status becomes a response with that status and an error object."""
    err = {"line": 3, "id": "b2", "model": "m", "reason": "HTTP 400: bad request", "error": "RejectedError",
           "status": 400, "attempts": 1, "history": [], "failed_at": "2024-05-01T12:00:00+00:00"}
    line = error_to_batch_output(err)
    assert next(iter(line)) == "line" and line["custom_id"] == "b2"
    assert line["error"] == {"code": "invalid_request_error", "message": "HTTP 400: bad request"}
    assert line["response"]["status_code"] == 400
    assert line["response"]["body"]["error"]["message"] == "HTTP 400: bad request"
    back = from_batch_output(line)
    assert back["answer"] is None and back["id"] == "b2"
    assert back["error"] == {"code": "invalid_request_error", "message": "HTTP 400: bad request", "status": 400}


def test_error_without_status_has_null_response():
    """A row that never got an HTTP answer (bad row, timeout) has response null and an error code."""
    line = error_to_batch_output({"line": 4, "id": None, "reason": "line 4 is not valid JSON",
                                  "error": "RowFormatError", "status": None})
    assert line["response"] is None and line["custom_id"] == "4"
    assert line["error"]["code"] == "invalid_row"
    assert from_batch_output(line)["error"]["code"] == "invalid_row"
    timeout = error_to_batch_output({"id": "c", "reason": "no answer", "error": "CallTimeoutError"})
    assert timeout["error"]["code"] == "timeout" and timeout["response"] is None


def test_reads_openai_and_vllm_lines():
    """Lines written by the Batch API or vllm run-batch read back the same way (<think> split too)."""
    vllm = {"id": "vllm-1", "custom_id": "q1", "response": {"status_code": 200, "request_id": "vllm-batch-1",
            "body": {"model": "qwen", "choices": [{"index": 0, "finish_reason": "length",
                     "message": {"role": "assistant", "content": "<think>hmm</think>\nYes."}}],
                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}}, "error": None}
    back = from_batch_output(vllm)
    assert (back["id"], back["answer"], back["reasoning"], back["finish_reason"], back["line"]) == \
        ("q1", "Yes.", "hmm", "length", None)
    openai_err = {"id": "batch_req_1", "custom_id": "q2", "response": {"status_code": 429, "request_id": "r",
                  "body": {"error": {"message": "slow down", "type": "rate_limit_error", "code": None}}},
                  "error": None}
    assert from_batch_output(openai_err)["error"] == {"code": None, "message": "slow down", "status": 429}
    expired = {"id": "batch_req_2", "custom_id": "q3", "response": None,
               "error": {"code": "batch_expired", "message": "expired"}}
    assert from_batch_output(expired)["error"]["code"] == "batch_expired"
    assert not is_batch_output(RECORD)


def test_tool_calls_refusal_and_annotations_round_trip():
    """tool_calls, refusal and annotations of a row go into the Batch message and come back out."""
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    cite = [{"type": "url_citation", "url_citation": {"url": "https://example.org"}}]
    record = {**RECORD, "answer": None, "finish_reason": "tool_calls", "tool_calls": [call],
              "refusal": "no", "annotations": cite}
    message = to_batch_output(record)["response"]["body"]["choices"][0]["message"]
    assert (message["content"], message["tool_calls"], message["refusal"], message["annotations"]) == \
        (None, [call], "no", cite)
    back = from_batch_output(json.loads(json.dumps(to_batch_output(record))))
    assert (back["tool_calls"], back["refusal"], back["annotations"]) == ([call], "no", cite)
    assert "tool_calls" not in from_batch_output(to_batch_output(RECORD))
