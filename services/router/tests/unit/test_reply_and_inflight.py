"""Reply frames, keepalives, and the registry of in-flight exchanges."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from nats.errors import ConnectionClosedError

from switchboard.common.errors import RateLimitError
from switchboard.common.wire import CompletionFailed, CompletionFinished, FrameKind
from switchboard.router.inflight import InFlight
from switchboard.router.reply import Reply, ReplyLostError, keepalive


async def test_frames_in_order_and_chunk_count(fake_nats: Any) -> None:
    reply = Reply(fake_nats, "_INBOX.x.1", "r1")
    await reply.chunk(b'{"a":1}')
    await reply.chunk(b'{"a":2}')
    await reply.finish(
        CompletionFinished(request_id="r1", served_model="m", provider="p", chunks=2)
    )
    assert fake_nats.kinds == "cct"
    assert {subject for subject, _ in fake_nats.published} == {"_INBOX.x.1"}
    assert fake_nats.frames[0].body == b'{"a":1}'
    assert reply.chunks == 2
    assert not reply.open


async def test_nothing_after_the_terminal_frame(fake_nats: Any) -> None:
    reply = Reply(fake_nats, "inbox", "r1")
    await reply.response(b"{}")
    await reply.fail(RateLimitError("slow", retry_after=3))
    await reply.chunk(b"{}")
    await reply.keepalive()
    await reply.fail(RateLimitError("again"))
    assert fake_nats.kinds == "re"
    failed = CompletionFailed.model_validate_json(fake_nats.frames[1].body)
    assert failed.status == 429
    assert failed.retry_after == 3
    assert failed.error.type == "rate_limit_exceeded"


async def test_silenced_reply_publishes_nothing(fake_nats: Any) -> None:
    reply = Reply(fake_nats, "inbox", "r1")
    reply.silence()
    await reply.chunk(b"{}")
    await reply.fail(RateLimitError("x"))
    assert fake_nats.published == []
    assert reply.silenced


async def test_publish_failure_is_reply_lost() -> None:
    class Closed:
        async def publish(self, *_: object) -> None:
            raise ConnectionClosedError

    with pytest.raises(ReplyLostError):
        await Reply(Closed(), "inbox", "r1").chunk(b"{}")  # type: ignore[arg-type]


async def test_keepalive_only_while_quiet(fake_nats: Any) -> None:
    reply = Reply(fake_nats, "inbox", "r1")
    async with keepalive(reply, 0.05):
        await asyncio.sleep(0.13)  # quiet: two keepalives
        assert fake_nats.kinds == "kk"
        for _ in range(4):  # busy: chunks every 20 ms, no keepalive
            await reply.chunk(b"{}")
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # after the block: nothing more
    assert fake_nats.kinds == "kkcccc"
    assert all(frame.body == b"" for frame in fake_nats.frames if frame.kind is FrameKind.KEEPALIVE)


async def test_keepalive_never_suspends_the_exchange(fake_nats: Any) -> None:
    # Entering and leaving schedule no task the exchange waits for: frames published just
    # before and after leave in one write (nats-py writes once the publisher yields).
    reply = Reply(fake_nats, "r1", "r1")
    others_ran: list[str] = []
    asyncio.get_running_loop().call_soon(others_ran.append, "ran")
    async with keepalive(reply, 0.05):
        await reply.response(b"{}")
    assert others_ran == []
    await asyncio.sleep(0.12)
    assert others_ran == ["ran"]
    assert fake_nats.kinds == "r"  # and no beat after the block


async def test_keepalive_stops_when_publishing_fails() -> None:
    class Flaky:
        async def publish(self, *_: object) -> None:
            raise ConnectionClosedError

    reply = Reply(Flaky(), "inbox", "r1")  # type: ignore[arg-type]
    async with keepalive(reply, 0.01):
        await asyncio.sleep(0.05)


async def test_keepalive_does_not_swallow_cancellation(fake_nats: Any) -> None:
    reply = Reply(fake_nats, "inbox", "r1")

    async def body() -> None:
        async with keepalive(reply, 10):
            await asyncio.sleep(10)

    task = asyncio.create_task(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ------------------------------------------------------------------------------ in flight


async def test_spawn_cancel_and_duplicates(fake_nats: Any) -> None:
    inflight = InFlight(4)
    started = asyncio.Event()

    async def serve(reply: Reply) -> None:
        started.set()
        await asyncio.sleep(10)

    reply = Reply(fake_nats, "inbox", "r1")
    task = inflight.spawn(reply, serve)
    assert task is not None
    assert inflight.spawn(Reply(fake_nats, "inbox2", "r1"), serve) is None
    assert "r1" in inflight
    assert len(inflight) == 1
    await started.wait()
    assert inflight.cancel("r1")
    assert not inflight.cancel("unknown")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reply.silenced
    assert len(inflight) == 0


async def test_drain_waits_then_cancels_the_rest(fake_nats: Any) -> None:
    inflight = InFlight(4)
    finished: list[str] = []

    async def quick(reply: Reply) -> None:
        await asyncio.sleep(0.02)
        finished.append(reply.request_id)

    async def slow(reply: Reply) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await reply.fail(RateLimitError("stop"))
            raise

    inflight.spawn(Reply(fake_nats, "a", "quick"), quick)
    slow_reply = Reply(fake_nats, "b", "slow")
    inflight.spawn(slow_reply, slow)
    assert await inflight.drain(grace=0.1) == 1
    assert finished == ["quick"]
    assert not slow_reply.silenced
    assert fake_nats.kinds == "e"
    assert orjson.loads(fake_nats.frames[0].body)["request_id"] == "slow"
    assert await InFlight(1).drain(grace=1) == 0


async def test_a_cancel_that_overtakes_its_request_is_remembered(fake_nats: Any) -> None:
    inflight = InFlight(1)
    assert not inflight.cancel("early")
    assert inflight.cancelled_already("early")
    assert not inflight.cancelled_already("early"), "remembered once"
    assert not inflight.cancelled_already("never-cancelled")
    for number in range(5000):
        inflight.cancel(f"other-{number}")
    assert not inflight.cancelled_already("other-0"), "the oldest are forgotten"
    assert inflight.cancelled_already("other-4999")
