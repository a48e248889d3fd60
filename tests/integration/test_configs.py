"""Every file shipped in configs/ works as it is: task files run through `run-task` against the mock."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import yaml

from mpdistill.provider.registry import load_endpoints
from mpdistill.tools.tasks import load_model
from tests.conftest import ROOT, clean_env

ORDER = {"split": 0, "distill": 1, "merge": 2, "submit": 3}   # a merge reads what the split's chunks produced


def _run_task(cwd, task) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpdistill", "run-task", str(task), "--no-progress", "--mock"],
                          cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=120)


def _project(tmp_path):
    """A copy of the shipped configs and sample data, laid out as in the repository."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(ROOT / "mpdistill" / "sample", tmp_path / "mpdistill" / "sample")
    return sorted((tmp_path / "configs" / "tasks").glob("*.yaml"),
                  key=lambda p: (ORDER[yaml.safe_load(p.read_text())["task_type"]], p.name))


def _run_first_chunk(tmp_path, split_task) -> None:
    """Answer chunk 0 of the split with the shipped mock models, as split_sample.yaml describes."""
    out_dir = tmp_path / yaml.safe_load(split_task.read_text())["out_dir"]
    chunk = sorted(out_dir.glob("chunk_*.jsonl"))[0]
    task = tmp_path / "configs" / "tasks" / "first_chunk.yaml.gen"
    task.write_text(textwrap.dedent(f"""\
        task_type: distill
        input: {chunk.relative_to(tmp_path)}
        output_dir: {(out_dir / chunk.stem).relative_to(tmp_path)}
        models: [mock-a, mock-b]
        processes: 2
        run_name: {chunk.stem}
        """))
    proc = _run_task(tmp_path, task)
    assert proc.returncode in (0, 3) and "Traceback" not in proc.stderr, proc.stderr


def test_every_shipped_task_file_runs_against_the_mock(tmp_path):
    """split and distill task files of configs/tasks exit 0; the merge of a partial split exits 3 with counts."""
    tasks = _project(tmp_path)
    assert {yaml.safe_load(t.read_text())["task_type"] for t in tasks} == set(ORDER)
    for task in tasks:
        kind = yaml.safe_load(task.read_text())["task_type"]
        proc = _run_task(tmp_path, task)
        assert "Traceback" not in proc.stderr and "KeyError" not in proc.stderr, proc.stderr
        if kind != "merge":
            assert proc.returncode == 0, f"{task.name}: {proc.stderr}"
        if kind == "split":
            _run_first_chunk(tmp_path, task)
            continue
        if kind == "merge":     # only chunk 0 was answered: the other rows are missing
            stats = json.loads((tmp_path / yaml.safe_load(task.read_text())["dir"] / "merged" / "stats.json")
                               .read_text())
            assert all(m["missing"] > 0 for m in stats["models"].values())
            assert proc.returncode == 3 and "missing" in proc.stderr, proc.stderr


def test_every_shipped_model_and_endpoints_file_loads(monkeypatch):
    """Model configs naming real providers (not runnable offline) and the endpoints example load cleanly."""
    configs = ROOT / "configs"
    models = sorted((configs / "models").glob("*.yaml"))
    assert models and all(load_model(p).model for p in models)
    for var in ("OPENAI_API_KEY_1", "OPENAI_API_KEY_2", "DEEPSEEK_API_KEY"):
        monkeypatch.setenv(var, f"test-value-{var.lower()}")
    endpoints = load_endpoints(configs / "endpoints.example.yaml")
    assert [e.name for e in endpoints] == ["openai_1", "openai_2", "deepseek", "local_vllm"]
    covered = set(models) | set((configs / "tasks").glob("*.yaml")) | {configs / "endpoints.example.yaml"}
    assert set(configs.rglob("*.yaml")) == covered     # a new file in configs/ needs a place in these tests
