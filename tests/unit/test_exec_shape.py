"""engine.modes.shape: the pool each mode makes of -p and -c, and the hints it gives."""
from __future__ import annotations

import pytest

from mpdistill.config import build_config
from mpdistill.engine import modes
from mpdistill.errors import ConfigError


def test_process_mode_keeps_p_and_c():
    """process: P processes × K calls, no hint for an ordinary pool."""
    shape = modes.shape("process", 64, 1)
    assert (shape.processes, shape.concurrency, shape.hints) == (64, 1, ())


def test_thread_mode_is_one_process_with_c_threads():
    """thread: one process whatever -p says, with a hint naming the unused -p."""
    shape = modes.shape("thread", 64, 32)
    assert (shape.processes, shape.in_flight) == (1, 32)
    assert "-p 64 is not used" in shape.hints[0]


def test_async_with_few_calls_per_process_hints_but_runs():
    """async -c 1: the same pool, and a hint to give it many calls."""
    shape = modes.shape("async", 2, 1)
    assert shape.in_flight == 2 and "-c 1024" in shape.hints[0]
    assert modes.shape("async", 2, 1024).hints == ()


def test_many_threads_hint_at_async():
    """Hundreds of threads per process suggest --mode async."""
    assert "--mode async" in modes.shape("process", 4, 512).hints[0]
    assert "--mode async" in modes.shape("thread", 1, 1024).hints[-1]


@pytest.mark.parametrize("mode", ["process", "thread", "async"])
def test_every_mode_is_a_valid_setting(mode):
    """--mode, MPDISTILL_MODE and YAML `mode` accept the three modes."""
    assert build_config({"mode": mode}, env={}).mode == mode
    assert build_config({}, env={"MPDISTILL_MODE": mode}).mode == mode


def test_unknown_mode_names_the_setting():
    """A mode that does not exist is a ConfigError naming `mode` and the choices."""
    with pytest.raises(ConfigError, match="mode must be process, thread or async"):
        build_config({}, env={"MPDISTILL_MODE": "fibers"})
