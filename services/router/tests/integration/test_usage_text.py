"""Usage events on a real JetStream with the emulator upstream: prompt and answer text only
in privacy mode ``full`` (setting or key), the key's owner and mode, the cost split."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import orjson
from nats.aio.client import Client
from nats.js.errors import NotFoundError as StreamNotFoundError

from switchboard.common import subjects
from switchboard.common.events import UsageRecorded
from switchboard.common.wire import ChatRequest, FrameKind, KeyIdentity

from ._support import Exchange

MODEL = "openai/gpt-4o-mini"
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "My card is on the table"},
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


async def usage_events(nc: Client, count: int) -> dict[str, UsageRecorded]:
    """The first ``count`` events of the usage stream, by request id."""
    js = nc.jetstream()
    async with asyncio.timeout(5):  # the router may still be creating the stream
        while True:
            try:
                await js.stream_info(subjects.USAGE_STREAM)
                break
            except StreamNotFoundError:
                await asyncio.sleep(0.05)
    sub = await js.subscribe(subjects.USAGE_RECORDED, ordered_consumer=True)
    events: dict[str, UsageRecorded] = {}
    try:
        async with asyncio.timeout(10):
            while len(events) < count:
                msg = await sub.next_msg(timeout=10)
                event = UsageRecorded.model_validate_json(msg.data)
                events[event.request_id] = event
    finally:
        await sub.unsubscribe()
    return events


async def chat(nc: Client, make_envelope: Any, key: KeyIdentity, **request: Any) -> Exchange:
    envelope: ChatRequest = make_envelope(model=MODEL, messages=MESSAGES, **request)
    ex = await Exchange(nc, envelope.model_copy(update={"key": key})).start()
    await ex.until_end()
    assert ex.frames[-1].kind is FrameKind.END
    return ex


def streamed_text(ex: Exchange) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in ex.chunks())


def assert_no_text(event: UsageRecorded) -> None:
    assert (event.input_messages, event.output_choices, event.text_truncated) == (
        None,
        None,
        False,
    )
    assert "table" not in orjson.dumps(event.model_dump(mode="json")).decode()


async def test_full_mode_events_carry_the_text(
    start_router: Any, nc: Client, make_envelope: Any
) -> None:
    await start_router(router_usage_privacy_mode="full")
    team = KeyIdentity(key_id="key_team", name="team", owner="team-42")
    secret = KeyIdentity(key_id="key_secret", owner="legal", privacy_mode="metadata")
    streamed = await chat(nc, make_envelope, team, stream=True)
    tools = await chat(nc, make_envelope, team, tools=[WEATHER_TOOL])
    private = await chat(nc, make_envelope, secret, stream=True)
    events = await usage_events(nc, 3)

    event = events[streamed.envelope.request_id]
    assert (event.key_owner, event.privacy_mode, event.stream) == ("team-42", None, True)
    assert event.input_messages == MESSAGES
    assert event.output_choices == [{"role": "assistant", "content": streamed_text(streamed)}]
    assert streamed_text(streamed) == "Echo: My card is on the table"
    assert not event.text_truncated

    event = events[tools.envelope.request_id]
    response = next(f.body for f in tools.frames if f.kind is FrameKind.RESPONSE)
    message = orjson.loads(response)["choices"][0]["message"]
    assert event.output_choices == [
        {"role": "assistant", "content": message["content"], "tool_calls": message["tool_calls"]}
    ]
    assert event.output_choices[0]["tool_calls"][0]["function"]["name"] == "get_weather"

    event = events[private.envelope.request_id]
    assert (event.key_owner, event.privacy_mode) == ("legal", "metadata")
    assert_no_text(event)

    # Every served event splits its cost (the catalog knows the model), exactly.
    for event in events.values():
        assert event.cost_usd is not None
        assert event.input_cost_usd is not None
        assert event.output_cost_usd is not None
        assert event.input_cost_usd > 0
        assert event.output_cost_usd > 0
        assert Decimal(repr(event.input_cost_usd)) + Decimal(repr(event.output_cost_usd)) == (
            Decimal(repr(event.cost_usd))
        )


async def test_metadata_mode_events_carry_no_text(
    start_router: Any, nc: Client, make_envelope: Any
) -> None:
    await start_router()  # ROUTER_USAGE_PRIVACY_MODE defaults to metadata
    plain = await chat(nc, make_envelope, KeyIdentity(key_id="key_plain"), stream=True)
    opted_in = KeyIdentity(key_id="key_full", privacy_mode="full")
    full = await chat(nc, make_envelope, opted_in, stream=True)
    events = await usage_events(nc, 2)

    assert_no_text(events[plain.envelope.request_id])
    event = events[full.envelope.request_id]
    assert event.privacy_mode == "full"
    assert event.input_messages == MESSAGES
    assert event.output_choices == [{"role": "assistant", "content": streamed_text(full)}]
