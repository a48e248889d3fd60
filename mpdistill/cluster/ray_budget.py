"""The shared budget on Ray: `BudgetService` as a named actor, and a shard's connection to it.

Ray is an optional extra (`pip install -e ".[ray]"`); nothing here is imported without it.
"""
from __future__ import annotations

import dataclasses
import logging
import time

from ..engine.keypool import KeyPool
from .budget import running_shards, scaled
from .lease import LeasedPool, ServiceLost
from .service import BudgetService

log = logging.getLogger(__name__)

NAMESPACE = "mpdistill"
CALL_TIMEOUT_S = 10.0


def import_ray():
    """The ray module, or a clear error naming the extra to install."""
    try:
        import ray
    except ImportError as err:
        from ..errors import ConfigError
        raise ConfigError('the ray executor needs Ray: pip install -e ".[ray]" (or pip install ray)') from err
    return ray


def actor_name(job) -> str:
    return f"mpdistill-budget-{job.fingerprint()}"


def start_actor(ray, job, endpoints: list[dict]):
    """The job's budget actor (created, or found if it lives on): it dies with the driver."""
    remote = ray.remote(num_cpus=0, max_concurrency=1)(BudgetService)
    return remote.options(name=actor_name(job), namespace=NAMESPACE, get_if_exists=True).remote(endpoints)


class RayService:
    """`BudgetService` calls through an actor handle; any Ray failure is ServiceLost."""

    def __init__(self, ray, handle, timeout: float = CALL_TIMEOUT_S) -> None:
        self._ray, self._handle, self._timeout = ray, handle, timeout

    def lease(self, *args) -> dict:
        return self._get(self._handle.lease.remote(*args))

    def call_async(self, method: str, *args) -> "PendingCall":
        """`method` on its way to the actor: the shard's manager never waits on a round trip."""
        try:
            return PendingCall(self, getattr(self._handle, method).remote(*args))
        except Exception as err:   # the actor is gone
            raise ServiceLost(repr(err)) from err

    def report(self, *args) -> None:
        try:
            self._handle.report.remote(*args)    # fire and forget: a lost actor shows at the next lease
        except Exception as err:   # Ray raises many kinds; each means the actor is gone
            raise ServiceLost(repr(err)) from err

    def snapshot(self) -> list[dict]:
        return self._get(self._handle.snapshot.remote())

    def _get(self, ref):
        try:
            return self._ray.get(ref, timeout=self._timeout)
        except Exception as err:   # RayActorError, GetTimeoutError, a lost connection, …
            raise ServiceLost(repr(err)) from err


class PendingCall:
    """An actor call on its way; lost when it has not answered within the call timeout.

    The shard's manager looks at it every few milliseconds while it waits for its answer: a
    future's `done()` costs nothing, where `ray.wait` is a round trip into Ray's core worker.
    """

    def __init__(self, service: RayService, ref) -> None:
        self._service, self._ref = service, ref
        self._future = ref.future()
        self._asked = time.monotonic()

    def ready(self) -> bool:
        if self._future.done():
            return True
        if time.monotonic() - self._asked > self._service._timeout:
            raise ServiceLost(f"no answer within {self._service._timeout:.0f} s")
        return False

    def result(self) -> dict:
        try:
            return self._future.result(timeout=0)
        except Exception as err:   # RayActorError, a lost connection, …
            raise ServiceLost(repr(err)) from err


def leased_pool_factory(name: str, address: str | None, job, index: int, slots: int = 8):
    """A keypool factory leasing from actor `name` for a shard with `slots` calls in flight, or None
    (logged) when the actor cannot be reached."""
    try:
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=address or "auto", namespace=NAMESPACE, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False)
        handle = ray.get_actor(name, namespace=NAMESPACE)
    except Exception as err:   # no Ray, no cluster, no actor: a static share is the safe way on
        log.warning("shard %d: shared rate budget %s not reachable (%s); using limit ÷ running shards",
                    index, name, err)
        return None
    service = RayService(ray, handle)

    def factory(endpoints):
        def fallback(learned: dict) -> KeyPool:
            known = [dataclasses.replace(e, rpm=e.rpm if e.rpm is not None else learned.get(e.name))
                     for e in endpoints]
            return KeyPool(list(scaled(known, 1.0 / running_shards(job))))
        factory.pool = LeasedPool(service, index, fallback, slots=slots)
        return factory.pool
    factory.pool = None
    return factory
