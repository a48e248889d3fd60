"""Which endpoint takes the next batch: those serving the model, within their limits on batches
in flight and enqueued tokens; a rejected key is disabled. Batches stay with the key that made them.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from ..provider.endpoint import Endpoint

log = logging.getLogger(__name__)


def key_hash(endpoint: Endpoint) -> str:
    """A short digest of the key: finds an endpoint again after a rename; reveals nothing of the key."""
    return hashlib.sha256(f"mpdistill-batch:{endpoint.api_key}".encode()).hexdigest()[:12]


@dataclass
class _Lane:
    endpoint: Endpoint
    max_batches: int
    max_tokens: int | None
    batches: int = 0
    tokens: int = 0
    created: int = 0
    disabled: str | None = None


class Lanes:
    """Batch-mode endpoint states of a run."""

    def __init__(self, endpoints, *, max_batches: int, max_tokens: int | None) -> None:
        self._lanes = {e.name: _Lane(e, e.batch_max_in_flight or max_batches,
                                     e.batch_max_tokens or max_tokens) for e in endpoints}
        self._by_hash = {key_hash(e): e.name for e in endpoints}

    def find(self, digest: str) -> Endpoint | None:
        """The endpoint with the key a batch was made with (names may change; only that key sees it)."""
        name = self._by_hash.get(digest)
        return self._lanes[name].endpoint if name else None

    def choose(self, model: str) -> tuple[Endpoint, int | None] | None:
        """The endpoint with room for one more batch of `model`, and its token room; None if full."""
        free = [lane for lane in self._lanes.values() if lane.endpoint.serves(model) and not lane.disabled
                and lane.batches < lane.max_batches
                and (lane.max_tokens is None or lane.tokens < lane.max_tokens)]
        if not free:
            return None
        lane = min(free, key=lambda la: (la.batches / la.endpoint.weight, la.tokens))
        room = None if lane.max_tokens is None else lane.max_tokens - lane.tokens
        return lane.endpoint, room

    def usable(self, model: str) -> bool:
        """True while some endpoint serving `model` has a key that was not rejected."""
        return any(la.endpoint.serves(model) and not la.disabled for la in self._lanes.values())

    def add(self, name: str, tokens: int) -> None:
        lane = self._lanes[name]
        lane.batches += 1
        lane.tokens += tokens

    def remove(self, name: str, tokens: int) -> None:
        lane = self._lanes[name]
        lane.batches = max(0, lane.batches - 1)
        lane.tokens = max(0, lane.tokens - tokens)

    def count_create(self, name: str) -> None:
        self._lanes[name].created += 1

    def disable(self, name: str, reason: str) -> None:
        lane = self._lanes[name]
        if lane.disabled is None:
            lane.disabled = reason
            log.error("endpoint %s: %s; no new batches go to it (its batches are still collected "
                      "if the provider allows)", name, reason)

    def disabled(self, name: str) -> bool:
        return self._lanes[name].disabled is not None

    def snapshot(self) -> list[dict]:
        return [{"name": name, "base_url": la.endpoint.display_url, "key": la.endpoint.masked_key,
                 "batches_in_flight": la.batches, "tokens_enqueued": la.tokens, "batches_created": la.created,
                 "max_batches": la.max_batches, "max_tokens": la.max_tokens,
                 "disabled": la.disabled is not None, "disabled_reason": la.disabled}
                for name, la in self._lanes.items()]
