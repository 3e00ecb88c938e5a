"""``POST /v1/chat/completions``: authenticate, validate, hand to a router, relay the answer."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import orjson
from litestar import MediaType, Response, post
from litestar.response import Stream

from switchboard.common import subjects
from switchboard.common.errors import ErrorBody, ErrorDetail, GatewayError, UpstreamError
from switchboard.common.logs import bind_context, get_logger
from switchboard.common.wire import (
    ChatRequest,
    CompletionFailed,
    CompletionFinished,
    Frame,
    FrameKind,
    KeyIdentity,
)
from switchboard.edge.auth import authenticate
from switchboard.edge.bus import Bus, Exchange
from switchboard.edge.lifespan import EdgeServices, HttpRequest, services_of
from switchboard.edge.requests import parse_chat_request

__all__ = ["chat_completions"]

log = get_logger(__name__)

_DONE = b"data: [DONE]\n\n"


def _failure(frame: Frame) -> GatewayError:
    failed = CompletionFailed.model_validate_json(frame.body)
    return GatewayError(
        failed.error.message,
        param=failed.error.param,
        code=failed.error.code,
        status_code=failed.status,
        retry_after=failed.retry_after,
        error_type=failed.error.type,
    )


def _sse_error(detail: ErrorDetail) -> bytes:
    return b"data: " + ErrorBody(error=detail).model_dump_json().encode() + b"\n\n" + _DONE


def _unexpected_frame(frame: Frame) -> UpstreamError:
    return UpstreamError(
        f"The router sent an unexpected {frame.kind.name} frame.", code="protocol_error"
    )


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: HttpRequest) -> Response[bytes] | Stream:
    """Create a chat completion, streamed (SSE) or not, in OpenAI's format."""
    services = services_of(request.app)
    settings = services.settings
    identity = await authenticate(services.keys, request.headers.get("authorization"))
    chat = parse_chat_request(
        await request.body(), max_content_chars=settings.edge_max_content_chars
    )
    request_id = "req_" + secrets.token_hex(12)
    bind_context(request_id=request_id, key_id=identity.key_id, model=chat.model)
    now = time.time()
    envelope = ChatRequest(
        request_id=request_id,
        key=identity,
        received_at=now,
        deadline=now + settings.edge_request_timeout,
        request=chat,
    )
    payload = envelope.encode()
    deadline = asyncio.get_running_loop().time() + settings.edge_request_timeout
    exchange = await services.bus.open(subjects.CHAT_REQUEST, payload, deadline=deadline)
    headers = {"x-request-id": request_id}
    if chat.wants_stream:
        return await _stream(services, exchange, request_id, headers)
    return await _complete(services.bus, request, exchange, identity, headers)


async def _complete(
    bus: Bus,
    request: HttpRequest,
    exchange: Exchange,
    identity: KeyIdentity,
    headers: dict[str, str],
) -> Response[bytes]:
    """Wait for the whole answer; if the client leaves first, cancel the upstream call."""
    collect = asyncio.ensure_future(_collect(exchange))
    disconnect = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait((collect, disconnect), return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect.cancel()
        if not collect.done():
            collect.cancel()
            bus.cancel(headers["x-request-id"])
            log.info("chat.client_disconnected", key_id=identity.key_id)
        exchange.close()
    body, finished = collect.result()
    headers["x-switchboard-model"] = finished.served_model
    return Response(content=body, media_type=MediaType.JSON, headers=headers)


async def _collect(exchange: Exchange) -> tuple[bytes, CompletionFinished]:
    body: bytes | None = None
    async for frame in exchange:
        if frame.kind is FrameKind.RESPONSE:
            body = frame.body
        elif frame.kind is FrameKind.END and body is not None:
            return body, CompletionFinished.model_validate_json(frame.body)
        elif frame.kind is FrameKind.ERROR:
            raise _failure(frame)
        else:
            raise _unexpected_frame(frame)
    raise UpstreamError("The router ended the exchange without an answer.", code="protocol_error")


async def _wait_for_disconnect(request: HttpRequest) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(
    services: EdgeServices, exchange: Exchange, request_id: str, headers: dict[str, str]
) -> Stream:
    """Start the SSE response once the first chunk is there.

    An error before the first chunk is an ordinary HTTP error (status and JSON body); after
    it, the stream ends with an error event and ``[DONE]``.
    """
    try:
        first = await anext(exchange)
        if first.kind is FrameKind.ERROR:
            raise _failure(first)
        if first.kind is not FrameKind.CHUNK:
            raise _unexpected_frame(first)
    except BaseException:
        exchange.close()
        services.bus.cancel(request_id)
        raise
    model = orjson.loads(first.body).get("model")
    if isinstance(model, str):
        headers["x-switchboard-model"] = model
    headers["cache-control"] = "no-store"
    headers["x-accel-buffering"] = "no"
    return Stream(
        _relay(services.bus, exchange, request_id, first),
        media_type="text/event-stream",
        headers=headers,
    )


async def _relay(
    bus: Bus, exchange: Exchange, request_id: str, first: Frame
) -> AsyncIterator[bytes]:
    """Write chunks as they arrive, framing them as SSE without parsing them."""
    finished = False
    chunks = 1
    try:
        yield b"data: " + first.body + b"\n\n"
        async for frame in exchange:
            if frame.kind is FrameKind.CHUNK:
                chunks += 1
                yield b"data: " + frame.body + b"\n\n"
            elif frame.kind is FrameKind.END:
                finished = True
                expected = CompletionFinished.model_validate_json(frame.body).chunks
                if expected != chunks:
                    log.error("chat.chunks_lost", expected=expected, received=chunks)
                    yield _sse_error(
                        UpstreamError(
                            "Part of the stream was lost between gateway services.",
                            code="stream_incomplete",
                        ).detail
                    )
                    return
                yield _DONE
                return
            elif frame.kind is FrameKind.ERROR:
                finished = True
                yield _sse_error(_failure(frame).detail)
                return
            else:
                raise _unexpected_frame(frame)
    except GatewayError as exc:
        log.warning("chat.stream_failed", code=exc.code)
        yield _sse_error(exc.detail)
    finally:
        exchange.close()
        if not finished:
            bus.cancel(request_id)
