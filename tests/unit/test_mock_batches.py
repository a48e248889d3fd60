"""The mock's Files/Batches subset through the real openai SDK: life cycle, scripted outcomes,
per-key ownership, listing by metadata, cancel, revoked keys."""
from __future__ import annotations

import io
import json

import openai
import pytest

from mpdistill.mock.batches import parse_multipart
from mpdistill.mock.server import MockServer


def _lines(n, mark=lambda i: ""):
    return b"".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "m", "messages": [{"role": "user", "content": f"q{i}{mark(i)}"}]}}
                               ).encode() + b"\n" for i in range(n))


def _client(server, key="sk-mock-aaaa"):
    return openai.OpenAI(api_key=key, base_url=server.url, max_retries=0)


def _submit(api, data, marker="m1"):
    file = api.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    return api.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"mpdistill_batch": marker})


def _results(api, file_id):
    return [json.loads(line) for line in api.files.content(file_id).content.splitlines()] if file_id else []


def test_batch_life_cycle_with_partial_failures():
    """A batch completes: answers in the output file, a scripted 400 in the error file with its body."""
    with MockServer() as server:
        api = _client(server)
        batch = api.batches.retrieve(_submit(api, _lines(4, lambda i: " [[fail:400]]" if i == 2 else "")).id)
        assert batch.status == "completed"
        assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 1)
        out = _results(api, batch.output_file_id)
        assert [r["custom_id"] for r in out] == ["c0", "c1", "c3"]
        assert out[0]["response"]["body"]["choices"][0]["message"]["content"] == "mock answer: q0"
        [err] = _results(api, batch.error_file_id)
        assert err["custom_id"] == "c2" and err["response"]["status_code"] == 400


def test_scripted_failed_and_expired_batches():
    """batch_script fails the first batch (no files) and expires the second half answered."""
    with MockServer(batch_script=("failed", "expired")) as server:
        api = _client(server)
        failed = api.batches.retrieve(_submit(api, _lines(4)).id)
        assert failed.status == "failed" and failed.output_file_id is None and failed.errors.data[0].message
        expired = api.batches.retrieve(_submit(api, _lines(4)).id)
        assert expired.status == "expired" and len(_results(api, expired.output_file_id)) == 2
        assert {e["error"]["code"] for e in _results(api, expired.error_file_id)} == {"batch_expired"}
        assert server.stats()["batch_outcomes"] == ["failed", "expired"]


def test_processing_time_moves_through_the_statuses():
    """With batch_seconds the batch is validating or in progress first, then completes."""
    with MockServer(batch_seconds=60) as server:
        api = _client(server)
        batch = _submit(api, _lines(2))
        assert api.batches.retrieve(batch.id).status in ("validating", "in_progress")
        assert api.batches.cancel(batch.id).status == "cancelling"
        cancelled = api.batches.retrieve(batch.id)
        assert cancelled.status == "cancelled" and cancelled.request_counts.completed == 1


def test_batches_belong_to_the_key_that_made_them_and_list_finds_markers():
    """Another key gets a 404; the owner lists its batches newest first with their metadata."""
    with MockServer() as server:
        api = _client(server)
        ids = [_submit(api, _lines(1), marker=f"m{i}").id for i in range(3)]
        with pytest.raises(openai.NotFoundError):
            _client(server, "sk-mock-bbbb").batches.retrieve(ids[0])
        page = api.batches.list(limit=2)
        assert [b.metadata["mpdistill_batch"] for b in page.data] == ["m2", "m1"] and page.has_next_page()
        assert [b.id for b in page.get_next_page().data] == [ids[0]]
        assert server.stats()["batches_by_key"] == {"sk-mock-aaaa": 3}


def test_a_revoked_key_may_still_read_its_batches():
    """revoke_key(reads=True): creating is refused with 401, polling and downloading still work."""
    with MockServer() as server:
        api = _client(server)
        batch = _submit(api, _lines(2))
        server.revoke_key("sk-mock-aaaa", reads=True)
        with pytest.raises(openai.AuthenticationError):
            _submit(api, _lines(1))
        done = api.batches.retrieve(batch.id)
        assert len(_results(api, done.output_file_id)) == 2
        server.revoke_key("sk-mock-aaaa", reads=False)
        with pytest.raises(openai.AuthenticationError):
            api.batches.retrieve(batch.id)


def test_invalid_input_files_fail_the_batch():
    """Duplicate custom ids or a wrong url fail the batch at validation, like the real API."""
    with MockServer() as server:
        api = _client(server)
        line = _lines(1)
        batch = api.batches.retrieve(_submit(api, line + line).id)
        assert batch.status == "failed" and batch.errors.data[0].code == "duplicate_custom_id"


def test_parse_multipart_reads_fields_and_files():
    """The upload parser returns each field's file name and bytes; a non-multipart body is None."""
    body = (b'--XX\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
            b'Content-Type: application/octet-stream\r\n\r\n{"a": 1}\n\r\n--XX--\r\n')
    fields = parse_multipart("multipart/form-data; boundary=XX", body)
    assert fields == {"purpose": (None, b"batch"), "file": ("a.jsonl", b'{"a": 1}\n')}
    assert parse_multipart("application/json", b"{}") is None
