"""The response cache's rules: what is cacheable, what the key covers, how answers replay."""

from __future__ import annotations

from typing import Any, cast

import orjson
import pytest
from redis.asyncio import Redis
from tests.support.openai_schema import validate

from switchboard.common.chat import ChatCompletionRequest
from switchboard.common.wire import CompletionFinished, TokenUsage
from switchboard.edge.cache import (
    CachedAnswer,
    ResponseCache,
    bypassed_by,
    cache_key,
    completion_from_chunks,
    is_cacheable,
    replay_chunks,
)
from switchboard.edge.usage_events import UsageEvents

from .conftest import SettingsFactory

BASE: dict[str, Any] = {
    "model": "openai/gpt-4o-mini",
    "messages": [{"role": "user", "content": "hello"}],
    "temperature": 0,
}


def _chat(**changes: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({**BASE, **changes})


def _key(chat: ChatCompletionRequest, key_id: str = "key_a", *, shared: bool = False) -> str:
    return cache_key(chat, key_id=key_id, shared=shared)


@pytest.mark.parametrize(
    ("changes", "cacheable"),
    [
        ({}, True),
        ({"temperature": 0.0, "n": 1}, True),
        ({"temperature": 0.7, "seed": 42}, True),
        ({"temperature": None, "seed": 0}, True),
        ({"temperature": 0.7}, False),
        ({"temperature": None}, False),
        ({"n": 2}, False),
        ({"seed": 1, "n": 3}, False),
    ],
)
def test_only_deterministic_single_choice_requests_are_cacheable(
    changes: dict[str, Any], cacheable: bool
) -> None:
    assert is_cacheable(_chat(**changes)) is cacheable


@pytest.mark.parametrize(
    ("value", "bypassed"),
    [
        ("no-cache", True),
        ("No-Store", True),
        ("max-age=0, no-cache", True),
        ("max-age=60", False),
        ("", False),
    ],
)
def test_cache_control_bypasses_the_cache(value: str, bypassed: bool) -> None:
    assert bypassed_by({"cache-control": value}) is bypassed


OUTPUT_CHANGES: list[dict[str, Any]] = [
    {"model": "openai/gpt-4o"},
    {"messages": [{"role": "user", "content": "hello!"}]},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]},
    {"temperature": 0, "seed": 1},
    {"temperature": 0.5, "seed": 1},
    {"top_p": 0.5},
    {"max_tokens": 10},
    {"max_completion_tokens": 10},
    {"stop": ["\n"]},
    {"logprobs": True},
    {"top_logprobs": 2, "logprobs": True},
    {"logit_bias": {"50256": -100}},
    {"frequency_penalty": 0.5},
    {"presence_penalty": 0.5},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    {"tool_choice": "none"},
    {"parallel_tool_calls": False},
    {"response_format": {"type": "json_object"}},
    {"reasoning_effort": "low"},
    {"modalities": ["text"]},
    {"service_tier": "flex"},
    {"provider": {"order": ["DeepInfra"]}},
    {"transforms": ["middle-out"]},
]


@pytest.mark.parametrize("changes", OUTPUT_CHANGES)
def test_every_output_changing_field_changes_the_key(changes: dict[str, Any]) -> None:
    assert _key(_chat(**changes)) != _key(_chat())


@pytest.mark.parametrize(
    "changes",
    [
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"user": "end-user-1"},
        {"metadata": {"team": "search"}},
        {"store": True},
        {"seed": None},
        {"temperature": 0.0},
    ],
)
def test_fields_that_do_not_change_the_answer_keep_the_key(changes: dict[str, Any]) -> None:
    assert _key(_chat(**changes)) == _key(_chat())


def test_the_key_ignores_field_order() -> None:
    reordered = ChatCompletionRequest.model_validate(
        {"temperature": 0, "messages": BASE["messages"], "model": BASE["model"]}
    )
    assert _key(reordered) == _key(_chat())


def test_the_key_is_scoped_per_api_key_unless_shared() -> None:
    chat = _chat()
    assert _key(chat, "key_a") != _key(chat, "key_b")
    assert _key(chat, "key_a", shared=True) == _key(chat, "key_b", shared=True)
    assert _key(chat, "key_a", shared=True) != _key(chat, "key_a")


COMPLETION: dict[str, Any] = {
    "id": "gen-1",
    "object": "chat.completion",
    "created": 1,
    "model": "openai/gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "It is sunny.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            "finish_reason": "tool_calls",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
}
FINISHED = CompletionFinished(
    request_id="req_1",
    served_model="openai/gpt-4o-mini",
    provider="openrouter",
    usage=TokenUsage(prompt_tokens=5, completion_tokens=4, total_tokens=9),
    cost_usd=0.0012,
    cost_source="upstream",
)


def _events(answer: CachedAnswer, *, include_usage: bool) -> list[dict[str, Any]]:
    events = list(answer.sse(include_usage=include_usage))
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = []
    for event in events[:-1]:
        assert event.startswith(b"data: ")
        assert event.endswith(b"\n\n")
        chunk = orjson.loads(event[6:])
        validate("chunk", chunk)
        chunks.append(chunk)
    return chunks


def test_a_stored_completion_replays_as_valid_chunks() -> None:
    answer = CachedAnswer.of(FINISHED, body=orjson.dumps(COMPLETION))
    chunks = _events(answer, include_usage=True)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 9
    rebuilt = completion_from_chunks(chunks)
    assert rebuilt["choices"][0]["message"]["content"] == "It is sunny."
    assert (
        rebuilt["choices"][0]["message"]["tool_calls"]
        == (COMPLETION["choices"][0]["message"]["tool_calls"])
    )
    assert rebuilt["choices"][0]["finish_reason"] == "tool_calls"
    assert all(not c.get("usage") for c in _events(answer, include_usage=False))


def test_stored_chunks_replay_and_make_a_completion() -> None:
    chunks = replay_chunks(COMPLETION)
    usage_chunk = {**chunks[0], "choices": [], "usage": COMPLETION["usage"]}
    answer = CachedAnswer.of(FINISHED, chunks=[orjson.dumps(c) for c in [*chunks, usage_chunk]])
    assert len(answer.chunks) == len(chunks)  # the usage-only chunk is not kept
    replayed = _events(answer, include_usage=False)
    assert [c["choices"] for c in replayed] == [c["choices"] for c in chunks]
    completion = orjson.loads(answer.completion())
    validate("response", completion)
    assert completion["choices"][0]["message"]["content"] == "It is sunny."
    assert completion["usage"]["total_tokens"] == 9
    assert completion["created"] > 1


def test_a_stored_completion_is_served_with_a_fresh_created() -> None:
    answer = CachedAnswer.of(FINISHED, body=orjson.dumps(COMPLETION))
    served = orjson.loads(answer.completion())
    assert served["id"] == COMPLETION["id"]
    assert served["created"] > COMPLETION["created"]
    assert served["choices"] == COMPLETION["choices"]


async def test_entries_round_trip_through_redis(
    make_settings: SettingsFactory, redis: Redis
) -> None:
    cache = ResponseCache(make_settings(), redis, cast(UsageEvents, None))
    chat = _chat()
    key = cache.key_for(chat, {}, "key_a")
    assert key is not None
    assert await cache.get(key) is None
    await cache.store(key, CachedAnswer.of(FINISHED, body=orjson.dumps(COMPLETION)))
    stored = await cache.get(key)
    assert stored is not None
    assert stored.cost_usd == 0.0012
    assert 0 < await redis.ttl(key) <= 3600
    assert cache.key_for(chat, {"cache-control": "no-store"}, "key_a") is None
    assert cache.key_for(_chat(temperature=1), {}, "key_a") is None


def test_a_zero_ttl_turns_the_cache_off(make_settings: SettingsFactory, redis: Redis) -> None:
    cache = ResponseCache(make_settings(edge_cache_ttl=0), redis, cast(UsageEvents, None))
    assert not cache.enabled
    assert cache.key_for(_chat(), {}, "key_a") is None
