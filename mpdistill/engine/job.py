"""A job (one model's share of a run: its writer and checkpoint) and the items the manager moves.

An `Item` is a (row, job) pair on its way: waiting, in flight, or waiting out a retry backoff.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..inputs.rows import Row
from ..state.checkpoint import CheckpointManager
from .writer import Writer

DEFAULT_ANSWER_TOKENS = 512


@dataclass
class Job:
    """One model of the run: its own output, errors file and checkpoint (which holds its counts)."""

    alias: str
    model: str
    writer: Writer
    checkpoint: CheckpointManager
    params: dict = field(default_factory=dict)
    system: str | None = None
    prices: tuple | None = None    # per million input / output tokens (batch mode scales them)


@dataclass
class Item:
    """A (row, job) pair on its way: waiting, in flight, or waiting for a retry."""

    row: Row
    job: int
    attempts: int = 0        # calls made
    retries: int = 0         # calls that count against --max-retries
    history: list = field(default_factory=list)
    marks: dict = field(default_factory=dict)   # Health's memory of where this row began failing


def estimate_tokens(job: Job, row: Row) -> int:
    """Tokens to reserve: the prompt's characters / 4 plus the answer's budget."""
    chars = sum(len(str(m.get("content", ""))) for m in row.request["messages"])
    answer = row.request.get("max_tokens") or job.params.get("max_tokens") or DEFAULT_ANSWER_TOKENS
    return chars // 4 + int(answer)
