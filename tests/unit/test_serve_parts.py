"""Pure parts of `mpdistill serve`: token checks, loopback rule, key scrubbing, chart history."""
from __future__ import annotations

import pytest

from mpdistill.errors import ConfigError
from mpdistill.serve.auth import ServeSettings, authorized, is_loopback
from mpdistill.serve.history import History
from mpdistill.serve.views import public_status


def test_authorized_needs_the_exact_bearer_token():
    """Only `Bearer <token>` passes; no token configured lets everything through."""
    assert authorized(None, None) and authorized("anything", None)
    assert authorized("Bearer tok-12345678", "tok-12345678")
    assert authorized("bearer tok-12345678", "tok-12345678")
    for header in (None, "", "tok-12345678", "Bearer tok-1234567", "Bearer tok-123456789", "Basic tok-12345678"):
        assert not authorized(header, "tok-12345678")


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("10.0.0.5", False),
                                            ("example.org", False)])
def test_loopback_hosts(host, loopback):
    """Loopback addresses are told apart from every other bind address."""
    assert is_loopback(host) is loopback


def test_settings_refuse_off_loopback_without_a_token():
    """Binding beyond loopback without a token (or with a short one) is a config error."""
    ServeSettings().check()
    ServeSettings(host="0.0.0.0", token="long-enough-token").check()
    with pytest.raises(ConfigError, match="token"):
        ServeSettings(host="0.0.0.0").check()
    with pytest.raises(ConfigError, match="8 characters"):
        ServeSettings(token="short").check()


def test_public_status_drops_keys_and_url_credentials():
    """Masked keys and user:password@ in URLs never leave the server."""
    status = {"endpoints": [{"name": "a", "key": "sk-…abcd", "base_url": "https://user:pw@host/v1"}],
              "nested": [{"api_key": "x"}]}
    clean = public_status(status)
    assert clean == {"endpoints": [{"name": "a", "base_url": "https://host/v1"}], "nested": [{}]}


def test_history_rates_over_a_few_seconds():
    """Points carry rows/s, 429/s and errors/s from the deltas of cumulative counts."""
    now = [1000.0]
    history = History(clock=lambda: now[0])
    for second, (done, limited, errors) in enumerate([(0, 0, 0), (10, 2, 0), (20, 2, 1)]):
        now[0] = 1000.0 + second
        history.record("r", {"done": done, "endpoints": [{"rate_limited": limited, "errors": errors}]})
    points = history.points("r")
    assert points[0][1:] == (10, 10.0, 2.0, 0.0)
    assert points[1][1:] == (20, 10.0, 1.0, 0.5)
    history.forget_except([])
    assert history.points("r") == []


def test_metrics_of_two_runs_with_one_name_stay_distinct():
    """Two folders holding runs of the same name give two series, not one repeated series."""
    from prometheus_client.parser import text_string_to_metric_families
    from mpdistill.report.metrics import render
    from mpdistill.serve.app import _distinct_runs
    views = [{"id": "run-a", "status": {"run": "gpt", "ok": 1}}, {"id": "run-b", "status": {"run": "gpt", "ok": 2}},
             {"id": "j1", "status": None}]
    text = render(_distinct_runs(views)).decode()
    done = {s.labels["run"]: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == "mpdistill_rows_done_total"}
    assert done == {"gpt": 1, "gpt@run-b": 2}
