"""The Python API as the README shows it: rows from Python, a summary back, resumable."""
from __future__ import annotations

from mpdistill import RunConfig, load_checkpoint, run
from tests.conftest import ROOT, read_jsonl, write_jsonl


def _readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python") + 9)]


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's Python API example runs verbatim and answers every row."""
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_python_example(), "README.md", "exec"), {})
    assert capsys.readouterr().out.splitlines()[-1] == "2 0"
    assert {r["id"] for r in read_jsonl(tmp_path / "out" / "hi.jsonl")} == {"x1", "x2"}
    assert (tmp_path / "out" / "hi.summary.json").exists()
    assert load_checkpoint("mock-model") is None   # a completed run leaves no checkpoint


def test_python_api_with_a_file_and_mock_server(tmp_path, mock_server):
    """A file input through the API against a server; a second run finds nothing to do."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"p{i}"} for i in range(12)])
    cfg = RunConfig(input=str(src), output=str(tmp_path / "o.jsonl"), model="m", base_url=mock_server.url,
                    api_key="sk-test-0001", processes=3, checkpoint_dir=str(tmp_path / "ck"),
                    log_dir=str(tmp_path / "logs"), limit=5, progress=False)
    first = run(cfg)
    assert first["succeeded"] == 5
    assert load_checkpoint("m", str(tmp_path / "ck"))["processed"] == 5
    import dataclasses
    second = run(dataclasses.replace(cfg, limit=None))
    assert second["succeeded"] == 7 and second["already_done"] == 5
    assert load_checkpoint("m", str(tmp_path / "ck")) is None
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 12
