"""``POST /v1/chat/completions``: authenticate, validate, hand to a router, relay the answer."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import orjson
from litestar import MediaType, Response, post
from litestar.response import Stream

from switchboard.common import subjects
from switchboard.common.chat import ChatCompletionRequest
from switchboard.common.errors import ErrorBody, ErrorDetail, GatewayError, UpstreamError
from switchboard.common.logs import bind_context, get_logger
from switchboard.common.telemetry import inject_headers
from switchboard.common.wire import (
    ChatRequest,
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    Frame,
    FrameKind,
    TokenUsage,
)
from switchboard.edge.auth import bearer_secret
from switchboard.edge.bus import Bus, ClientDisconnectedError, Exchange
from switchboard.edge.cache import CACHE_HEADER, CachedAnswer, ResponseCache
from switchboard.edge.disconnect import watch_disconnect
from switchboard.edge.errors import error_response
from switchboard.edge.gate import Admission
from switchboard.edge.lifespan import EdgeServices, HttpRequest, services_of
from switchboard.edge.observe import cache_hits, current_span
from switchboard.edge.requests import parse_chat_request
from switchboard.edge.usage_events import UsageEvents, gave_up_event

__all__ = ["chat_completions"]

log = get_logger(__name__)

_DONE = b"data: [DONE]\n\n"
_MODEL_HEADER = "x-switchboard-model"
_HEADER_SAFE = "/:@._-+~ "
_CLIENT_CLOSED = 499
"""The status of a request whose client left before its answer (nginx's convention)."""


def _served_by(headers: dict[str, str], model: str | None, fallbacks: int | None) -> None:
    """Name the model that served (or was last tried) and the fallbacks taken. The model
    is percent-encoded beyond printable ASCII: it comes from the client or an upstream, and
    CR, LF or a non-Latin-1 character in a header would break (or split) the response."""
    if model is not None:
        headers[_MODEL_HEADER] = quote(model, safe=_HEADER_SAFE)
    if fallbacks is not None:
        headers["x-switchboard-fallbacks"] = str(fallbacks)


@dataclass(slots=True)
class _Handed:
    """A request handed to the bus, and whether a router ended it.

    A router that ends a request (its ``t`` or ``e`` frame) publishes the usage event.
    When the edge gives up first (no router, NATS down, a router silent for
    ``EDGE_IDLE_TIMEOUT``, the deadline, frames it cannot follow), it publishes the event
    itself, so every admitted request is in the ledger. A client that leaves is not a
    give-up: the router hears the cancel and records it.
    """

    usage: UsageEvents
    envelope: ChatRequest
    started: CompletionStarted | None = None
    started_body: bytes | None = None
    """The started frame unparsed (a non-streamed answer needs it only if the edge gives up)."""
    output: bool = False
    """Some of the answer arrived (a chunk, or the response)."""
    ended: bool = False
    """A router sent its terminal frame, or the edge already published the event."""

    def end(self) -> None:
        """The router ended the request: the usage event is its to publish."""
        self.ended = True

    def give_up(self, error: GatewayError) -> None:
        """The edge ends the request with ``error``: publish its usage event (once)."""
        if self.ended:
            return
        self.ended = True
        log.warning("chat.gave_up", code=error.code, status=error.status)
        started = self.started
        if started is None and self.started_body is not None:
            started = CompletionStarted.model_validate_json(self.started_body)
        self.usage.publish(gave_up_event(self.envelope, error, started=started, output=self.output))


def _failure(frame: Frame, headers: dict[str, str]) -> GatewayError:
    """The router's error as an exception; what it tried goes into the response headers."""
    failed = CompletionFailed.model_validate_json(frame.body)
    _served_by(headers, failed.model or None, failed.fallbacks)
    return GatewayError(
        failed.error.message,
        param=failed.error.param,
        code=failed.error.code,
        status_code=failed.status,
        retry_after=failed.retry_after,
        error_type=failed.error.type,
    )


_Store = tuple[ResponseCache, str]
"""Where a cacheable answer goes once complete: the cache and its entry's key."""


async def _serve_cached(
    responses: ResponseCache,
    cached: CachedAnswer,
    chat: ChatCompletionRequest,
    admission: Admission,
    headers: dict[str, str],
    *,
    received_at: float,
) -> Response[bytes] | Stream:
    """Answer from the cache: no router, no cost; RPM was counted by the admission."""
    await admission.finish(
        CompletionFinished(
            request_id=admission.request_id,
            served_model=cached.served_model,
            provider=cached.provider,
            usage=TokenUsage(),
            cost_usd=0.0,
        )
    )
    responses.record_hit(
        request_id=admission.request_id,
        identity=admission.identity,
        chat=chat,
        answer=cached,
        received_at=received_at,
    )
    cache_hits.add(1)
    log.info("chat.cache_hit", key_id=admission.identity.key_id)
    headers[CACHE_HEADER] = "hit"
    _served_by(headers, cached.served_model, 0)
    if chat.wants_stream:
        headers["cache-control"] = "no-store"
        headers["x-accel-buffering"] = "no"
        # The whole replay in one write: nothing is gained by trickling a stored answer,
        # and one send per chunk made a streamed hit cost as much as a streamed miss.
        replay = b"".join(cached.sse(include_usage=chat.wants_usage_chunk))
        return Stream((replay,), media_type="text/event-stream", headers=headers)
    return Response(content=cached.completion(), media_type=MediaType.JSON, headers=headers)


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
    gate = services.gate
    authorization = request.headers.get("authorization")
    bearer_secret(authorization)  # a missing key is a 401 before the body is read
    ip = gate.client_ip(request.client.host if request.client else None, request.headers)
    try:
        chat = parse_chat_request(
            await request.body(),
            max_content_chars=settings.edge_max_content_chars,
            max_messages=settings.edge_max_messages,
            max_tools=settings.edge_max_tools,
        )
    except GatewayError:
        await gate.authenticate(authorization, ip)  # a bad key is a 401, not a 400
        raise
    request_id = "req_" + secrets.token_hex(12)
    admission = await gate.admit(authorization, ip, chat, request_id)
    identity = admission.identity
    bind_context(request_id=request_id, key_id=identity.key_id, model=chat.model)
    current_span().set_attributes(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": chat.model,
            "switchboard.request_id": request_id,
            "switchboard.key_id": identity.key_id,
        }
    )
    headers = {"x-request-id": request_id, **admission.headers}
    received_at = time.time()
    handed: _Handed | None = None
    try:
        responses = services.responses
        cache_key = responses.key_for(chat, request.headers, identity.key_id)
        headers[CACHE_HEADER] = "bypass" if cache_key is None else "miss"
        if cache_key is not None:
            cached = await responses.get(cache_key)
            if cached is not None:
                return await _serve_cached(
                    responses, cached, chat, admission, headers, received_at=received_at
                )
        now = time.time()
        envelope = ChatRequest(
            request_id=request_id,
            key=identity,
            received_at=now,
            deadline=now + settings.edge_request_timeout,
            request=chat,
            accepts_started=chat.wants_stream,  # a completion's end frame says it all
        )
        payload = envelope.encode()
        deadline = asyncio.get_running_loop().time() + settings.edge_request_timeout
        handed = _Handed(services.usage, envelope)
        exchange = await services.bus.open(
            subjects.CHAT_REQUEST, payload, deadline=deadline, headers=inject_headers()
        )
        store = (responses, cache_key) if cache_key is not None else None
        if chat.wants_stream:
            return await _stream(services, exchange, admission, headers, store=store, handed=handed)
        return await _complete(
            services.bus, request, exchange, admission, headers, store=store, handed=handed
        )
    except GatewayError as exc:
        if handed is not None:
            handed.give_up(exc)
        admission.abandon(consumed=False)
        return error_response(exc.detail, exc.status, retry_after=exc.retry_after, headers=headers)
    except ClientDisconnectedError:
        admission.abandon(consumed=False)
        # Nobody reads it; the status is what metrics and logs record (nginx's convention).
        return Response(content=b"", status_code=_CLIENT_CLOSED, headers=headers)
    except BaseException:
        admission.abandon(consumed=False)
        raise


async def _complete(
    bus: Bus,
    request: HttpRequest,
    exchange: Exchange,
    admission: Admission,
    headers: dict[str, str],
    *,
    store: _Store | None,
    handed: _Handed,
) -> Response[bytes]:
    """Wait for the whole answer; if the client leaves first, cancel the upstream call."""
    unwatch = watch_disconnect(request.scope, request.receive, exchange.interrupt)
    try:
        body, finished = await _collect(exchange, headers, handed)
    except ClientDisconnectedError:
        bus.cancel(headers["x-request-id"])
        log.info("chat.client_disconnected", key_id=admission.identity.key_id)
        raise
    except BaseException:
        if not handed.ended:  # the edge gave up on the router: stop it, if it still runs
            bus.cancel(headers["x-request-id"])
        raise
    finally:
        unwatch()
        exchange.close()
    await admission.finish(finished)
    if store is not None:
        await store[0].store(store[1], CachedAnswer.of(finished, body=body))
    _served_by(headers, finished.served_model, finished.fallbacks)
    return Response(content=body, media_type=MediaType.JSON, headers=headers)


async def _collect(
    exchange: Exchange, headers: dict[str, str], handed: _Handed
) -> tuple[bytes, CompletionFinished]:
    body: bytes | None = None
    async for frame in exchange:
        if frame.kind is FrameKind.STARTED:
            handed.started_body = frame.body  # the end frame says the same and more
        elif frame.kind is FrameKind.RESPONSE:
            body = frame.body
            handed.output = True
        elif frame.kind is FrameKind.END and body is not None:
            handed.end()
            return body, CompletionFinished.model_validate_json(frame.body)
        elif frame.kind is FrameKind.ERROR:
            handed.end()
            raise _failure(frame, headers)
        else:
            raise _unexpected_frame(frame)
    raise UpstreamError("The router ended the exchange without an answer.", code="protocol_error")


async def _stream(
    services: EdgeServices,
    exchange: Exchange,
    admission: Admission,
    headers: dict[str, str],
    *,
    store: _Store | None,
    handed: _Handed,
) -> Stream:
    """Start the SSE response once the first chunk is there.

    An error before the first chunk is an ordinary HTTP error (status and JSON body); after
    it, the stream ends with an error event and ``[DONE]``.
    """
    request_id = admission.request_id
    try:
        first = await anext(exchange)
        if first.kind is FrameKind.STARTED:
            handed.started = CompletionStarted.model_validate_json(first.body)
            first = await anext(exchange)
        if first.kind is FrameKind.ERROR:
            handed.end()
            raise _failure(first, headers)
        if first.kind is not FrameKind.CHUNK:
            raise _unexpected_frame(first)
    except BaseException:
        exchange.close()
        services.bus.cancel(request_id)
        raise
    handed.output = True
    started = handed.started
    if started is not None:
        _served_by(headers, started.served_model, started.fallbacks)
    else:  # a router that predates the started frame
        model = orjson.loads(first.body).get("model")
        _served_by(headers, model if isinstance(model, str) else None, None)
    headers["cache-control"] = "no-store"
    headers["x-accel-buffering"] = "no"
    return Stream(
        _relay(services.bus, exchange, admission, first, store=store, handed=handed),
        media_type="text/event-stream",
        headers=headers,
    )


async def _relay(
    bus: Bus,
    exchange: Exchange,
    admission: Admission,
    first: Frame,
    *,
    store: _Store | None,
    handed: _Handed,
) -> AsyncIterator[bytes]:
    """Write chunks as they arrive, framing them as SSE without parsing them.

    The end frame's usage and cost are charged before ``[DONE]`` goes out, so a client
    that sends its next request after ``[DONE]`` is judged with this one counted.
    """
    finished = False
    chunks = 1
    kept = [first.body] if store is not None else None
    try:
        yield b"data: " + first.body + b"\n\n"
        async for frame in exchange:
            if frame.kind is FrameKind.CHUNK:
                chunks += 1
                if kept is not None:
                    kept.append(frame.body)
                yield b"data: " + frame.body + b"\n\n"
            elif frame.kind is FrameKind.END:
                finished = True
                handed.end()
                report = CompletionFinished.model_validate_json(frame.body)
                await admission.finish(report)
                if report.chunks != chunks:
                    log.error("chat.chunks_lost", expected=report.chunks, received=chunks)
                    yield _sse_error(
                        UpstreamError(
                            "Part of the stream was lost between gateway services.",
                            code="stream_incomplete",
                        ).detail
                    )
                    return
                if store is not None:
                    await store[0].store(store[1], CachedAnswer.of(report, chunks=kept))
                yield _DONE
                return
            elif frame.kind is FrameKind.ERROR:
                finished = True
                handed.end()
                admission.abandon(consumed=True)
                yield _sse_error(_failure(frame, {}).detail)
                return
            else:
                raise _unexpected_frame(frame)
    except GatewayError as exc:
        log.warning("chat.stream_failed", code=exc.code)
        handed.give_up(exc)
        yield _sse_error(exc.detail)
    finally:
        exchange.close()
        admission.abandon(consumed=True)
        if not finished:
            bus.cancel(admission.request_id)
