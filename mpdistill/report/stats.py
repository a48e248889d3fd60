"""What a run spent per model: latency (a histogram) and tokens (and so cost) of the answers.

Row counts are not kept here: they are the checkpoints' durable counts (see `engine.view`)."""
from __future__ import annotations

import bisect
import math
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


@dataclass
class ModelStats:
    """Latency and tokens of one model's answers in this run (tokens are paid for once answered,
    durable or not)."""

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

    def add(self, latency_s: float, usage: dict | None) -> None:
        """One answer."""
        self.latency.add(latency_s)
        self.add_usage(usage)

    def merge(self, other: ModelStats) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.latency.n += other.latency.n
        self.latency.total += other.latency.total
        self.latency.counts = [a + b for a, b in zip(self.latency.counts, other.latency.counts)]

    def as_dict(self, ok: int, failed: int) -> dict:
        """The figures of `ok` + `failed` durable rows with these answers' latency and tokens."""
        done = ok + failed
        return {
            "succeeded": ok, "failed": failed, "total": done,
            "success_rate": round(ok / done, 4) if done else None,
            "latency_mean_s": _round(self.latency.mean), "latency_p95_s": _round(self.latency.percentile(95)),
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cost": None if self.cost() is None else round(self.cost(), 6),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
