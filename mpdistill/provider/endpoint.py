"""The `Endpoint` record: one base URL with one API key and its limits; key masking."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI-compatible endpoint with one key. `repr` never shows the key."""

    name: str
    base_url: str
    api_key: str = field(default="", repr=False)
    models: tuple[str, ...] = ()          # empty: serves every model
    rpm: float | None = None              # requests per minute, None: unlimited
    tpm: float | None = None              # tokens per minute, None: unlimited
    max_concurrency: int | None = None    # requests in flight, None: unlimited
    weight: float = 1.0
    batch_max_in_flight: int | None = None   # --via batch: batches open at once (None: the run's default)
    batch_max_tokens: int | None = None      # --via batch: enqueued tokens (None: the run's default)

    def serves(self, model: str) -> bool:
        """True when this endpoint may be asked for `model`."""
        return not self.models or model in self.models

    @property
    def masked_key(self) -> str:
        """The key as it may be shown: `sk-…abcd`."""
        return mask_key(self.api_key)


def mask_key(key: str) -> str:
    """Hide all of an API key but a short prefix and its last four characters."""
    if not key:
        return "(none)"
    if len(key) <= 8:
        return "…" + key[-2:]
    prefix = key[:3] if key[:3] in ("sk-", "sk_") else ""
    return f"{prefix}…{key[-4:]}"
