"""The edge's telemetry: one server span and the HTTP metrics per request, ``x-trace-id``.

:func:`observed` wraps the whole ASGI application (unmatched routes included). The span
ends, and the duration is measured, when the last byte of the response went out, so a
streamed completion counts whole. The span is current while the application runs: the
chat route's NATS publish carries it to the router, and every log line carries its id.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from switchboard.common.telemetry import DURATION_BUCKETS, meter, trace_id_of, tracer

__all__ = ["RATE_LIMIT_LAYERS", "cache_hits", "observed", "rate_limit_rejections"]

_meter = meter("switchboard.edge")
http_requests = _meter.create_counter(
    "switchboard_http_requests", description="HTTP requests answered by the edge."
)
http_duration = _meter.create_histogram(
    "switchboard_http_request_duration",
    unit="s",
    description="Time from request to the last byte of the response.",
    explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
)
cache_hits = _meter.create_counter(
    "switchboard_cache_hits", description="Chat completions answered from the response cache."
)
rate_limit_rejections = _meter.create_counter(
    "switchboard_ratelimit_rejections", description="Requests refused by a limit, by layer."
)
RATE_LIMIT_LAYERS: Final = ("rpm", "tpm", "concurrency", "ip", "auth_guard", "quota")

_UNMATCHED = "unmatched"

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def _prime() -> None:
    """Export every series at 0 from the start, so that ``rate()`` sees the first event."""
    cache_hits.add(0)
    for layer in RATE_LIMIT_LAYERS:
        rate_limit_rejections.add(0, {"layer": layer})


def observed(app: ASGIApp) -> ASGIApp:
    """``app`` with a span, ``x-trace-id`` and the HTTP metrics on every HTTP request."""
    _prime()
    spans = tracer("switchboard.edge")

    async def wrapper(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        method = scope["method"]
        started = time.perf_counter()
        status = 500
        ended = False
        with spans.start_as_current_span(
            f"{method} {scope['path']}", kind=SpanKind.SERVER, end_on_exit=False
        ) as span:
            trace_id = trace_id_of(span)

            def finish() -> None:
                nonlocal ended
                if ended:
                    return
                ended = True
                route = scope.get("path_template") or _UNMATCHED
                attributes = {"route": route, "method": method, "status": str(status)}
                http_requests.add(1, attributes)
                http_duration.record(time.perf_counter() - started, attributes)
                span.update_name(f"{method} {route}")
                span.set_attributes(
                    {
                        "http.request.method": method,
                        "http.route": route,
                        "http.response.status_code": status,
                        "url.path": scope["path"],
                    }
                )
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                span.end()

            async def send_observed(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    if trace_id is not None:
                        headers = list(message.get("headers") or [])
                        headers.append((b"x-trace-id", trace_id.encode()))
                        message = {**message, "headers": headers}
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    finish()

            try:
                await app(scope, receive, send_observed)
            finally:
                finish()

    return wrapper


def current_span() -> trace.Span:
    """The span of the request being handled (a no-op span outside one)."""
    return trace.get_current_span()
