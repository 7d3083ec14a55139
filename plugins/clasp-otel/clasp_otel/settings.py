"""``otel:`` in clasp.yaml, and the tracer provider it describes.

::

    otel:
      service_name: clasp-gateway      # resource service.name
      exporter: otlp                   # otlp (OTLP/HTTP protobuf), console, or none
      endpoint: http://collector:4318/v1/traces   # default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else localhost
      headers: {authorization: "${OTLP_TOKEN}"}   # secret references
      sample_ratio: 1.0                # of new traces (an incoming sampled trace is followed)
      continue_incoming: true          # continue a client's W3C traceparent
      propagate: true                  # send each attempt's traceparent to the provider

The provider is the app's own (never OpenTelemetry's global one), so two apps in
one process trace apart, and spans are exported in batches off the event loop.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from clasp_gateway import Boolean, Choice, Field, MapOf, Number, Reference, Section, String, resolve_secret

SETTINGS = Section({
    "enabled": Field(Boolean(), True),
    "service_name": Field(String(non_empty=True), "clasp-gateway"),
    "exporter": Field(Choice("otlp", "console", "none"), "otlp"),
    "endpoint": String(pattern=r"https?://\S+", expected="an http:// or https:// URL"),
    "headers": Field(MapOf(Reference(), expected="a mapping of header name to value or secret reference"), {}),
    "timeout": Field(Number(above=0), 10.0),
    "sample_ratio": Field(Number(0, 1), 1.0),
    "continue_incoming": Field(Boolean(), True),
    "propagate": Field(Boolean(), True),
})


def build_provider(settings: dict[str, Any], exporter: SpanExporter | None = None) -> TracerProvider:
    """The tracer provider of ``settings``; ``exporter`` replaces the configured one
    (tests pass the SDK's in-memory exporter)."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings["service_name"]}),
        sampler=ParentBased(TraceIdRatioBased(settings["sample_ratio"])),
    )
    if exporter is None:
        exporter = _exporter(settings)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporter(settings: dict[str, Any]) -> SpanExporter | None:
    if settings["exporter"] == "none":
        return None
    if settings["exporter"] == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    headers = {name: resolve_secret(ref).value or "" for name, ref in settings["headers"].items()}
    return OTLPSpanExporter(endpoint=settings.get("endpoint"), headers=headers or None, timeout=settings["timeout"])
