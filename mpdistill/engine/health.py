"""Whether a failed call's fault follows its row or its endpoint: the evidence other rows give.

An endpoint is presumed healthy until calls on it fail. A failure of row R on endpoint E is R's own
fault (a poison row) when E has answered other rows since R first failed on it, or when E's last
call before R's first failure succeeded. Faults that several rows share, with no success between
them, are E's. Manager-private, single-threaded; `retry.decide` turns these facts into actions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable


@dataclass
class _Endpoint:
    ok: int = 0                  # calls that succeeded so far
    last_ok: bool = True         # the latest call to end succeeded (or none has ended yet)
    failing: dict = field(default_factory=dict)   # error class name -> rows failing since the last ok


@dataclass(frozen=True)
class Facts:
    """What the other rows say about one failure (see `retry.Attempt`)."""

    row_fault: bool
    others_failing: bool


class Health:
    """Per-endpoint evidence: successes, and which rows fail how since the last success."""

    def __init__(self) -> None:
        self._endpoints: dict[str, _Endpoint] = {}

    def succeeded(self, endpoint: str) -> None:
        """A call on `endpoint` succeeded: whatever failed before was not the endpoint for good."""
        ep = self._get(endpoint)
        ep.ok += 1
        ep.last_ok = True
        ep.failing.clear()

    def failed(self, endpoint: str, row: Hashable, marks: dict, kind: str) -> Facts:
        """Record that `row` failed on `endpoint` with an error of class `kind`; the facts before it.

        `marks` is the row's own memory (endpoint -> successes seen when it first failed there),
        kept with the row so that it goes away with it.
        """
        ep = self._get(endpoint)
        if endpoint not in marks:
            marks[endpoint] = ep.ok
            row_fault = ep.last_ok
        else:
            row_fault = ep.ok > marks[endpoint]
        rows = ep.failing.setdefault(kind, set())
        others_failing = bool(rows - {row})
        rows.add(row)
        ep.last_ok = False
        return Facts(row_fault=row_fault, others_failing=others_failing)

    def _get(self, endpoint: str) -> _Endpoint:
        ep = self._endpoints.get(endpoint)
        if ep is None:
            ep = self._endpoints[endpoint] = _Endpoint()
        return ep
