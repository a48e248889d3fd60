"""Task files, several models in one run, split/merge, Batch API format, n samples."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from mpdistill.config import OutputFiles

from mpdistill.outputs.batch import from_batch_output
from tests.conftest import clean_env, line_count, read_jsonl, wait_for, write_jsonl


def _cli(cwd, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "mpdistill", *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def _task(tmp_path, n_rows=150, extra=""):
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"p{i}"} for i in range(n_rows)])
    models = tmp_path / "configs" / "models"
    models.mkdir(parents=True)
    (models / "teacher-a.yaml").write_text("name: teacher-a\nmodel: mock-a\ntemperature: 0.2\n"
                                           "price_per_million_input: 1.0\nprice_per_million_output: 2.0\n")
    (models / "teacher-b.yaml").write_text("name: teacher-b\nmodel: mock-b\nmax_tokens: 64\n")
    task = tmp_path / "configs" / "tasks" / "two.yaml"
    task.parent.mkdir(parents=True)
    task.write_text(textwrap.dedent("""\
        task_type: distill
        input: in.jsonl
        output_dir: out
        models: [teacher-a, teacher-b]
        processes: 4
        checkpoint_interval: 5
        """) + extra)
    return task


def test_two_models_each_resume_independently_after_a_kill(tmp_path):
    """A two-model task killed mid-run resumes each model on its own; both end with every row once."""
    task = _task(tmp_path, 300)
    cmd = [sys.executable, "-m", "mpdistill", "run-task", str(task), "--no-progress",
           "--checkpoint-dir", str(tmp_path / "ck")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: line_count(tmp_path / "out" / "teacher-a" / "results.jsonl") >= 40, proc=proc)
    proc.kill()
    proc.communicate()
    assert {p.name for p in (tmp_path / "ck").glob("*_checkpoint.pkl")} <= {   # named after each output
        OutputFiles(tmp_path / "out" / alias / "results.jsonl", tmp_path / "ck").checkpoint.name
        for alias in ("teacher-a", "teacher-b")}
    done = _cli(tmp_path, "run-task", str(task), "--no-progress", "--checkpoint-dir", str(tmp_path / "ck"))
    assert done.returncode == 0, done.stderr
    for alias, model in (("teacher-a", "mock-a"), ("teacher-b", "mock-b")):
        rows = read_jsonl(tmp_path / "out" / alias / "results.jsonl")
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)) == 300
        assert {r["model"] for r in rows} == {model}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["models"]) == {"teacher-a", "teacher-b"}
    assert summary["models"]["teacher-a"]["cost"] is not None and summary["models"]["teacher-b"]["cost"] is None


def test_model_params_reach_the_server_and_cli_wins(tmp_path):
    """Model YAML params are sent; a CLI flag beats the model config (precedence)."""
    task = _task(tmp_path, 2)
    write_jsonl(tmp_path / "in.jsonl", [{"id": "e", "prompt": "[[echo_params]] x"}])
    proc = _cli(tmp_path, "run-task", str(task), "--no-progress", "--temperature", "0.9",
                "--checkpoint-dir", str(tmp_path / "ck"))
    assert proc.returncode == 0, proc.stderr
    a = json.loads(read_jsonl(tmp_path / "out" / "teacher-a" / "results.jsonl")[0]["answer"])
    b = json.loads(read_jsonl(tmp_path / "out" / "teacher-b" / "results.jsonl")[0]["answer"])
    assert a["temperature"] == 0.9 and a["model"] == "mock-a"
    assert b["max_tokens"] == 64 and b["temperature"] == 0.9


def test_unknown_key_in_task_names_file_and_key(tmp_path):
    """An unknown key in a task file is exit 2 with the file and the key named."""
    task = _task(tmp_path, 2, extra="procesess: 8\n")
    proc = _cli(tmp_path, "run-task", str(task))
    assert proc.returncode == 2
    assert "two.yaml" in proc.stderr and "procesess" in proc.stderr


def test_split_then_merge_round_trips_ids(tmp_path):
    """split → run every chunk → merge gives exactly the ids of the unsplit input."""
    rows = [{"id": f"r{i}", "prompt": f"p{i}"} if i % 3 else {"prompt": f"no id {i}"} for i in range(41)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    assert _cli(tmp_path, "split", "in.jsonl", "--chunks", "3", "--out-dir", "parts").returncode == 0
    for chunk in sorted((tmp_path / "parts").glob("chunk_*.jsonl")):
        out = tmp_path / "parts" / chunk.stem / "mock-model" / "results.jsonl"
        proc = _cli(tmp_path, "-i", str(chunk), "-o", str(out), "--mock", "-p", "2", "--no-progress",
                    "--checkpoint-dir", str(tmp_path / "ck"), "--run-name", chunk.stem)
        assert proc.returncode == 0, proc.stderr
    merged = _cli(tmp_path, "merge", "parts", "--input", "in.jsonl")
    assert merged.returncode == 0, merged.stderr + merged.stdout
    result = read_jsonl(tmp_path / "parts" / "merged" / "mock-model" / "results.jsonl")
    expected = {r.get("id", str(i + 1)) for i, r in enumerate(rows)}
    assert {r["id"] for r in result} == expected and len(result) == len(expected)


def test_batch_format_in_and_out(workdir):
    """Batch API input run with --output-format openai-batch gives Batch output lines that read back."""
    lines = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "x", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 50}}
             for i in range(10)] + [{"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
                                     "body": {"model": "x", "messages": [{"role": "user", "content": "[[fail:400:*]] z"}]}}]
    write_jsonl(workdir.input, lines)
    proc = workdir.run("--output-format", "openai-batch")
    assert proc.returncode == 3, proc.stderr
    out = read_jsonl(workdir.output)
    assert {o["custom_id"] for o in out} == {f"req-{i}" for i in range(10)}
    back = [from_batch_output(o) for o in out]
    assert all(b["answer"].startswith("mock answer: q") for b in back)
    (err,) = read_jsonl(workdir.errors)
    assert err["custom_id"] == "bad" and err["error"]
    assert workdir.run("--output-format", "openai-batch").returncode == 3  # resume: nothing twice
    assert len(read_jsonl(workdir.output)) == 10


def test_n_samples_as_list_or_exploded(workdir):
    """n > 1 keeps every sample in one row, or one row per sample with --explode-samples."""
    write_jsonl(workdir.input, [{"id": "s", "prompt": "pick"}])
    (workdir.root / "n.yaml").write_text("params: {n: 3}\n")
    assert workdir.run("--config", str(workdir.root / "n.yaml")).returncode == 0
    (row,) = workdir.results()
    assert len(row["samples"]) == 3 and row["samples"][2]["answer"].endswith("(sample 3)")
    workdir.output.unlink()
    proc = workdir.run("--config", str(workdir.root / "n.yaml"), "--explode-samples", "--restart")
    assert proc.returncode == 0, proc.stderr
    assert [r["sample"] for r in workdir.results()] == [0, 1, 2]
