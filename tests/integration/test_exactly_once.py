"""Exactly once on every path (issue 10): rows known by id, one job per output, refusals that touch nothing.

Each case runs the real CLI against the mock server and asserts on the files and the calls made.
"""
from __future__ import annotations

import json

import pytest

from mpdistill.mock.server import MockServer
from mpdistill.state.checkpoint import CheckpointManager
from tests.conftest import Workdir, line_count, wait_for, write_jsonl

N = 40


def _rows(n=N, prefix="r"):
    return [{"id": f"{prefix}{i}", "prompt": f"prompt {prefix}{i}"} for i in range(n)]


def _ids(wd: Workdir) -> list:
    return [r["id"] for r in wd.results()]


def _assert_exact(wd: Workdir, expected: set):
    ids = _ids(wd)
    assert len(ids) == len(set(ids)), f"duplicates: {sorted(i for i in ids if ids.count(i) > 1)}"
    assert set(ids) == expected


def _files(wd: Workdir) -> dict:
    paths = [wd.output, wd.errors, *wd.checkpoints.glob("*_checkpoint.pkl"), wd.output.with_name("results.job.json")]
    return {str(p): p.read_bytes() for p in paths if p.exists()}


def _old_script_line(rid: str) -> str:
    """A line as the older per-process scripts wrote it: no `line`, nothing of ours."""
    return json.dumps({"id": rid, "input_prompt": f"prompt {rid}", "images": [], "answer": "old",
                       "processed_at": "2025-01-01T00:00:00"})


def test_output_written_by_another_tool_is_read_by_id(workdir, mock_server):
    """An output in the old scripts' format holding some ids: exactly the other rows are sent, each once."""
    write_jsonl(workdir.input, _rows())
    workdir.output.parent.mkdir(parents=True)
    done = [f"r{i}" for i in range(0, N, 2)]
    workdir.output.write_text("".join(_old_script_line(r) + "\n" for r in reversed(done)))
    proc = workdir.run()
    assert proc.returncode == 0, proc.stderr
    assert mock_server.stats()["requests"] == N - len(done)
    _assert_exact(workdir, {f"r{i}" for i in range(N)})


def test_a_line_with_neither_key_nor_id_stops_before_any_call(workdir, mock_server):
    """A line naming no row stops the run (exit 2) naming file and line; nothing sent, nothing touched."""
    write_jsonl(workdir.input, _rows(10))
    workdir.output.parent.mkdir(parents=True)
    workdir.output.write_text(_old_script_line("r1") + "\n" + json.dumps({"answer": "who am I"}) + "\n")
    before = _files(workdir)
    proc = workdir.run()
    assert proc.returncode == 2
    assert f"{workdir.output} line 2" in proc.stderr and "--validate" in proc.stderr and "--restart" in proc.stderr
    assert mock_server.stats()["requests"] == 0
    assert _files(workdir) == before


@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_row_inserted_at_the_top_is_refused_then_resumed_by_id(workdir, mock_server, with_checkpoint):
    """An edited input is refused (exit 2, files untouched) with or without checkpoint; --resume-by-id
    then sends exactly the new row."""
    rows = _rows(20)
    write_jsonl(workdir.input, rows)
    assert workdir.run(*(["--limit", "12"] if with_checkpoint else [])).returncode == 0
    assert bool(list(workdir.checkpoints.glob("*_checkpoint.pkl"))) == with_checkpoint
    write_jsonl(workdir.input, [{"id": "new", "prompt": "inserted"}, *rows])
    before = _files(workdir)
    mock_server.reset_stats()
    proc = workdir.run()
    assert proc.returncode == 2 and "changed since" in proc.stderr and "--resume-by-id" in proc.stderr
    assert mock_server.stats()["requests"] == 0 and _files(workdir) == before
    proc = workdir.run("--resume-by-id")
    assert proc.returncode == 0, proc.stderr
    assert mock_server.stats()["requests"] == 1 + (8 if with_checkpoint else 0)
    _assert_exact(workdir, {"new", *(r["id"] for r in rows)})
    mock_server.reset_stats()
    proc = workdir.run()            # the output is read by id from now on: nothing left to do
    assert proc.returncode == 0 and mock_server.stats()["requests"] == 0, proc.stderr


def test_input_replaced_by_new_ids_runs_them_all_by_id(workdir, mock_server):
    """A finished output, its input replaced by 30 new ids: refused, then --resume-by-id runs all 30."""
    write_jsonl(workdir.input, _rows(20))
    assert workdir.run().returncode == 0
    write_jsonl(workdir.input, _rows(30, prefix="n"))
    mock_server.reset_stats()
    assert workdir.run().returncode == 2
    proc = workdir.run("--resume-by-id")
    assert proc.returncode == 0, proc.stderr
    assert mock_server.stats()["requests"] == 30
    _assert_exact(workdir, {f"r{i}" for i in range(20)} | {f"n{i}" for i in range(30)})


def test_rows_without_ids_are_known_by_line_in_their_own_namespace(workdir, mock_server):
    """Rows without ids get their line number; an explicit "7" elsewhere is another row, not a duplicate."""
    rows = [{"prompt": f"p{i}"} for i in range(1, 10)] + [{"id": "7", "prompt": "explicit"}, {"id": [1, 2], "prompt": "l"}]
    write_jsonl(workdir.input, rows)
    proc = workdir.run("--limit", "5")
    assert proc.returncode == 0, proc.stderr
    proc = workdir.run()
    assert proc.returncode == 0, proc.stderr
    assert mock_server.stats()["requests"] == len(rows) and not workdir.failures()
    results = workdir.results()
    implied = sorted(r["line"] for r in results if r.get("id_is_line"))
    assert implied == list(range(1, 10)) and all(r["id"] == str(r["line"]) for r in results if r.get("id_is_line"))
    assert sorted(json.dumps(r["id"]) for r in results if not r.get("id_is_line")) == ['"7"', "[1, 2]"]


def test_kill9_without_ids_then_edited_input_resumes_exactly(tmp_path):
    """Rows without ids: SIGKILL mid-run, resume to the end; then rows appended: only they are sent."""
    with MockServer(latency_ms=30) as server:
        wd = Workdir(tmp_path, server.url)
        write_jsonl(wd.input, [{"prompt": f"p{i}"} for i in range(60)])
        proc = wd.popen("--checkpoint-interval", "3", processes=2)
        assert wait_for(lambda: line_count(wd.output) >= 15, 30, proc)
        proc.kill()
        proc.communicate(timeout=30)
        assert wd.run(processes=4).returncode == 0
        assert sorted(r["line"] for r in wd.results()) == list(range(1, 61))
        with open(wd.input, "a") as f:
            f.write(json.dumps({"prompt": "appended"}) + "\n")
        server.reset_stats()
        assert wd.run(processes=2).returncode == 0
        assert server.stats()["requests"] == 1
        assert sorted(r["line"] for r in wd.results()) == list(range(1, 62))


@pytest.mark.parametrize("flag", [("-m", "other-model"), ("--system", "Be terse."), ("--temperature", "0.9")])
def test_another_job_on_the_same_output_is_refused(workdir, mock_server, flag):
    """A rerun with another model, system prompt or params exits 2 saying what differs; files untouched."""
    write_jsonl(workdir.input, _rows(20))
    assert workdir.run("--limit", "8").returncode == 0
    before = _files(workdir)
    mock_server.reset_stats()
    proc = workdir.run(*flag)
    assert proc.returncode == 2, proc.stderr
    assert "belongs to another job" in proc.stderr and flag[1] in proc.stderr
    assert mock_server.stats()["requests"] == 0 and _files(workdir) == before
    assert workdir.run().returncode == 0                      # the same job resumes
    _assert_exact(workdir, {f"r{i}" for i in range(20)})
    assert workdir.run(*flag).returncode == 2                 # a finished output too


def test_two_jobs_in_one_folder_keep_their_own_checkpoints(tmp_path, mock_server):
    """Two inputs and outputs with the same model in one folder never share a checkpoint."""
    a, b = Workdir(tmp_path, mock_server.url), Workdir(tmp_path, mock_server.url)
    a.input, b.input = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    b.output, b.errors = tmp_path / "out" / "b.jsonl", tmp_path / "out" / "b.errors.jsonl"
    write_jsonl(a.input, _rows(20, "a"))
    write_jsonl(b.input, _rows(20, "b"))
    assert a.run("--limit", "5").returncode == 0
    assert b.run("--limit", "7").returncode == 0
    assert len(list(tmp_path.glob("checkpoints/*_checkpoint.pkl"))) == 2
    mock_server.reset_stats()
    assert a.run().returncode == 0 and b.run().returncode == 0
    assert mock_server.stats()["requests"] == 15 + 13
    _assert_exact(a, {f"a{i}" for i in range(20)})
    _assert_exact(b, {f"b{i}" for i in range(20)})


def test_checkpoint_claiming_rows_never_written_loses(workdir, mock_server):
    """A checkpoint whose watermark moved past rows the output lacks loses to the output."""
    write_jsonl(workdir.input, _rows(30))
    assert workdir.run("--limit", "10").returncode == 0
    (path,) = workdir.checkpoints.glob("*_checkpoint.pkl")
    ckpt = CheckpointManager(path=path)
    assert ckpt.load()
    ckpt.mark_range(ckpt.watermark, ckpt.watermark + 10)   # 10 rows "done" with no line anywhere
    ckpt.save()
    mock_server.reset_stats()
    proc = workdir.run()
    assert proc.returncode == 0, proc.stderr
    assert "the output wins" in proc.stderr
    assert mock_server.stats()["requests"] == 20
    _assert_exact(workdir, {f"r{i}" for i in range(30)})


def test_output_of_an_older_version_is_checked_against_an_edited_input(workdir, mock_server):
    """An output with no job record (an older version's): an edited input is still refused; by id it resumes."""
    rows = _rows(20)
    write_jsonl(workdir.input, rows)
    assert workdir.run().returncode == 0
    workdir.output.with_name("results.job.json").unlink()
    write_jsonl(workdir.input, [{"id": "new", "prompt": "inserted"}, *rows])
    mock_server.reset_stats()
    proc = workdir.run()
    assert proc.returncode == 2 and "no longer matches" in proc.stderr, proc.stderr
    proc = workdir.run("--resume-by-id")
    assert proc.returncode == 0, proc.stderr
    assert mock_server.stats()["requests"] == 1
    _assert_exact(workdir, {"new", *(r["id"] for r in rows)})


def test_checkpoint_named_after_the_model_still_loads(workdir, mock_server):
    """A checkpoint an older version named after the model is adopted, renamed, and resumes exactly."""
    from mpdistill.state.fingerprint import fingerprint_input
    write_jsonl(workdir.input, _rows(30))
    assert workdir.run("--limit", "12").returncode == 0
    (path,) = workdir.checkpoints.glob("*_checkpoint.pkl")
    ckpt = CheckpointManager(path=path)
    assert ckpt.load()
    ckpt.meta["input_fingerprint"] = {k: v for k, v in fingerprint_input(workdir.input).items() if k != "sha256"}
    old = workdir.checkpoints / "mock-model_checkpoint.pkl"
    ckpt.path = old
    ckpt.save()
    path.unlink()
    workdir.output.with_name("results.job.json").unlink()
    mock_server.reset_stats()
    proc = workdir.run()
    assert proc.returncode == 0, proc.stderr
    assert mock_server.stats()["requests"] == 18 and not old.exists()
    _assert_exact(workdir, {f"r{i}" for i in range(30)})


def test_checkpoint_clear_respects_a_running_run(tmp_path):
    """`test_checkpoint.py clear` exits 2 naming the holder while a run holds the output; nothing removed."""
    import subprocess
    import sys
    from tests.conftest import ROOT, clean_env
    with MockServer(latency_ms=100) as server:
        wd = Workdir(tmp_path, server.url)
        write_jsonl(wd.input, _rows(400))   # about 20 s of work: still running when `clear` comes
        proc = wd.popen("--checkpoint-interval", "2", processes=2)
        try:
            assert wait_for(lambda: list(wd.checkpoints.glob("*_checkpoint.pkl")), 30, proc)
            clear = subprocess.run([sys.executable, str(ROOT / "test_checkpoint.py"), "clear",
                                    "--checkpoint-dir", str(wd.checkpoints)], cwd=tmp_path, env=clean_env(),
                                   capture_output=True, text=True, timeout=60)
            assert clear.returncode == 2 and f"pid {proc.pid}" in clear.stderr, clear.stderr
            assert list(wd.checkpoints.glob("*_checkpoint.pkl"))
        finally:
            proc.kill()
            proc.communicate(timeout=30)
