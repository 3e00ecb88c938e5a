"""Helpers for the router's integration tests: playing the edge on NATS."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from nats.aio.client import Client
from nats.errors import NoRespondersError

from switchboard.common import subjects
from switchboard.common.wire import ChatRequest, Frame, FrameKind, decode_frame

UPSTREAM_KEY = "sk-or-v1-integration-secret"


async def wait_for_router(nc: Client, *, within: float = 20.0, alive: Any = None) -> None:
    """Ping until some router answers; ``alive()`` returning False fails fast."""
    deadline = time.monotonic() + within
    while True:
        try:
            await nc.request(subjects.ROUTER_PING, b"", timeout=0.5)
        except (NoRespondersError, TimeoutError):
            if alive is not None and not alive():
                raise RuntimeError("the router exited") from None
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)
        else:
            return


class Exchange:
    """The frames of one chat request, as the edge receives them."""

    def __init__(self, nc: Client, envelope: ChatRequest) -> None:
        self.nc = nc
        self.envelope = envelope
        self.inbox = f"_INBOX.test.{uuid.uuid4().hex}"
        self.queue: asyncio.Queue[Frame] = asyncio.Queue()
        self.frames: list[Frame] = []

    async def start(self, payload: bytes | None = None) -> Exchange:
        async def on_frame(msg: Any) -> None:
            self.queue.put_nowait(decode_frame(msg.data))

        self.sub = await self.nc.subscribe(self.inbox, cb=on_frame)
        data = (
            payload
            if payload is not None
            else self.envelope.model_dump_json(exclude_unset=True, by_alias=True).encode()
        )
        await self.nc.publish(subjects.CHAT_REQUEST, data, reply=self.inbox)
        await self.nc.flush()
        return self

    async def next(self, within: float = 5.0) -> Frame:
        frame = await asyncio.wait_for(self.queue.get(), within)
        self.frames.append(frame)
        return frame

    async def until_end(self, within: float = 10.0) -> list[Frame]:
        """Every frame up to and including the terminal one."""
        async with asyncio.timeout(within):
            while True:
                frame = await self.next(within)
                if frame.kind in (FrameKind.END, FrameKind.ERROR):
                    return self.frames

    async def quiet_for(self, seconds: float) -> bool:
        """True if no frame arrives within ``seconds``."""
        try:
            await self.next(seconds)
        except TimeoutError:
            return True
        return False

    @property
    def kinds(self) -> str:
        return "".join(frame.kind.value.decode() for frame in self.frames)

    def chunks(self) -> list[dict[str, Any]]:
        return [orjson.loads(f.body) for f in self.frames if f.kind is FrameKind.CHUNK]

    def terminal(self) -> Any:
        return orjson.loads(self.frames[-1].body)
