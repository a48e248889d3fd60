"""Reading keys back from output files: fast path, foreign lines, torn tails, the two-process scan."""
from __future__ import annotations

import json

import pytest

from mpdistill.outputs import scan as recovery


def _write(path, keys, extra: bytes = b""):
    with open(path, "wb") as f:
        for key in keys:
            f.write(json.dumps({"line": key, "id": f"r{key}", "answer": "a" * 50}).encode() + b"\n")
        f.write(extra)
    return path


@pytest.mark.parametrize("parallel", [False, True])
def test_scan_reads_every_key_and_counts_foreign_lines(tmp_path, monkeypatch, parallel):
    """Our keys come back in file order; a line of another tool is known by its id; a line with
    neither is recorded with its line number (in either scan)."""
    monkeypatch.setattr(recovery, "_PARALLEL_BYTES", 1 if parallel else 1 << 40)
    monkeypatch.setattr(recovery, "_CHUNK", 4096)
    path = _write(tmp_path / "o.jsonl", range(1, 3001),
                  b'not json\n\n{"id": "x", "line": 3001}\n{"line": 3002, "iteration": 2}\n')
    scan = recovery.scan_file(path)
    assert scan.keys == [*range(1, 3001), 3002] and scan.bad_lines == 1
    assert scan.foreign == ['"x"'] and scan.unknown == [(3001, "not a JSON object")]
    assert scan.lines == 3004
    assert scan.end_offset == path.stat().st_size and scan.torn_backup is None


def test_scan_by_id_reads_every_line_by_its_identity(tmp_path):
    """A scan by id knows every line, ours included, by its identity (line numbers as `#N`)."""
    path = tmp_path / "o.jsonl"
    path.write_bytes(b'{"line": 1, "id": "a"}\n{"line": 2, "id": "2", "id_is_line": true}\n'
                     b'{"custom_id": "c", "answer": 1}\n{"answer": 2}\n')
    scan = recovery.scan_file(path, by_id=True)
    assert scan.foreign == ['"a"', "#2", '"c"'] and scan.unknown == [(4, "no id, custom_id or line")]


def test_count_lines_up_to_an_offset(tmp_path):
    """count_lines counts the newlines before an offset (0 for a missing file)."""
    path = _write(tmp_path / "o.jsonl", range(1, 11))
    size = path.stat().st_size
    assert recovery.count_lines(path, size) == 10 and recovery.count_lines(path, size - 1) == 9
    assert recovery.count_lines(tmp_path / "none.jsonl", 5) == 0


@pytest.mark.parametrize("parallel", [False, True])
def test_torn_tail_is_cut_and_kept(tmp_path, monkeypatch, parallel):
    """A last line without its newline is saved aside and cut, in either scan."""
    monkeypatch.setattr(recovery, "_PARALLEL_BYTES", 1 if parallel else 1 << 40)
    monkeypatch.setattr(recovery, "_CHUNK", 4096)
    path = _write(tmp_path / "o.jsonl", range(1, 2001), b'{"line": 2001, "id": "r20')
    scan = recovery.scan_file(path)
    assert scan.keys == list(range(1, 2001))
    assert scan.torn_backup.read_bytes() == b'{"line": 2001, "id": "r20'
    assert path.read_bytes().endswith(b"\n") and scan.end_offset == path.stat().st_size


def test_scan_from_an_offset_and_by_round(tmp_path):
    """A scan from an offset sees only later lines; with a round, only that round's keys."""
    path = tmp_path / "o.jsonl"
    path.write_bytes(b'{"line": 1, "iteration": 1}\n{"line": 2, "iteration": 1}\n{"line": 1, "iteration": 2}\n')
    first_line = len(b'{"line": 1, "iteration": 1}\n')
    assert recovery.scan_file(path, first_line).keys == [2, 1]
    rounds = recovery.scan_file(path, 0, iteration=2)
    assert rounds.keys == [1] and rounds.max_iteration == 2


def test_a_line_longer_than_a_chunk(tmp_path, monkeypatch):
    """A line longer than the read chunk is read whole, not mistaken for a torn tail."""
    monkeypatch.setattr(recovery, "_CHUNK", 64)
    path = tmp_path / "o.jsonl"
    path.write_bytes(b'{"line": 1, "a": "' + b"x" * 1000 + b'"}\n{"line": 2}\n')
    scan = recovery.scan_file(path)
    assert scan.keys == [1, 2] and scan.torn_backup is None
