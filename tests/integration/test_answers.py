"""Answers that are not plain text, end to end against the mock: tool calls, refusals, no content."""
from __future__ import annotations

from tests.conftest import write_jsonl

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "find a fact",
                                           "parameters": {"type": "object", "properties": {"prompt": {"type": "string"}}}}}]


def test_tool_calls_from_a_prompt_row_are_sent_and_kept(workdir):
    """tools and tool_choice on a prompt row reach the server; the tool call is in the output row."""
    write_jsonl(workdir.input, [{"id": "t1", "prompt": "weather?", "tools": TOOLS, "tool_choice": "required"},
                                {"id": "plain", "prompt": "hello"}])
    proc = workdir.run(processes=2)
    assert proc.returncode == 0, proc.stderr
    rows = {r["id"]: r for r in workdir.results()}
    (call,) = rows["t1"]["tool_calls"]
    assert call["function"]["name"] == "lookup" and '"weather?"' in call["function"]["arguments"]
    assert rows["t1"]["finish_reason"] == "tool_calls" and rows["t1"]["answer"] is None
    assert "tool_calls" not in rows["plain"] and rows["plain"]["answer"]


def test_tool_calls_and_refusals_survive_the_batch_output_format(workdir):
    """--output-format openai-batch keeps tool_calls and refusal in the rebuilt assistant message."""
    write_jsonl(workdir.input, [
        {"id": "t1", "messages": [{"role": "user", "content": "weather?"}], "tools": TOOLS,
         "tool_choice": {"type": "function", "function": {"name": "lookup"}}, "parallel_tool_calls": False},
        {"id": "no", "prompt": "[[refusal]] something bad"}])
    proc = workdir.run("--output-format", "openai-batch", processes=2)
    assert proc.returncode == 0, proc.stderr
    lines = {r["custom_id"]: r["response"]["body"]["choices"][0] for r in workdir.results()}
    assert lines["t1"]["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    assert lines["t1"]["finish_reason"] == "tool_calls"
    assert lines["no"]["message"]["refusal"].startswith("mock refusal") and lines["no"]["message"]["content"] is None


def test_content_null_is_retried_then_an_error_row(workdir):
    """content null (no tool calls, no refusal) is retried: once-null succeeds, always-null is an error row."""
    write_jsonl(workdir.input, [{"id": "once", "prompt": "[[nocontent:1]] a"},
                                {"id": "always", "prompt": "[[nocontent:*]] b"}])
    proc = workdir.run("--max-retries", "2", processes=2)
    assert proc.returncode == 3, proc.stderr
    (ok,) = workdir.results()
    assert ok["id"] == "once" and ok["attempts"] == 2 and ok["answer"]
    (failure,) = workdir.failures()
    assert failure["id"] == "always" and failure["attempts"] == 3 and failure["error"] == "BadResponseError"
    assert "content null" in failure["reason"]
