"""Request observers: counters, the fan-out, Prometheus rendering, endpoint logs, spans, --on-finish."""
from __future__ import annotations

import json
import sys

import pytest

from mpdistill.report.observe import LATENCY_BUCKETS, Observers, RequestCounters, RequestEvent


def event(status=200, error=None, latency=0.2, endpoint="api_1", usage=None, **kw):
    values = dict(run="r", model="m", endpoint=endpoint, row_id="a1", line=1, attempt=1, status=status,
                  error=error, latency_s=latency, ended_at=1_700_000_000.5,
                  usage=usage if usage is not None else {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
                  request={"messages": [{"role": "user", "content": "SECRET PROMPT"}]}, answer="SECRET ANSWER")
    values.update(kw)
    return RequestEvent(**values)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_status_class_names_each_outcome():
    """2xx/4xx/5xx by status; `none` when no response came back."""
    assert event().status_class == "2xx"
    assert event(429, "RateLimitError").status_class == "4xx"
    assert event(503, "ServerError").status_class == "5xx"
    assert event(None, "ConnectError").status_class == "none"


def test_counters_count_classes_429s_buckets_and_rpm():
    """Counters split requests by endpoint and class, note the last 429 and bucket latencies."""
    clock = FakeClock()
    counters = RequestCounters(clock=clock)
    counters.request(event(latency=0.01))
    counters.request(event(429, "RateLimitError", latency=0.3))
    counters.request(event(endpoint="api_2", latency=500.0))
    clock.now += 61
    counters.request(event(latency=0.07))
    snap = counters.status_fields()["requests"]
    assert snap["latency_buckets_s"] == list(LATENCY_BUCKETS)
    one = snap["endpoints"]["api_1"]
    assert one["by_class"] == {"2xx": 2, "4xx": 1}
    assert one["rate_limited"] == 1 and one["last_429_at"] == 1_700_000_000.5
    assert one["rpm_now"] == 1.0  # the first two fell out of the minute
    assert one["latency_buckets"][0] == 1 and one["latency_buckets"][1] == 1 and one["latency_buckets"][3] == 1
    assert snap["endpoints"]["api_2"]["latency_buckets"][-1] == 1  # above every bound: +Inf


def test_fanout_drops_an_observer_that_raises():
    """A failing observer is switched off; the others keep getting events."""
    class Broken:
        def request(self, e):
            raise RuntimeError("boom")

        def status(self, s):
            pass

        def close(self):
            pass

    counters = RequestCounters()
    fan = Observers([Broken(), counters])
    fan.request(event())
    fan.request(event())
    assert counters.status_fields()["requests"]["endpoints"]["api_1"]["by_class"] == {"2xx": 2}
    fan.close()


def status_with_requests():
    counters = RequestCounters()
    counters.request(event(latency=0.07))
    counters.request(event(429, "RateLimitError", latency=1.5))
    return {"run": "r1", "state": "running", "ok": 5, "failed": 1, "total": 10, "rows_per_s": 2.5,
            "endpoints": [{"name": "api_1", "in_flight": 3, "key": "sk-…abcd"}],
            "tokens": {"prompt": 30, "completion": 40}, "cost": 0.25, **counters.status_fields()}


def test_metrics_render_parses_with_prometheus_parser():
    """The exposition parses with prometheus-client's parser and carries every figure."""
    from prometheus_client.parser import text_string_to_metric_families
    from mpdistill.report.metrics import render
    text = render([status_with_requests()]).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("mpdistill_rows_done_total", (("run", "r1"),))] == 5
    assert samples[("mpdistill_rows_failed_total", (("run", "r1"),))] == 1
    assert samples[("mpdistill_in_flight", (("endpoint", "api_1"), ("run", "r1")))] == 3
    assert samples[("mpdistill_requests_total", (("endpoint", "api_1"), ("run", "r1"), ("status_class", "4xx")))] == 1
    assert samples[("mpdistill_rate_limited_total", (("endpoint", "api_1"), ("run", "r1")))] == 1
    assert samples[("mpdistill_request_latency_seconds_count", (("endpoint", "api_1"), ("run", "r1")))] == 2
    assert samples[("mpdistill_request_latency_seconds_bucket", (("endpoint", "api_1"), ("le", "0.1"), ("run", "r1")))] == 1
    assert samples[("mpdistill_tokens_total", (("kind", "completion"), ("run", "r1")))] == 40
    assert samples[("mpdistill_cost_total", (("run", "r1"),))] == 0.25
    assert "sk-" not in text


def test_metrics_tolerate_a_status_without_request_counters():
    """An older or partial status file still renders (rows only), instead of failing the scrape."""
    from prometheus_client.parser import text_string_to_metric_families
    from mpdistill.report.metrics import render
    text = render([{"run": "old", "state": "finished", "ok": 3}]).decode()
    names = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert "mpdistill_rows_done_total" in names


def test_endpoint_log_lines_are_per_endpoint_and_redacted(tmp_path):
    """Each endpoint gets its own file; a key-shaped string never reaches it."""
    from mpdistill.report.endpointlog import EndpointLogs, endpoint_log_path
    logs = EndpointLogs(tmp_path, "run/1")
    key = "sk-" + "q" * 24
    logs.request(event(row_id=f"row-with-{key}"))
    logs.request(event(503, "ServerError", endpoint="api_2"))
    logs.status({})
    logs.close()
    one = endpoint_log_path(tmp_path, "run/1", "api_1").read_text()
    two = endpoint_log_path(tmp_path, "run/1", "api_2").read_text()
    assert "status=200" in one and "attempt=1" in one and "latency=0.200s" in one and key not in one
    assert "status=503" in two and "error=ServerError" in two
    assert endpoint_log_path(tmp_path, "run/1", "api_1").parent.parent == tmp_path


def test_span_attributes_hold_no_text_unless_asked():
    """Spans carry model, endpoint, status, attempt, tokens, latency; prompt text only with content."""
    pytest.importorskip("opentelemetry")
    from mpdistill.report.trace import span_attributes
    plain = span_attributes(event())
    assert plain["gen_ai.request.model"] == "m" and plain["mpdistill.endpoint"] == "api_1"
    assert plain["http.response.status_code"] == 200 and plain["mpdistill.attempt"] == 1
    assert plain["gen_ai.usage.input_tokens"] == 3 and plain["gen_ai.usage.output_tokens"] == 4
    assert "SECRET" not in json.dumps(plain)
    full = span_attributes(event(), content=True)
    assert "SECRET PROMPT" in full["gen_ai.prompt"] and full["gen_ai.completion"] == "SECRET ANSWER"


def test_on_finish_gets_paths_and_reports_its_exit_code(tmp_path):
    """The hook sees absolute output/errors/summary paths; its exit code lands in the summary."""
    from mpdistill.report.hooks import on_finish
    seen = tmp_path / "seen.json"
    cmd = (f"{sys.executable} -c \"import json, os; json.dump({{k: v for k, v in os.environ.items() "
           f"if k.startswith('MPDISTILL_')}}, open('{seen}', 'w'))\"; exit 7")
    summary = {"state": "finished", "run": "r", "output": "o.jsonl", "errors": "o.errors.jsonl",
               "summary": "o.summary.json"}
    result = on_finish(cmd, summary)
    assert result["on_finish"] == {"command": cmd, "returncode": 7}
    env = json.loads(seen.read_text())
    assert env["MPDISTILL_OUTPUT"].endswith("/o.jsonl") and env["MPDISTILL_OUTPUT"].startswith("/")
    assert env["MPDISTILL_SUMMARY"].endswith("o.summary.json") and env["MPDISTILL_RUN_STATE"] == "finished"
