"""The exact-match response cache through the whole stack: hits never reach the upstream."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, cast

import nats
import openai
from nats.js.api import DeliverPolicy

from switchboard.common import subjects
from tests.e2e.conftest import Stack
from tests.support.openai_schema import validate
from tests.support.openrouter_emulator import EmulatorServer
from tests.support.services import create_key

MODEL = "openai/gpt-4o-mini"


def _messages() -> Any:
    """A prompt no other test sends, so that no earlier answer is cached for it."""
    return [{"role": "user", "content": f"cache me {uuid.uuid4().hex}"}]


def _ask(client: openai.OpenAI, messages: Any, **kwargs: Any) -> Any:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, **{"temperature": 0, **kwargs}
    )
    validate("response", raw.http_response.json())
    return raw


def _stream(
    client: openai.OpenAI, messages: Any, **kwargs: Any
) -> tuple[str, list[dict[str, Any]]]:
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=messages, stream=True, **{"temperature": 0, **kwargs}
    ) as response:
        status = response.headers["x-switchboard-cache"]
        chunks = [cast(Any, chunk).to_dict() for chunk in response.parse()]
    for chunk in chunks:
        validate("chunk", chunk)
    return status, chunks


def _text(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"]
    )


def test_a_repeated_deterministic_request_is_answered_from_the_cache(
    client: openai.OpenAI, upstream: EmulatorServer
) -> None:
    messages = _messages()
    first = _ask(client, messages)
    assert first.headers["x-switchboard-cache"] == "miss"
    assert len(upstream.calls) == 1
    second = _ask(client, messages)
    assert second.headers["x-switchboard-cache"] == "hit"
    assert second.headers["x-switchboard-model"] == MODEL
    assert len(upstream.calls) == 1
    assert second.parse().choices == first.parse().choices
    assert second.parse().id == first.parse().id
    assert second.parse().usage == first.parse().usage


def test_a_cached_completion_replays_as_a_stream(
    client: openai.OpenAI, upstream: EmulatorServer
) -> None:
    messages = _messages()
    answer = _ask(client, messages, seed=7).parse()
    status, chunks = _stream(client, messages, seed=7, stream_options={"include_usage": True})
    assert status == "hit"
    assert len(upstream.calls) == 1
    assert _text(chunks) == answer.choices[0].message.content
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == answer.choices[0].finish_reason
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == answer.usage.total_tokens


def test_a_cached_stream_replays_as_a_stream_and_as_a_completion(
    client: openai.OpenAI, upstream: EmulatorServer
) -> None:
    messages = _messages()
    status, original = _stream(client, messages)
    assert status == "miss"
    status, replayed = _stream(client, messages)
    assert status == "hit"
    assert [c["choices"] for c in replayed] == [c["choices"] for c in original]
    assert all(not c.get("usage") for c in replayed)
    _, with_usage = _stream(client, messages, stream_options={"include_usage": True})
    assert with_usage[-1]["usage"]["completion_tokens"] > 0
    completion = _ask(client, messages)
    assert completion.headers["x-switchboard-cache"] == "hit"
    assert completion.parse().choices[0].message.content == _text(original)
    assert len(upstream.calls) == 1


def test_cache_control_no_cache_bypasses_the_cache(
    client: openai.OpenAI, upstream: EmulatorServer
) -> None:
    messages = _messages()
    _ask(client, messages)
    for value in ("no-cache", "no-store"):
        raw = _ask(client, messages, extra_headers={"Cache-Control": value})
        assert raw.headers["x-switchboard-cache"] == "bypass"
    assert len(upstream.calls) == 3


def test_cached_answers_are_scoped_to_their_key(
    client: openai.OpenAI, upstream: EmulatorServer, stack: Stack
) -> None:
    messages = _messages()
    _ask(client, messages)
    other = openai.OpenAI(
        base_url=stack.base_url,
        api_key=create_key(stack.valkey.url, "cache-other")["key"],
        max_retries=0,
        timeout=30,
    )
    assert _ask(other, messages).headers["x-switchboard-cache"] == "miss"
    assert _ask(other, messages).headers["x-switchboard-cache"] == "hit"
    assert len(upstream.calls) == 2


def test_non_deterministic_requests_are_never_cached(
    client: openai.OpenAI, upstream: EmulatorServer
) -> None:
    messages = _messages()
    for _ in range(2):
        raw = _ask(client, messages, temperature=0.7)
        assert raw.headers["x-switchboard-cache"] == "bypass"
    assert _ask(client, messages, n=1, temperature=1.0).headers["x-switchboard-cache"] == "bypass"
    assert len(upstream.calls) == 3


async def _usage_events(stack: Stack, request_id: str) -> list[dict[str, Any]]:
    """Every usage event of ``request_id`` on the stream, waiting for the first a while."""
    nc = await nats.connect(stack.nats.url)
    try:
        js = nc.jetstream()
        for _ in range(50):
            last = (await js.stream_info(subjects.USAGE_STREAM)).state.last_seq
            sub = await js.subscribe(
                subjects.USAGE_RECORDED, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
            )
            found = []
            sequence = 0
            while sequence < last:
                message = await sub.next_msg(timeout=5)
                sequence = message.metadata.sequence.stream
                event = json.loads(message.data)
                if event["request_id"] == request_id:
                    found.append(event)
            await sub.unsubscribe()
            if found:
                return found
            await asyncio.sleep(0.2)
        return []
    finally:
        await nc.close()


async def test_a_hit_publishes_one_usage_event_with_the_cost_saved(
    client: openai.OpenAI, upstream: EmulatorServer, stack: Stack
) -> None:
    messages = _messages()
    miss = _ask(client, messages, user="end-user-7")
    hit = _ask(client, messages, user="end-user-7")
    assert hit.headers["x-switchboard-cache"] == "hit"
    assert len(upstream.calls) == 1
    (original,) = await _usage_events(stack, miss.headers["x-request-id"])
    (event,) = await _usage_events(stack, hit.headers["x-request-id"])
    assert original["cache_hit"] is False
    assert event["cache_hit"] is True
    assert event["status"] == "ok"
    assert event["http_status"] == 200
    assert event["cost_usd"] == 0
    assert event["cost_saved_usd"] == original["cost_usd"]
    assert event["cost_saved_usd"] is not None
    assert event["total_tokens"] == original["total_tokens"] > 0
    assert event["served_model"] == MODEL
    assert event["end_user"] == "end-user-7"
    assert event["key_id"] == original["key_id"]
