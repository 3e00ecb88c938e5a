"""The OpenRouter emulator's answers, through real HTTP on loopback: completions, streams,
tool calls, models and errors, checked against OpenAI's JSON Schemas (``shared/`` beside the
repository); streams are read with ``httpx-sse``, the parser the router uses.
"""

from __future__ import annotations

import json
from typing import Any, cast

import httpx
import pytest
from jsonschema import Draft202012Validator
from openai import AsyncOpenAI

from tests.support.emulator_cases import (
    MODEL,
    TIME_TOOL,
    WEATHER_TOOL,
    chat,
    chunks_of,
    content_of,
    stream_events,
)
from tests.support.openrouter_emulator import (
    DEFAULT_CATALOG,
    EmulatorServer,
    ModelSpec,
    running_emulator,
)

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
