"""Chat completions through the whole stack, driven by the official OpenAI SDK."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.e2e.conftest import UPSTREAM_SECRET, Stack
from tests.support.openai_schema import validate
from tests.support.openrouter_emulator import EmulatorServer

MODEL = "openai/gpt-4o-mini"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_non_streamed_completion(client: openai.OpenAI, upstream: EmulatorServer) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello there"}], temperature=0.2
    )
    completion = raw.parse()
    validate("response", raw.http_response.json())
    assert completion.choices[0].message.content == "Echo: hello there"
    assert completion.model == MODEL
    assert completion.usage is not None
    assert (
        completion.usage.total_tokens
        == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert raw.headers["x-switchboard-model"] == MODEL
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-content-type-options"] == "nosniff"
    (call,) = upstream.calls
    assert call.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert call.body["temperature"] == 0.2


def test_streamed_completion_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    for chunk in chunks:
        validate("chunk", chunk.to_dict())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: stream me"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert sum(1 for c in chunks if c.usage is not None) == 1


def test_streamed_completion_without_usage_hides_the_usage_chunk(
    client: openai.OpenAI, upstream: EmulatorServer
) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "no usage"}], stream=True
        )
    )
    assert all(c.usage is None and c.choices for c in chunks)
    # The router still asked the upstream for usage: every token is metered.
    (call,) = upstream.calls
    assert call.body["stream_options"] == {"include_usage": True}


def test_stream_uses_openai_sse_framing_exactly(
    stack: Stack, api_key: dict[str, str], upstream: EmulatorServer
) -> None:
    with httpx.stream(
        "POST",
        f"{stack.base_url}/chat/completions",
        headers={"authorization": f"Bearer {api_key['key']}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "frames"}], "stream": True},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-switchboard-model"] == MODEL
        body = response.read().decode()
    events = body.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    for event in events[:-2]:
        assert event.startswith("data: {")
        assert "\n" not in event
        validate("chunk", json.loads(event.removeprefix("data: ")))


def test_tool_call_not_streamed(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )
    validate("response", raw.http_response.json())
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)


def test_tool_call_streamed(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "weather in Oslo?"}],
            tools=[WEATHER_TOOL],
            tool_choice="required",
            stream=True,
        )
    )
    for chunk in chunks:
        validate("chunk", chunk.to_dict())
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments)["city"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_result_round_trip(client: openai.OpenAI, upstream: EmulatorServer) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "weather in Rome?"}],
        tools=[WEATHER_TOOL],
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    second = client.chat.completions.create(
        model=MODEL,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "weather in Rome?"},
            first.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"},
        ],
    )
    assert second.choices[0].message.content == "Tool result: sunny, 24 C"
    sent = upstream.calls[-1].body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"}


def test_unknown_fields_reach_the_upstream_untouched(
    client: openai.OpenAI, upstream: EmulatorServer
) -> None:
    client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}],
            }
        ],
        extra_body={"provider": {"order": ["DeepInfra"]}, "transforms": ["middle-out"]},
        seed=3,
        metadata={"team": "search"},
    )
    body = upstream.calls[-1].body
    assert body["provider"] == {"order": ["DeepInfra"]}
    assert body["transforms"] == ["middle-out"]
    assert body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert body["seed"] == 3
    assert body["metadata"] == {"team": "search"}


def test_models_list(client: openai.OpenAI, stack: Stack, api_key: dict[str, str]) -> None:
    models = client.models.list()
    ids = {model.id for model in models.data}
    assert MODEL in ids
    raw = httpx.get(
        f"{stack.base_url}/models", headers={"authorization": f"Bearer {api_key['key']}"}
    )
    validate("models", raw.json())
    for model in raw.json()["data"]:
        validate("model", model)


def test_health_reports_every_component(stack: Stack) -> None:
    report = httpx.get(f"{stack.edge.url}/health").json()
    assert report["status"] == "ok"
    assert {name: c["status"] for name, c in report["components"].items()} == {
        "nats": "ok",
        "redis": "ok",
        "router": "ok",
    }
    assert httpx.get(f"{stack.edge.url}/health/live").json() == {"status": "ok"}
    assert httpx.get(f"{stack.edge.url}/health/ready").status_code == 200


def test_no_secret_reaches_the_logs(
    client: openai.OpenAI, stack: Stack, api_key: dict[str, str]
) -> None:
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "log check"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=stack.base_url, api_key=api_key["key"] + "x", max_retries=0
        ).models.list()
    logs = stack.logs()
    assert "chat.finished" in logs or "request_id" in logs
    assert api_key["key"] not in logs
    assert UPSTREAM_SECRET not in logs
    assert "log check" not in logs
