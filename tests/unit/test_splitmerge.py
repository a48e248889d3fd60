"""Split an input into chunks and merge fabricated chunk results back: ids, lines and counts survive."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpdistill.errors import ConfigError
from mpdistill.outputs.batch import to_batch_output
from mpdistill.inputs.jsonl import JsonlSource
from mpdistill.inputs.rows import BadRow, Blank, row_from_object
from mpdistill.outputs.identity import id_fields, line_key
from mpdistill.cli.tools import merge_command, split_command
from mpdistill.tools.merge import merge_dir
from mpdistill.tools.split import chunk_ranges, row_id, split_file

N = 103


def make_input(path: Path) -> Path:
    """103 lines: ids, id-less rows, an empty id, a blank line, bad JSON and a Batch API line."""
    lines = []
    for n in range(1, N + 1):
        if n == 10:
            lines.append("")
        elif n == 20:
            lines.append("{not json")
        elif n == 30:
            lines.append(json.dumps({"custom_id": "batch-30", "method": "POST", "url": "/v1/chat/completions",
                                     "body": {"messages": [{"role": "user", "content": "hi"}]}}))
        elif n == 40:
            lines.append(json.dumps({"id": "", "prompt": "empty id"}))
        elif n % 7 == 0:
            lines.append(json.dumps({"prompt": f"no id {n}", "note": "é"}, ensure_ascii=False))
        else:
            lines.append(json.dumps({"id": f"r{n}", "prompt": f"q {n}"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def source_items(path: Path) -> list:
    """What mpdistill's own reader makes of a file: Row / BadRow / Blank in line order."""
    return list(JsonlSource(path).rows())


def original_ids(path: Path) -> dict[int, str]:
    """line number → id for every row of the unsplit input that a run would answer."""
    return {r.key: r.id for r in source_items(path) if not isinstance(r, (BadRow, Blank))}


def fabricate(out: Path, chunk: Path, alias: str, *, fail=(), drop=(), dup=False) -> None:
    """Write results/errors for one chunk as a run would: answered rows, failed rows, bad rows."""
    results, errors = [], []
    for item in source_items(chunk):
        if isinstance(item, Blank):
            continue
        if isinstance(item, BadRow):
            errors.append({"line": item.key, "id": item.id, "reason": item.reason, "error": "RowFormatError"})
            continue
        if item.id in drop:
            continue
        if item.id in fail:
            errors.append({"line": item.key, **id_fields(item.id, item.implied), "reason": "HTTP 400",
                           "error": "RejectedError", "status": 400})
            continue
        results.append({"line": item.key, **id_fields(item.id, item.implied), "input_prompt": item.prompt,
                        "answer": f"A:{item.id}"})
    if dup and results:
        results.append(dict(results[0], answer="second copy"))
    target = out / alias
    target.mkdir(parents=True, exist_ok=True)
    (target / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    if errors:
        (target / "results.errors.jsonl").write_text("".join(json.dumps(e) + "\n" for e in errors))


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def split(tmp_path):
    """The 103-line input split into 4 chunks under tmp_path/split."""
    src = make_input(tmp_path / "input.jsonl")
    chunks = split_file(src, 4, tmp_path / "split")
    return src, tmp_path / "split", chunks


def test_chunk_ranges_are_ceil_sized():
    """Chunk i gets lines [i*S, (i+1)*S) with S = ceil(N/chunks); extra chunks are empty."""
    assert chunk_ranges(103, 4) == [(0, 26), (26, 52), (52, 78), (78, 103)]
    assert chunk_ranges(2, 3) == [(0, 1), (1, 2), (2, 2)]
    assert chunk_ranges(0, 2) == [(0, 0), (0, 0)]


def test_split_writes_chunks_and_manifest(split):
    """Split writes chunk_0000.jsonl … with the line ranges of the manifest; every line kept."""
    src, out, chunks = split
    assert [p.name for p in chunks] == [f"chunk_000{i}.jsonl" for i in range(4)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["lines"] == N and manifest["input"] == str(src.resolve())
    assert manifest["input_size"] == src.stat().st_size
    assert [(f["first_line"], f["last_line"]) for f in manifest["files"]] == \
        [(1, 26), (27, 52), (53, 78), (79, 103)]
    assert [len(p.read_bytes().splitlines()) for p in chunks] == [26, 26, 26, 25]


def test_split_keeps_ids_stable(split):
    """Rows read from the chunks, placed by the manifest's offsets, have the unsplit input's identities."""
    src, out, chunks = split
    whole = {r.key: r.identity for r in source_items(src) if not isinstance(r, (BadRow, Blank))}
    from_chunks = {}
    for path, first in zip(chunks, (1, 27, 53, 79)):
        for r in source_items(path):
            if not isinstance(r, (BadRow, Blank)):
                from_chunks[r.key + first - 1] = r.identity if not r.implied else line_key(r.key + first - 1)
    assert from_chunks == whole
    assert whole[7] == "#7" and whole[30] == '"batch-30"' and whole[40] == "#40" and whole[1] == '"r1"'
    assert b"".join(p.read_bytes() for p in chunks) == src.read_bytes()   # lines copied byte for byte


def test_row_id_matches_source():
    """split.row_id gives the same identity as the run's row reader for every row shape."""
    shapes = [{"id": "a", "prompt": "p"}, {"id": 5, "prompt": "p"}, {"prompt": "p"}, {"id": "", "prompt": "p"},
              {"id": None, "custom_id": "c", "prompt": "p"},
              {"custom_id": "c2", "body": {"messages": [{"role": "user", "content": "x"}]}},
              {"custom_id": "", "body": {"messages": [{"role": "user", "content": "x"}]}}]
    for obj in shapes:
        assert row_id(obj, 9) == row_from_object(9, obj, None).identity


def test_split_merge_round_trip(split):
    """Merged results hold each answered id once, with original line numbers; counts are exact."""
    src, out, chunks = split
    ids = original_ids(src)
    for i, chunk in enumerate(chunks):
        fabricate(out / chunk.stem, chunk, "a", fail={"r2", "r55"}, drop={"r80", "r81"}, dup=(i == 1))
        fabricate(out / chunk.stem, chunk, "b")
    # r55 failed in one run and succeeded in a later one: it must not count as failed.
    with open(out / "chunk_0002/a/results.jsonl", "a") as f:
        f.write(json.dumps({"line": 3, "id": "r55", "answer": "late"}) + "\n")
    stats = merge_dir(out, merge_errors=True)
    a, b = stats["models"]["a"], stats["models"]["b"]
    merged = read(out / "merged/a/results.jsonl")
    assert [r["id"] for r in merged if r["id"] != "r55"] == \
        [ids[k] for k in sorted(ids) if ids[k] not in {"r2", "r55", "r80", "r81"}]
    assert len({r["id"] for r in merged}) == len(merged)
    assert all(ids[r["line"]] == r["id"] for r in merged if r["id"] != "r55")
    assert all(next(iter(r)) == "line" for r in merged)
    assert a["duplicates"] == 1 and a["succeeded"] == len(ids) - 3
    assert a["failed"] == 2 and a["missing"] == 2      # r2 + the bad JSON line; r80, r81
    errors = read(out / "merged/a/results.errors.jsonl")
    assert sorted(e["line"] for e in errors) == [2, 20]
    assert (b["succeeded"], b["failed"], b["missing"], b["duplicates"]) == (len(ids), 1, 0, 0)
    assert {r["id"] for r in read(out / "merged/b/results.jsonl")} == set(ids.values())
    assert json.loads((out / "merged/stats.json").read_text()) == stats


def test_merge_selected_models_and_other_layouts(tmp_path):
    """--models picks aliases; `<alias>_results.jsonl` and Batch output lines are merged too."""
    src = make_input(tmp_path / "in.jsonl")
    out = tmp_path / "runs"
    for part in ("p1", "p2"):
        (out / part).mkdir(parents=True)
    items = [r for r in source_items(src) if not isinstance(r, (BadRow, Blank))]
    rows = [{"line": r.key, **id_fields(r.id, r.implied), "answer": "x"} for r in items]
    implied = sum(r.implied for r in items)
    (out / "p1/m_results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:50]))
    (out / "p2/m_results.jsonl").write_text(
        "".join(json.dumps(to_batch_output(r)) + "\n" for r in rows[40:]) + '{"torn')
    (out / "p1/other_results.jsonl").write_text("")
    stats = merge_dir(out, models=["m"], input=src)
    assert list(stats["models"]) == ["m"]
    m = stats["models"]["m"]
    # Without a manifest the parts are runs over the input itself: rows known by their line number
    # (15 here) are matched by it.
    assert implied == 15
    assert (m["succeeded"], m["duplicates"], m["bad_lines"], m["missing"]) == (len(rows), 10, 1, 1)
    with pytest.raises(ConfigError, match="ghost"):
        merge_dir(out, models=["ghost"])


def test_split_refuses_a_different_split_in_the_same_folder(split, tmp_path):
    """Re-splitting the same input is allowed; another chunk count into that folder is refused."""
    src, out, chunks = split
    assert split_file(src, 4, out) == chunks
    with pytest.raises(ConfigError, match="different split"):
        split_file(src, 3, out)


def test_last_line_without_newline_is_kept(tmp_path):
    """A final line without a newline is a row like any other and ends with one in its chunk."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "a"}\n{"prompt": "b"}')
    chunks = split_file(src, 2, tmp_path / "s")
    assert [read(p) for p in chunks] == [[{"prompt": "a"}], [{"prompt": "b"}]]


def test_commands_exit_codes(split, tmp_path, capsys):
    """split/merge commands: 2 with one line on bad usage, 0 when complete, 3 with failed rows."""
    src, out, chunks = split
    assert split_command([str(src), "--chunks", "x", "--out-dir", str(tmp_path / "z")]) == 2
    assert split_command([str(tmp_path / "missing.jsonl"), "--chunks", "2", "--out-dir", str(tmp_path / "z")]) == 2
    assert merge_command([]) == 2
    assert merge_command([str(tmp_path / "nowhere")]) == 2
    assert merge_command([str(out)]) == 2          # no results yet
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("mpdistill ") for line in err)
    assert split_command([str(src), "--chunks", "2", "--out-dir", str(tmp_path / "two")]) == 0
    two = tmp_path / "two"
    for chunk in sorted(two.glob("chunk_*.jsonl")):
        fabricate(two / chunk.stem, chunk, "a")
    assert merge_command([str(two), "--models", "a"]) == 3     # the bad JSON line failed
    (two / "chunk_0000/a/results.errors.jsonl").unlink()
    assert merge_command([str(two), "--input", str(src)]) == 3     # … and now it is missing
    assert "1 missing" in capsys.readouterr().out
