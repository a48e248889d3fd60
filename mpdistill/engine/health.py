"""Whether a failed call's fault follows its row or its endpoint: the evidence other rows give.

A failure of row R on endpoint E is E's only when other rows failed the same way (same error
class) on E since E's last success, and E has not answered anyone since R first failed there.
Otherwise it is R's own (a poison row): E answered others meanwhile, or R is the only row failing
there. Manager-private, single-threaded; `retry.decide` turns these facts into actions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

from ..errors import CallTimeoutError, ConnectError


@dataclass
class _Endpoint:
    ok: int = 0                  # calls that succeeded so far
    failing: dict = field(default_factory=dict)   # error class name -> rows failing since the last ok
    fault: Exception | None = None                # the last fault judged the endpoint's own


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
        ep.failing.clear()
        ep.fault = None

    def failed(self, endpoint: str, row: Hashable, marks: dict, kind: str) -> Facts:
        """Record that `row` failed on `endpoint` with an error of class `kind`; the facts before it.

        `marks` is the row's own memory (endpoint -> successes seen when it first failed there),
        kept with the row so that it goes away with it.
        """
        ep = self._get(endpoint)
        mark = marks.setdefault(endpoint, ep.ok)
        rows = ep.failing.setdefault(kind, set())
        others_failing = len(rows) - (row in rows) > 0
        rows.add(row)
        row_fault = ep.ok > mark or not others_failing
        return Facts(row_fault=row_fault, others_failing=others_failing)

    def down(self, endpoint: str, err: Exception) -> None:
        """Remember the fault that `retry.decide` judged the endpoint's (for `symptom`)."""
        self._get(endpoint).fault = err

    def symptom(self) -> str:
        """How the failing endpoints fail, in words, for the outage messages: "unreachable",
        "not answering within --timeout", "answering HTTP 503", or several of them."""
        words = sorted({_symptom(ep.fault) for ep in self._endpoints.values() if ep.fault is not None})
        return " or ".join(words) or "failing"

    def _get(self, endpoint: str) -> _Endpoint:
        ep = self._endpoints.get(endpoint)
        if ep is None:
            ep = self._endpoints[endpoint] = _Endpoint()
        return ep


def _symptom(err: Exception) -> str:
    if isinstance(err, ConnectError):
        return "unreachable"
    if isinstance(err, CallTimeoutError):
        return "not answering within --timeout"
    status = getattr(err, "status", None)
    return f"answering HTTP {status}" if status else f"failing ({type(err).__name__})"
