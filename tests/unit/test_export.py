"""Unit tests of `mpdistill export OUTPUT --per-item DIR`."""
from __future__ import annotations

import json

from mpdistill.cli.tools import export_command
from mpdistill.tools.export import export_per_item, safe_file_name


def write_output(path, rows, tail: str = "") -> None:
    """An output JSONL with `rows`, then `tail` (e.g. a torn last line)."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + tail, encoding="utf-8")


def test_writes_json_results_and_thinking_chains(tmp_path):
    """Each row gets <id>_extracted.json (extracted, else {"answer"}); reasoning only when non-empty."""
    out = tmp_path / "results.jsonl"
    write_output(out, [
        {"id": "a1", "answer": '{"x": 1}', "extracted": {"x": 1}, "reasoning": "step by step"},
        {"id": "a2", "answer": "plain text", "reasoning": ""},
        {"id": 3, "answer": "三", "reasoning": None},
        {"id": "a4", "answer": "b", "reasoning": "   \n"},
    ], tail='{"id": "torn", "ans')
    counts = export_per_item(out, tmp_path / "dir")
    assert counts == {"rows": 4, "json": 4, "thinking": 1, "skipped": 1}
    results = tmp_path / "dir" / "json_results"
    assert json.loads((results / "a1_extracted.json").read_text()) == {"x": 1}
    assert json.loads((results / "a2_extracted.json").read_text()) == {"answer": "plain text"}
    assert json.loads((results / "3_extracted.json").read_text(encoding="utf-8")) == {"answer": "三"}
    chains = tmp_path / "dir" / "thinking_chains"
    assert [p.name for p in chains.iterdir()] == ["a1.txt"]
    assert (chains / "a1.txt").read_text() == "step by step"


def test_unsafe_ids_stay_inside_the_folder(tmp_path):
    """Ids with path parts, dots or separators cannot escape DIR, and distinct ids stay distinct."""
    out = tmp_path / "results.jsonl"
    ids = ["../escape", "..", ".", "/etc/passwd", "a/b", "a_b", "x" * 400, "sp ace", ""]
    write_output(out, [{"id": i, "answer": i, "reasoning": "r"} for i in ids])
    counts = export_per_item(out, tmp_path / "dir")
    files = sorted(p for p in (tmp_path / "dir").rglob("*") if p.is_file())
    assert all(p.parent.parent == tmp_path / "dir" for p in files)
    assert not (tmp_path / "escape_extracted.json").exists() and not (tmp_path / "escape.txt").exists()
    # "" has no id: skipped; every other id got its own pair of files
    assert counts["rows"] == len(ids) - 1 and len(files) == 2 * (len(ids) - 1)
    assert all(len(p.name) < 200 for p in files)


def test_safe_file_name_keeps_plain_ids():
    """Plain ids are kept as they are; changed ones carry a hash so they cannot collide."""
    assert safe_file_name("row-0001.v2") == "row-0001.v2"
    assert safe_file_name("a/b") != safe_file_name("a_b") == "a_b"
    assert "/" not in safe_file_name("../x") and not safe_file_name("../x").startswith(".")


def test_custom_id_and_line_are_used_without_an_id(tmp_path):
    """Batch rows are named by custom_id; rows without any id by their line number."""
    out = tmp_path / "results.jsonl"
    write_output(out, [{"custom_id": "req-1", "answer": "a"}, {"line": 7, "answer": "b"}])
    export_per_item(out, tmp_path / "dir")
    names = sorted(p.name for p in (tmp_path / "dir" / "json_results").iterdir())
    assert names == ["7_extracted.json", "req-1_extracted.json"]


def test_export_command_ok_and_missing_file(tmp_path, capsys):
    """The command exports and exits 0; a missing output is exit 2 with one line on stderr."""
    out = tmp_path / "results.jsonl"
    write_output(out, [{"id": "a", "answer": "x", "reasoning": "r"}])
    assert export_command([str(out), "--per-item", str(tmp_path / "dir")]) == 0
    assert "Exported 1 rows" in capsys.readouterr().out
    assert export_command([str(tmp_path / "nope.jsonl"), "--per-item", str(tmp_path / "d2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err
    assert not (tmp_path / "d2").exists()


def test_export_reads_batch_format_output(tmp_path):
    """Rows written with --output-format openai-batch export like mpdistill rows (custom_id as id)."""
    import json as _json
    from mpdistill.tools.export import export_per_item
    from mpdistill.outputs.batch import to_batch_output
    out = tmp_path / "out.jsonl"
    out.write_text(_json.dumps(to_batch_output({"line": 1, "id": "c1", "custom_id": "c1", "answer": "hi",
                                                "reasoning": "because", "model": "m"})) + "\n")
    counts = export_per_item(out, tmp_path / "items")
    assert counts["json"] == 1 and counts["thinking"] == 1
    assert _json.loads((tmp_path / "items" / "json_results" / "c1_extracted.json").read_text())["answer"] == "hi"
    assert (tmp_path / "items" / "thinking_chains" / "c1.txt").read_text() == "because"
