"""Counters of a run (rows, latency, tokens, throughput) and the end-of-run summary."""
from __future__ import annotations

import bisect
import math
import time
from collections import deque
from dataclasses import dataclass, field

# Latency histogram bucket edges (seconds), log-spaced: p95 without keeping every latency.
_EDGES = [0.001 * (1.1 ** i) for i in range(150)]


class LatencyHistogram:
    """Mean and percentiles of latencies in O(1) memory."""

    def __init__(self) -> None:
        self.counts = [0] * (len(_EDGES) + 1)
        self.n = 0
        self.total = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(_EDGES, seconds)] += 1
        self.n += 1
        self.total += seconds

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    def percentile(self, p: float) -> float | None:
        if not self.n:
            return None
        rank = math.ceil(p / 100 * self.n)
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return _EDGES[min(i, len(_EDGES) - 1)]
        return _EDGES[-1]


class RateMeter:
    """Rows per second over a sliding window (default the last minute)."""

    def __init__(self, window: float = 60.0, clock=time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self.events: deque[tuple[float, int]] = deque()
        self.started = clock()

    def add(self, n: int) -> None:
        if n:
            self.events.append((self.clock(), n))

    def rate(self) -> float:
        now = self.clock()
        while self.events and self.events[0][0] < now - self.window:
            self.events.popleft()
        span = min(self.window, max(now - self.started, 1e-9))
        return sum(n for _, n in self.events) / span


@dataclass
class ModelStats:
    """Figures of one model (one output file) in this run."""

    ok: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    prices: tuple | None = None      # (per million input tokens, per million output tokens)

    def cost(self) -> float | None:
        if not self.prices or self.prices == (None, None):
            return None
        price_in, price_out = self.prices
        return (self.prompt_tokens * (price_in or 0) + self.completion_tokens * (price_out or 0)) / 1e6

    def add_usage(self, usage: dict | None) -> None:
        if usage:
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)

    def as_dict(self) -> dict:
        done = self.ok + self.failed
        return {
            "succeeded": self.ok, "failed": self.failed, "total": done,
            "success_rate": round(self.ok / done, 4) if done else None,
            "latency_mean_s": _round(self.latency.mean), "latency_p95_s": _round(self.latency.percentile(95)),
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cost": None if self.cost() is None else round(self.cost(), 6),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def build_summary(per_model: dict[str, ModelStats], *, elapsed: float, endpoints: list[dict],
                  state: str, already_done: int, outputs: dict[str, str]) -> dict:
    """The end-of-run summary: totals over all models, then each model and each endpoint."""
    total = ModelStats()
    for s in per_model.values():
        total.ok += s.ok
        total.failed += s.failed
        total.prompt_tokens += s.prompt_tokens
        total.completion_tokens += s.completion_tokens
        total.latency.n += s.latency.n
        total.latency.total += s.latency.total
        total.latency.counts = [a + b for a, b in zip(total.latency.counts, s.latency.counts)]
    figures = total.as_dict()
    costs = [s.cost() for s in per_model.values() if s.cost() is not None]
    figures["cost"] = round(sum(costs), 6) if costs else None
    done = figures["total"]
    return {
        "state": state, **figures, "already_done": already_done,
        "elapsed_s": round(elapsed, 3), "rows_per_s": round(done / elapsed, 3) if elapsed > 0 else None,
        "models": {name: s.as_dict() for name, s in per_model.items()},
        "endpoints": endpoints, "outputs": outputs,
    }


def format_summary(summary: dict) -> str:
    """The summary as a few human lines."""
    rate = summary["success_rate"]
    lines = [
        f"Run {summary['state']}: {summary['total']} rows this run "
        f"({summary['succeeded']} ok, {summary['failed']} failed"
        + (f", success rate {rate:.1%})" if rate is not None else ")")
        + (f"; {summary['already_done']} were already done" if summary["already_done"] else ""),
        f"  time {summary['elapsed_s']:.1f} s, {summary['rows_per_s'] or 0:.1f} rows/s, "
        f"latency mean {_fmt(summary['latency_mean_s'])} p95 {_fmt(summary['latency_p95_s'])}, "
        f"tokens {summary['prompt_tokens']} in / {summary['completion_tokens']} out",
    ]
    if len(summary["endpoints"]) > 1:
        lines.append(f"  {'endpoint':<16}{'requests':>9}{'ok':>8}{'429':>6}{'errors':>8}  state")
        for e in summary["endpoints"]:
            state = "disabled: " + str(e.get("disabled_reason")) if e.get("disabled") else "ok"
            lines.append(f"  {e['name'][:16]:<16}{e.get('requests', 0):>9}{e.get('ok', 0):>8}"
                         f"{e.get('rate_limited', 0):>6}{e.get('errors', 0):>8}  {state}")
    return "\n".join(lines)


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}s"
