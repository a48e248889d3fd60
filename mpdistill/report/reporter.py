"""The run's reporter: hears the engine's facts and turns them into the status file, the progress
bar and the summary (the only place counts become words), and passes every request on to the
run's observers (request counters, metrics, traces, endpoint logs)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from .observe import Observers, RequestEvent
from .progress import ProgressBar
from .stats import ModelStats
from .status import status_record, write_status
from .summary import build_summary, format_summary, summary_path, write_summary

log = logging.getLogger(__name__)


class Reporter:
    """The engine's observer for a whole run (every round): answers, durable rows, ticks, ends."""

    def __init__(self, aliases: list[str], outputs: list[Path], *, status_file: Path | None, progress: bool, announce: Callable[[str], None],
                 observers: Observers | None = None) -> None:
        self.aliases = aliases
        self.observers = observers if observers is not None else Observers()
        self.outputs = [Path(o) for o in outputs]
        self.status_file = status_file
        self.progress = progress
        self.announce = announce
        self.summary_path = summary_path(self.outputs)
        self.summary: dict | None = None
        self._stats: list[ModelStats] = []
        self._bar: ProgressBar | None = None

    # ---- the engine's calls -----------------------------------------------------------------

    def say(self, message: str) -> None:
        """A line for the user (round numbers, waits)."""
        self.announce(message)

    def round_started(self, view) -> None:
        """A round begins: fresh figures and a bar that starts at the rows already done."""
        self._stats = [ModelStats(prices=j.prices) for j in view.jobs]
        self._bar = ProgressBar(view.total, view.done, self.progress)

    def request(self, event: RequestEvent) -> None:
        """One call ended: an answer's latency and tokens count toward its job's figures."""
        if event.error is None:
            self.answered(event.job, event.latency_s, event.usage)
        self.observers.request(event)

    def answered(self, alias: str | None, latency_s: float, usage: dict | None) -> None:
        """An answer (of a call, or of a collected batch): its latency and tokens."""
        self._stats[self.aliases.index(alias) if len(self.aliases) > 1 else 0].add(latency_s, usage)

    def durable(self, jobs) -> None:
        """Rows were made durable: `jobs` are every job's counts (`engine.view.JobCounts`)."""
        if self._bar is not None:
            self._bar.show(sum(j.ok_now for j in jobs), sum(j.failed_now for j in jobs))

    def tick(self, view) -> None:
        """About once a second, and once with the final state: rewrite the status file."""
        status = {**status_record(view), **self._usage(), **self.observers.status_fields(), **view.status_extra}
        self.observers.status(status)
        if self.status_file is None:
            return
        try:
            write_status(self.status_file, status)
        except OSError as err:
            log.warning("cannot write status file %s: %s", self.status_file, err)

    def round_ended(self, view, state: str) -> dict:
        """Close the bar, then write and announce the round's summary (the whole run, usually)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.summary = build_summary(view, dict(zip(self.aliases, self._stats)), state)
        self.summary.update(view.summary_extra)
        self.summary["run"], self.summary["summary"] = view.run, str(self.summary_path)
        write_summary(self.summary_path, self.summary)
        self.announce(format_summary(self.summary))
        if len(self.outputs) > 1:
            self.announce("Outputs: " + ", ".join(str(o) for o in self.outputs)
                          + f"  (summary: {self.summary_path})")
        else:
            self.announce(f"Output: {self.summary['output']}  (errors: {self.summary['errors']}, "
                          f"summary: {self.summary_path})")
        return self.summary

    def _usage(self) -> dict:
        """Tokens and cost of this round so far (the summary's figures, live)."""
        costs = [s.cost() for s in self._stats if s.cost() is not None]
        return {"tokens": {"prompt": sum(s.prompt_tokens for s in self._stats),
                           "completion": sum(s.completion_tokens for s in self._stats)},
                "cost": round(sum(costs), 6) if costs else None}
