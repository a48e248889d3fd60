"""The chat-completions request of a (row, job): the one place that merges model, params, row and system.

Online workers, batch input files and the response cache all read the request from here.
"""
from __future__ import annotations


def build_request(model: str, params: dict, system: str | None, row_request: dict) -> dict:
    """`{"model", **params, **row params, "messages"}` with the job's system prompt unless the row has one."""
    request = {"model": model, **params, **row_request}
    if system and not any(m.get("role") == "system" for m in request["messages"]):
        request["messages"] = [{"role": "system", "content": system}, *request["messages"]]
    return request
