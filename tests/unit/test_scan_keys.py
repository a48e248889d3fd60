"""Unit tests of the resume scan's one-pass key reader (outputs.scan._scan_keys)."""
from __future__ import annotations

from mpdistill.outputs.scan import Scan, _scan_keys, scan_file


def test_every_line_ours_gives_keys_and_line_count():
    """A chunk of our lines: every key, in order, and the line count."""
    scan = Scan()
    _scan_keys(b'{"line": 4, "a": 1}\n{"line": 5}\n{"line": 9, "b": 2}\n', scan)
    assert scan.keys == [4, 5, 9] and scan.lines == 3 and not scan.foreign


def test_a_line_not_ours_is_read_line_by_line():
    """A foreign line in the middle falls back to the line reader: it is known by its id."""
    scan = Scan()
    _scan_keys(b'{"line": 1}\n{"id": "x", "answer": "a"}\n{"line": 3}\n', scan)
    assert scan.keys == [1, 3] and scan.lines == 3 and scan.foreign == ['"x"']


def test_scan_file_counts_every_line(tmp_path):
    """The whole file: keys of all lines; a torn last line is cut off, not counted."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"".join(b'{"line": %d, "answer": "a"}\n' % k for k in range(1, 1001)) + b'{"line": 10')
    scan = scan_file(path)
    assert scan.keys == list(range(1, 1001)) and scan.lines == 1000
