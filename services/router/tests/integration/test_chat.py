"""Chat completions through a real nats-server, the router in-process and the emulator."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from tests.support.openrouter_emulator import EmulatorServer

from switchboard.common import subjects
from switchboard.common.wire import CompletionFailed, CompletionFinished, FrameKind
from switchboard.router.service import RouterService

MODEL = "openai/gpt-4o-mini"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        },
    },
}

pytestmark = pytest.mark.usefixtures("router")


def finished(frames: list[Any]) -> CompletionFinished:
    assert frames[-1].kind is FrameKind.END
    return CompletionFinished.model_validate_json(frames[-1].body)


def failed(frames: list[Any]) -> CompletionFailed:
    assert frames[-1].kind is FrameKind.ERROR
    return CompletionFailed.model_validate_json(frames[-1].body)


async def test_non_streamed(exchange: Any, emulator: EmulatorServer) -> None:
    ex = await exchange(provider={"sort": "price"}, temperature=0.2)
    frames = await ex.until_end()
    assert ex.kinds == "rt"
    completion = orjson.loads(frames[0].body)
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == "Echo: Hello there"
    end = finished(frames)
    assert end.request_id == ex.envelope.request_id
    assert (end.served_model, end.provider, end.chunks) == (MODEL, "openrouter", 0)
    assert end.upstream_provider == "OpenAI"
    assert end.usage is not None
    assert end.usage.model_dump(exclude={"v"}) == {
        "prompt_tokens": completion["usage"]["prompt_tokens"],
        "completion_tokens": completion["usage"]["completion_tokens"],
        "total_tokens": completion["usage"]["total_tokens"],
        "cached_tokens": 0,
        "reasoning_tokens": 0,
    }
    assert end.cost_usd == completion["usage"]["cost"]
    (call,) = emulator.calls
    assert call.body == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello there"}],
        "provider": {"sort": "price"},
        "temperature": 0.2,
    }
    assert call.headers["http-referer"] == "https://switchboard.test"
    assert call.headers["x-title"] == "Switchboard tests"


async def test_streamed_without_include_usage(exchange: Any, emulator: EmulatorServer) -> None:
    ex = await exchange(stream=True)
    frames = await ex.until_end()
    chunks = ex.chunks()
    assert ex.kinds == "c" * len(chunks) + "t"
    assert all(chunk["choices"] for chunk in chunks), "the usage chunk must not reach the client"
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert text == "Echo: Hello there"
    (call,) = emulator.calls
    assert call.body["stream_options"] == {"include_usage": True}
    end = finished(frames)
    assert end.chunks == len(chunks)
    assert end.usage is not None
    assert end.usage.completion_tokens > 0
    assert end.cost_usd is not None
    assert end.cost_usd > 0


async def test_streamed_with_include_usage(exchange: Any) -> None:
    ex = await exchange(stream=True, stream_options={"include_usage": True})
    frames = await ex.until_end()
    chunks = ex.chunks()
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    end = finished(frames)
    assert end.usage is not None
    assert end.usage.total_tokens == usage["total_tokens"]
    assert end.chunks == len(chunks)


async def test_chunks_are_forwarded_byte_for_byte(exchange: Any, emulator: EmulatorServer) -> None:
    ex = await exchange(stream=True)
    await ex.until_end()
    for frame in ex.frames[:-1]:
        assert frame.body.startswith(b'{"id":"gen-')  # the emulator's own key order and spacing


async def test_multi_line_events(exchange: Any, emulator: EmulatorServer) -> None:
    emulator.add_fault("multiline")
    ex = await exchange(stream=True)
    frames = await ex.until_end()
    assert frames[-1].kind is FrameKind.END
    assert all(b"\n" not in frame.body for frame in frames[:-1])
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in ex.chunks())
        == "Echo: Hello there"
    )


async def test_tool_calls_streamed_and_not(exchange: Any) -> None:
    ex = await exchange(
        stream=True, tools=[WEATHER_TOOL], messages=[{"role": "user", "content": "Paris"}]
    )
    frames = await ex.until_end()
    calls = [c["choices"][0]["delta"].get("tool_calls") for c in ex.chunks()]
    arguments = "".join(call[0]["function"].get("arguments") or "" for call in calls if call)
    assert orjson.loads(arguments) == {"city": "Paris", "unit": "celsius"}
    assert ex.chunks()[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert finished(frames).chunks == len(ex.chunks())

    ex = await exchange(
        tools=[WEATHER_TOOL], tool_choice="auto", messages=[{"role": "user", "content": "Oslo"}]
    )
    frames = await ex.until_end()
    message = orjson.loads(frames[0].body)["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_upstream_500_before_any_chunk(exchange: Any, emulator: EmulatorServer) -> None:
    emulator.add_fault("status", status=500, message="kaboom")
    ex = await exchange(stream=True)
    frames = await ex.until_end()
    assert ex.kinds == "e"
    error = failed(frames)
    assert (error.status, error.error.type, error.error.code, error.chunks) == (
        502,
        "api_error",
        "upstream_error",
        0,
    )
    assert "kaboom" in error.error.message


async def test_upstream_429_with_retry_after(exchange: Any, emulator: EmulatorServer) -> None:
    emulator.add_fault("status", status=429, retry_after=3)
    frames = await (await exchange()).until_end()
    error = failed(frames)
    assert (error.status, error.retry_after, error.error.type) == (429, 3.0, "rate_limit_exceeded")


async def test_unknown_model_is_404(exchange: Any) -> None:
    frames = await (await exchange(model="nobody/nothing")).until_end()
    error = failed(frames)
    assert (error.status, error.error.code) == (404, "model_not_found")


async def test_mid_stream_disconnect(exchange: Any, emulator: EmulatorServer) -> None:
    emulator.add_fault("disconnect", after_chunks=2)
    ex = await exchange(stream=True)
    frames = await ex.until_end()
    assert ex.kinds == "cce"
    error = failed(frames)
    assert (error.status, error.error.code, error.chunks) == (502, "upstream_error", 2)


async def test_non_streamed_disconnect(exchange: Any, emulator: EmulatorServer) -> None:
    emulator.add_fault("disconnect", stream=False)
    frames = await (await exchange()).until_end()
    assert failed(frames).status == 502


async def test_mid_stream_error_event(exchange: Any, emulator: EmulatorServer) -> None:
    emulator.add_fault("stream_error", after_chunks=2, message="Provider disconnected unexpectedly")
    ex = await exchange(stream=True)
    frames = await ex.until_end()
    assert ex.kinds == "cce"
    assert all("error" not in chunk for chunk in ex.chunks())
    error = failed(frames)
    assert error.status == 502
    assert (error.error.message, error.error.type, error.error.code) == (
        "Provider disconnected unexpectedly",
        "api_error",
        "upstream_error",
    )


async def test_keepalive_while_the_upstream_is_slow(
    exchange: Any, emulator: EmulatorServer
) -> None:
    emulator.add_fault("delay", seconds=0.7)
    ex = await exchange(stream=True)
    await ex.until_end()
    assert ex.kinds.startswith("kkk")
    assert ex.kinds.endswith("t")
    assert set(ex.kinds[3:-1]) <= {"c", "k"}


async def test_client_cancel_closes_the_upstream(
    exchange: Any, emulator: EmulatorServer, nc: Any, router: RouterService
) -> None:
    emulator.add_fault("hang", after_chunks=1)
    ex = await exchange(stream=True)
    assert (await ex.next()).kind is FrameKind.CHUNK
    await nc.publish(subjects.chat_cancel(ex.envelope.request_id), b"")
    (call,) = emulator.calls
    async with asyncio.timeout(3):
        await call.wait_async()
    assert call.disconnected
    assert await ex.quiet_for(0.5), "nothing is published for a cancelled request"
    assert len(router.inflight) == 0


async def test_cancel_for_another_request_is_ignored(exchange: Any, nc: Any) -> None:
    ex = await exchange(stream=True)
    await nc.publish(subjects.chat_cancel("someone-else"), b"")
    await ex.until_end()
    assert ex.kinds.endswith("t")


async def test_deadline_closes_the_upstream(exchange: Any, emulator: EmulatorServer) -> None:
    emulator.add_fault("hang", after_chunks=1)
    ex = await exchange(stream=True, deadline_in=0.5)
    frames = await ex.until_end()
    error = failed(frames)
    assert (error.status, error.error.code, error.chunks) == (504, "timeout", 1)
    (call,) = emulator.calls
    async with asyncio.timeout(3):
        await call.wait_async()
    assert call.disconnected


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"{nonsense", 500, "invalid_envelope"),
        (orjson.dumps({"v": 2, "request_id": "r-v2"}), 500, "unsupported_wire_version"),
    ],
)
async def test_undecodable_requests(exchange: Any, payload: bytes, status: int, code: str) -> None:
    frames = await (await exchange(payload=payload)).until_end()
    error = failed(frames)
    assert (error.status, error.error.code) == (status, code)


async def test_invalid_client_request_is_400(exchange: Any, make_envelope: Any) -> None:
    envelope = orjson.loads(make_envelope().model_dump_json())
    envelope["request"]["temperature"] = 9
    frames = await (await exchange(payload=orjson.dumps(envelope))).until_end()
    error = failed(frames)
    assert (error.status, error.error.param, error.request_id) == (
        400,
        "temperature",
        envelope["request_id"],
    )


async def test_a_second_delivery_of_a_request_is_ignored(
    exchange: Any, emulator: EmulatorServer, nc: Any
) -> None:
    emulator.add_fault("delay", seconds=0.3)
    ex = await exchange()
    await nc.publish(
        subjects.CHAT_REQUEST,
        ex.envelope.model_dump_json(exclude_unset=True).encode(),
        reply=ex.inbox,
    )
    await nc.publish(subjects.CHAT_REQUEST, b"{}")  # no reply subject: dropped
    await ex.until_end()
    assert ex.kinds.endswith("rt")
    assert await ex.quiet_for(0.3)
    assert len(emulator.calls) == 1


async def test_a_request_whose_cancel_came_first_is_not_served(
    exchange: Any, emulator: EmulatorServer, nc: Any, make_envelope: Any
) -> None:
    envelope = make_envelope(stream=True)
    await nc.publish(subjects.chat_cancel(envelope.request_id), b"")
    await nc.flush()
    await asyncio.sleep(0.05)
    ex = await exchange(payload=envelope.model_dump_json(exclude_unset=True).encode())
    assert await ex.quiet_for(0.5)
    assert emulator.calls == []
