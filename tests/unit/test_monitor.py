"""Unit tests of the monitor panel, the live state of a status file and the `--status` command."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from mpdistill.report import monitor
from mpdistill.state.checkpoint import CheckpointManager
from mpdistill.config import RunConfig
from mpdistill.report.status import STALE_AFTER_S, cells, clip, clip_middle, live_state, status_path, write_status

NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def dead_pid():
    """The pid of a process that has already exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_status(**changes) -> dict:
    """A status as `Runner.status()` writes it, for a live run of this very process."""
    status = {
        "run": "gpt-4o-mini", "state": "running", "pid": os.getpid(), "started_at": NOW - 3600,
        "updated_at": NOW - 1, "input": "data/in.jsonl", "output": "output/gpt-4o-mini_results.jsonl",
        "total": 1000, "done": 450, "ok": 440, "failed": 10, "in_flight": 8, "retry_waiting": 2,
        "rows_per_s": 12.5, "eta_s": 44.0, "elapsed_s": 3599.0,
        "models": {"gpt-4o-mini": {"done": 450, "ok": 440, "failed": 10}},
        "workers": [{"slot": 0, "pid": 101, "busy": True, "rows": ["r-7", "r-9"], "since": NOW - 65},
                    {"slot": 1, "pid": 102, "busy": True, "rows": ["r-8"], "since": NOW - 5},
                    {"slot": 2, "pid": 103, "busy": False, "rows": [], "since": None}],
        "endpoints": [
            {"name": "api_1", "base_url": "http://h/v1", "key": "sk-…0001", "requests": 500, "ok": 440,
             "rate_limited": 7, "errors": 3, "in_flight": 8, "current_rpm": 600.0, "cooldown_until": None,
             "disabled": False, "disabled_reason": None},
            {"name": "api_2", "base_url": "http://h2/v1", "key": "sk-…0002", "requests": 9, "ok": 0,
             "rate_limited": 9, "errors": 0, "in_flight": 0, "current_rpm": 30.0, "cooldown_until": 20.0,
             "disabled": False, "disabled_reason": None},
            {"name": "api_3", "base_url": "http://h3/v1", "key": "sk-…0003", "requests": 1, "ok": 0,
             "rate_limited": 0, "errors": 1, "in_flight": 0, "current_rpm": None, "cooldown_until": None,
             "disabled": True, "disabled_reason": "HTTP 401: key rejected"},
        ],
    }
    status.update(changes)
    return status


def assert_fits(text: str, width: int) -> None:
    """Every line of `text` takes at most `width` terminal columns."""
    too_wide = [line for line in text.splitlines() if cells(line) > width]
    assert not too_wide, too_wide


def test_live_panel_shows_progress_workers_endpoints_and_commands():
    """A running status shows state, bar, counts, rate, ETA, busiest workers, endpoint states, commands."""
    text = monitor.render_panel(make_status(), now=NOW, output_rows=450, output_bytes=2048)
    assert "run gpt-4o-mini  [running]" in text and f"pid {os.getpid()}" in text
    assert "[####" in text and "45.0%  450/1000" in text
    assert "ok 440" in text and "failed 10" in text and "12.5 rows/s" in text and "ETA 0:44" in text
    assert "workers busy 2/3, idle 1" in text
    first_busy = next(line for line in text.splitlines() if "slot " in line)
    assert "1:05" in first_busy and "r-7, r-9" in first_busy       # the longest-busy worker first
    assert "cooling 19s" in text and "disabled" in text and "HTTP 401: key rejected" in text
    assert "(450 rows, 2.0 KB)" in text
    assert "python run_multiprocess.py --stop --run-name gpt-4o-mini" in text
    assert "tail -f output/gpt-4o-mini_results.jsonl" in text
    assert "--validate" in text and "-o output/gpt-4o-mini_results.jsonl" in text
    assert_fits(text, 80)


def test_range_is_shown_for_numbered_file_runs():
    """start_number/current_number (numbered-file runs) appear as a range."""
    text = monitor.render_panel(make_status(start_number="00012", current_number="00045"), now=NOW)
    assert "range 00012 -> 00045" in text


@pytest.mark.parametrize("state", ["finished", "stopped", "aborted"])
def test_final_states_show_as_written_without_stop_command(state):
    """A run that wrote a final state shows it, an average rate, and no stop command."""
    text = monitor.render_panel(make_status(state=state, updated_at=NOW - 3600), now=NOW)
    assert f"[{state}]" in text and "average" in text and "ETA" not in text
    assert "--stop" not in text and "tail -f" in text
    assert_fits(text, 80)


def test_stale_when_alive_but_silent():
    """A live pid with no update for longer than STALE_AFTER_S is stale, and can still be stopped."""
    status = make_status(updated_at=NOW - STALE_AFTER_S - 60)
    assert live_state(status, NOW) == "stale"
    text = monitor.render_panel(status, now=NOW)
    assert "[stale]" in text and "no update for 1:15" in text and "--stop" in text


def test_crashed_when_pid_is_gone(dead_pid):
    """A run that claims to be running but whose process is gone is crashed, with a resume hint."""
    status = make_status(pid=dead_pid)
    assert live_state(status, NOW) == "crashed"
    text = monitor.render_panel(status, now=NOW)
    assert "[crashed]" in text and "rerun" in text and "--stop" not in text
    assert "cooling" not in text   # a dead run's cooldowns mean nothing


def test_unknown_total_has_no_bar():
    """Without a total (follow mode) the panel shows the count and no bar."""
    text = monitor.render_panel(make_status(total=None, eta_s=None), now=NOW)
    assert "done 450 (total not known yet)" in text and "[#" not in text


@pytest.mark.parametrize("width", [50, 80, 120])
def test_every_line_fits_with_long_names_ids_and_paths(width):
    """Long run, endpoint and path names, wide (CJK) and control characters never overflow a line."""
    status = make_status(
        run="deepseek-ai/DeepSeek-R1-Distill-Qwen-32B-" + "x" * 80,
        output="/data/" + "deep/" * 30 + "results.jsonl",
        models={"m" * 50: {"ok": 1, "failed": 2}, "n" * 50: {"ok": 3, "failed": 4}},
        workers=[{"slot": i, "pid": 10_000 + i, "busy": True, "since": NOW - i,
                  "rows": ["行标识-" * 20 + str(i), "\x1b[31m" + "y" * 90, "z", "w"]} for i in range(8)],
        start_number="9" * 100, current_number="8" * 100)
    status["endpoints"][0].update(name="an-endpoint-name-" * 6, requests=10**12, ok=10**11)
    status["endpoints"][2].update(disabled_reason="HTTP 403: " + "forbidden " * 30)
    text = monitor.render_panel(status, now=NOW, width=width, output_rows=10**9, output_bytes=10**13,
                                checkpoint_dir="/srv/" + "ckpt/" * 20)
    assert_fits(text, width)
    assert "\x1b" not in text


def test_commands_wrap_as_pastable_shell():
    """A command too long for one line continues with ` \\` and keeps an option with its value."""
    lines = monitor.command_lines("validate: ", ["python", "run_multiprocess.py", "--validate", "-o",
                                                 "output/some_model_name_results.jsonl"], 60)
    assert lines[0].endswith(" \\") and lines[1].strip() == "-o output/some_model_name_results.jsonl"
    assert monitor.command_lines("stop: ", ["x", "--run-name", "a b"], 80) == ["stop: x --run-name 'a b'"]


def test_clip_helpers_count_wide_characters():
    """clip and clip_middle respect terminal columns, counting CJK characters as two."""
    assert clip("abcdef", 5) == "ab..." and clip("abc", 5) == "abc"
    assert cells(clip("中文中文中文", 7)) <= 7
    assert clip_middle("/a/very/long/path/file.jsonl", 15).endswith("jsonl")
    assert cells(clip_middle("目录/" * 20, 21)) <= 21


def test_line_counter_reads_only_what_was_appended(tmp_path):
    """The counter counts complete lines, then only new bytes; a replaced file is counted anew."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"a": 1}\n' * 3 + b'{"torn')
    counter = monitor.LineCounter(path)
    assert counter.count() == (3, path.stat().st_size)
    with open(path, "ab") as fh:
        fh.write(b'"}\n{"b": 2}\n')
    assert counter.count()[0] == 5
    path.with_name("new").write_bytes(b"x\n")
    os.replace(path.with_name("new"), path)
    assert counter.count() == (1, 2)
    assert monitor.count_lines(tmp_path / "missing") is None


def _cfg(tmp_path, **changes) -> RunConfig:
    """A RunConfig whose checkpoints live in tmp_path."""
    return dataclasses.replace(RunConfig(), checkpoint_dir=str(tmp_path / "ck"),
                               output=str(tmp_path / "out.jsonl"), **changes)


def test_status_command_prints_each_run_once(tmp_path, capsys):
    """--status prints one panel per status file (output rows counted when asked), exit 0."""
    cfg = _cfg(tmp_path)
    (tmp_path / "out.jsonl").write_text('{"id": 1}\n{"id": 2}\n')
    for name in ("run-a", "run-b"):
        write_status(status_path(cfg.checkpoint_dir, name),
                     make_status(run=name, state="finished", output=str(tmp_path / "out.jsonl")))
    assert monitor.status_command(cfg, count_rows=True) == 0
    out = capsys.readouterr().out
    assert "run run-a  [finished]" in out and "run run-b  [finished]" in out and "(2 rows, 20 B)" in out


def test_status_command_falls_back_to_the_checkpoint(tmp_path, capsys):
    """With no status file but a checkpoint, --status shows a short stopped view from it."""
    cfg = _cfg(tmp_path, run_name="job1")
    ckpt = CheckpointManager(5, name="job1", directory=cfg.checkpoint_dir)
    for key in range(1, 8):
        ckpt.mark_done(key)
    ckpt.save()
    assert monitor.status_command(cfg, watch=True, once=True) == 0
    out = capsys.readouterr().out
    assert "run job1  [stopped]" in out and "from the checkpoint" in out and "done 7" in out
    assert str(tmp_path / "out.jsonl") in out


def test_status_command_without_runs(tmp_path, capsys):
    """With nothing under the checkpoint dir, --status says so and exits 0."""
    assert monitor.status_command(_cfg(tmp_path)) == 0
    assert "No runs found" in capsys.readouterr().out


def test_watch_redraws_until_ctrl_c(tmp_path, capsys, monkeypatch):
    """Watch mode repaints in place and ends with exit 0 on Ctrl-C."""
    cfg = _cfg(tmp_path)
    write_status(status_path(cfg.checkpoint_dir, "w"), make_status(run="w"))
    sleeps = []

    def fake_sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(monitor.time, "sleep", fake_sleep)
    assert monitor.status_command(cfg, watch=True, interval=0.5) == 0
    out = capsys.readouterr().out
    assert out.count("\x1b[H") == 2 and out.count("run w  [") == 2 and sleeps == [0.5, 0.5]
