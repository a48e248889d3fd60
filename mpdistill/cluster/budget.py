"""One rate budget across the shards of a job: a static share of every limit, or a shared service.

Without a shared service each running shard gets `share` × every endpoint's rpm, tpm and
concurrency cap (the executor sets the share: --budget-share, else 1 / shards running at once).
With one (a Ray actor, see `ray_budget`), the shard's key pool is a `LeasedPool` that leases
request grants from it. The engine only sees an object with the key pool's interface, made by
the `keypool_factory` that `api.run` accepts.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Callable, Mapping

from .. import plan
from ..config import RunConfig
from ..engine.modes import shape
from ..errors import ConfigError
from ..provider.endpoint import Endpoint

log = logging.getLogger(__name__)

SHARE_VAR = "MPDISTILL_BUDGET_SHARE"       # set by the executor for every shard it starts
ACTOR_VAR = "MPDISTILL_BUDGET_ACTOR"       # name of the Ray actor holding the shared budget
RAY_ADDRESS_VAR = "MPDISTILL_RAY_ADDRESS"


def parse_share(value, where: str) -> float:
    """A budget share in (0, 1]; a ConfigError naming `where` otherwise."""
    try:
        share = float(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: budget share must be a number in (0, 1], got {value!r}") from err
    if not 0 < share <= 1 or math.isnan(share):
        raise ConfigError(f"{where}: budget share must be in (0, 1], got {share}")
    return share


def default_share(shards: int, at_once: int | None) -> float:
    """limit ÷ the number of shards that can run at the same time."""
    return 1.0 / max(1, min(shards, at_once or shards))


def scaled(endpoints, share: float) -> tuple[Endpoint, ...]:
    """Every endpoint's rpm, tpm and concurrency cap times `share` (a cap never below 1)."""
    def part(value, whole=False):
        if value is None:
            return None
        return max(1, math.floor(value * share)) if whole else value * share
    return tuple(dataclasses.replace(e, rpm=part(e.rpm), tpm=part(e.tpm),
                                     max_concurrency=part(e.max_concurrency, whole=True)) for e in endpoints)


def budget_for_shard(job, index: int, cfg: RunConfig, env: Mapping[str, str]):
    """(keypool_factory or None, config) for a shard: a leased shared budget, or a static share."""
    if env.get(ACTOR_VAR):
        from .ray_budget import leased_pool_factory
        slots = shape(cfg.mode, cfg.processes, cfg.concurrency).in_flight
        factory = leased_pool_factory(env[ACTOR_VAR], env.get(RAY_ADDRESS_VAR), job, index, slots)
        if factory is not None:
            return factory, cfg
    share = parse_share(env[SHARE_VAR], SHARE_VAR) if env.get(SHARE_VAR) else default_share(job.shards, None)
    endpoints = () if cfg.mock else plan.resolve_endpoints(cfg, env)
    if not endpoints or share == 1.0:
        return None, cfg
    log.info("shard %d: %.3g of every endpoint's limits (one of %d shards)", index, share, job.shards)
    return None, dataclasses.replace(cfg, endpoints=scaled(endpoints, share))


def running_shards(job) -> int:
    """Shards of the job not finished yet (at least 1): what a lost shared budget divides by."""
    return max(1, sum(1 for i in range(job.shards) if not job.shard(i).done.exists()))


def public_endpoint(e: Endpoint) -> dict:
    """An endpoint's name, models and limits, without its key or URL: what a budget service needs."""
    return {"name": e.name, "base_url": "", "models": tuple(e.models), "rpm": e.rpm, "tpm": e.tpm,
            "max_concurrency": e.max_concurrency, "weight": e.weight}


def share_env(share: float | None, shards: int, at_once: int | None) -> dict:
    """The environment entry an executor gives each shard it starts."""
    return {SHARE_VAR: repr(share if share is not None else default_share(shards, at_once))}


def env_secrets(env: Mapping[str, str] | None = None) -> dict:
    """The environment variables that carry keys to shards (never written into the job folder)."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if k.startswith("OPENAI_") or k in ("MPDISTILL_ENDPOINTS",)}


FactoryType = Callable[[list[Endpoint]], object]
