"""The OpenRouter emulator, through real HTTP on loopback.

Responses and chunks are checked against OpenAI's JSON Schemas (``shared/`` beside the
repository); streams are read with ``httpx-sse``, the parser the router uses.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse
from jsonschema import Draft202012Validator, ValidationError
from openai import AsyncOpenAI

from tests.support.openai_schema import validator
from tests.support.openrouter_emulator import (
    DEFAULT_CATALOG,
    EmulatorServer,
    Fault,
    ModelSpec,
    OpenRouterEmulator,
    running_emulator,
)
from tests.support.servers import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
MODEL = "openai/gpt-4o-mini"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["location"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture(scope="module")
def response_schema() -> Draft202012Validator:
    """OpenAI's ``CreateChatCompletionResponse``."""
    return validator("CreateChatCompletionResponse")


@pytest.fixture(scope="module")
def chunk_schema() -> Draft202012Validator:
    """OpenAI's ``CreateChatCompletionStreamResponse``."""
    return validator("CreateChatCompletionStreamResponse")


@pytest.fixture(scope="module")
def shared_server() -> Iterator[EmulatorServer]:
    """One emulator server for the module: starting one per test would be wasted time."""
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def upstream(shared_server: EmulatorServer) -> Iterator[EmulatorServer]:
    """The shared server with no calls, no faults and default settings."""
    emulator = shared_server.emulator
    shared_server.clear()
    yield shared_server
    shared_server.clear()
    emulator.chunk_delay, emulator.stream_chunks, emulator.processing_comment = 0.0, 4, True


@pytest.fixture
async def client(upstream: EmulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client whose base URL is the emulator's ``/api/v1``."""
    async with httpx.AsyncClient(base_url=upstream.base_url, timeout=5) as http:
        yield http


def chat(content: str = "hello", model: str = MODEL, **extra: Any) -> dict[str, Any]:
    """A chat request body with one user message."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def stream_events(client: httpx.AsyncClient, body: dict[str, Any]) -> list[ServerSentEvent]:
    """Every SSE event of a streamed chat call."""
    async with aconnect_sse(client, "POST", "/chat/completions", json=body) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"] == "text/event-stream"
        return [event async for event in source.aiter_sse()]


def chunks_of(events: list[ServerSentEvent]) -> list[dict[str, Any]]:
    """The JSON chunks of a stream, ``[DONE]`` left out."""
    return [json.loads(event.data) for event in events if event.data != "[DONE]"]


def content_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


# ------------------------------------------------------------------------------ completions


async def test_completion_is_an_openrouter_chat_completion(
    client: httpx.AsyncClient, response_schema: Draft202012Validator
) -> None:
    response = await client.post("/chat/completions", json=chat("hello"))

    assert response.status_code == 200
    body = response.json()
    response_schema.validate(body)
    assert body["id"].startswith("gen-")
    assert response.headers["x-generation-id"] == body["id"]
    assert (body["object"], body["model"], body["provider"]) == ("chat.completion", MODEL, "OpenAI")
    assert body["system_fingerprint"] is None
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": "Echo: hello",
        "refusal": None,
        "reasoning": None,
    }
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    # ceil(chars / 4): "hello" is 2 tokens, "Echo: hello" 3.
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (2, 3, 5)
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    pricing = next(
        m["pricing"] for m in (await client.get("/models")).json()["data"] if m["id"] == MODEL
    )
    expected = 2 * float(pricing["prompt"]) + 3 * float(pricing["completion"])
    assert usage["cost"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("prefix", ["/api/v1", "/v1", ""])
async def test_every_base_url_style_is_served(upstream: EmulatorServer, prefix: str) -> None:
    async with httpx.AsyncClient(base_url=upstream.origin + prefix) as http:
        completion = await http.post("/chat/completions", json=chat())
        models = await http.get("/models")
    assert completion.status_code == models.status_code == 200
    assert completion.json()["choices"][0]["message"]["content"] == "Echo: hello"
    assert [call.path for call in upstream.calls] == [
        f"{prefix}/chat/completions",
        f"{prefix}/models",
    ]


async def test_answer_echoes_last_user_text_and_counts_every_message(
    client: httpx.AsyncClient,
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},  # 9 chars
        {"role": "user", "content": [{"type": "text", "text": "first"}]},  # 5
        {"role": "assistant", "content": "ok"},  # 2
        {
            "role": "user",
            "content": [{"type": "text", "text": "second "}, {"type": "text", "text": "part"}],
        },
    ]
    body = await client.post("/chat/completions", json={"model": MODEL, "messages": messages})
    assert body.json()["choices"][0]["message"]["content"] == "Echo: second part"
    assert body.json()["usage"]["prompt_tokens"] == 7  # ceil(27 / 4)


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(
    client: httpx.AsyncClient,
) -> None:
    body = (await client.post("/chat/completions", json=chat("hello", max_tokens=1))).json()
    assert body["choices"][0]["message"]["content"] == "Echo"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 1


async def test_reply_hook_makes_the_text() -> None:
    with running_emulator(reply=lambda body: body["messages"][0]["content"].upper()) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            body = (await http.post("/chat/completions", json=chat("shout"))).json()
    assert body["choices"][0]["message"]["content"] == "SHOUT"


# -------------------------------------------------------------------------------- streaming


async def test_stream_without_usage(
    client: httpx.AsyncClient, chunk_schema: Draft202012Validator
) -> None:
    async with client.stream("POST", "/chat/completions", json=chat(stream=True)) as response:
        raw = (await response.aread()).decode()
    assert raw.startswith(": OPENROUTER PROCESSING\n\ndata: {")
    assert raw.endswith("\n\ndata: [DONE]\n\n")
    assert response.headers["x-generation-id"].startswith("gen-")

    events = await stream_events(client, chat(stream=True))
    assert events[-1].data == "[DONE]"
    chunks = chunks_of(events)
    for chunk in chunks:
        chunk_schema.validate(chunk)
        assert chunk["object"] == "chat.completion.chunk"
        assert (chunk["model"], chunk["provider"], chunk["id"]) == (
            MODEL,
            "OpenAI",
            chunks[0]["id"],
        )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(chunks) == 1 + 4 + 1  # role, 4 pieces (stream_chunks), finish
    assert content_of(chunks) == "Echo: hello"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["stop"]
    assert all("usage" not in chunk for chunk in chunks)


async def test_stream_with_usage_ends_with_a_usage_chunk(
    client: httpx.AsyncClient, chunk_schema: Draft202012Validator
) -> None:
    body = chat(stream=True, stream_options={"include_usage": True})
    chunks = chunks_of(await stream_events(client, body))
    for chunk in chunks:
        chunk_schema.validate(chunk)
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (2, 3, 5)
    assert usage["cost"] == pytest.approx(DEFAULT_CATALOG[0].cost(2, 3))
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def test_stream_settings_chunks_and_comment(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.emulator.stream_chunks = 2
    upstream.emulator.processing_comment = False
    async with client.stream("POST", "/chat/completions", json=chat(stream=True)) as response:
        raw = (await response.aread()).decode()
    assert raw.startswith("data: {")
    chunks = [json.loads(line[6:]) for line in raw.split("\n\n") if line[6:7] == "{"]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == [
        "",
        "Echo: ",
        "hello",
        None,
    ]


# ------------------------------------------------------------------------------- tool calls


async def test_tool_call(client: httpx.AsyncClient, response_schema: Draft202012Validator) -> None:
    body = chat("What's the weather in Paris?", tools=[WEATHER_TOOL, TIME_TOOL])
    completion = (await client.post("/chat/completions", json=body)).json()

    response_schema.validate(completion)
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    assert arguments == {"location": "What's the weather in Paris?", "unit": "celsius", "days": 1}


async def test_tool_choice_names_the_function_or_turns_tools_off(
    client: httpx.AsyncClient,
) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    body = chat("now?", tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=named)
    message = (await client.post("/chat/completions", json=body)).json()["choices"][0]["message"]
    assert message["tool_calls"][0]["function"] == {"name": "get_time", "arguments": "{}"}

    body = chat("now?", tools=[WEATHER_TOOL], tool_choice="none")
    choice = (await client.post("/chat/completions", json=body)).json()["choices"][0]
    assert (choice["finish_reason"], choice["message"]["content"]) == ("stop", "Echo: now?")
    assert "tool_calls" not in choice["message"]


async def test_tool_call_streamed(
    client: httpx.AsyncClient, chunk_schema: Draft202012Validator
) -> None:
    body = chat("weather in Oslo", tools=[WEATHER_TOOL], stream=True)
    chunks = chunks_of(await stream_events(client, body))
    for chunk in chunks:
        chunk_schema.validate(chunk)

    first = chunks[0]["choices"][0]["delta"]
    assert first["role"] == "assistant"
    [head] = first["tool_calls"]
    assert head["index"] == 0
    assert head["id"].startswith("call_")
    assert head["type"] == "function"
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    fragments = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[1:-1]]
    assert len(fragments) == 4
    assert all(f["index"] == 0 and set(f) == {"index", "function"} for f in fragments)
    arguments = json.loads("".join(f["function"]["arguments"] for f in fragments))
    assert arguments["location"] == "weather in Oslo"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_tool_result_round_trip(client: httpx.AsyncClient) -> None:
    first = await client.post("/chat/completions", json=chat("weather?", tools=[WEATHER_TOOL]))
    assistant = first.json()["choices"][0]["message"]
    call_id = assistant["tool_calls"][0]["id"]
    messages = [
        {"role": "user", "content": "weather?"},
        assistant,
        {"role": "tool", "tool_call_id": call_id, "content": "22 degrees and sunny"},
    ]
    body = {"model": MODEL, "messages": messages, "tools": [WEATHER_TOOL]}
    choice = (await client.post("/chat/completions", json=body)).json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "Tool result: 22 degrees and sunny"

    chunks = chunks_of(await stream_events(client, {**body, "stream": True}))
    assert content_of(chunks) == "Tool result: 22 degrees and sunny"


async def test_official_sdk_reads_completions_streams_and_tool_calls(
    upstream: EmulatorServer,
) -> None:
    sdk = AsyncOpenAI(base_url=upstream.base_url, api_key="sk-or-test", max_retries=0)
    async with sdk:
        completion = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == "Echo: hi"
        stream = await sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "weather?"}],
            tools=cast("Any", [WEATHER_TOOL]),
            stream=True,
            stream_options={"include_usage": True},
        )
        arguments, usage = "", None
        async for chunk in stream:
            delta = chunk.choices[0].delta if chunk.choices else None
            for tool_call in (delta and delta.tool_calls) or ():
                if tool_call.function and tool_call.function.arguments:
                    arguments += tool_call.function.arguments
            usage = chunk.usage or usage
    assert json.loads(arguments)["location"] == "weather?"
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert upstream.calls[0].headers["authorization"] == "Bearer sk-or-test"


# ----------------------------------------------------------------------------------- models


async def test_models_lists_the_catalog_like_openrouter(client: httpx.AsyncClient) -> None:
    response = await client.get("/models")
    assert response.status_code == 200
    models = {model["id"]: model for model in response.json()["data"]}
    assert set(models) == {
        "openai/gpt-4o-mini",
        "anthropic/claude-3.5-haiku",
        "meta-llama/llama-3.1-8b-instruct",
        "google/gemini-flash-1.5",
    }
    haiku = models["anthropic/claude-3.5-haiku"]
    assert haiku["name"] == "Anthropic: Claude 3.5 Haiku"
    assert haiku["context_length"] == 200_000
    assert haiku["pricing"]["prompt"] == "0.0000008"
    assert haiku["pricing"]["completion"] == "0.000004"
    for key in ("input_cache_read", "internal_reasoning"):
        assert isinstance(haiku["pricing"][key], str)
    assert haiku["top_provider"]["context_length"] == 200_000
    assert haiku["architecture"]["input_modalities"] == ["text", "image"]
    assert "tools" in haiku["supported_parameters"]
    assert isinstance(haiku["created"], int)


async def test_custom_catalog_prices_the_cost() -> None:
    spec = ModelSpec("test/round", "Test: Round", "TestProvider", "0.000001", "0.000002")
    with running_emulator(catalog=[spec]) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            models = (await http.get("/models")).json()["data"]
            body = (await http.post("/chat/completions", json=chat("x" * 40, "test/round"))).json()
            missing = await http.post("/chat/completions", json=chat())
    assert [m["id"] for m in models] == ["test/round"]
    assert body["provider"] == "TestProvider"
    # 10 prompt tokens, "Echo: " + 40 chars = 12 completion tokens.
    assert body["usage"]["cost"] == pytest.approx(10 * 0.000001 + 12 * 0.000002)
    assert missing.status_code == 404


# ----------------------------------------------------------------------------------- errors


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=chat(model="nope/missing"))
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == 404
    assert "nope/missing" in error["message"]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"model": "openai/gpt-4o-mini"}',
        b'{"model": "openai/gpt-4o-mini", "messages": []}',
        b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "robot", "content": "x"}]}',
        b'{"messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user"}], "stream": "yes"}',
    ],
)
async def test_invalid_body_is_400(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post("/chat/completions", content=content)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 400
    assert response.json()["error"]["message"]


async def test_wrong_method_or_path(client: httpx.AsyncClient) -> None:
    assert (await client.get("/chat/completions")).status_code == 405
    missing = await client.get("/nothing/here")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": 404, "message": "Not Found"}}


async def test_api_key_is_required_when_set() -> None:
    with running_emulator(api_key="sk-or-good") as server:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            anonymous = await http.post("/chat/completions", json=chat())
            wrong = await http.post(
                "/chat/completions", json=chat(), headers={"Authorization": "Bearer sk-or-bad"}
            )
            good = await http.post(
                "/chat/completions", json=chat(), headers={"Authorization": "Bearer sk-or-good"}
            )
    assert (anonymous.status_code, wrong.status_code, good.status_code) == (401, 401, 200)
    assert anonymous.json()["error"]["code"] == 401


# ----------------------------------------------------------------------------------- faults


async def test_status_fault_with_retry_after_is_used_once(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("status", status=429, retry_after=2.0)
    limited = await client.post("/chat/completions", json=chat())
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    assert limited.json() == {"error": {"code": 429, "message": "Rate limit exceeded"}}
    assert (await client.post("/chat/completions", json=chat())).status_code == 200
    assert [call.fault for call in upstream.calls] == ["status", None]
    assert upstream.emulator.faults == []


async def test_status_fault_for_one_model_with_message_and_metadata(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault(
        "status",
        model="anthropic/claude-3.5-haiku",
        status=502,
        message="upstream down",
        metadata={"provider_name": "Anthropic"},
    )
    assert (await client.post("/chat/completions", json=chat())).status_code == 200
    failed = await client.post("/chat/completions", json=chat(model="anthropic/claude-3.5-haiku"))
    assert failed.status_code == 502
    assert "retry-after" not in failed.headers
    assert failed.json()["error"] == {
        "code": 502,
        "message": "upstream down",
        "metadata": {"provider_name": "Anthropic"},
    }


async def test_sticky_fault_applies_until_cleared(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("status", status=503, sticky=True)
    statuses = [(await client.post("/chat/completions", json=chat())).status_code for _ in "abc"]
    assert statuses == [503, 503, 503]
    upstream.emulator.clear_faults()
    assert (await client.post("/chat/completions", json=chat())).status_code == 200


async def test_faults_come_before_the_unknown_model_404(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("status", status=500)
    response = await client.post("/chat/completions", json=chat(model="nope/missing"))
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "Internal Server Error"


async def test_delay_fault_before_answering(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("delay", seconds=0.2)
    started = time.monotonic()
    response = await client.post("/chat/completions", json=chat())
    assert time.monotonic() - started >= 0.2
    assert response.status_code == 200
    assert upstream.calls[0].completed


async def test_delay_fault_between_chunks(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("delay", chunk_delay=0.03)
    started = time.monotonic()
    arrivals = []
    async with aconnect_sse(client, "POST", "/chat/completions", json=chat(stream=True)) as src:
        async for event in src.aiter_sse():
            arrivals.append((time.monotonic() - started, event.data))
    assert arrivals[-1][1] == "[DONE]"
    assert arrivals[-1][0] >= 6 * 0.03  # six chunks, each after a pause
    assert arrivals[1][0] - arrivals[0][0] >= 0.02
    assert upstream.calls[0].completed
    assert upstream.calls[0].chunks_sent == 6


async def test_server_wide_chunk_delay_makes_every_stream_slow(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.emulator.chunk_delay = 0.02
    started = time.monotonic()
    chunks = chunks_of(await stream_events(client, chat(stream=True)))
    assert time.monotonic() - started >= 6 * 0.02
    assert content_of(chunks) == "Echo: hello"


async def test_disconnect_fault_cuts_the_stream_after_k_chunks(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("disconnect", after_chunks=2)
    received: list[str] = []

    async def read_stream() -> None:
        async with aconnect_sse(client, "POST", "/chat/completions", json=chat(stream=True)) as s:
            async for event in s.aiter_sse():
                received.append(event.data)  # keep what came before the cut

    with pytest.raises(httpx.RemoteProtocolError):
        await read_stream()
    assert len(received) == 2
    assert "[DONE]" not in received
    [call] = await upstream.emulator.wait_for_calls_async(1)
    assert (call.fault, call.chunks_sent, call.completed) == ("disconnect", 2, False)


async def test_disconnect_fault_cuts_a_completion(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("disconnect")
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/chat/completions", json=chat())
    assert (await client.post("/chat/completions", json=chat())).status_code == 200


async def test_stream_error_fault_sends_openrouters_error_event(
    upstream: EmulatorServer, client: httpx.AsyncClient, chunk_schema: Draft202012Validator
) -> None:
    upstream.add_fault("stream_error", after_chunks=2, message="Provider disconnected")
    events = await stream_events(client, chat(stream=True))
    assert [event.data for event in events].count("[DONE]") == 0
    chunks = chunks_of(events)
    assert len(chunks) == 3
    error = chunks[-1]
    assert error["error"] == {"code": 502, "message": "Provider disconnected"}
    assert error["choices"] == [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]
    assert error["id"] == chunks[0]["id"]
    with pytest.raises(ValidationError, match="'error' is not valid"):
        chunk_schema.validate(error)  # OpenRouter's finish_reason is not OpenAI's
    [call] = upstream.calls
    assert (call.fault, call.completed) == ("stream_error", True)


async def test_stream_only_faults_wait_for_a_streaming_call(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("stream_error", status=500)
    assert (await client.post("/chat/completions", json=chat())).status_code == 200
    assert len(upstream.emulator.faults) == 1
    chunks = chunks_of(await stream_events(client, chat(stream=True)))
    assert chunks == [chunks[0]]
    assert chunks[0]["error"]["code"] == 500


async def test_multiline_fault_splits_events_over_data_lines(
    upstream: EmulatorServer, client: httpx.AsyncClient, chunk_schema: Draft202012Validator
) -> None:
    upstream.add_fault("multiline")
    body = chat(stream=True, stream_options={"include_usage": True})
    async with client.stream("POST", "/chat/completions", json=body) as response:
        raw = (await response.aread()).decode()
    first_event = raw.split("\n\n")[1]
    assert first_event.count("data: ") > 3
    assert raw.endswith("\n\ndata: [DONE]\n\n")

    upstream.add_fault("multiline")
    events = await stream_events(client, body)
    assert events[-1].data == "[DONE]"
    chunks = chunks_of(events)
    for chunk in chunks:
        chunk_schema.validate(chunk)
    assert content_of(chunks) == "Echo: hello"
    assert chunks[-1]["usage"]["total_tokens"] == 5


async def test_hang_fault_until_the_client_gives_up(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("hang")
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/chat/completions", json=chat(), timeout=0.2)
    [call] = upstream.calls
    async with asyncio.timeout(2):
        await call.wait_async()
    assert (call.fault, call.status, call.completed, call.disconnected) == (
        "hang",
        None,
        False,
        True,
    )


async def test_hang_fault_mid_stream(upstream: EmulatorServer, client: httpx.AsyncClient) -> None:
    upstream.add_fault("hang", after_chunks=1)
    received = []
    async with aconnect_sse(client, "POST", "/chat/completions", json=chat(stream=True)) as src:
        async for event in src.aiter_sse():
            received.append(event.data)
            if len(received) == 1:
                break
    [call] = upstream.calls
    async with asyncio.timeout(2):
        await call.wait_async()
    assert (call.chunks_sent, call.completed, call.disconnected) == (1, False, True)


async def test_client_leaving_a_slow_stream_is_recorded_as_disconnected(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.emulator.chunk_delay = 0.05
    async with aconnect_sse(client, "POST", "/chat/completions", json=chat(stream=True)) as src:
        async for _event in src.aiter_sse():
            break
    [call] = upstream.calls
    async with asyncio.timeout(2):
        await call.wait_async()
    assert call.disconnected
    assert not call.completed
    assert call.chunks_sent < 6


# ---------------------------------------------------------------------------------- records


async def test_calls_are_recorded(upstream: EmulatorServer, client: httpx.AsyncClient) -> None:
    before = time.time()
    body = chat(stream=True)
    await stream_events(client, body)
    await client.post("/chat/completions", json=chat(), headers={"X-Title": "Switchboard"})
    await client.get("/models")
    calls = upstream.emulator.wait_for_calls(3)
    stream, completion, models = calls
    assert stream.body == body
    assert (stream.method, stream.path, stream.stream, stream.model) == (
        "POST",
        "/api/v1/chat/completions",
        True,
        MODEL,
    )
    assert (stream.status, stream.completed, stream.disconnected, stream.chunks_sent) == (
        200,
        True,
        False,
        6,
    )
    assert completion.headers["x-title"] == "Switchboard"
    assert completion.headers["content-type"] == "application/json"
    assert all(name == name.lower() for name in completion.headers)
    assert not completion.stream
    assert (models.method, models.path, models.body, models.status) == (
        "GET",
        "/api/v1/models",
        None,
        200,
    )
    assert before <= stream.time <= completion.time <= time.time()
    assert all(call.finished for call in calls)


async def test_call_record_is_bounded() -> None:
    emulator = OpenRouterEmulator(max_calls=2)
    with EmulatorServer(emulator) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            for word in ("one", "two", "three"):
                await http.post("/chat/completions", json=chat(word))
    assert [call.body["messages"][0]["content"] for call in emulator.calls] == ["two", "three"]


# ------------------------------------------------------------------------------ control API


async def test_control_api(upstream: EmulatorServer, client: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(base_url=f"{upstream.origin}/_emulator") as control:
        added = await control.post("/faults", json={"kind": "status", "status": 418})
        assert added.status_code == 201
        assert added.json()["data"][0]["status"] == 418
        listed = await control.post(
            "/faults", json=[{"kind": "delay", "seconds": 0.01}, {"kind": "multiline"}]
        )
        assert [f["kind"] for f in listed.json()["data"]] == ["delay", "multiline"]
        faults = (await control.get("/faults")).json()["data"]
        assert [f["kind"] for f in faults] == ["status", "delay", "multiline"]

        assert (await client.post("/chat/completions", json=chat())).status_code == 418
        assert (await control.delete("/faults")).status_code == 200
        assert (await control.get("/faults")).json()["data"] == []

        calls = (await control.get("/calls")).json()["data"]
        assert len(calls) == 1
        assert calls[0]["fault"] == "status"
        assert calls[0]["body"] == chat()
        assert calls[0]["headers"]["content-type"] == "application/json"
        assert calls[0]["finished"] is True
        assert (await control.delete("/calls")).json() == {"cleared": 1}
        assert (await control.get("/calls")).json()["data"] == []

        for bad in (
            {"kind": "explode"},
            {"status": 500},
            {"kind": "status", "colour": 1},
            {"kind": "status", "status": 200},
            {"kind": "delay", "seconds": -1},
        ):
            response = await control.post("/faults", json=bad)
            assert response.status_code == 400, bad
            assert response.json()["error"]["message"].startswith("Invalid fault")
        assert (await control.post("/faults", content=b"{")).status_code == 400
        half_valid = [{"kind": "status"}, {"kind": "explode"}]
        assert (await control.post("/faults", json=half_valid)).status_code == 400
        assert (await control.get("/faults")).json()["data"] == []  # all or nothing
        assert (await control.get("/nothing")).status_code == 404
    assert upstream.calls == []  # the control API is not recorded


# ------------------------------------------------------------------------------- Python API


def test_python_fault_api() -> None:
    emulator = OpenRouterEmulator()
    fault = emulator.add_fault(Fault("delay", seconds=1))
    assert emulator.faults == [fault]
    with pytest.raises(TypeError):
        emulator.add_fault(fault, sticky=True)
    with pytest.raises(ValueError, match="unknown fault kind"):
        emulator.add_fault("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only applies to streaming"):
        emulator.add_fault("multiline", stream=False)
    assert emulator.take_fault("any/model", stream=False) is fault
    assert emulator.take_fault("any/model", stream=False) is None
    assert Fault.from_dict(fault.to_dict()) == fault
    assert emulator.cost(MODEL, 1_000_000, 0) == pytest.approx(0.15)
    with pytest.raises(TimeoutError):
        emulator.wait_for_calls(1, timeout=0.01)


async def test_server_stops_promptly_while_a_stream_hangs() -> None:
    server = EmulatorServer().start()
    server.add_fault("hang", after_chunks=1)
    body = chat(stream=True)
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=5) as http,
        aconnect_sse(http, "POST", "/chat/completions", json=body) as source,
    ):
        events = source.aiter_sse()
        await anext(events)
        started = time.monotonic()
        await asyncio.to_thread(server.stop)
        assert time.monotonic() - started < 1.0
        with pytest.raises(httpx.RemoteProtocolError):
            await anext(events)
    assert f"openrouter-emulator-{server.port}" not in {t.name for t in threading.enumerate()}
    server.stop()  # stopping twice is harmless


def test_standalone_process(tmp_path: Path) -> None:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tests.support.openrouter_emulator",
        "--port",
        str(port),
        "--chunk-delay",
        "0.001",
    ]
    log = (tmp_path / "emulator.log").open("wb")
    with log, subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT) as proc:
        try:
            wait_for_port(port, proc=proc)
            base_url = f"http://127.0.0.1:{port}/api/v1"
            response = httpx.post(f"{base_url}/chat/completions", json=chat(stream=True))
            assert response.status_code == 200
            assert response.text.endswith("data: [DONE]\n\n")
            calls = httpx.get(f"http://127.0.0.1:{port}/_emulator/calls").json()["data"]
            assert calls[0]["completed"] is True
        finally:
            proc.terminate()
            proc.wait(5)
    assert f"http://127.0.0.1:{port}/api/v1" in (tmp_path / "emulator.log").read_text()


def test_models_status_and_report_cost() -> None:
    """A catalog outage on ``GET /models``, and answers without ``usage.cost``."""
    import httpx as _httpx

    from tests.support.openrouter_emulator import running_emulator

    with running_emulator(report_cost=False) as upstream:
        upstream.emulator.models_status = 503
        assert _httpx.get(f"{upstream.base_url}/models").status_code == 503
        upstream.emulator.models_status = None
        assert _httpx.get(f"{upstream.base_url}/models").status_code == 200
        body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        usage = _httpx.post(f"{upstream.base_url}/chat/completions", json=body).json()["usage"]
        assert "cost" not in usage
        assert usage["prompt_tokens"] == 1
