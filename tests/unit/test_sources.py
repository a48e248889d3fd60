"""Unit tests of mpdistill.inputs.jsonl's JSONL streaming: plain reading, follow mode, files changing under us."""
from __future__ import annotations

import json
import logging
import os

import pytest

from mpdistill.errors import InputFileError
from mpdistill.inputs.jsonl import JsonlSource
from mpdistill.inputs.rows import IDLE, BadRow, Blank, Idle, Row


def line(rid: str, prompt: str = "hi") -> bytes:
    """One JSONL row as bytes, with its newline."""
    return (json.dumps({"id": rid, "prompt": prompt}) + "\n").encode()


def append(path, data: bytes) -> None:
    """Append raw bytes to a file, as a producer would."""
    with open(path, "ab") as f:
        f.write(data)


def ids(items) -> list:
    """The ids of the Rows among `items` (IDLE shown as the string 'IDLE')."""
    return ["IDLE" if isinstance(i, Idle) else i.id for i in items if isinstance(i, (Row, Idle))]


def test_reads_rows_blanks_and_bad_lines(tmp_path):
    """Without follow, every line becomes a Row, Blank or BadRow, keyed by line number."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(line("a") + b"\n" + b"{oops\n" + line("b"))
    items = list(JsonlSource(path).rows())
    assert [type(i) for i in items] == [Row, Blank, BadRow, Row]
    assert [i.key for i in items] == [1, 2, 3, 4]
    assert "not valid JSON" in items[2].reason
    assert items[-1].end_offset == path.stat().st_size


def test_last_line_without_newline_is_read_without_follow(tmp_path):
    """Without follow, a last line lacking its newline is still a complete row."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(line("a") + line("b").rstrip(b"\n"))
    assert ids(JsonlSource(path).rows()) == ["a", "b"]


def test_missing_file_is_an_input_error(tmp_path):
    """A missing input file is a run-level InputFileError."""
    with pytest.raises(InputFileError):
        JsonlSource(tmp_path / "nope.jsonl")


def test_follow_yields_idle_then_appended_rows(tmp_path):
    """With follow, the end of the file yields IDLE, and rows appended later are read on the next calls."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(line("a"))
    rows = JsonlSource(path).rows(follow=True)
    assert next(rows).id == "a"
    assert next(rows) is IDLE
    assert next(rows) is IDLE
    append(path, line("b") + line("c"))
    assert [next(rows).id, next(rows).id] == ["b", "c"]
    assert next(rows) is IDLE
    append(path, line("d"))
    row = next(rows)
    assert (row.key, row.id, row.end_offset) == (4, "d", path.stat().st_size)


def test_follow_waits_for_a_half_written_line(tmp_path):
    """With follow, a last line without its newline is not read until it is complete."""
    path = tmp_path / "in.jsonl"
    full = line("b", "a longer prompt")
    path.write_bytes(line("a") + full[:10])
    rows = JsonlSource(path).rows(follow=True)
    assert next(rows).id == "a"
    assert next(rows) is IDLE
    append(path, full[10:-1])
    assert next(rows) is IDLE
    append(path, b"\n")
    row = next(rows)
    assert (row.key, row.id, row.prompt) == (2, "b", "a longer prompt")
    assert next(rows) is IDLE


def test_follow_over_long_line_written_in_pieces(tmp_path):
    """With follow, an over-long line still being written becomes one BadRow once complete; the next line is fine."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(line("a") + b"x" * 300)
    rows = JsonlSource(path, max_line_bytes=100).rows(follow=True)
    assert next(rows).id == "a"
    assert next(rows) is IDLE
    append(path, b"y" * 300)
    assert next(rows) is IDLE
    append(path, b"z\n" + line("c"))
    bad = next(rows)
    assert isinstance(bad, BadRow) and bad.key == 2 and "longer than 100 bytes" in bad.reason
    row = next(rows)
    assert (row.key, row.id) == (3, "c")
    assert row.end_offset == path.stat().st_size


def test_follow_keeps_the_duplicate_id_check(tmp_path):
    """With follow, an appended row that repeats an earlier id is a BadRow."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(line("a"))
    rows = JsonlSource(path).rows(follow=True)
    assert next(rows).id == "a"
    assert next(rows) is IDLE
    append(path, line("a"))
    bad = next(rows)
    assert isinstance(bad, BadRow) and "duplicate id" in bad.reason


def test_follow_resumes_from_a_position_and_skips_done_keys(tmp_path):
    """With follow, reading starts at the checkpoint's (key, offset) and done keys are not yielded."""
    path = tmp_path / "in.jsonl"
    first = line("a")
    path.write_bytes(first + line("b") + line("c"))
    rows = JsonlSource(path).rows(start=(2, len(first)), is_done=lambda key: key == 2, follow=True)
    row = next(rows)
    assert (row.key, row.id) == (3, "c")
    assert next(rows) is IDLE


def test_follow_stops_when_the_file_is_truncated(tmp_path, caplog):
    """With follow, a file cut shorter than what was read ends the iterator with a warning."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(line("a") + line("b"))
    source = JsonlSource(path)
    rows = source.rows(follow=True)
    assert ids([next(rows), next(rows), next(rows)]) == ["a", "b", "IDLE"]
    with open(path, "r+b") as f:
        f.truncate(3)
    with caplog.at_level(logging.WARNING, logger="mpdistill.inputs.jsonl"):
        assert list(rows) == []
    assert "truncated" in caplog.text and source.follow_stopped == "truncated"


def test_follow_stops_when_the_file_is_replaced(tmp_path, caplog):
    """With follow, a new file renamed over the input ends the iterator instead of misreading it."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(line("a"))
    rows = JsonlSource(path).rows(follow=True)
    assert ids([next(rows), next(rows)]) == ["a", "IDLE"]
    new = tmp_path / "new.jsonl"
    new.write_bytes(line("x") + line("y") + line("z"))
    os.replace(new, path)
    with caplog.at_level(logging.WARNING, logger="mpdistill.inputs.jsonl"):
        assert list(rows) == []
    assert "replaced" in caplog.text


def test_follow_stops_when_the_file_is_rewritten_in_place(tmp_path, caplog):
    """With follow, a file truncated and rewritten longer (same inode) is noticed and following ends."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(line("a"))
    rows = JsonlSource(path).rows(follow=True)
    assert ids([next(rows), next(rows)]) == ["a", "IDLE"]
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(b'{"id": "x", "prompt": "a different first line"}\n')
    with caplog.at_level(logging.WARNING, logger="mpdistill.inputs.jsonl"):
        assert list(rows) == []
    assert "rewritten" in caplog.text


def test_follow_stops_when_the_file_is_removed(tmp_path, caplog):
    """With follow, a removed input file ends the iterator with a warning."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(line("a"))
    rows = JsonlSource(path).rows(follow=True)
    assert ids([next(rows), next(rows)]) == ["a", "IDLE"]
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="mpdistill.inputs.jsonl"):
        assert list(rows) == []
    assert "removed" in caplog.text


def test_done_below_skips_lines_in_bulk_and_keeps_numbering(tmp_path):
    """Lines below the watermark are passed over by counting; the next row has the right key and offset."""
    from mpdistill.inputs.jsonl import JsonlSource
    from mpdistill.inputs.rows import Row
    path = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": f"r{i}", "prompt": f"p{i}"}) + "\n" for i in range(1, 3001)]
    path.write_text("".join(lines))
    rows = list(JsonlSource(path).rows(done_below=2998))
    assert [r.key for r in rows] == [2998, 2999, 3000] and all(isinstance(r, Row) for r in rows)
    assert rows[0].id == "r2998"
    assert rows[-1].end_offset == path.stat().st_size
    assert list(JsonlSource(path).rows(done_below=5000)) == []


def test_python_rows_share_the_file_rules():
    """Rows from Python get position keys, skip done ones, and bad or duplicate rows become BadRows."""
    from mpdistill.inputs.rows import BadRow, Row, python_rows
    rows = [{"id": "a", "prompt": "x"}, {"id": "b"}, {"id": "a", "prompt": "again"}, "not a dict",
            {"prompt": "no id"}]
    out = list(python_rows(rows, is_done=lambda key: key == 1))
    assert [r.key for r in out] == [2, 3, 4, 5]
    assert isinstance(out[0], BadRow) and "no prompt" in out[0].reason
    assert isinstance(out[1], Row)   # "a" again, but row 1 was done before this run read it
    assert isinstance(out[2], BadRow) and "JSON object" in out[2].reason
    assert isinstance(out[3], Row) and out[3].id == "5"


def test_a_bom_at_the_start_of_the_input_is_stripped(tmp_path):
    """A UTF-8 BOM before row 1 (Windows editors) is not part of the row; a BOM inside the file still is."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line("a") + b"\xef\xbb\xbf" + line("b"))
    first, second = list(JsonlSource(path).rows())
    assert isinstance(first, Row) and first.id == "a" and first.prompt == "hi"
    assert isinstance(second, BadRow) and "line 2" in second.reason
