"""Stop requests of a run: Ctrl-C and SIGTERM, the stop file (`--stop`), the end of following.

The first request stops dispatching and lets in-flight calls finish within the grace period; a
second one (or `--stop --now`) stops at once.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from ..state.stopfile import check_stop

log = logging.getLogger(__name__)


class Stopper:
    """Whether, why and how hard the run was asked to stop."""

    def __init__(self, grace: float, status_file: Path | None = None) -> None:
        self.grace = grace
        self.status_file = status_file
        self.reason: str | None = None
        self.now = False
        self.by_request = False      # --stop or the end of following (exit 0), not a signal (exit 130)
        self.deadline: float | None = None
        self._previous: dict | None = None

    def __bool__(self) -> bool:
        return self.reason is not None

    def request(self, reason: str = "stop requested", now: bool = False, in_flight: int = 0) -> None:
        """Stop dispatching; in-flight calls may finish within the grace period (or not, with now)."""
        if self.reason and not now:
            now = True  # a second request means: stop at once
        if not self.reason:
            log.warning("%s: no new requests; waiting up to %.0f s for %d in flight", reason,
                        self.grace, in_flight)
            self.reason = reason
            self.deadline = time.monotonic() + self.grace
        if now:
            self.now = True

    def asked(self, reason: str, now: bool = False, in_flight: int = 0) -> None:
        """A stop the user asked for on purpose: the run ends as stopped, not interrupted."""
        self.by_request = True
        self.request(reason, now, in_flight)

    def past_grace(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def install(self, in_flight) -> None:
        """Turn SIGINT and SIGTERM into stop requests (main thread only); `in_flight()` counts calls."""
        if threading.current_thread() is not threading.main_thread():
            return
        handler = lambda signum, frame: self.request(signal.Signals(signum).name, in_flight=in_flight())
        self._previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore(self) -> None:
        for sig, handler in (self._previous or {}).items():
            signal.signal(sig, handler)
        self._previous = None

    def check_file(self, in_flight: int) -> None:
        """Honour a stop file written for this process (`--stop [--now]`)."""
        if self.status_file is None:
            return
        request = check_stop(self.status_file, os.getpid())
        if request is not None:
            self.asked("stop requested (--stop)", now=bool(request.get("now")), in_flight=in_flight)
