"""Run-level health: stop the run when every endpoint has failed every row for too long."""
from __future__ import annotations

import logging
import time

from .health import Health
from .keypool import KeyPool

log = logging.getLogger(__name__)


class OutageWatch:
    """Notices when every endpoint is down, and for how long."""

    def __init__(self, keypool: KeyPool, max_outage: float, health: Health, clock=time.monotonic) -> None:
        self.keypool = keypool
        self.health = health              # names the symptom (unreachable, answering 5xx …)
        self.max_outage = max_outage
        self._clock = clock
        self._since: float | None = None

    def check(self) -> str | None:
        """The reason to abort the run, once the outage lasted over `max_outage`; else None."""
        if not self.keypool.all_down():  # not all_unavailable: that ends with each cooldown, mid-outage
            if self._since is not None:
                log.warning("endpoints answering again after %.0f s", self._clock() - self._since)
            self._since = None
            return None
        now = self._clock()
        if self._since is None:
            self._since = now
            log.warning("every endpoint is %s: pausing and probing (up to %.0f s)", self.health.symptom(),
                        self.max_outage)
        elif now - self._since > self.max_outage:
            return (f"every endpoint has been {self.health.symptom()} for over {self.max_outage:.0f} s; "
                    "checkpoint saved, rerun to resume")
        return None
