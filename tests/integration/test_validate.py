"""Integration tests of `--validate`: files built in tmp_path, checked and repaired through the CLI."""
from __future__ import annotations

import json

import pytest

from mpdistill.cli import main as cli
from mpdistill.tools import validate
from mpdistill.state.checkpoint import CheckpointManager
from mpdistill.inputs.jsonl import JsonlSource
from mpdistill.engine.writer import encode_line


def out_line(key: int, rid: str | None = None) -> bytes:
    """One output line as the runner writes it."""
    return encode_line({"line": key, "id": rid or f"r{key}", "input_prompt": f"q{key}", "images": [],
                        "answer": f"a{key}", "reasoning": None, "finish_reason": "stop", "usage": {},
                        "model": "m", "latency_s": 0.1, "attempts": 1, "endpoint": "e",
                        "processed_at": "2024-01-01T00:00:00Z"})


def err_line(key: int, rid: str | None = None) -> bytes:
    return encode_line({"line": key, "id": rid or f"r{key}", "reason": "HTTP 400", "error": "RejectedError",
                        "status": 400, "attempts": 1, "history": [], "failed_at": "2024-01-01T00:00:00Z"})


def in_line(key: int) -> bytes:
    # Odd spacing on purpose: --emit-retry must copy the raw bytes, not re-encode them.
    return f'{{"id":  "r{key}", "prompt": "q{key}"}}\n'.encode()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A cwd without config.py or .env, so only the flags configure the run."""
    monkeypatch.chdir(tmp_path)
    for var in ("MPDISTILL_CONFIG_PY", "MPDISTILL_MODEL"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def run_validate(tmp_path, *extra: str, output="out.jsonl", input_=None) -> int:
    args = ["validate", "-o", str(tmp_path / output), "--run-name", "job",
            "--checkpoint-dir", str(tmp_path / "ck"), "--log-dir", str(tmp_path / "logs")]
    if input_ is not None:
        args += ["-i", str(tmp_path / input_)]
    return cli.main(args + list(extra))


def backups(tmp_path) -> list:
    return sorted(tmp_path.glob("out.jsonl.bak-*"))


def test_sound_file_exits_0_and_is_untouched(env):
    """A sound output exits 0, keeps the same bytes and gets no backup."""
    data = b"".join(out_line(k) for k in (1, 2, 3))
    (env / "out.jsonl").write_bytes(data)
    assert run_validate(env) == validate.EXIT_OK
    assert (env / "out.jsonl").read_bytes() == data
    assert backups(env) == []


def test_torn_last_line_is_cut_and_original_backed_up(env):
    """A torn last line gives exit 4, a byte-exact backup, and a file of every complete row."""
    good = out_line(1) + out_line(2)
    original = good + out_line(3)[:25]
    (env / "out.jsonl").write_bytes(original)
    assert run_validate(env) == validate.EXIT_REPAIRED
    [backup] = backups(env)
    assert backup.read_bytes() == original
    assert (env / "out.jsonl").read_bytes() == good


def test_duplicates_keep_the_first_copy(env):
    """Rows repeating an id are dropped (first copy kept, order kept); a line number is no id."""
    first = out_line(1)
    data = first + out_line(2) + out_line(1) + out_line(2, rid="other") + out_line(3)
    (env / "out.jsonl").write_bytes(data)
    assert validate.check_output(env / "out.jsonl").duplicates == 1
    assert run_validate(env) == validate.EXIT_REPAIRED
    assert (env / "out.jsonl").read_bytes() == first + out_line(2) + out_line(2, rid="other") + out_line(3)


def test_reordered_input_keeps_every_good_row(env):
    """Rows are matched to the input by id, not line: a reordered input loses no row."""
    keys = list(range(1, 11))
    (env / "in.jsonl").write_bytes(b"".join(in_line(k) for k in reversed(keys)))
    data = b"".join(out_line(k) for k in keys)
    (env / "out.jsonl").write_bytes(data)
    assert run_validate(env, input_="in.jsonl") == validate.EXIT_OK
    assert (env / "out.jsonl").read_bytes() == data and backups(env) == []


def test_lines_of_other_tools_are_rows_when_they_have_an_id(env):
    """An output in the older scripts' format (id, input_prompt, images, answer, processed_at) is sound."""
    (env / "in.jsonl").write_bytes(b"".join(in_line(k) for k in (1, 2)))
    data = b"".join(encode_line({"id": f"r{k}", "input_prompt": "q", "images": [], "answer": "a",
                                 "processed_at": "t"}) for k in (2, 1))
    (env / "out.jsonl").write_bytes(data)
    assert run_validate(env, input_="in.jsonl") == validate.EXIT_OK
    assert (env / "out.jsonl").read_bytes() == data


def test_validate_refuses_while_a_run_holds_the_output(env, capsys):
    """--validate exits 2 and repairs nothing while another process holds the output's lock."""
    from mpdistill.config import OutputFiles
    from mpdistill.state.lock import OutputLock
    data = out_line(1) + b"garbage\n"
    (env / "out.jsonl").write_bytes(data)
    import subprocess
    import sys
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from mpdistill.state.lock import OutputLock; "
        f"l = OutputLock({str(OutputFiles(env / 'out.jsonl').lock)!r}, 'out').acquire(); "
        "print('locked', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run_validate(env) == validate.EXIT_USAGE
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert (env / "out.jsonl").read_bytes() == data
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(OutputFiles(env / "out.jsonl").lock, env / "out.jsonl"):
        pass   # the lock is free again once its holder is gone


def test_garbage_lines_are_dropped_and_counted(env):
    """Non-JSON, non-object, blank and field-less lines are counted and removed by the repair."""
    no_answer = b'{"line": 4, "id": "r4", "input_prompt": "q", "images": [], "processed_at": "t"}\n'
    data = (out_line(1) + b"not json\n" + b"[1, 2]\n" + b"\n" + b'{"line": "5", "id": "r5"}\n'
            + no_answer + b"\xff\xfe\n" + out_line(2))
    (env / "out.jsonl").write_bytes(data)
    report = validate.check_output(env / "out.jsonl")
    assert (report.lines, report.valid, report.bad_lines, report.missing_fields) == (8, 2, 4, 2)
    assert not report.torn_tail and not report.sound
    assert run_validate(env) == validate.EXIT_REPAIRED
    assert (env / "out.jsonl").read_bytes() == out_line(1) + out_line(2)


def test_ids_absent_from_the_input_are_dropped(env):
    """Rows whose (line, id) the input does not have are counted as unknown and removed."""
    (env / "in.jsonl").write_bytes(b"".join(in_line(k) for k in (1, 2)))
    (env / "out.jsonl").write_bytes(out_line(1) + out_line(2, rid="stranger") + out_line(7))
    inputs = validate.InputIndex.from_rows(JsonlSource(env / "in.jsonl").rows())
    assert validate.check_output(env / "out.jsonl", inputs).unknown == 2
    assert run_validate(env, input_="in.jsonl") == validate.EXIT_REPAIRED
    assert (env / "out.jsonl").read_bytes() == out_line(1)


def test_missing_and_failed_rows_are_counted(env, capsys):
    """With an input, rows in neither file are missing and rows only in the errors file are failed."""
    bad_row = b'{"id": "r4"}\n'       # no prompt: a bad row the run put in the errors file
    (env / "in.jsonl").write_bytes(in_line(1) + in_line(2) + in_line(3) + bad_row + b"\n" + in_line(6))
    (env / "out.jsonl").write_bytes(out_line(1) + out_line(3))
    (env / "out.errors.jsonl").write_bytes(err_line(4) + err_line(3))   # 3 was retried and succeeded
    inputs = validate.InputIndex.from_rows(JsonlSource(env / "in.jsonl").rows())
    left = validate.todo(inputs, validate.check_output(env / "out.jsonl", inputs), env / "out.errors.jsonl")
    assert (left.rows, list(left.missing), list(left.failed)) == (5, [2, 6], [4])
    assert run_validate(env, input_="in.jsonl") == validate.EXIT_OK
    assert "5 row(s): 2 done, 1 failed (in the errors file), 2 missing" in capsys.readouterr().out


def test_emit_retry_writes_exactly_the_missing_and_failed_input_lines(env):
    """--emit-retry copies the raw input lines of missing and failed rows, in input order."""
    lines = [in_line(k) for k in range(1, 7)]
    (env / "in.jsonl").write_bytes(b"".join(lines)[:-1])          # last input line lacks its newline
    (env / "out.jsonl").write_bytes(out_line(1) + out_line(4))
    (env / "out.errors.jsonl").write_bytes(err_line(3) + err_line(5))
    code = run_validate(env, "--emit-retry", str(env / "retry" / "todo.jsonl"), input_="in.jsonl")
    assert code == validate.EXIT_OK
    assert (env / "retry" / "todo.jsonl").read_bytes() == lines[1] + lines[2] + lines[4] + lines[5]


def test_emit_retry_without_input_is_a_usage_error(env, capsys):
    """--emit-retry with no input exits 2 with a message and writes nothing."""
    (env / "out.jsonl").write_bytes(out_line(1))
    assert run_validate(env, "--emit-retry", str(env / "todo.jsonl")) == validate.EXIT_USAGE
    assert "--emit-retry needs the input" in capsys.readouterr().err
    assert not (env / "todo.jsonl").exists()


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_unreadable_output_exits_2(env, make, capsys):
    """A missing output file, or a directory in its place, exits 2 with a message."""
    if make == "directory":
        (env / "out.jsonl").mkdir()
    assert run_validate(env) == validate.EXIT_USAGE
    assert "cannot read output" in capsys.readouterr().err


def test_repair_clears_the_checkpoint(env):
    """After a repair the run's checkpoint is gone, so the next run rebuilds from the output."""
    ckpt = CheckpointManager(10, name="job", directory=env / "ck")
    for key in (1, 2, 3):
        ckpt.mark_done(key)
    ckpt.save()
    (env / "out.jsonl").write_bytes(out_line(1) + out_line(2) + b"garbage\n")
    assert run_validate(env) == validate.EXIT_REPAIRED
    assert not ckpt.path.exists()


def test_sound_file_keeps_the_checkpoint(env):
    """A sound output leaves the checkpoint alone."""
    ckpt = CheckpointManager(10, name="job", directory=env / "ck")
    ckpt.mark_done(1)
    ckpt.save()
    (env / "out.jsonl").write_bytes(out_line(1))
    assert run_validate(env) == validate.EXIT_OK
    assert ckpt.path.exists()


def test_exit_codes_match_the_cli():
    """validate's exit codes are the CLI's (it defines them to avoid importing the CLI)."""
    assert (validate.EXIT_OK, validate.EXIT_USAGE, validate.EXIT_REPAIRED) == (
        cli.EXIT_OK, cli.EXIT_USAGE, cli.EXIT_REPAIRED)


def test_batch_format_output_is_sound(tmp_path, monkeypatch):
    """An output written with --output-format openai-batch validates as sound (custom_id is the id)."""
    from mpdistill.outputs.batch import to_batch_output
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"custom_id": f"c{i}", "body": {"messages": [
        {"role": "user", "content": f"q{i}"}]}}) + "\n" for i in range(3)))
    out = tmp_path / "out.jsonl"
    out.write_text("".join(json.dumps(to_batch_output({
        "line": i + 1, "id": f"c{i}", "custom_id": f"c{i}", "answer": "a", "model": "m",
        "processed_at": "t"})) + "\n" for i in range(3)))
    before = out.read_bytes()
    code = cli.main(["validate", "-o", str(out), "-i", str(src), "--checkpoint-dir", str(tmp_path / "ck"),
                     "--log-dir", str(tmp_path / "logs")])
    assert code == 0 and out.read_bytes() == before
