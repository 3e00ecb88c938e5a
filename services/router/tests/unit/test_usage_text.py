"""What the usage event of one exchange carries: key owner and privacy mode, prompt and
answer text only in privacy mode ``full``, and the cost split."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from switchboard.common.events import PrivacyMode, UsageRecorded
from switchboard.common.wire import ChatRequest, KeyIdentity
from switchboard.router.exchange import serve_chat
from switchboard.router.ledger import Ledger
from switchboard.router.openrouter.client import OpenRouterClient
from switchboard.router.publisher import UsagePublisher
from switchboard.router.reply import Reply
from switchboard.router.transcript import TRUNCATION_MARK, TextPolicy

MODEL = "openai/gpt-4o-mini"
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris?"},
]
USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 4,
    "total_tokens": 14,
    "cost": 0.0004,
    "cost_details": {
        "upstream_inference_cost": None,
        "upstream_inference_prompt_cost": 0.0001,
        "upstream_inference_completions_cost": 0.0003,
    },
}
TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "id": "gen-1",
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
    )


TEXT_CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Sunny, "}),
    chunk({"content": "21 °C."}),
    chunk({}, "stop"),
]
TOOL_CHUNKS = [
    chunk({"role": "assistant", "content": None}),
    chunk({"tool_calls": [{"index": 0, **TOOL_CALL, "function": {"name": "get_weather"}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    chunk({}, "tool_calls"),
]
USAGE_CHUNK = orjson.dumps({"id": "gen-1", "model": MODEL, "choices": [], "usage": USAGE})
COMPLETION = orjson.dumps(
    {
        "id": "gen-1",
        "model": MODEL,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Sunny.", "refusal": None},
                "finish_reason": "stop",
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
                "finish_reason": "tool_calls",
            },
        ],
        "usage": USAGE,
    }
)


def sse(*payloads: bytes, done: bool = True) -> bytes:
    body = b"".join(b"data: " + p + b"\n\n" for p in payloads)
    return body + (b"data: [DONE]\n\n" if done else b"")


def streamed(*payloads: bytes, done: bool = True) -> httpx.Response:
    return httpx.Response(
        200, content=sse(*payloads, done=done), headers={"content-type": "text/event-stream"}
    )


Respond = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def serve(
    fake_nats: Any, make_settings: Callable[..., Any], make_services: Callable[..., Any]
) -> Callable[..., Any]:
    """Serve one request against ``respond``; returns its usage event."""

    async def run(
        respond: Respond,
        *,
        mode: PrivacyMode = "metadata",
        max_bytes: int = 262_144,
        key: KeyIdentity | None = None,
        messages: list[dict[str, Any]] | None = None,
        **request: Any,
    ) -> UsageRecorded:
        envelope: ChatRequest = ChatRequest.model_validate(
            {
                "request_id": "req_text",
                "key": key or KeyIdentity(key_id="key_test", name="tests"),
                "received_at": 1.0,
                "deadline": 10**10,
                "request": {"model": MODEL, "messages": messages or MESSAGES, **request},
            }
        )
        recorded: list[UsageRecorded] = []
        transport = httpx.MockTransport(respond)
        async with OpenRouterClient.open(make_settings(), transport=transport) as client:
            services = dataclasses.replace(
                make_services(client, recorded=recorded),
                usage_text=TextPolicy(mode=mode, max_bytes=max_bytes),
            )
            reply = Reply(fake_nats, "_INBOX.test.1", envelope.request_id)
            await asyncio.create_task(serve_chat(envelope, reply, services))
        (event,) = recorded
        return event

    return run


def no_text(event: UsageRecorded) -> bool:
    return (event.input_messages, event.output_choices, event.text_truncated) == (
        None,
        None,
        False,
    )


# --------------------------------------------------------------------------------- gating


@pytest.mark.parametrize("mode", ["metadata", "off"])
async def test_no_text_unless_full(serve: Any, mode: PrivacyMode) -> None:
    event = await serve(lambda _: streamed(*TEXT_CHUNKS, USAGE_CHUNK), mode=mode, stream=True)
    assert event.status == "ok"
    assert no_text(event)
    assert "Paris" not in event.model_dump_json()


async def test_key_owner_and_privacy_mode_are_copied(serve: Any) -> None:
    key = KeyIdentity(key_id="key_1", name="ci", owner="team-data", privacy_mode="off")
    event = await serve(lambda _: streamed(*TEXT_CHUNKS, USAGE_CHUNK), mode="full", key=key)
    assert (event.key_id, event.key_owner, event.privacy_mode) == ("key_1", "team-data", "off")
    assert no_text(event), "the key's own mode beats the setting"
    plain = await serve(lambda _: httpx.Response(200, content=COMPLETION))
    assert (plain.key_owner, plain.privacy_mode) == (None, None)


async def test_a_full_key_beats_a_metadata_setting(serve: Any) -> None:
    key = KeyIdentity(key_id="key_1", privacy_mode="full")
    event = await serve(lambda _: httpx.Response(200, content=COMPLETION), key=key)
    assert event.privacy_mode == "full"
    assert event.input_messages == MESSAGES
    assert event.output_choices == [
        {"role": "assistant", "content": "Sunny."},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
    ]
    assert not event.text_truncated


def test_nothing_is_collected_unless_full(make_envelope: Any) -> None:
    envelope = make_envelope()
    assert Ledger(envelope).output is None
    assert Ledger(envelope, text=TextPolicy(mode="metadata")).output is None
    assert Ledger(envelope, text=TextPolicy(mode="full")).output is not None


# ------------------------------------------------------------------------------- full text


async def test_a_streamed_answer_is_put_together(serve: Any) -> None:
    event = await serve(
        lambda _: streamed(*TEXT_CHUNKS, USAGE_CHUNK), mode="full", stream=True, user="u-1"
    )
    assert event.input_messages == MESSAGES
    assert event.output_choices == [{"role": "assistant", "content": "Sunny, 21 °C."}]
    assert event.end_user == "u-1"


async def test_streamed_tool_calls_are_put_together(serve: Any, fake_nats: Any) -> None:
    event = await serve(lambda _: streamed(*TOOL_CHUNKS, USAGE_CHUNK), mode="full", stream=True)
    assert event.output_choices == [
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}
    ]
    # The chunks went to the client exactly as received.
    sent = [frame.body for frame in fake_nats.frames if frame.kind.value == b"c"]
    assert sent == TOOL_CHUNKS


async def test_a_broken_stream_records_what_was_sent(serve: Any) -> None:
    event = await serve(lambda _: streamed(*TEXT_CHUNKS[:2], done=False), mode="full", stream=True)
    assert event.status == "error"
    assert event.output_choices == [{"role": "assistant", "content": "Sunny, "}]


async def test_a_failure_before_any_output_has_the_prompt_only(serve: Any) -> None:
    event = await serve(
        lambda _: httpx.Response(400, json={"error": {"message": "bad"}}), mode="full"
    )
    assert event.status == "error"
    assert (event.input_messages, event.output_choices) == (MESSAGES, None)


async def test_text_is_capped(serve: Any) -> None:
    long = [{"role": "user", "content": "Paris " * 2_000}]
    event = await serve(
        lambda _: httpx.Response(200, content=COMPLETION),
        mode="full",
        max_bytes=2_048,
        messages=long,
    )
    assert event.text_truncated
    assert event.input_messages is not None
    assert event.input_messages[0]["content"].endswith(TRUNCATION_MARK)
    assert len(orjson.dumps([event.input_messages, event.output_choices])) <= 2_048


# ------------------------------------------------------------------------------------ cost


async def test_the_cost_split_reaches_the_event(serve: Any) -> None:
    event = await serve(lambda _: httpx.Response(200, content=COMPLETION))
    assert (event.cost_usd, event.cost_source) == (0.0004, "upstream")
    assert (event.input_cost_usd, event.output_cost_usd) == (0.0001, 0.0003)


def test_a_dropped_event_is_logged_without_its_text(
    make_settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    class Nats:
        def jetstream(self, **_: Any) -> object:
            return object()

    publisher = UsagePublisher(Nats(), make_settings(router_usage_queue_size=1))  # type: ignore[arg-type]
    event = UsageRecorded(
        event_id="r1",
        request_id="r1",
        key_id="k",
        requested_model=MODEL,
        status="ok",
        http_status=200,
        latency_ms=1,
        received_at=1.0,
        started_at=1.0,
        finished_at=1.0,
        input_messages=[{"role": "user", "content": "my secret plan"}],
        output_choices=[{"role": "assistant", "content": "noted"}],
    )
    publisher.record(event)
    publisher.record(event.model_copy(update={"event_id": "r2", "request_id": "r2"}))
    out = capsys.readouterr().out
    assert "usage.dropped" in out
    assert "text_omitted=True" in out
    assert "r1" in out
    assert "my secret plan" not in out
    assert "noted" not in out
