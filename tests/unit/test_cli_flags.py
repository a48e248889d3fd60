"""Careless flags: no parser guesses a flag from an abbreviation; the older tool's -v / -s never start a run."""
from __future__ import annotations

import subprocess
import sys

import pytest

from mpdistill.cli.main import main
from tests.conftest import clean_env


def _refused(capsys, argv: list[str]) -> str:
    """Run the CLI with `argv`; assert it is a usage error (2) and return what it said."""
    try:
        code = main(argv)
    except SystemExit as stop:      # argparse's own exit, with our usage code
        code = stop.code
    assert code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--mode", "threading"],                       # the old executor's flag, once read as --model
    ["--mod", "mock-a"],
    ["--proc", "4"],
    ["--max-tok", "5"],
    ["status", "--watc"],
    ["checkpoints", "list", "--checkpoint", "x"],
    ["merge", "somewhere", "--model", "a"],
    ["split", "in.jsonl", "--chunks", "2", "--out", "x"],
    ["export", "out.jsonl", "--per", "x"],
])
def test_abbreviated_flags_are_refused_by_every_parser(argv, capsys, tmp_path, monkeypatch):
    """An abbreviation of a real flag is an error (exit 2) in the run, task and tool parsers alike."""
    monkeypatch.chdir(tmp_path)
    err = _refused(capsys, argv)
    assert any(why in err for why in ("unrecognized arguments", "invalid choice", "arguments are required"))
    assert not list(tmp_path.rglob("*.jsonl"))      # nothing ran


def test_mock_server_parser_refuses_abbreviations(capsys):
    """`mock-server --lat 5` is an unknown flag, not --latency-ms."""
    with pytest.raises(SystemExit) as stop:
        main(["mock-server", "--lat", "5"])
    assert stop.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("flag, hint", [("-v", "--validate"), ("-s", "--status")])
def test_old_short_flags_are_refused_with_a_hint(flag, hint, capsys, tmp_path, monkeypatch):
    """-v and -s (the older tool's --validate and --status) are usage errors naming the long forms."""
    monkeypatch.chdir(tmp_path)
    err = _refused(capsys, [flag])
    assert hint in err and "not a flag" in err
    assert not (tmp_path / "output").exists()       # no run started


def test_short_flag_is_refused_in_a_cluster_of_flags_and_in_run_task(capsys, tmp_path, monkeypatch):
    """-v hidden in a combined flag (or after run-task) is refused the same way."""
    monkeypatch.chdir(tmp_path)
    assert "--verbose" in _refused(capsys, ["-p", "2", "-v"])
    (tmp_path / "t.yaml").write_text("task_type: split\ninput: in.jsonl\nchunks: 2\nout_dir: x\n")
    assert "--validate" in _refused(capsys, ["run-task", "t.yaml", "-v"])


@pytest.mark.parametrize("argv", [["--mod", "x"], ["stop", "--checkpoint-dir", "ck"], ["merge", "--help"]])
def test_commands_that_make_no_call_do_not_import_the_sdk(argv, tmp_path):
    """Usage errors, stop and the offline tools answer without importing the engine and the SDK (~0.7 s)."""
    code = ("import sys; from mpdistill.cli.main import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('openai', 'mpdistill.engine.pool') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stderr
