"""The usage event leaves on the router's connection ahead of the answer's end frame, so a
router killed right after the frame has still sent the event (real nats-server)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from tests.support.servers import ManagedProcess

from switchboard.common import subjects
from switchboard.common.events import UsageRecorded
from switchboard.router.publisher import UsagePublisher

FRAMES = "test.frames"


async def test_each_event_is_on_the_wire_before_the_frame_after_it(
    nats_server: ManagedProcess,
    nc: Client,
    make_settings: Callable[..., Any],
    usage_event: Callable[[str], UsageRecorded],
) -> None:
    seen: list[str] = []
    done = asyncio.Event()

    async def watch(msg: Msg) -> None:
        if msg.subject in (subjects.USAGE_RECORDED, FRAMES):
            seen.append("event" if msg.subject == subjects.USAGE_RECORDED else "frame")
        if len(seen) == 40:
            done.set()

    # One subscription for both: messages of one subscription keep the server's order.
    await nc.subscribe(">", cb=watch)
    await nc.flush()
    router = await nats.connect(nats_server.url)
    publisher = UsagePublisher(router, make_settings())
    await publisher.start()
    try:
        for number in range(20):
            await publisher.publish(usage_event(f"r{number}"))
            await router.publish(FRAMES, b"t")  # the terminal frame, right after
        async with asyncio.timeout(10):
            await done.wait()
            while publisher.backlog:  # noqa: ASYNC110 - acks in the background
                await asyncio.sleep(0.01)
    finally:
        await publisher.close(grace=2)
        await router.close()
    assert seen == ["event", "frame"] * 20, seen
    assert (publisher.published, publisher.dropped) == (20, 0)
    stream = await nc.jetstream().stream_info(subjects.USAGE_STREAM)
    assert stream.state.messages == 20
