"""Collecting a batch's result files into the output: each row once, foreign and broken lines
ignored, failures sorted into error rows and resubmissions."""
from __future__ import annotations

import json

from mpdistill.batch.collect import Collector
from mpdistill.batch.pack import meta_line
from mpdistill.engine.writer import Writer
from mpdistill.inputs.rows import Row
from mpdistill.report.stats import ModelStats
from mpdistill.state.batches import BatchEntry
from mpdistill.state.checkpoint import CheckpointManager
from tests.conftest import read_jsonl


class _Job:
    def __init__(self, tmp_path):
        self.model, self.alias = "m", "m"
        self.checkpoint = CheckpointManager(1000, name="m", directory=tmp_path / "ck")
        self.writer = Writer(tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl", self.checkpoint)
        self.stats = ModelStats()


def _answer(key, text="ok"):
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    return {"custom_id": f"mpd-{key}", "response": {"status_code": 200, "body": body}, "error": None}


def _files(tmp_path, keys, out_lines, err_lines):
    rows = tmp_path / "b.rows.jsonl"
    rows.write_bytes(b"".join(meta_line(Row(k, f"r{k}", {}, f"p{k}", ()), {"messages": []}) for k in keys))
    out = tmp_path / "b.out.jsonl"
    out.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in out_lines))
    err = tmp_path / "b.err.jsonl"
    err.write_text("".join(json.dumps(l) + "\n" for l in err_lines))
    return rows, out, err


def test_collect_writes_each_row_once_and_sorts_failures(tmp_path):
    """Answers are written; a repeated, foreign or broken line is skipped; a 400 is an error row with
    the provider's message; a 500 and a missing row go round again; a row done before is skipped."""
    job = _Job(tmp_path)
    job.checkpoint.mark_done(6)
    server_error = {"custom_id": "mpd-4", "response": {"status_code": 500, "body": {"error": {"message": "boom"}}}}
    rejected = {"custom_id": "mpd-3", "response": {"status_code": 400, "body": {"error": {"message": "bad param"}}}}
    rows, out, err = _files(tmp_path, [1, 2, 3, 4, 5, 6],
                            [_answer(1), _answer(1, "again"), "not json", _answer(99), {"custom_id": "x"}, _answer(2),
                             _answer(6)],
                            [rejected, server_error])
    collector = Collector(job, {}, 3, endpoint="api", batch_id="batch_1", turnaround_s=2.0)
    outcome = collector.collect(BatchEntry("b000001", "api", "h", [1, 2, 3, 4, 5, 6], 0), rows, out, err, None)
    job.writer.close()
    written = read_jsonl(tmp_path / "out.jsonl")
    assert [(r["id"], r["answer"], r["batch_id"]) for r in written] == [("r1", "ok", "batch_1"), ("r2", "ok", "batch_1")]
    [failure] = read_jsonl(tmp_path / "out.errors.jsonl")
    assert failure["id"] == "r3" and failure["status"] == 400 and "bad param" in failure["reason"]
    assert sorted(outcome.retry) == [4, 5] and outcome.skipped == 1 and (outcome.ok, outcome.failed) == (2, 1)


def test_rows_out_of_retries_become_error_rows(tmp_path):
    """A row that already went round --max-retries times ends in the errors file, with the batch's reason."""
    job = _Job(tmp_path)
    rows, out, err = _files(tmp_path, [1], [], [])
    collector = Collector(job, {1: 2}, 2, endpoint="api", batch_id="batch_9", turnaround_s=1.0)
    outcome = collector.collect(BatchEntry("b000002", "api", "h", [1], 0), rows, None, None, "batch batch_9 expired")
    job.writer.close()
    [failure] = read_jsonl(tmp_path / "out.errors.jsonl")
    assert outcome.retry == [] and failure["attempts"] == 3 and "expired" in failure["reason"]


def test_cancelled_batches_return_rows_without_a_retry(tmp_path):
    """--cancel-batches: rows the cancel left unanswered go back uncharged, not into the retry count."""
    job = _Job(tmp_path)
    cancelled = {"custom_id": "mpd-2", "response": None, "error": {"code": "batch_cancelled", "message": "cancelled"}}
    rows, out, err = _files(tmp_path, [1, 2], [_answer(1)], [cancelled])
    collector = Collector(job, {}, 0, endpoint="api", batch_id="b", turnaround_s=1.0, cancelled=True)
    outcome = collector.collect(BatchEntry("b000003", "api", "h", [1, 2], 0), rows, out, err, None)
    job.writer.close()
    assert outcome.returned == [2] and outcome.retry == [] and outcome.failed == 0
