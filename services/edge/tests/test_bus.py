"""The edge's bus against a real nats-server, with a hand-driven 'router' on the other end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from tests.support.servers import start_nats

from switchboard.common.bus import NATS, nats_connection
from switchboard.common.errors import GatewayTimeoutError, ServiceUnavailableError, UpstreamError
from switchboard.common.settings import NatsSettings
from switchboard.common.wire import FrameKind, encode_frame
from switchboard.edge.bus import Bus


@pytest.fixture
async def nc(tmp_path: Path) -> AsyncIterator[NATS]:
    """A connection to a fresh nats-server."""
    server = start_nats(tmp_path, jetstream=False)
    try:
        async with nats_connection(NatsSettings(nats_url=server.url), name="test") as conn:
            yield conn
    finally:
        server.stop()


async def _deadline(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_frames_arrive_in_order_and_keepalives_are_skipped(nc: NATS) -> None:
    async def router(msg: Msg) -> None:
        for frame in (
            encode_frame(FrameKind.KEEPALIVE),
            encode_frame(FrameKind.CHUNK, b"{}"),
            encode_frame(FrameKind.END, b"{}"),
        ):
            await nc.publish(msg.reply, frame)

    await nc.subscribe("work", cb=router)
    bus = Bus(nc, idle_timeout=2)
    await bus.start()
    exchange = await bus.open("work", b"", deadline=await _deadline(5))
    kinds = [frame.kind async for frame in _take(exchange, 2)]
    exchange.close()
    exchange.close()
    assert kinds == [FrameKind.CHUNK, FrameKind.END]


async def _take(exchange: AsyncIterator[object], count: int) -> AsyncIterator[object]:  # type: ignore[misc]
    for _ in range(count):
        yield await anext(exchange)


async def test_no_responders_is_503(nc: NATS) -> None:
    bus = Bus(nc, idle_timeout=2)
    await bus.start()
    exchange = await bus.open("nobody.listens", b"", deadline=await _deadline(5))
    with pytest.raises(ServiceUnavailableError):
        await anext(exchange)
    with pytest.raises(ServiceUnavailableError):
        await bus.request("nobody.listens", b"", timeout=1)


async def test_silence_is_a_dead_router_and_deadline_is_a_timeout(nc: NATS) -> None:
    async def ignore(msg: Msg) -> None:
        pass

    await nc.subscribe("silent", cb=ignore)
    bus = Bus(nc, idle_timeout=0.2)
    await bus.start()
    exchange = await bus.open("silent", b"", deadline=await _deadline(5))
    with pytest.raises(UpstreamError) as caught:
        await anext(exchange)
    assert caught.value.code == "router_unresponsive"
    exchange = await bus.open("silent", b"", deadline=await _deadline(0.1))
    with pytest.raises(GatewayTimeoutError):
        await anext(exchange)
    exchange = await bus.open("silent", b"", deadline=await _deadline(-1))
    with pytest.raises(GatewayTimeoutError):
        await anext(exchange)
    with pytest.raises(GatewayTimeoutError):
        await bus.request("silent", b"", timeout=0.1)


async def test_cancel_is_published_even_from_a_cancelled_task(nc: NATS) -> None:
    received: asyncio.Queue[str] = asyncio.Queue()

    async def on_cancel(msg: Msg) -> None:
        await received.put(msg.subject)

    await nc.subscribe("switchboard.v1.chat.cancel.*", cb=on_cancel)
    bus = Bus(nc, idle_timeout=1)
    bus.cancel("req_1")
    assert await asyncio.wait_for(received.get(), 2) == "switchboard.v1.chat.cancel.req_1"


async def test_closed_connection_is_503(nc: NATS) -> None:
    bus = Bus(nc, idle_timeout=1)
    await nc.close()
    with pytest.raises(ServiceUnavailableError):
        await bus.open("x", b"", deadline=await _deadline(1))
    bus.cancel("req_2")  # best effort: logged, not raised
    await asyncio.sleep(0.05)
