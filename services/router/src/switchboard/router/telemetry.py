"""The router's metrics and spans (GenAI semantic conventions).

One ``chat {model}`` server span per request, a child of the edge's span (the context
arrives in the NATS headers), with one ``chat {upstream model}`` client span per upstream
attempt. Observable gauges read live objects registered here (weakly: a stopped replica's
breakers and publisher simply disappear).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from switchboard.common.telemetry import DURATION_BUCKETS, meter, tracer

if TYPE_CHECKING:
    from switchboard.common.errors import GatewayError
    from switchboard.common.wire import ChatRequest
    from switchboard.router.breaker import Breakers
    from switchboard.router.ledger import Ledger
    from switchboard.router.publisher import UsagePublisher
    from switchboard.router.routing import Candidate

__all__ = [
    "attempt_span",
    "chat_span",
    "observe_chat",
    "usage_dropped",
    "usage_published",
    "watch_breakers",
    "watch_publisher",
]

_BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}

_meter = meter("switchboard.router")
_tracer = tracer("switchboard.router")
_breakers: weakref.WeakSet[Breakers] = weakref.WeakSet()
_publishers: weakref.WeakSet[UsagePublisher] = weakref.WeakSet()

chat_requests = _meter.create_counter(
    "switchboard_chat_requests", description="Chat completions served, by outcome."
)
chat_duration = _meter.create_histogram(
    "switchboard_chat_duration",
    unit="s",
    description="Time a router took to serve a chat completion, end to end.",
    explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
)
chat_ttft = _meter.create_histogram(
    "switchboard_chat_ttft",
    unit="s",
    description="Time from the router picking a request up to its first output frame.",
    explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
)
tokens = _meter.create_counter("switchboard_tokens", description="Tokens used, by kind.")
cost_usd = _meter.create_counter("switchboard_cost_usd", description="Cost in US dollars.")
upstream_retries = _meter.create_counter(
    "switchboard_upstream_retries", description="Upstream calls retried on the same model."
)
fallbacks = _meter.create_counter(
    "switchboard_fallbacks", description="Requests served (or failed) by a fallback model."
)
usage_published = _meter.create_counter(
    "switchboard_usage_events_published", description="Usage events JetStream acknowledged."
)
usage_dropped = _meter.create_counter(
    "switchboard_usage_events_dropped", description="Usage events given up (logged whole)."
)


def _observe_breakers(_options: CallbackOptions) -> Iterable[Observation]:
    for breakers in list(_breakers):
        for snapshot in breakers.snapshots():
            yield Observation(
                _BREAKER_VALUES[snapshot.state],
                {"provider": snapshot.provider, "model": snapshot.model},
            )


def _observe_backlog(_options: CallbackOptions) -> Iterable[Observation]:
    yield Observation(sum(publisher.backlog for publisher in list(_publishers)))


_meter.create_observable_gauge(
    "switchboard_breaker_state",
    callbacks=[_observe_breakers],
    description="Circuit breaker state: 0 closed, 1 half open, 2 open.",
)
_meter.create_observable_gauge(
    "switchboard_usage_backlog",
    callbacks=[_observe_backlog],
    description="Usage events waiting to be published to JetStream.",
)


def watch_breakers(breakers: Breakers) -> None:
    """Report the states of ``breakers`` while they live."""
    _breakers.add(breakers)


def watch_publisher(publisher: UsagePublisher) -> None:
    """Report the backlog of ``publisher`` while it lives."""
    _publishers.add(publisher)
    # Every counter exported at 0 from the start, so that ``rate()`` sees the first event
    # (here, at run time: before the provider is installed, instruments record nothing).
    for counter in (upstream_retries, fallbacks, usage_published, usage_dropped):
        counter.add(0)


def _request_attributes(envelope: ChatRequest) -> dict[str, Any]:
    request = envelope.request
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": request.model,
        "switchboard.request_id": envelope.request_id,
        "switchboard.key_id": envelope.key.key_id,
        "switchboard.stream": request.wants_stream,
    }
    for name, attribute in (
        ("temperature", "gen_ai.request.temperature"),
        ("top_p", "gen_ai.request.top_p"),
        ("max_tokens", "gen_ai.request.max_tokens"),
        ("max_completion_tokens", "gen_ai.request.max_tokens"),
        ("seed", "gen_ai.request.seed"),
    ):
        value = getattr(request, name, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attributes[attribute] = value
    return attributes


@contextmanager
def chat_span(envelope: ChatRequest, parent: Any = None) -> Iterator[Span]:
    """The span of serving ``envelope``, current while the block runs."""
    with _tracer.start_as_current_span(
        f"chat {envelope.request.model}",
        context=parent,
        kind=SpanKind.SERVER,
        record_exception=False,
    ) as span:
        if span.is_recording():  # not while spans are not exported (sampled out)
            span.set_attributes(_request_attributes(envelope))
        yield span


@contextmanager
def attempt_span(candidate: Candidate, *, retry: int, position: int) -> Iterator[Span]:
    """The span of one upstream call; records the failure (not its traceback) on error."""
    with _tracer.start_as_current_span(
        f"chat {candidate.upstream_model}",
        kind=SpanKind.CLIENT,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        if span.is_recording():
            span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.system": candidate.provider.name,
                    "gen_ai.provider.name": candidate.provider.name,
                    "gen_ai.request.model": candidate.upstream_model,
                    "server.address": candidate.provider.base_url,
                    "switchboard.retry": retry,
                    "switchboard.fallback": position,
                }
            )
        try:
            yield span
        except BaseException as exc:
            status_code = getattr(exc, "status_code", None)
            if isinstance(status_code, int):
                span.set_attribute("http.response.status_code", status_code)
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR))
            raise


def observe_chat(
    span: Span,
    ledger: Ledger,
    *,
    http_status: int,
    error: GatewayError | None,
    seconds: float,
) -> None:
    """Record one served request in the metrics and on its span."""
    envelope = ledger.envelope
    candidate = ledger.candidate
    model = ledger.model_tried or "unknown"
    provider = candidate.provider.name if candidate else "none"
    stream = "true" if envelope.request.wants_stream else "false"
    chat_requests.add(
        1, {"model": model, "provider": provider, "status": str(http_status), "stream": stream}
    )
    chat_duration.record(seconds, {"model": model, "provider": provider, "stream": stream})
    ttft = ledger.ttft
    if ttft is not None:
        chat_ttft.record(ttft, {"model": model, "provider": provider})
    if ledger.retries:
        upstream_retries.add(ledger.retries)
    if ledger.fallbacks:
        fallbacks.add(ledger.fallbacks)
    usage = ledger.usage
    attributes: dict[str, Any] = {
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,
        "switchboard.retries": ledger.retries,
        "switchboard.fallbacks": ledger.fallbacks,
        "http.response.status_code": http_status,
    }
    if ledger.served_model:
        attributes["gen_ai.response.model"] = ledger.served_model
    if usage is not None:
        tokens.add(usage.prompt_tokens, {"model": model, "kind": "prompt"})
        tokens.add(usage.completion_tokens, {"model": model, "kind": "completion"})
        attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
    if ledger.cost.usd is not None:
        cost_usd.add(ledger.cost.usd, {"model": model})
        attributes["switchboard.cost_usd"] = ledger.cost.usd
    if error is not None:
        attributes["error.type"] = error.code or type(error).__name__
        if http_status >= 500:
            span.set_status(Status(StatusCode.ERROR, error.message))
    span.set_attributes(attributes)


def monotonic() -> float:
    """The clock durations are measured with."""
    return time.monotonic()
