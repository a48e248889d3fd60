"""Stop requests: written by --stop, or a file made with `touch`; the wait between rounds honours them."""
from __future__ import annotations

import os
import threading
import time

from mpdistill.report.status import live_state, read_status, status_path, write_status
from mpdistill.state.stopfile import check_stop, stop_path, wait_between_rounds, write_stop


def _status_file(tmp_path):
    path = status_path(tmp_path, "run")
    write_status(path, {"run": "run", "state": "finished", "pid": os.getpid(), "updated_at": time.time()})
    return path


def test_a_touched_empty_stop_file_newer_than_the_start_stops_the_run(tmp_path):
    """`touch checkpoints/RUN.stop` after the run started is a graceful stop request."""
    status = _status_file(tmp_path)
    started = time.time() - 5
    stop_path(status).touch()
    request = check_stop(status, os.getpid(), since=started)
    assert request is not None and request["now"] is False
    assert not stop_path(status).exists()


def test_a_touched_stop_file_older_than_the_start_is_stale(tmp_path, caplog):
    """A flag left over from before the run started never stops it; it is removed with a warning."""
    status = _status_file(tmp_path)
    flag = stop_path(status)
    flag.touch()
    os.utime(flag, (time.time() - 3600, time.time() - 3600))
    assert check_stop(status, os.getpid(), since=time.time() - 60) is None
    assert not flag.exists() and "stale stop file" in caplog.text


def test_a_stop_request_for_another_pid_is_stale(tmp_path):
    """--stop's request names its pid: another run's request is ignored."""
    status = _status_file(tmp_path)
    write_stop(status, os.getpid() + 1)
    assert check_stop(status, os.getpid()) is None
    write_stop(status, os.getpid(), now=True)
    assert check_stop(status, os.getpid())["now"] is True


def test_between_rounds_the_status_says_waiting_with_the_next_start(tmp_path):
    """While waiting for the next round the run is live (`waiting`), with `next_round_at`."""
    status = _status_file(tmp_path)
    seen = {}

    def look():
        time.sleep(0.3)
        seen.update(read_status(status))
    watcher = threading.Thread(target=look)
    watcher.start()
    before = time.time()
    assert wait_between_rounds(status, 0.8, poll_s=0.1) is True
    watcher.join()
    assert seen["state"] == "waiting" and live_state(seen) == "waiting"
    assert seen["next_round_at"] >= before + 0.8


def test_a_stop_between_rounds_ends_the_wait(tmp_path):
    """--stop during the wait between rounds ends it at once; the status says stopped."""
    status = _status_file(tmp_path)
    threading.Timer(0.3, lambda: write_stop(status, os.getpid())).start()
    assert wait_between_rounds(status, 60, poll_s=0.1) is False
    assert read_status(status)["state"] == "stopped"
