"""Prometheus metrics made from status dicts: the same figures for `mpdistill serve`'s `/metrics`
(every run it sees, read from their status files) and for one CLI run's `--metrics-port`.

The figures come from the status file (rows, in flight, tokens, cost) and its `requests` section
(requests by endpoint and status class, 429s, latency buckets), so there is one owner of each count.
Needs the optional `prometheus-client` package (`pip install mpdistill[serve]`).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable

from ..errors import ConfigError

log = logging.getLogger(__name__)

PREFIX = "mpdistill"


def _prometheus():
    try:
        import prometheus_client
        from prometheus_client import core
    except ImportError as err:
        raise ConfigError("metrics need prometheus-client: pip install 'mpdistill[serve]'") from err
    return prometheus_client, core


def families(statuses: Iterable[dict]) -> list:
    """Metric families for the runs in `statuses` (status dicts), labelled by run name."""
    _, core = _prometheus()
    f = _Families(core)
    for status in statuses:
        f.add_run(status)
    return f.all()


class _Families:
    """The metric families being filled, one sample per run (and endpoint)."""

    def __init__(self, core) -> None:
        c, g, h = core.CounterMetricFamily, core.GaugeMetricFamily, core.HistogramMetricFamily
        run, ep = ["run"], ["run", "endpoint"]
        self.rows_ok = c(f"{PREFIX}_rows_done", "Rows answered and durable", labels=run)
        self.rows_failed = c(f"{PREFIX}_rows_failed", "Rows that failed for good (errors file)", labels=run)
        self.rows_total = g(f"{PREFIX}_rows_total", "Rows in the input (times models)", labels=run)
        self.rate = g(f"{PREFIX}_rows_per_second", "Durable rows per second over the last minute", labels=run)
        self.state = g(f"{PREFIX}_run_info", "1 for each run, labelled with its state", labels=["run", "state"])
        self.requests = c(f"{PREFIX}_requests", "API calls by endpoint and HTTP status class",
                          labels=ep + ["status_class"])
        self.limited = c(f"{PREFIX}_rate_limited", "429 answers by endpoint", labels=ep)
        self.in_flight = g(f"{PREFIX}_in_flight", "Calls in flight by endpoint", labels=ep)
        self.latency = h(f"{PREFIX}_request_latency_seconds", "API call latency", labels=ep)
        self.tokens = c(f"{PREFIX}_tokens", "Tokens used by this run", labels=["run", "kind"])
        self.cost = c(f"{PREFIX}_cost", "Cost of this run (model prices)", labels=run)

    def add_run(self, status: dict) -> None:
        run = str(status.get("run") or "?")
        self.rows_ok.add_metric([run], float(status.get("ok") or 0))
        self.rows_failed.add_metric([run], float(status.get("failed") or 0))
        if status.get("total") is not None:
            self.rows_total.add_metric([run], float(status["total"]))
        self.rate.add_metric([run], float(status.get("rows_per_s") or 0))
        self.state.add_metric([run, str(status.get("state") or "unknown")], 1.0)
        for endpoint in status.get("endpoints") or []:
            self.in_flight.add_metric([run, str(endpoint.get("name"))], float(endpoint.get("in_flight") or 0))
        tokens = status.get("tokens") or {}
        for kind in ("prompt", "completion"):
            self.tokens.add_metric([run, kind], float(tokens.get(kind) or 0))
        if status.get("cost") is not None:
            self.cost.add_metric([run], float(status["cost"]))
        self._add_requests(run, status.get("requests") or {})

    def _add_requests(self, run: str, requests: dict) -> None:
        bounds = requests.get("latency_buckets_s") or []
        for name, counts in (requests.get("endpoints") or {}).items():
            labels = [run, str(name)]
            for cls, n in (counts.get("by_class") or {}).items():
                self.requests.add_metric(labels + [str(cls)], float(n))
            self.limited.add_metric(labels, float(counts.get("rate_limited") or 0))
            buckets = counts.get("latency_buckets") or []
            if len(buckets) == len(bounds) + 1:
                self.latency.add_metric(labels, _cumulative(bounds, buckets),
                                        sum_value=float(counts.get("latency_sum_s") or 0))

    def all(self) -> list:
        return [self.rows_ok, self.rows_failed, self.rows_total, self.rate, self.state, self.requests,
                self.limited, self.in_flight, self.latency, self.tokens, self.cost]


def _cumulative(bounds: list, buckets: list) -> list[tuple[str, float]]:
    """Per-bucket counts → Prometheus' cumulative (le, count) pairs ending in +Inf."""
    out, seen = [], 0
    for bound, n in zip(list(bounds) + ["+Inf"], buckets):
        seen += n
        out.append((str(float(bound)) if bound != "+Inf" else "+Inf", float(seen)))
    return out


def render(statuses: Iterable[dict]) -> bytes:
    """The Prometheus text exposition of `statuses`."""
    prometheus_client, _ = _prometheus()
    return prometheus_client.generate_latest(_Registry(lambda: list(statuses)))


class _Registry:
    """The minimal registry `generate_latest` needs: one collect() over the status source."""

    def __init__(self, source: Callable[[], Iterable[dict]]) -> None:
        self.source = source

    def collect(self):
        return iter(families(self.source()))


class MetricsServer:
    """Observer of one CLI run (`--metrics-port`): serves the latest status as /metrics.

    It listens from the start, so a port in use is a config error before any row is sent.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        prometheus_client, core = _prometheus()
        self._latest: dict | None = None
        self._lock = threading.Lock()
        registry = core.CollectorRegistry(auto_describe=False)
        registry.register(_Registry(self._statuses))
        try:
            self._server, _ = prometheus_client.start_http_server(port, addr=host, registry=registry)
        except OSError as err:
            raise ConfigError(f"metrics_port {port}: cannot listen on {host}: {err.strerror}") from err
        log.info("metrics on http://%s:%d/metrics", host, self.bound_port)

    def request(self, event) -> None:
        """Per-request figures arrive through the status (its `requests` section)."""

    def status(self, status: dict) -> None:
        with self._lock:
            self._latest = status

    @property
    def bound_port(self) -> int | None:
        return self._server.server_address[1] if self._server else None

    def _statuses(self) -> list[dict]:
        with self._lock:
            return [self._latest] if self._latest else []

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
