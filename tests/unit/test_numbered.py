"""Unit tests of mpdistill.inputs.numbered: numbered text files as rows, gaps, templates, follow mode (fake clocks)."""
from __future__ import annotations

import os

import pytest

from mpdistill.errors import ConfigError, InputFileError
from mpdistill.inputs.numbered import FilePattern, NumberedSource, fill_template
from mpdistill.inputs.rows import IDLE, BadRow, Blank, Row

WALL0 = 1_700_000_000.0


class Clocks:
    """A fake monotonic clock and wall clock that move together when `advance` is called."""

    def __init__(self) -> None:
        self.t = 0.0

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return WALL0 + self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def put(directory, n: int, text: str | bytes = None, mtime: float | None = None, name: str = "report_{n}.txt"):
    """Write file number `n` (default text 'text n'), optionally with a given mtime."""
    path = directory / name.format(n=n)
    data = (f"text {n}" if text is None else text)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def kinds(items) -> list:
    """A compact view of items: ('row', n) / ('blank', n) / ('bad', n) / 'IDLE'."""
    out = []
    for i in items:
        if i is IDLE:
            out.append("IDLE")
        else:
            out.append(({Row: "row", Blank: "blank", BadRow: "bad"}[type(i)], i.key))
    return out


def test_gaps_are_blanks_and_rows_come_in_number_order(tmp_path):
    """From a start number, existing files are rows in order (id = stem) and missing numbers are Blanks."""
    for n in (6003, 6001, 6004, 6007):
        put(tmp_path, n)
    src = NumberedSource(tmp_path, start=6001)
    items = list(src.rows())
    assert kinds(items) == [("row", 6001), ("blank", 6002), ("row", 6003), ("row", 6004),
                            ("blank", 6005), ("blank", 6006), ("row", 6007)]
    row = items[0]
    assert row.id == "report_6001" and row.prompt == "text 6001"
    assert row.extra == {"n": 6001, "file": "report_6001.txt"}
    assert row.request == {"messages": [{"role": "user", "content": "text 6001"}]}
    assert src.last_number == 6007
    assert src.count() == 7


def test_template_fills_content_id_and_n_and_keeps_other_braces(tmp_path):
    """The template's {content}, {id}, {n} are filled; braces in the content or template stay literal."""
    put(tmp_path, 5, 'data {"k": 1} and {id} {0} {')
    src = NumberedSource(tmp_path, start=5, template='File {id} (#{n}). Reply as {"answer": ...}.\n{content}',
                         system="be brief")
    row = next(src.rows())
    assert row.prompt == 'File report_5 (#5). Reply as {"answer": ...}.\ndata {"k": 1} and {id} {0} {'
    assert row.request["messages"][0] == {"role": "system", "content": "be brief"}
    assert row.request["messages"][1]["content"] == row.prompt


def test_fill_template_does_not_substitute_inside_values():
    """A placeholder that appears inside the substituted content is not filled again."""
    assert fill_template("{id}: {content}", content="{n} {id}", id="r1", n=1) == "r1: {n} {id}"


def test_end_bound_stops_reading(tmp_path):
    """With `end`, numbers after it are not read even if their files exist."""
    for n in (1, 2, 3, 4, 5):
        put(tmp_path, n)
    src = NumberedSource(tmp_path, start=2, end=4)
    assert kinds(src.rows()) == [("row", 2), ("row", 3), ("row", 4)]
    assert src.count() == 3


def test_without_follow_reading_stops_at_the_highest_existing_number(tmp_path):
    """Without follow or end, the source ends at the highest existing number; files below start are ignored."""
    put(tmp_path, 1)
    put(tmp_path, 10)
    put(tmp_path, 12)
    (tmp_path / "notes.txt").write_text("not a report")
    src = NumberedSource(tmp_path, start=10, end=100)
    assert kinds(src.rows()) == [("row", 10), ("blank", 11), ("row", 12)]
    assert src.count() == 3


def test_empty_directory_yields_nothing(tmp_path):
    """Without follow, a directory with no matching file yields no rows and counts 0."""
    src = NumberedSource(tmp_path)
    assert list(src.rows()) == [] and src.count() == 0


def test_bad_files_become_bad_rows_naming_the_file(tmp_path):
    """Invalid UTF-8, empty and too-big files are BadRows whose reason names the file; the rest go on."""
    put(tmp_path, 1, b"ok \xff\xfe bytes")
    put(tmp_path, 2, b"  \n")
    put(tmp_path, 3, "x" * 50)
    put(tmp_path, 4, "fine")
    items = list(NumberedSource(tmp_path, max_bytes=40).rows())
    assert kinds(items) == [("bad", 1), ("bad", 2), ("bad", 3), ("row", 4)]
    assert "report_1.txt is not valid UTF-8" in items[0].reason and items[0].id == "report_1"
    assert "report_2.txt is empty" in items[1].reason
    assert "report_3.txt is larger than 40 bytes" in items[2].reason


def test_resume_start_position_skips_earlier_numbers(tmp_path):
    """A checkpoint position (6005, 0) starts reading at 6005."""
    for n in range(6001, 6008):
        put(tmp_path, n)
    src = NumberedSource(tmp_path, start=6001)
    assert kinds(src.rows(start=(6005, 0))) == [("row", 6005), ("row", 6006), ("row", 6007)]
    assert kinds(src.rows(start=6006)) == [("row", 6006), ("row", 6007)]


def test_done_numbers_are_skipped(tmp_path):
    """Numbers that is_done reports are neither read nor yielded."""
    for n in range(1, 6):
        put(tmp_path, n)
    put(tmp_path, 2, b"\xff")  # would be a BadRow if it were read
    src = NumberedSource(tmp_path)
    assert kinds(src.rows(is_done=lambda n: n in (2, 3))) == [("row", 1), ("row", 4), ("row", 5)]


def test_zero_padded_pattern(tmp_path):
    """A `{n:04d}` pattern reads padded names only and counts from them."""
    put(tmp_path, 7, name="img_{n:04d}.txt")
    put(tmp_path, 8, name="img_{n}.txt")  # not padded: not this pattern's file
    src = NumberedSource(tmp_path, pattern="img_{n:04d}.txt", start=7)
    items = list(src.rows())
    assert kinds(items) == [("row", 7)] and items[0].id == "img_0007"


@pytest.mark.parametrize("pattern", ["report.txt", "{n}_{n}.txt", "{x}.txt", "{n!r}.txt", "sub/{n}.txt", "{n"])
def test_bad_patterns_are_config_errors(pattern):
    """A pattern without exactly one plain {n} field, or with a path, is a ConfigError."""
    with pytest.raises(ConfigError):
        FilePattern(pattern)


def test_missing_directory_and_bad_range_are_errors(tmp_path):
    """A missing directory is an InputFileError; end below start is a ConfigError."""
    with pytest.raises(InputFileError):
        NumberedSource(tmp_path / "nope")
    with pytest.raises(ConfigError):
        NumberedSource(tmp_path, start=5, end=4)


def test_follow_yields_idle_then_picks_up_a_new_file(tmp_path):
    """With follow, a missing next file yields IDLE (not a skip) until it appears, then it is read."""
    clocks = Clocks()
    put(tmp_path, 1, mtime=WALL0 - 60)
    src = NumberedSource(tmp_path, clock=clocks.mono, wall=clocks.wall)
    rows = src.rows(follow=True)
    assert kinds([next(rows)]) == [("row", 1)]
    assert next(rows) is IDLE and src.waiting_for == "report_2.txt"
    clocks.advance(30)
    assert next(rows) is IDLE  # no later file: never skipped, however long we wait
    put(tmp_path, 2, mtime=WALL0)
    assert kinds([next(rows)]) == [("row", 2)]
    assert src.waiting_for is None and src.last_number == 2
    assert src.count(follow=True) is None


def test_follow_waits_until_a_new_file_is_quiet(tmp_path):
    """With follow, a file modified just now is read only after quiet_s without change."""
    clocks = Clocks()
    src = NumberedSource(tmp_path, quiet_s=1.0, clock=clocks.mono, wall=clocks.wall)
    rows = src.rows(follow=True)
    put(tmp_path, 1, "partial", mtime=WALL0)
    assert next(rows) is IDLE
    clocks.advance(0.5)
    put(tmp_path, 1, "partial and more", mtime=WALL0 + 0.5)
    assert next(rows) is IDLE
    clocks.advance(1.0)
    row = next(rows)
    assert row.key == 1 and row.prompt == "partial and more"


def test_follow_quiet_rule_survives_a_future_mtime(tmp_path):
    """With follow, a file whose mtime is in the future (skewed clock) is read once unchanged for quiet_s."""
    clocks = Clocks()
    put(tmp_path, 1, mtime=WALL0 + 3600)
    rows = NumberedSource(tmp_path, quiet_s=1.0, clock=clocks.mono, wall=clocks.wall).rows(follow=True)
    assert next(rows) is IDLE
    clocks.advance(1.5)
    assert kinds([next(rows)]) == [("row", 1)]


def test_follow_skips_a_gap_once_a_later_file_has_settled(tmp_path):
    """With follow, a missing number is skipped (Blank) only after a later file has existed for settle_s."""
    clocks = Clocks()
    put(tmp_path, 1, mtime=WALL0 - 60)
    src = NumberedSource(tmp_path, settle_s=2.0, quiet_s=0, clock=clocks.mono, wall=clocks.wall)
    rows = src.rows(follow=True)
    assert kinds([next(rows), next(rows)]) == [("row", 1), "IDLE"]
    put(tmp_path, 4, mtime=WALL0)
    assert next(rows) is IDLE          # report_4 is brand new: report_2 may still come
    clocks.advance(1.0)
    assert next(rows) is IDLE
    clocks.advance(1.5)
    assert kinds([next(rows), next(rows), next(rows)]) == [("blank", 2), ("blank", 3), ("row", 4)]
    assert next(rows) is IDLE


def test_follow_skips_old_gaps_at_once(tmp_path):
    """With follow, a gap before a file that is already older than settle_s is skipped without waiting."""
    clocks = Clocks()
    put(tmp_path, 1, mtime=WALL0 - 60)
    put(tmp_path, 3, mtime=WALL0 - 60)
    rows = NumberedSource(tmp_path, clock=clocks.mono, wall=clocks.wall).rows(follow=True)
    assert kinds([next(rows), next(rows), next(rows), next(rows)]) == [("row", 1), ("blank", 2), ("row", 3), "IDLE"]


def test_follow_finds_a_later_file_beyond_the_lookahead(tmp_path):
    """With follow, a later file further away than the lookahead is found by a directory scan."""
    clocks = Clocks()
    put(tmp_path, 1, mtime=WALL0 - 60)
    put(tmp_path, 50, mtime=WALL0 - 60)
    src = NumberedSource(tmp_path, end=50, lookahead=4, clock=clocks.mono, wall=clocks.wall)
    items = list(src.rows(follow=True))
    assert kinds(items) == [("row", 1)] + [("blank", n) for n in range(2, 50)] + [("row", 50)]


def test_follow_with_end_ends_after_the_end_number(tmp_path):
    """With follow and end, the iterator ends once the end number is handed out; count is the range."""
    clocks = Clocks()
    src = NumberedSource(tmp_path, start=3, end=4, quiet_s=0, clock=clocks.mono, wall=clocks.wall)
    assert src.count(follow=True) == 2
    rows = src.rows(follow=True)
    assert next(rows) is IDLE
    put(tmp_path, 3)
    put(tmp_path, 4)
    assert kinds(rows) == [("row", 3), ("row", 4)]


def test_a_bom_at_the_start_of_a_numbered_file_and_template_is_stripped(tmp_path):
    """Numbered files and the template written with a BOM give the text without it."""
    from mpdistill.inputs.numbered import read_template
    (tmp_path / "report_1.txt").write_bytes("\ufefftext one".encode("utf-8"))
    template = tmp_path / "t.txt"
    template.write_bytes("\ufeffQ: {content}".encode("utf-8"))
    (row,) = list(NumberedSource(tmp_path, template=read_template(template)).rows())
    assert row.prompt == "Q: text one"


def test_a_fifo_or_device_among_the_numbered_files_is_an_error_row_not_a_hang(tmp_path):
    """A FIFO (or a link to /dev/zero) named like a numbered file is refused; the other files are read."""
    (tmp_path / "report_1.txt").write_text("one")
    os.mkfifo(tmp_path / "report_2.txt")
    os.symlink("/dev/zero", tmp_path / "report_3.txt")
    items = list(NumberedSource(tmp_path).rows())
    assert items[0].prompt == "one"
    assert [type(i).__name__ for i in items[1:]] == ["BadRow", "BadRow"]
    assert all("not a regular file" in i.reason for i in items[1:])
