"""Serving one chat completion: upstream call in, reply frames out.

Frame sequences (see :mod:`switchboard.common.wire`)::

    streamed        k* (c k*)* t       or, on failure,  k* (c k*)* e
    not streamed    k* r t             or, on failure,  k* e
    client left     (whatever was sent so far, then nothing)

``k`` frames appear only while nothing else was published for the keepalive interval.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

from switchboard.common.chat import ChatCompletionRequest
from switchboard.common.errors import GatewayError, GatewayTimeoutError, ServiceUnavailableError
from switchboard.common.logs import bind_context, get_logger
from switchboard.common.wire import ChatRequest, CompletionFinished
from switchboard.router.openrouter.client import OpenRouterClient
from switchboard.router.openrouter.errors import UpstreamCallError, UpstreamHTTPError
from switchboard.router.openrouter.usage import UpstreamReport
from switchboard.router.reply import Reply, ReplyLostError, keepalive

__all__ = ["serve_chat", "upstream_body"]

log = get_logger(__name__)


def upstream_body(request: ChatCompletionRequest) -> dict[str, Any]:
    """The JSON body for the upstream: the client's request, unknown fields included.

    A stream always asks for the usage chunk: every token is metered, whether or not the
    client wants to see the count.
    """
    body = request.model_dump(mode="json", exclude_unset=True, by_alias=True)
    if request.wants_stream:
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body


async def _stream(
    envelope: ChatRequest, reply: Reply, upstream: OpenRouterClient
) -> CompletionFinished:
    request = envelope.request
    report = UpstreamReport()
    async with upstream.stream(upstream_body(request)) as chunks:
        async for chunk in chunks:
            report.observe(chunk.data)
            if chunk.is_usage_only and not request.wants_usage_chunk:
                continue
            await reply.chunk(chunk.raw)
    return report.finished(envelope.request_id, requested_model=request.model, chunks=reply.chunks)


async def _complete(
    envelope: ChatRequest, reply: Reply, upstream: OpenRouterClient
) -> CompletionFinished:
    request = envelope.request
    completion = await upstream.complete(upstream_body(request))
    report = UpstreamReport()
    report.observe(completion.data)
    await reply.response(completion.raw)
    return report.finished(envelope.request_id, requested_model=request.model, chunks=0)


async def _serve(
    envelope: ChatRequest,
    reply: Reply,
    upstream: OpenRouterClient,
    *,
    slot: AbstractAsyncContextManager[Any],
    keepalive_interval: float,
) -> CompletionFinished:
    """The exchange up to (not including) its terminal frame; raises on failure."""
    remaining = envelope.deadline - time.time()
    if remaining <= 0:
        raise GatewayTimeoutError("The request's deadline passed before a router picked it up.")
    try:
        async with (
            asyncio.timeout(remaining) as deadline,
            keepalive(reply, keepalive_interval),
            slot,
        ):
            if envelope.request.wants_stream:
                return await _stream(envelope, reply, upstream)
            return await _complete(envelope, reply, upstream)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise GatewayTimeoutError(
            "The request's deadline passed before the answer was complete."
        ) from None


async def serve_chat(
    envelope: ChatRequest,
    reply: Reply,
    upstream: OpenRouterClient,
    *,
    slot: AbstractAsyncContextManager[Any],
    keepalive_interval: float,
) -> None:
    """Serve ``envelope`` and end ``reply`` with exactly one ``t`` or ``e`` frame.

    Never raises except :class:`asyncio.CancelledError`: when the client left (the reply
    is silenced) nothing more is published; any other cancellation (shutdown) still
    tells the client with a 503 ``e`` frame.
    """
    request = envelope.request
    bind_context(request_id=envelope.request_id, key_id=envelope.key.key_id, model=request.model)
    started = time.monotonic()

    def elapsed_ms() -> int:
        return round((time.monotonic() - started) * 1000)

    error: GatewayError
    upstream_status: int | None = None
    try:
        finished = await _serve(
            envelope, reply, upstream, slot=slot, keepalive_interval=keepalive_interval
        )
        await reply.finish(finished)
    except asyncio.CancelledError:
        if reply.silenced:
            log.info("chat.cancelled", latency_ms=elapsed_ms(), chunks=reply.chunks)
            raise
        log.warning("chat.interrupted", latency_ms=elapsed_ms(), chunks=reply.chunks)
        error = ServiceUnavailableError(
            "The router stopped before the answer was complete; retry the request.",
            code="router_shutdown",
        )
        await _fail_quietly(reply, error)
        raise
    except ReplyLostError as exc:
        log.warning("chat.reply_lost", latency_ms=elapsed_ms(), error=str(exc))
        return
    except UpstreamCallError as exc:
        error = upstream.to_gateway_error(exc)
        upstream_status = exc.status_code if isinstance(exc, UpstreamHTTPError) else None
        failure = type(exc).__name__
    except GatewayError as exc:
        error, failure = exc, type(exc).__name__
    except Exception as exc:
        # A bug of ours: the client still gets a terminal frame instead of a timeout.
        log.exception("chat.crashed", latency_ms=elapsed_ms())
        error = GatewayError("The router failed to serve this request.")
        failure = type(exc).__name__
    else:
        log.info(
            "chat.finished",
            status=200,
            latency_ms=elapsed_ms(),
            stream=request.wants_stream,
            chunks=finished.chunks,
            served_model=finished.served_model,
            provider=finished.provider,
            usage_prompt=finished.usage.prompt_tokens if finished.usage else None,
            usage_completion=finished.usage.completion_tokens if finished.usage else None,
            cost_usd=finished.cost_usd,
        )
        return
    log.info(
        "chat.failed",
        status=error.status,
        code=error.code,
        failure=failure,
        upstream_status=upstream_status,
        message=error.message,
        latency_ms=elapsed_ms(),
        chunks=reply.chunks,
    )
    await _fail_quietly(reply, error)


async def _fail_quietly(reply: Reply, error: GatewayError) -> None:
    try:
        await reply.fail(error)
    except ReplyLostError as exc:
        log.warning("chat.reply_lost", error=str(exc))
