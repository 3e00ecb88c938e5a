"""One chat completion end to end against a mocked upstream: the frames it produces."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from switchboard.common.wire import ChatRequest, CompletionFailed, CompletionFinished, FrameKind
from switchboard.router.exchange import serve_chat, upstream_body
from switchboard.router.openrouter.client import OpenRouterClient
from switchboard.router.reply import Reply

SSE = {"content-type": "text/event-stream"}
MODEL = "openai/gpt-4o-mini"
USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 3,
    "total_tokens": 13,
    "cost": 0.0005,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 1},
}
COMPLETION = orjson.dumps(
    {
        "id": "gen-1",
        "provider": "OpenAI",
        "model": MODEL,
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}
        ],
        "usage": USAGE,
    }
)


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "id": "gen-1",
            "provider": "OpenAI",
            "model": MODEL,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
    )


CHUNKS = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}), chunk({}, "stop")]
USAGE_CHUNK = orjson.dumps(
    {"id": "gen-1", "model": MODEL, "provider": "OpenAI", "choices": [], "usage": USAGE}
)


def sse(*payloads: bytes, done: bool = True) -> bytes:
    body = b": OPENROUTER PROCESSING\n\n" + b"".join(b"data: " + p + b"\n\n" for p in payloads)
    return body + (b"data: [DONE]\n\n" if done else b"")


class Upstream:
    """A scripted upstream: records request bodies, answers with ``respond``."""

    def __init__(self, respond: Callable[[dict[str, Any]], Any]) -> None:
        self.respond = respond
        self.bodies: list[dict[str, Any]] = []

    async def handler(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        self.bodies.append(body)
        result = self.respond(body)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, httpx.Response)
        return result


@pytest.fixture
def run(
    fake_nats: Any, make_settings: Callable[..., Any], make_services: Callable[..., Any]
) -> Callable[..., Any]:
    """Serve one envelope against ``upstream``; returns the reply (frames in fake_nats)."""

    async def run_exchange(
        envelope: ChatRequest,
        upstream: Upstream,
        *,
        keepalive_interval: float = 5.0,
        slot: asyncio.Semaphore | None = None,
    ) -> Reply:
        async with OpenRouterClient.open(
            make_settings(), transport=httpx.MockTransport(upstream.handler)
        ) as client:
            reply = Reply(fake_nats, "_INBOX.test.1", envelope.request_id)
            await asyncio.create_task(
                serve_chat(
                    envelope,
                    reply,
                    make_services(client, slot=slot, keepalive_interval=keepalive_interval),
                )
            )
            return reply

    return run_exchange


def finished(fake_nats: Any) -> CompletionFinished:
    frame = fake_nats.frames[-1]
    assert frame.kind is FrameKind.END
    return CompletionFinished.model_validate_json(frame.body)


def failed(fake_nats: Any) -> CompletionFailed:
    frame = fake_nats.frames[-1]
    assert frame.kind is FrameKind.ERROR
    return CompletionFailed.model_validate_json(frame.body)


# --------------------------------------------------------------------------- upstream body


def test_upstream_body_forwards_what_the_client_sent(
    make_envelope: Callable[..., ChatRequest],
) -> None:
    envelope = make_envelope(
        provider={"order": ["OpenAI"]},
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}},
        },
    )
    body = upstream_body(envelope.request)
    assert body == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello there"}],
        "provider": {"order": ["OpenAI"]},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}},
        },
    }


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (None, {"include_usage": True}),
        ({"include_usage": False}, {"include_usage": True}),
        ({"include_obfuscation": False}, {"include_obfuscation": False, "include_usage": True}),
    ],
)
def test_streams_always_ask_for_usage(
    make_envelope: Callable[..., ChatRequest],
    options: dict[str, Any] | None,
    expected: dict[str, Any],
) -> None:
    extra = {} if options is None else {"stream_options": options}
    body = upstream_body(make_envelope(stream=True, **extra).request)
    assert body["stream"] is True
    assert body["stream_options"] == expected


def test_a_null_stream_is_left_out(make_envelope: Callable[..., ChatRequest]) -> None:
    body = upstream_body(make_envelope(stream=None).request)
    assert "stream" not in body
    assert "stream_options" not in body


# ---------------------------------------------------------------------------- non-streamed


async def test_non_streamed(run: Any, fake_nats: Any, make_envelope: Any) -> None:
    upstream = Upstream(lambda _body: httpx.Response(200, content=COMPLETION))
    envelope = make_envelope()
    await run(envelope, upstream)
    assert fake_nats.kinds == "rt"
    assert fake_nats.frames[0].body == COMPLETION
    end = finished(fake_nats)
    assert end.request_id == envelope.request_id
    assert (end.served_model, end.provider, end.cost_usd, end.chunks) == (
        MODEL,
        "openrouter",
        0.0005,
        0,
    )
    assert (end.upstream_provider, end.cost_source) == ("OpenAI", "upstream")
    assert end.usage is not None
    assert (end.usage.cached_tokens, end.usage.reasoning_tokens, end.usage.total_tokens) == (
        4,
        1,
        13,
    )
    assert "stream_options" not in upstream.bodies[0]


async def test_non_streamed_error(run: Any, fake_nats: Any, make_envelope: Any) -> None:
    upstream = Upstream(
        lambda _body: httpx.Response(
            429, json={"error": {"message": "busy"}}, headers={"Retry-After": "4"}
        )
    )
    await run(make_envelope(), upstream)
    assert fake_nats.kinds == "e"
    error = failed(fake_nats)
    assert (error.status, error.retry_after, error.error.code, error.chunks) == (
        429,
        4.0,
        "rate_limit_exceeded",
        0,
    )


async def test_keepalive_while_the_upstream_thinks(
    run: Any, fake_nats: Any, make_envelope: Any
) -> None:
    async def slow(body: dict[str, Any]) -> httpx.Response:
        await asyncio.sleep(0.25)
        return httpx.Response(200, content=COMPLETION)

    await run(make_envelope(), Upstream(slow), keepalive_interval=0.1)
    assert fake_nats.kinds == "kkrt"


# ---------------------------------------------------------------------------------- streams


async def test_stream_hides_the_usage_chunk_the_client_did_not_ask_for(
    run: Any, fake_nats: Any, make_envelope: Any
) -> None:
    upstream = Upstream(
        lambda _body: httpx.Response(200, content=sse(*CHUNKS, USAGE_CHUNK), headers=SSE)
    )
    await run(make_envelope(stream=True), upstream)
    assert upstream.bodies[0]["stream_options"] == {"include_usage": True}
    assert fake_nats.kinds == "ccct"
    assert [frame.body for frame in fake_nats.frames[:3]] == CHUNKS
    end = finished(fake_nats)
    assert end.chunks == 3
    assert end.usage is not None
    assert end.usage.prompt_tokens == 10
    assert end.cost_usd == 0.0005


async def test_stream_forwards_the_usage_chunk_when_asked(
    run: Any, fake_nats: Any, make_envelope: Any
) -> None:
    upstream = Upstream(
        lambda _body: httpx.Response(200, content=sse(*CHUNKS, USAGE_CHUNK), headers=SSE)
    )
    await run(make_envelope(stream=True, stream_options={"include_usage": True}), upstream)
    assert fake_nats.kinds == "cccct"
    assert fake_nats.frames[3].body == USAGE_CHUNK
    assert finished(fake_nats).chunks == 4


async def test_stream_without_usage_from_the_upstream(
    run: Any, fake_nats: Any, make_envelope: Any
) -> None:
    upstream = Upstream(lambda _body: httpx.Response(200, content=sse(*CHUNKS), headers=SSE))
    await run(make_envelope(stream=True), upstream)
    end = finished(fake_nats)
    assert end.usage is None
    assert end.cost_usd is None


async def test_stream_error_before_any_chunk(run: Any, fake_nats: Any, make_envelope: Any) -> None:
    upstream = Upstream(lambda _body: httpx.Response(500, json={"error": {"message": "boom"}}))
    await run(make_envelope(stream=True), upstream)
    assert fake_nats.kinds == "e"
    error = failed(fake_nats)
    assert (error.status, error.error.type, error.error.code) == (
        502,
        "api_error",
        "upstream_error",
    )


async def test_mid_stream_error_event_is_not_forwarded(
    run: Any, fake_nats: Any, make_envelope: Any
) -> None:
    error_event = orjson.dumps(
        {
            "id": "gen-1",
            "model": MODEL,
            "error": {"code": 502, "message": "Provider returned error"},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        }
    )
    upstream = Upstream(
        lambda _body: httpx.Response(
            200, content=sse(*CHUNKS[:2], error_event, done=False), headers=SSE
        )
    )
    await run(make_envelope(stream=True), upstream)
    assert fake_nats.kinds == "cce"
    error = failed(fake_nats)
    assert error.status == 502
    assert error.chunks == 2
    assert (error.error.message, error.error.type, error.error.code) == (
        "Provider returned error",
        "api_error",
        "upstream_error",
    )


async def test_mid_stream_disconnect(run: Any, fake_nats: Any, make_envelope: Any) -> None:
    async def cut() -> AsyncIterator[bytes]:
        yield b"data: " + CHUNKS[0] + b"\n\n"
        raise httpx.RemoteProtocolError("peer closed connection")

    upstream = Upstream(lambda _body: httpx.Response(200, content=cut(), headers=SSE))
    await run(make_envelope(stream=True), upstream)
    assert fake_nats.kinds == "ce"
    error = failed(fake_nats)
    assert (error.status, error.error.code, error.chunks) == (502, "upstream_error", 1)


async def test_keepalive_between_slow_chunks(run: Any, fake_nats: Any, make_envelope: Any) -> None:
    async def slow() -> AsyncIterator[bytes]:
        yield b": OPENROUTER PROCESSING\n\n"
        await asyncio.sleep(0.25)
        yield b"data: " + CHUNKS[0] + b"\n\n"
        await asyncio.sleep(0.25)
        yield b"data: " + CHUNKS[2] + b"\n\ndata: [DONE]\n\n"

    upstream = Upstream(lambda _body: httpx.Response(200, content=slow(), headers=SSE))
    await run(make_envelope(stream=True), upstream, keepalive_interval=0.1)
    assert fake_nats.kinds == "kkckkct"
    assert finished(fake_nats).chunks == 2


# ------------------------------------------------------------------------------- deadlines


async def test_deadline_already_passed(run: Any, fake_nats: Any, make_envelope: Any) -> None:
    upstream = Upstream(lambda _body: httpx.Response(200, content=COMPLETION))
    await run(make_envelope(deadline_in=-1), upstream)
    assert upstream.bodies == []
    error = failed(fake_nats)
    assert (error.status, error.error.code) == (504, "timeout")


async def test_deadline_passes_mid_stream(run: Any, fake_nats: Any, make_envelope: Any) -> None:
    async def endless() -> AsyncIterator[bytes]:
        yield b"data: " + CHUNKS[0] + b"\n\n"
        await asyncio.sleep(10)

    upstream = Upstream(lambda _body: httpx.Response(200, content=endless(), headers=SSE))
    started = time.monotonic()
    await run(make_envelope(stream=True, deadline_in=0.2), upstream)
    assert time.monotonic() - started < 1
    assert fake_nats.kinds == "ce"
    error = failed(fake_nats)
    assert (error.status, error.error.code, error.chunks) == (504, "timeout", 1)


async def test_waiting_for_a_slot_counts_against_the_deadline(
    run: Any, fake_nats: Any, make_envelope: Any
) -> None:
    slot = asyncio.Semaphore(0)  # never free
    upstream = Upstream(lambda _body: httpx.Response(200, content=COMPLETION))
    await run(make_envelope(deadline_in=0.1), upstream, slot=slot)
    assert upstream.bodies == []
    assert failed(fake_nats).status == 504


# ---------------------------------------------------------------------------- cancellation


async def test_client_cancel_publishes_nothing_more(
    fake_nats: Any, make_settings: Any, make_envelope: Any, make_services: Any
) -> None:
    closed = asyncio.Event()

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"data: " + CHUNKS[0] + b"\n\n"
            await asyncio.sleep(10)
            yield b""

        async def aclose(self) -> None:
            closed.set()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Endless(), headers=SSE)

    envelope = make_envelope(stream=True)
    async with OpenRouterClient.open(
        make_settings(), transport=httpx.MockTransport(handler)
    ) as client:
        reply = Reply(fake_nats, "inbox", envelope.request_id)
        task = asyncio.create_task(
            serve_chat(envelope, reply, make_services(client, keepalive_interval=0.05))
        )
        while reply.chunks == 0:  # noqa: ASYNC110 - polling a plain counter
            await asyncio.sleep(0.01)
        reply.silence()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)
    assert closed.is_set()
    assert fake_nats.kinds == "c"


async def test_shutdown_cancel_tells_the_client(
    fake_nats: Any, make_settings: Any, make_envelope: Any, make_services: Any
) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    envelope = make_envelope()
    async with OpenRouterClient.open(
        make_settings(), transport=httpx.MockTransport(hang)
    ) as client:
        reply = Reply(fake_nats, "inbox", envelope.request_id)
        task = asyncio.create_task(
            serve_chat(envelope, reply, make_services(client, keepalive_interval=5))
        )
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    error = failed(fake_nats)
    assert (error.status, error.error.code) == (503, "router_shutdown")


# ------------------------------------------------------------------------------ our faults


async def test_lost_reply_ends_quietly(
    make_settings: Any, make_envelope: Any, make_services: Any
) -> None:
    from nats.errors import OutboundBufferLimitError

    class Full:
        async def publish(self, *_: object) -> None:
            raise OutboundBufferLimitError

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=COMPLETION)

    envelope = make_envelope()
    async with OpenRouterClient.open(
        make_settings(), transport=httpx.MockTransport(handler)
    ) as client:
        reply = Reply(Full(), "inbox", envelope.request_id)  # type: ignore[arg-type]
        await serve_chat(envelope, reply, make_services(client, keepalive_interval=5))
        failing = Upstream(lambda _body: httpx.Response(500))
        async with OpenRouterClient.open(
            make_settings(), transport=httpx.MockTransport(failing.handler)
        ) as bad:
            await serve_chat(envelope, reply, make_services(bad, keepalive_interval=5))


async def test_a_bug_still_ends_the_exchange(run: Any, fake_nats: Any, make_envelope: Any) -> None:
    def broken(body: dict[str, Any]) -> httpx.Response:
        raise RuntimeError("bug")

    await run(make_envelope(), Upstream(broken))
    error = failed(fake_nats)
    assert (error.status, error.error.type) == (500, "api_error")


async def test_a_stray_timeout_is_not_the_deadline(
    run: Any, fake_nats: Any, make_envelope: Any
) -> None:
    def stray(_body: dict[str, Any]) -> httpx.Response:
        raise TimeoutError

    await run(make_envelope(), Upstream(stray))
    assert failed(fake_nats).status == 500


# ------------------------------------------------------------------------ terminal frame out


class _Flushing:
    """Publishes like nats-py: a frame reaches the socket only when the flusher, woken by
    the publish, gets to run, i.e. once the publishing task yields."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.pending: list[bytes] = []

    async def publish(self, _subject: str, payload: bytes = b"", **_: Any) -> None:
        self.pending.append(payload)
        asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.written += self.pending
        self.pending = []


async def test_terminal_frame_is_written_before_the_bookkeeping(
    make_settings: Any, make_envelope: Any, make_services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from switchboard.router import exchange

    nc = _Flushing()
    written_when_observed: list[int] = []

    def observe(*_: Any, **__: Any) -> None:
        written_when_observed.append(len(nc.written))

    monkeypatch.setattr(exchange, "observe_chat", observe)
    envelope = make_envelope()
    async with OpenRouterClient.open(
        make_settings(),
        transport=httpx.MockTransport(lambda _: httpx.Response(200, content=COMPLETION)),
    ) as client:
        reply = Reply(nc, "inbox", envelope.request_id)  # type: ignore[arg-type]
        await serve_chat(envelope, reply, make_services(client))
    assert written_when_observed == [2]  # "r" and "t" were on the wire already


async def test_a_cancel_after_the_terminal_frame_changes_nothing(
    fake_nats: Any, make_settings: Any, make_envelope: Any, make_services: Any
) -> None:
    envelope = make_envelope()
    recorded: list[Any] = []
    cancelled: list[bool] = []
    task: asyncio.Task[None] | None = None

    class CancelOnEnd:
        async def publish(self, subject: str, payload: bytes = b"", **kw: Any) -> None:
            await fake_nats.publish(subject, payload, **kw)
            if payload[:1] == b"t" and task is not None:  # the client left just now
                cancelled.append(task.cancel())

    async with OpenRouterClient.open(
        make_settings(),
        transport=httpx.MockTransport(lambda _: httpx.Response(200, content=COMPLETION)),
    ) as client:
        reply = Reply(CancelOnEnd(), "inbox", envelope.request_id)  # type: ignore[arg-type]
        task = asyncio.create_task(
            serve_chat(envelope, reply, make_services(client, recorded=recorded))
        )
        await task  # completes: the answer was whole when the cancel came
    assert cancelled == [True]
    assert task.cancelling() == 0
    assert fake_nats.kinds == "rt"
    assert [(event.status, event.http_status) for event in recorded] == [("ok", 200)]
