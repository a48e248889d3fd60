"""Unit tests of mpdistill.engine.health: whose fault a failed call is, from the other rows' outcomes."""
from __future__ import annotations

from mpdistill.engine.health import Facts, Health


def test_a_row_failing_alone_is_the_rows_fault():
    """The only row failing on an endpoint (even after every other row is done) is charged to the row."""
    health, marks = Health(), {}
    health.succeeded("e")                     # the other rows finished first
    for _ in range(3):
        assert health.failed("e", "a", marks, "ConnectError") == Facts(row_fault=True, others_failing=False)


def test_a_row_failing_while_others_succeed_is_a_poison_row():
    """Once other rows succeeded since a row first failed there, its failures stay its own."""
    health, marks = Health(), {}
    health.failed("e", "poison", marks, "ConnectError")
    health.succeeded("e")
    assert health.failed("e", "poison", marks, "ConnectError").row_fault
    assert health.failed("e", "poison", marks, "ConnectError").row_fault   # the others are done: still its own


def test_failures_shared_by_rows_with_no_success_between_are_the_endpoints():
    """After one row failed, another row's failure (no success since) is the endpoint's, and says so."""
    health, a, b = Health(), {}, {}
    health.failed("e", "a", a, "AuthError")
    assert health.failed("e", "b", b, "AuthError") == Facts(row_fault=False, others_failing=True)
    assert health.failed("e", "a", a, "AuthError") == Facts(row_fault=False, others_failing=True)


def test_a_success_clears_the_failing_rows_and_errors_are_told_apart_by_class():
    """Only failures of the same class since the last success count as others failing."""
    health = Health()
    health.failed("e", "a", {}, "AuthError")
    assert not health.failed("e", "b", {}, "ConnectError").others_failing
    health.succeeded("e")
    assert not health.failed("e", "c", {}, "AuthError").others_failing


def test_endpoints_are_judged_apart():
    """Rows failing together on one endpoint say nothing about another endpoint."""
    health = Health()
    health.failed("down", "a", {}, "ConnectError")
    assert not health.failed("down", "b", {}, "ConnectError").row_fault
    assert health.failed("up", "b", {}, "ConnectError").row_fault
