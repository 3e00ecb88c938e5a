"""OpenTelemetry for every service: traces (exported only when ``OTEL_*`` asks) and metrics
(for Prometheus, on the ops listener).

:func:`setup_telemetry` runs once in a service's entry point. Until it runs (unit tests,
services embedded in a test process) the OpenTelemetry API is a no-op and instruments
record nothing. Instruments are created where they are used, from :func:`meter`, at import
time: OpenTelemetry binds them to the provider once it is set.

Trace context crosses NATS as W3C ``traceparent``/``tracestate`` message headers:
:func:`inject_headers` on the publishing side, :func:`extract_context` on the receiving one.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind

__all__ = [
    "DURATION_BUCKETS",
    "Telemetry",
    "consumed_spans",
    "consumer_redeliveries",
    "extract_context",
    "flush_telemetry",
    "inject_headers",
    "meter",
    "otlp_traces_enabled",
    "setup_telemetry",
    "trace_id_of",
    "tracer",
    "watch_consumer",
]

DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
"""Histogram buckets in seconds, from a cached answer to a long completion."""

_SCOPE = "switchboard"


def meter(name: str = _SCOPE) -> metrics.Meter:
    """The meter instruments are created from (a proxy until :func:`setup_telemetry`)."""
    return metrics.get_meter(name)


def tracer(name: str = _SCOPE) -> trace.Tracer:
    """The tracer spans are started from (a proxy until :func:`setup_telemetry`)."""
    return trace.get_tracer(name)


def otlp_traces_enabled(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables ask for OTLP span export.

    ``OTEL_TRACES_EXPORTER`` decides when set (``otlp`` or ``none``); otherwise an
    ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` turns export on.
    """
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return "otlp" in {part.strip() for part in exporter.split(",")}
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


@dataclass(slots=True)
class Telemetry:
    """The providers of this process, to flush and shut down on exit."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporting: bool

    def shutdown(self) -> None:
        """Export what is pending, then stop (idempotent)."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


_installed: Telemetry | None = None


def setup_telemetry(service: str, environ: Mapping[str, str] | None = None) -> Telemetry:
    """Install the SDK providers for ``service`` (once per process; later calls return it).

    The service name is ``OTEL_SERVICE_NAME``, else ``switchboard-<service>``. Metrics go to
    the Prometheus client registry that the ops listener exposes.
    """
    global _installed  # noqa: PLW0603 - OpenTelemetry's providers are process-wide by design
    if _installed is not None:
        return _installed
    # Imported here: the exporters are only needed by a process that installs them.
    from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415

    env = os.environ if environ is None else environ
    name = env.get("OTEL_SERVICE_NAME") or f"switchboard-{service}"
    resource = Resource.create({SERVICE_NAME: name})
    exporting = otlp_traces_enabled(env)
    # With nothing to export spans to, record none: trace ids are still made, propagated
    # across NATS and written to logs and the response header, without building spans
    # no one reads (a tenth of the router's CPU per request under load).
    tracer_provider = TracerProvider(resource=resource, sampler=None if exporting else ALWAYS_OFF)
    if exporting:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[PrometheusMetricReader(disable_target_info=True)]
    )
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    _installed = Telemetry(tracer_provider, meter_provider, exporting)
    return _installed


def flush_telemetry(timeout_millis: int = 5000) -> None:
    """Export the spans still pending (before a process may be ended by a signal)."""
    if _installed is not None:
        _installed.tracer_provider.force_flush(timeout_millis)


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus the current trace context (``traceparent``, ``tracestate``)."""
    carrier = {} if headers is None else headers
    propagate.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> Context:
    """The trace context a NATS message carries (an empty context when it carries none)."""
    return propagate.extract(headers or {})


def trace_id_of(span: trace.Span | None = None) -> str | None:
    """The 32-hex-digit trace id of ``span`` (default: the current one), if it is recorded."""
    context = (span or trace.get_current_span()).get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x")


class _Pending(Protocol):
    consumer_name: str
    pending: int | None


_consumers: weakref.WeakSet[_Pending] = weakref.WeakSet()


def _observe_pending(_options: CallbackOptions) -> Iterable[Observation]:
    for consumer in list(_consumers):
        if consumer.pending is not None:
            yield Observation(consumer.pending, {"consumer": consumer.consumer_name})


_consumer_meter = meter("switchboard.consumers")
_consumer_meter.create_observable_gauge(
    "switchboard_consumer_pending",
    callbacks=[_observe_pending],
    description="Usage events not yet processed by a durable consumer "
    "(JetStream num_pending + num_ack_pending).",
)
consumer_redeliveries = _consumer_meter.create_counter(
    "switchboard_consumer_redeliveries",
    description="Usage events delivered to a consumer more than once.",
)


def watch_consumer(consumer: _Pending) -> None:
    """Report ``consumer.pending`` (under ``consumer.consumer_name``) while it lives."""
    _consumers.add(consumer)
    consumer_redeliveries.add(0, {"consumer": consumer.consumer_name})


def consumed_spans(messages: Iterable[Msg], *, consumer: str, name: str, start_time: int) -> None:
    """One ``CONSUMER`` span per processed message, a child of the context it carries
    (the router's request span), from ``start_time`` (ns) to now; counts redeliveries."""
    spans = tracer("switchboard.consumers")
    for message in messages:
        try:
            delivered = message.metadata.num_delivered
        except (AttributeError, ValueError, NatsError):
            delivered = 1
        if delivered > 1:
            consumer_redeliveries.add(1, {"consumer": consumer})
        span = spans.start_span(
            name,
            context=extract_context(message.headers),
            kind=SpanKind.CONSUMER,
            start_time=start_time,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.destination.name": message.subject,
                "messaging.consumer.group.name": consumer,
                "switchboard.deliveries": delivered,
            },
        )
        span.end()
