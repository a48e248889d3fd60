"""A test-only hook: `MPDISTILL_TEST_CRASH_AT=NAME[:N]` makes the process SIGKILL itself the Nth time
(default the first) it passes the point NAME, so crash tests kill real processes at exact moments.

Unset (always, outside tests) it costs one dictionary lookup per call.
"""
from __future__ import annotations

import os
import signal

ENV = "MPDISTILL_TEST_CRASH_AT"
_passed: dict[str, int] = {}


def point(name: str) -> None:
    """Die here with SIGKILL when the environment names this point (and its count is reached)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    target, _, count = wanted.partition(":")
    if target != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
