"""Stopping real runs: `mpdistill stop` between --iterations rounds, and a stop file made with touch."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys

from tests.conftest import clean_env, line_count, wait_for, write_jsonl


def _status(work) -> dict:
    try:
        return json.loads((work.checkpoints / "mock-model_status.json").read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _killed_at_the_end(proc):
    """The run, killed if the test fails before it ends (a run that ignores stops must not linger)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_stop_works_while_waiting_between_rounds(workdir):
    """With --iterations 0 the status says waiting (with the next start) and `mpdistill stop` ends the run."""
    write_jsonl(workdir.input, [{"id": f"r{i}", "prompt": "x"} for i in range(3)])
    with _killed_at_the_end(workdir.popen("--iterations", "0", "--delay", "600", processes=2)) as proc:
        _stop_while_waiting(workdir, proc)
    assert _status(workdir)["state"] == "stopped"
    assert line_count(workdir.output) == 3


def _stop_while_waiting(workdir, proc) -> None:
    assert wait_for(lambda: _status(workdir).get("state") == "waiting", timeout=60, proc=proc), proc.stderr
    assert _status(workdir)["next_round_at"] > _status(workdir)["updated_at"]
    stop = subprocess.run([sys.executable, "-m", "mpdistill", "stop", "--checkpoint-dir", str(workdir.checkpoints)],
                          cwd=workdir.root, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def test_a_touched_stop_file_stops_a_following_run(workdir):
    """`touch checkpoints/RUN.stop` (empty, newer than the start) stops a --follow run with exit 0."""
    write_jsonl(workdir.input, [{"id": "a", "prompt": "x"}])
    with _killed_at_the_end(workdir.popen("--follow", processes=2)) as proc:
        assert wait_for(lambda: _status(workdir).get("state") == "waiting for input", timeout=60, proc=proc)
        (workdir.checkpoints / "mock-model.stop").touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert line_count(workdir.output) == 1
