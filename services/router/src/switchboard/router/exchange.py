"""Serving one chat completion: route, upstream attempts in, reply frames and a usage event out.

Frame sequences (see :mod:`switchboard.common.wire`)::

    streamed        k* [s] (c k*)* t       or, on failure,  k* ([s] (c k*)+)? e
    not streamed    k* [s] r t             or, on failure,  k* e
    client left     (whatever was sent so far, then nothing)

``s`` only for edges that set ``accepts_started``; ``k`` frames appear only while nothing
else was published for the keepalive interval. Whatever happens, exactly one usage event
is recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import Span

from switchboard.common.chat import ChatCompletionRequest
from switchboard.common.errors import GatewayError, GatewayTimeoutError, ServiceUnavailableError
from switchboard.common.events import UsageRecorded, UsageStatus
from switchboard.common.logs import bind_context, get_logger
from switchboard.common.wire import ChatRequest, CompletionFinished, CompletionStarted
from switchboard.router.breaker import Breakers
from switchboard.router.config import RetryPolicy
from switchboard.router.cost import request_cost
from switchboard.router.dispatch import run_chain
from switchboard.router.ledger import CLIENT_CLOSED, Ledger
from switchboard.router.openrouter.client import OpenRouterClient
from switchboard.router.openrouter.errors import UpstreamCallError, UpstreamHTTPError
from switchboard.router.openrouter.payloads import UpstreamObject
from switchboard.router.openrouter.usage import UpstreamReport
from switchboard.router.reply import Reply, ReplyLostError, keepalive
from switchboard.router.routing import Candidate, Planner
from switchboard.router.telemetry import chat_span, observe_chat
from switchboard.router.transcript import TextPolicy

__all__ = ["ChatServices", "serve_chat", "upstream_body"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ChatServices:
    """What serving a chat completion needs, shared by every exchange of a replica."""

    planner: Planner
    clients: Mapping[str, OpenRouterClient]
    """One client per configured provider, by name."""
    breakers: Breakers
    retry: RetryPolicy
    record_usage: Callable[[UsageRecorded], Awaitable[None]]
    """Sends the request's usage event; awaited before the terminal frame, so the event is
    on the connection ahead of it (:meth:`UsagePublisher.publish`)."""
    slot: AbstractAsyncContextManager[Any]
    keepalive_interval: float
    usage_text: TextPolicy = field(default_factory=TextPolicy)
    """When usage events carry prompt and answer text (privacy mode ``full``)."""


def upstream_body(request: ChatCompletionRequest, *, model: str | None = None) -> dict[str, Any]:
    """The JSON body for the upstream: the client's request, unknown fields included.

    ``model`` replaces the requested one (an alias resolves to a concrete model) and
    OpenRouter's ``models`` array is dropped: the router walks the fallbacks itself. A
    stream always asks for the usage chunk: every token is metered.
    """
    body = request.model_dump(mode="json", exclude_unset=True, by_alias=True)
    if model is not None:
        body["model"] = model
    body.pop("models", None)
    if body.get("stream", False) is None:
        # ``null`` is "not streamed" here; say so by leaving it out (OpenRouter-like
        # upstreams refuse a null ``stream`` with a 400).
        del body["stream"]
    if request.wants_stream:
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body


class _Attempt:
    """Calls one candidate and publishes what it answers."""

    def __init__(
        self, envelope: ChatRequest, reply: Reply, services: ChatServices, ledger: Ledger
    ) -> None:
        self.envelope, self.reply, self.services, self.ledger = envelope, reply, services, ledger

    async def __call__(self, candidate: Candidate) -> CompletionFinished:
        request = self.envelope.request
        client = self.services.clients[candidate.provider.name]
        body = upstream_body(request, model=candidate.upstream_model)
        report = UpstreamReport()
        if request.wants_stream:
            async with client.stream(body, timeout=candidate.timeout) as chunks:
                async for chunk in chunks:
                    report.observe(chunk.data)
                    if chunk.is_usage_only and not request.wants_usage_chunk:
                        continue
                    await self._output(chunk, candidate, report)
        else:
            completion = await client.complete(body, timeout=candidate.timeout)
            report.observe(completion.data)
            await self._output(completion, candidate, report)
        return self._finished(candidate, report)

    async def _output(
        self, item: UpstreamObject, candidate: Candidate, report: UpstreamReport
    ) -> None:
        reply, ledger = self.reply, self.ledger
        if not reply.output_started:
            ledger.output_started()
            if self.envelope.accepts_started:
                await reply.started(
                    CompletionStarted(
                        request_id=self.envelope.request_id,
                        served_model=report.served_model or candidate.upstream_model,
                        provider=candidate.provider.name,
                        fallbacks=ledger.fallbacks,
                        retries=ledger.retries,
                    )
                )
        streamed = self.envelope.request.wants_stream
        if ledger.output is not None:
            ledger.output.add(item.data, streamed=streamed)
        if streamed:
            await reply.chunk(item.raw)
        else:
            await reply.response(item.raw)

    def _finished(self, candidate: Candidate, report: UpstreamReport) -> CompletionFinished:
        ledger = self.ledger
        ledger.served_model = report.served_model or candidate.upstream_model
        ledger.upstream_provider = report.provider
        ledger.usage = report.usage
        ledger.cost = request_cost(
            report.usage,
            reported=report.cost_usd,
            pricing=self.services.planner.pricing(candidate.model),
            reported_split=report.cost_split,
        )
        return CompletionFinished(
            request_id=self.envelope.request_id,
            served_model=ledger.served_model,
            provider=candidate.provider.name,
            upstream_provider=report.provider,
            usage=report.usage,
            cost_usd=ledger.cost.usd,
            cost_source=ledger.cost.source,
            chunks=self.reply.chunks,
            fallbacks=ledger.fallbacks,
            retries=ledger.retries,
        )


async def _serve(
    envelope: ChatRequest, reply: Reply, services: ChatServices, ledger: Ledger
) -> CompletionFinished:
    """The exchange up to (not including) its terminal frame; raises on failure."""
    remaining = envelope.deadline - time.time()
    if remaining <= 0:
        raise GatewayTimeoutError("The request's deadline passed before a router picked it up.")
    route = services.planner.plan(envelope.request, envelope.key)
    ledger.route = route
    loop = asyncio.get_running_loop()
    try:
        async with (
            asyncio.timeout(remaining) as deadline,
            keepalive(reply, services.keepalive_interval),
            services.slot,
        ):
            return await run_chain(
                route,
                _Attempt(envelope, reply, services, ledger),
                ledger=ledger,
                breakers=services.breakers,
                policy=services.retry,
                output_started=lambda: reply.output_started,
                deadline=loop.time() + remaining,
            )
    except TimeoutError:
        if not deadline.expired():
            raise
        raise GatewayTimeoutError(
            "The request's deadline passed before the answer was complete."
        ) from None


async def serve_chat(
    envelope: ChatRequest, reply: Reply, services: ChatServices, *, parent: Context | None = None
) -> None:
    """Serve ``envelope``, end ``reply`` with exactly one ``t`` or ``e`` frame, and record
    exactly one usage event, all within one span (a child of ``parent``, the trace context
    the request arrived with).

    Never raises except :class:`asyncio.CancelledError`: when the client left (the reply
    is silenced) nothing more is published; any other cancellation (shutdown) still
    tells the client with a 503 ``e`` frame.
    """
    with chat_span(envelope, parent) as span:
        await _serve_chat(envelope, reply, services, span)


async def _serve_chat(
    envelope: ChatRequest, reply: Reply, services: ChatServices, span: Span
) -> None:
    request = envelope.request
    bind_context(request_id=envelope.request_id, key_id=envelope.key.key_id, model=request.model)
    ledger = Ledger(envelope, text=services.usage_text)
    status: UsageStatus = "error"
    error: GatewayError | None = None
    http_status = 500
    recorded = False
    try:
        finished = await _serve(envelope, reply, services, ledger)
        status, http_status = "ok", 200
        # The event before the end frame: a router killed between the two has sent it.
        await services.record_usage(ledger.event(status, http_status, None))
        recorded = True
        await reply.finish(finished)
        await _let_frames_out()
    except asyncio.CancelledError:
        if reply.silenced:
            status, http_status = "cancelled", CLIENT_CLOSED
            log.info("chat.cancelled", latency_ms=ledger.elapsed_ms(), chunks=reply.chunks)
            raise
        log.warning("chat.interrupted", latency_ms=ledger.elapsed_ms(), chunks=reply.chunks)
        error = ServiceUnavailableError(
            "The router stopped before the answer was complete; retry the request.",
            code="router_shutdown",
        )
        await _fail_quietly(reply, error, ledger)
        raise
    except ReplyLostError as exc:
        log.warning("chat.reply_lost", latency_ms=ledger.elapsed_ms(), error=str(exc))
        error = ServiceUnavailableError("The reply could not be delivered.", code="reply_lost")
        return
    except UpstreamCallError as exc:
        error = _client_error(services, ledger, exc)
        failure = type(exc).__name__
        upstream_status = exc.status_code if isinstance(exc, UpstreamHTTPError) else None
    except GatewayError as exc:
        error, failure, upstream_status = exc, type(exc).__name__, None
    except Exception as exc:
        # A bug of ours: the client still gets a terminal frame instead of a timeout.
        log.exception("chat.crashed", latency_ms=ledger.elapsed_ms())
        error = GatewayError("The router failed to serve this request.")
        failure, upstream_status = type(exc).__name__, None
    else:
        _log_finished(ledger, finished)
        return
    finally:
        if error is not None:
            http_status = error.status
        if not recorded:
            await services.record_usage(ledger.event(status, http_status, error))
        observe_chat(
            span,
            ledger,
            http_status=http_status,
            error=error,
            seconds=ledger.elapsed_ms() / 1000,
        )
    log.info(
        "chat.failed",
        status=error.status,
        code=error.code,
        failure=failure,
        upstream_status=upstream_status,
        message=error.message,
        latency_ms=ledger.elapsed_ms(),
        chunks=reply.chunks,
        attempts=len(ledger.attempts),
    )
    await _fail_quietly(reply, error, ledger)


async def _let_frames_out() -> None:
    """Yield once, so that the connection's flusher writes the frames just published
    before the bookkeeping that follows (metrics, logs) runs: nats-py writes what was
    published only when the publishing task yields. The exchange is complete here, so a
    cancellation (the client left, a stop) changes nothing and is absorbed."""
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()


def _client_error(services: ChatServices, ledger: Ledger, exc: UpstreamCallError) -> GatewayError:
    candidate = ledger.candidate
    client = services.clients.get(candidate.provider.name) if candidate else None
    if client is None:  # pragma: no cover - an upstream failure always has a candidate
        return GatewayError("The upstream provider failed.")
    return client.to_gateway_error(exc)


def _log_finished(ledger: Ledger, finished: CompletionFinished) -> None:
    usage = finished.usage
    log.info(
        "chat.finished",
        status=200,
        latency_ms=ledger.elapsed_ms(),
        stream=ledger.envelope.request.wants_stream,
        chunks=finished.chunks,
        served_model=finished.served_model,
        provider=finished.provider,
        fallbacks=finished.fallbacks,
        retries=finished.retries,
        usage_prompt=usage.prompt_tokens if usage else None,
        usage_completion=usage.completion_tokens if usage else None,
        cost_usd=finished.cost_usd,
        cost_source=finished.cost_source,
    )


async def _fail_quietly(reply: Reply, error: GatewayError, ledger: Ledger) -> None:
    try:
        await reply.fail(
            error, model=ledger.model_tried, fallbacks=ledger.fallbacks, retries=ledger.retries
        )
    except ReplyLostError as exc:
        log.warning("chat.reply_lost", error=str(exc))
