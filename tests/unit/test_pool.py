"""The worker pool's own bookkeeping, without a server: what it leaves behind when it closes."""
from __future__ import annotations

import gc

from mpdistill.engine.pool import WorkerPool
from mpdistill.engine.worker import WorkerSpec
from mpdistill.provider.endpoint import Endpoint


def test_close_gives_the_heap_frozen_at_each_fork_back_to_the_gc():
    """Objects frozen before forking workers are collectable again once the pool is closed."""
    pool = WorkerPool(WorkerSpec(endpoints=(Endpoint("e", "http://127.0.0.1:9/v1"),), timeout=5), 2)
    pool.start()
    assert gc.get_freeze_count() > 0
    pool.close(grace=5)
    assert gc.get_freeze_count() == 0 and pool.started == 0
