"""The output lock: exclusive, says who holds it, free again on release; input-as-output refused."""
from __future__ import annotations

import os
import socket

import pytest

from mpdistill.errors import ConfigError, OutputInUseError
from mpdistill.report.monitor import render_panel
from mpdistill.state.lock import OutputLock, holder, refuse_input_as_output


def test_second_lock_is_refused_naming_pid_and_host(tmp_path):
    """A second lock on the same file fails at once, naming this pid and host; after release it works."""
    path, out = tmp_path / "o.lock", tmp_path / "o.jsonl"
    first = OutputLock(path, out).acquire()
    with pytest.raises(OutputInUseError, match=rf"pid {os.getpid()} on host {socket.gethostname()}"):
        OutputLock(path, out).acquire()
    first.release()
    with OutputLock(path, out) as again:
        assert again.held
    assert not again.held


def test_holder_reads_the_file_and_tells_a_gone_holder(tmp_path):
    """holder() reports the recorded pid/host and whether that process is alive (a dead pid: gone)."""
    path = tmp_path / "o.lock"
    assert holder(path) is None
    with OutputLock(path, tmp_path / "o.jsonl"):
        info = holder(path)
    assert info["pid"] == os.getpid() and info["alive"] is True
    path.write_text('{"pid": 999999999, "host": "%s", "purpose": "run"}' % socket.gethostname())
    assert holder(path)["alive"] is False


def test_status_panel_says_when_the_holder_is_gone():
    """The --status panel shows the lock's holder, and says so when that process is gone."""
    status = {"run": "r", "state": "running", "pid": 999999999, "output": "o.jsonl", "updated_at": 0}
    gone = render_panel(status, now=1, lock_holder={"pid": 999999999, "host": "h", "alive": False})
    assert "its last holder, pid 999999999 on host h, is gone" in gone
    held = render_panel(status, now=1, lock_holder={"pid": 5, "host": "h", "alive": True, "purpose": "run"})
    assert "held by run pid 5 on host h" in held


def test_output_that_is_the_input_is_refused(tmp_path):
    """The input named as output, directly or through a symlink, is a config error (exit 2)."""
    src = tmp_path / "in.jsonl"
    src.write_text("{}\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(src)
    for out in (src, link):
        with pytest.raises(ConfigError, match="is the input"):
            refuse_input_as_output(src, [out])
    refuse_input_as_output(src, [tmp_path / "out.jsonl"])
