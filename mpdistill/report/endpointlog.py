"""Per-endpoint request logs: `logs/<run>/<endpoint>.log`, one line per API call, keys redacted.

For users who watched one terminal per key: `tail -f logs/<run>/api_1.log` shows that endpoint's
calls (time, row, line, attempt, status, latency, tokens, error class). Lines are written (and
redacted, a tick's lines at once) at every status tick (about once a second) and at the end,
never per call.
"""
from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

from ..logs import RedactFilter
from ..state.files import safe_name
from .observe import RequestEvent

log = logging.getLogger(__name__)


def endpoint_log_path(log_dir: str | Path, run: str, endpoint: str) -> Path:
    """Where the calls of `endpoint` in run `run` are logged."""
    return Path(log_dir) / safe_name(run) / f"{safe_name(endpoint)}.log"


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    """The local time of second `whole` (calls that end in the same second share it)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(whole))


def format_line(event: RequestEvent) -> str:
    """One call as a line of `key=value` fields."""
    stamp = _second(int(event.ended_at)) + f".{int(event.ended_at % 1 * 1000):03d}"
    fields = [stamp, f"row={event.row_id}", f"line={event.line}", f"attempt={event.attempt}",
              f"status={event.status if event.status is not None else '-'}", f"latency={event.latency_s:.3f}s"]
    usage = event.usage or {}
    if usage.get("total_tokens") is not None:
        fields.append(f"tokens={usage['total_tokens']}")
    if event.error:
        fields.append(f"error={event.error}")
    return " ".join(fields)


class EndpointLogs:
    """Observer writing each call to its endpoint's log file."""

    def __init__(self, log_dir: str | Path, run: str) -> None:
        self.log_dir, self.run = Path(log_dir), run
        self._files: dict[str, object] = {}
        self._pending: dict[str, list[str]] = {}   # endpoint -> lines since the last tick
        self._failed: set[str] = set()
        self._redact = RedactFilter().redact

    def request(self, event: RequestEvent) -> None:
        lines = self._pending.get(event.endpoint)
        if lines is None:
            lines = self._pending[event.endpoint] = []
        lines.append(format_line(event))

    def status(self, status: dict) -> None:
        self._write()

    def close(self) -> None:
        self._write()
        for f in self._files.values():
            f.close()
        self._files.clear()

    def _write(self) -> None:
        """Append and flush the lines since the last tick (no key spans lines: one redaction pass)."""
        pending, self._pending = self._pending, {}
        for endpoint, lines in pending.items():
            f = self._file(endpoint)
            if f is not None:
                f.write(self._redact("\n".join(lines)) + "\n")
                f.flush()

    def _file(self, endpoint: str):
        f = self._files.get(endpoint)
        if f is None and endpoint not in self._failed:
            path = endpoint_log_path(self.log_dir, self.run, endpoint)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                f = self._files[endpoint] = open(path, "a", encoding="utf-8")
            except OSError as err:
                log.warning("cannot write the endpoint log %s: %s", path, err)
                self._failed.add(endpoint)
        return f
