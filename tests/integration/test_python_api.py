"""The Python API as the README shows it: rows from Python, a summary back, resumable."""
from __future__ import annotations

from mpdistill import RunConfig, load_checkpoint, run
from tests.conftest import read_jsonl, write_jsonl


def test_readme_example_rows_from_python(tmp_path, monkeypatch):
    """`run(RunConfig(..., mock=True), rows=rows)` answers every row and returns the summary."""
    monkeypatch.chdir(tmp_path)
    rows = [{"id": "x1", "prompt": "Say hi"}, {"id": "x2", "prompt": "Say bye"}]
    summary = run(RunConfig(output="out/hi.jsonl", processes=2, mock=True, progress=False), rows=rows)
    assert summary["succeeded"] == 2 and summary["failed"] == 0
    assert {r["id"] for r in read_jsonl(tmp_path / "out" / "hi.jsonl")} == {"x1", "x2"}
    assert (tmp_path / "out" / "hi.summary.json").exists()


def test_python_api_with_a_file_and_mock_server(tmp_path, mock_server):
    """A file input through the API against a server; a second run finds nothing to do."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"p{i}"} for i in range(12)])
    cfg = RunConfig(input=str(src), output=str(tmp_path / "o.jsonl"), model="m", base_url=mock_server.url,
                    api_key="sk-test-0001", processes=3, checkpoint_dir=str(tmp_path / "ck"),
                    limit=5, progress=False)
    first = run(cfg)
    assert first["succeeded"] == 5
    assert load_checkpoint("m", str(tmp_path / "ck"))["processed"] == 5
    import dataclasses
    second = run(dataclasses.replace(cfg, limit=None))
    assert second["succeeded"] == 7 and second["already_done"] == 5
    assert load_checkpoint("m", str(tmp_path / "ck")) is None
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 12
