"""`--trace otlp`: one OpenTelemetry span per API call, sent by the OTLP/HTTP exporter.

Where spans go is OpenTelemetry's own environment (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`), so
LangSmith, Langfuse or any collector take them unchanged. A span carries the model, endpoint name,
status, attempt, tokens and latency; prompt and answer text only with `--trace-content`; never a key
(the event holds none). Needs the optional extra `pip install 'mpdistill[trace]'`.
"""
from __future__ import annotations

import json
import logging
import os

from ..errors import ConfigError
from .observe import RequestEvent

log = logging.getLogger(__name__)

CONTENT_MAX_CHARS = 32_000   # one span attribute; a huge prompt is cut, not dropped


def _sdk():
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import Status, StatusCode
    except ImportError as err:
        raise ConfigError("--trace otlp needs OpenTelemetry: pip install 'mpdistill[trace]'") from err
    return OTLPSpanExporter, Resource, TracerProvider, BatchSpanProcessor, Status, StatusCode


class OtlpTracer:
    """Observer that turns each `RequestEvent` into a finished span."""

    def __init__(self, run: str, content: bool = False, exporter=None) -> None:
        OTLPSpanExporter, Resource, TracerProvider, BatchSpanProcessor, self._Status, self._Code = _sdk()
        service = os.environ.get("OTEL_SERVICE_NAME") or "mpdistill"
        self._provider = TracerProvider(resource=Resource.create({"service.name": service, "mpdistill.run": run}))
        self._provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter()))
        self._tracer = self._provider.get_tracer("mpdistill")
        self._content = content

    def request(self, event: RequestEvent) -> None:
        end_ns = int(event.ended_at * 1e9)
        start_ns = end_ns - int(max(event.latency_s, 0.0) * 1e9)
        span = self._tracer.start_span(f"chat {event.model}", start_time=start_ns,
                                       attributes=span_attributes(event, self._content))
        if event.error:
            span.set_status(self._Status(self._Code.ERROR, event.error))
        span.end(end_time=end_ns)

    def status(self, status: dict) -> None:
        """Spans need nothing from the status."""

    def close(self) -> None:
        """Send what is buffered, then stop the exporter thread."""
        self._provider.force_flush()
        self._provider.shutdown()


def span_attributes(event: RequestEvent, content: bool = False) -> dict:
    """A span's attributes (OpenTelemetry GenAI names where they exist); text only with `content`."""
    usage = event.usage or {}
    attrs = {
        "gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": event.model,
        "langsmith.span.kind": "LLM",   # LangSmith shows the span as a model call
        "mpdistill.run": event.run, "mpdistill.endpoint": event.endpoint, "mpdistill.row_id": event.row_id,
        "mpdistill.line": event.line, "mpdistill.attempt": event.attempt,
        "mpdistill.latency_s": round(event.latency_s, 6), "mpdistill.status_class": event.status_class,
    }
    if event.status is not None:
        attrs["http.response.status_code"] = event.status
    if event.error:
        attrs["error.type"] = event.error
    for ours, theirs in (("prompt_tokens", "gen_ai.usage.input_tokens"),
                         ("completion_tokens", "gen_ai.usage.output_tokens")):
        if usage.get(ours) is not None:
            attrs[theirs] = int(usage[ours])
    if content:
        messages = (event.request or {}).get("messages")
        if messages is not None:
            attrs["gen_ai.prompt"] = json.dumps(messages, ensure_ascii=False, default=str)[:CONTENT_MAX_CHARS]
        if event.answer is not None:
            attrs["gen_ai.completion"] = event.answer[:CONTENT_MAX_CHARS]
    return attrs
