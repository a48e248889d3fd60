"""ClientSet: calls spread over clients whose connection pools stay small."""
from __future__ import annotations

import threading

from mpdistill.provider.pools import POOL_CONNECTIONS, ClientSet, pool_sizes


def test_small_concurrency_is_one_client_of_that_size():
    """Up to POOL_CONNECTIONS calls in flight keep today's single client and pool."""
    assert pool_sizes(1) == [1]
    assert pool_sizes(POOL_CONNECTIONS) == [POOL_CONNECTIONS]


def test_large_concurrency_splits_into_pools_that_carry_it_all():
    """-c 1024 becomes clients of at most POOL_CONNECTIONS connections holding all 1,024 calls."""
    sizes = pool_sizes(1024)
    assert max(sizes) <= POOL_CONNECTIONS and sum(sizes) >= 1024
    assert pool_sizes(POOL_CONNECTIONS + 1) == [POOL_CONNECTIONS // 2 + 1] * 2


def test_lease_lends_the_least_busy_client_and_takes_it_back():
    """Nested leases land on different clients; a returned client is lent again first."""
    made = []
    clients = ClientSet(lambda size: made.append(size) or f"client-{len(made)}", 3 * POOL_CONNECTIONS)
    assert len(made) == 3
    with clients.lease() as a, clients.lease() as b, clients.lease() as c:
        assert len({a, b, c}) == 3
    with clients.lease() as again:
        assert again == a


def test_leases_from_many_threads_balance_and_release():
    """Concurrent leases never lose a count: every client is idle again afterwards."""
    clients = ClientSet(lambda size: object(), 4 * POOL_CONNECTIONS)
    barrier = threading.Barrier(8)

    def call() -> None:
        with clients.lease():
            barrier.wait(timeout=5)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clients._busy == [0, 0, 0, 0]
