"""Batch mode's pure parts: the journal's replay, packing limits, endpoint lanes, the panel lines."""
from __future__ import annotations

import json

import pytest

from mpdistill.batch.lanes import Lanes, key_hash
from mpdistill.batch.pack import Limits, Pack, key_of, request_line
from mpdistill.errors import CheckpointError
from mpdistill.provider.endpoint import Endpoint
from mpdistill.report.batchview import mode_lines
from mpdistill.state.batches import BatchEntry, BatchJournal, journal_path, ranges, unranges


def test_ranges_round_trip_and_compress_contiguous_keys():
    """Row keys are journaled as runs: contiguous keys cost one pair, and read back the same."""
    keys = [5, 1, 2, 3, 9, 10, 7]
    assert ranges(keys) == [[1, 3], [5, 5], [7, 7], [9, 10]]
    assert unranges(ranges(keys)) == sorted(keys)


def _journal_with_batch(tmp_path) -> tuple[BatchJournal, BatchEntry]:
    j = BatchJournal(tmp_path / "m_batches.jsonl")
    j.load()
    entry = BatchEntry(j.new_local(), "api_1", "abc", [1, 2, 3], 30)
    j.packed(entry)
    return j, entry


def test_journal_replays_every_state_and_owns_open_rows(tmp_path):
    """packed → uploaded → creating → created replays from the file; rows stay owned until closed."""
    j, entry = _journal_with_batch(tmp_path)
    j.uploaded(entry, "file-1")
    j.creating(entry)
    j.close()
    again = BatchJournal(tmp_path / "m_batches.jsonl")
    again.load()
    [e] = again.open_batches()
    assert (e.state, e.file_id, e.marker) == ("creating", "file-1", f"{again.token}:{e.local}")
    assert again.owns(2) and not again.owns(4)
    again.created(e, "batch-1")
    again.closed(e, [2])
    again.close()
    third = BatchJournal(tmp_path / "m_batches.jsonl")
    third.load()
    assert third.open_batches() == [] and not third.owns(2) and third.attempts == {2: 1}
    assert third.new_local() == "b000002"


def test_journal_cuts_a_torn_last_line(tmp_path):
    """A kill mid-append leaves half a line: it is cut off and the batch before it stays."""
    j, entry = _journal_with_batch(tmp_path)
    j.close()
    with open(j.path, "ab") as f:
        f.write(b'{"ev":"uploaded","local":"b0000')
    again = BatchJournal(j.path)
    again.load()
    assert [e.state for e in again.open_batches()] == ["packed"]
    assert j.path.read_bytes().endswith(b"\n")


def test_journal_with_a_garbled_line_is_a_clear_error(tmp_path):
    """A journal line that is not an event names the file and line instead of guessing."""
    j, _ = _journal_with_batch(tmp_path)
    j.close()
    with open(j.path, "ab") as f:
        f.write(b'{"ev": "nonsense"}\n')
    with pytest.raises(CheckpointError, match="line 3"):
        BatchJournal(j.path).load()


def test_journal_path_sits_beside_the_checkpoint(tmp_path):
    """`<run>_checkpoint.pkl` → `<run>_batches.jsonl` in the same folder."""
    assert journal_path(tmp_path / "gpt_checkpoint.pkl") == tmp_path / "gpt_batches.jsonl"


def _pack(tmp_path, **limits) -> Pack:
    return Pack(tmp_path / "b.jsonl", tmp_path / "b.rows.jsonl", Limits(**limits), limits.pop("room", None))


def test_pack_respects_request_and_byte_limits(tmp_path):
    """A batch stops at max_requests lines and never goes past max_bytes."""
    line = request_line(1, {"messages": [{"role": "user", "content": "x" * 50}]})
    pack = _pack(tmp_path, max_requests=3, max_bytes=10_000)
    for key in range(3):
        assert pack.fits(line, 10)
        pack.add(key, line, b"{}\n", 10)
    assert not pack.fits(line, 10)
    small = _pack(tmp_path, max_requests=100, max_bytes=len(line) * 2)
    small.add(1, line, b"{}\n", 10)
    small.add(2, line, b"{}\n", 10)
    assert not small.fits(line, 10)


def test_pack_respects_the_endpoints_token_room(tmp_path):
    """Estimated tokens stop a batch at the endpoint's room (one row always fits an empty batch)."""
    pack = Pack(tmp_path / "b.jsonl", tmp_path / "b.rows.jsonl", Limits(), token_room=100)
    assert pack.fits(b"x", 500)
    pack.add(1, b"x\n", b"{}\n", 60)
    assert not pack.fits(b"x", 60) and pack.fits(b"x", 40)


def test_custom_ids_map_back_to_row_keys():
    """Our custom ids carry the row key; anything else is not ours."""
    assert json.loads(request_line(42, {"messages": []}))["custom_id"] == "mpd-42"
    assert key_of("mpd-42") == 42 and key_of("row-42") is None and key_of(None) is None


def _endpoints():
    return [Endpoint("a", "http://x/v1", "sk-aaaaaaaaaa", batch_max_in_flight=1),
            Endpoint("b", "http://x/v1", "sk-bbbbbbbbbb", models=("other",)),
            Endpoint("c", "http://x/v1", "sk-cccccccccc")]


def test_lanes_choose_endpoints_serving_the_model_within_their_limits():
    """Batches go to endpoints serving the model with room; a full or disabled one is passed over."""
    lanes = Lanes(_endpoints(), max_batches=2, max_tokens=1000)
    first, room = lanes.choose("m")
    assert first.name in ("a", "c") and room == 1000
    lanes.add("a", 10)
    lanes.add("c", 990)
    assert lanes.choose("m")[0].name == "c" and lanes.choose("m")[1] == 10
    lanes.add("c", 10)
    assert lanes.choose("m") is None               # a: 1 batch max; c: tokens full
    lanes.remove("a", 10)
    lanes.disable("a", "HTTP 401")
    assert lanes.choose("m") is None and lanes.usable("m")
    lanes.disable("c", "HTTP 401")
    assert not lanes.usable("m")


def test_lanes_find_a_batch_endpoint_by_its_key_not_its_name():
    """A renamed endpoint with the same key still polls its batches; another key never does."""
    old = Endpoint("old-name", "http://x/v1", "sk-same-key-1234")
    lanes = Lanes([Endpoint("new-name", "http://x/v1", "sk-same-key-1234")], max_batches=1, max_tokens=None)
    assert lanes.find(key_hash(old)).name == "new-name"
    assert lanes.find(key_hash(Endpoint("old-name", "http://x/v1", "sk-other-9999"))) is None
    assert "1234" not in key_hash(old) and len(key_hash(old)) == 12


def test_monitor_lines_show_batches_and_cache():
    """The panel of a batch run lists endpoints, open batches by status and the cache figures."""
    status = {"via": "batch", "endpoints": [{"name": "api_1", "batches_in_flight": 1, "tokens_enqueued": 50,
                                             "batches_created": 2}],
              "batches": [{"id": "batch_1", "status": "in_progress", "endpoint": "api_1", "rows": 10,
                           "counts": {"total": 10, "completed": 4, "failed": 1}}],
              "cache": {"hits": 3, "misses": 1, "stored": 1, "saved_tokens": 90, "saved_cost": None}}
    text = "\n".join(mode_lines(status, 80))
    assert "batches open: 1  (1 in_progress)" in text
    assert "batch_1  in_progress  4/10 requests, 1 failed  [api_1]" in text
    assert "cache: 3 hits, 1 misses" in text
    assert all(len(line) <= 40 for line in mode_lines(status, 40))
