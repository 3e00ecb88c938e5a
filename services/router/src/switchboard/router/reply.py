"""The frames of one exchange, published on its reply subject.

:class:`Reply` keeps the promises of :mod:`switchboard.common.wire`: frames go out in
order, ``CompletionFinished.chunks`` counts the ``c`` frames, and exactly one terminal
frame (``t`` or ``e``) ends the exchange, after which nothing more is published. Once the
client has gone (:meth:`Reply.silence`) nothing at all is published.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.errors import Error as NatsError

from switchboard.common.bus import NATS
from switchboard.common.errors import GatewayError
from switchboard.common.wire import (
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    FrameKind,
    encode_frame,
)

__all__ = ["Reply", "ReplyLostError", "keepalive", "reply_failure"]


class ReplyLostError(Exception):
    """A frame could not be handed to NATS; nobody will read the rest of the answer."""


def reply_failure(
    request_id: str,
    error: GatewayError,
    *,
    chunks: int = 0,
    model: str | None = None,
    fallbacks: int = 0,
    retries: int = 0,
) -> CompletionFailed:
    """The ``e`` frame body for ``error``."""
    return CompletionFailed(
        request_id=request_id,
        status=error.status,
        error=error.detail,
        retry_after=error.retry_after,
        chunks=chunks,
        model=model,
        fallbacks=fallbacks,
        retries=retries,
    )


class Reply:
    """Publishes the frames of one exchange on its reply subject."""

    def __init__(self, nc: NATS, subject: str, request_id: str) -> None:
        self._nc = nc
        self._subject = subject
        self.request_id = request_id
        self.chunks = 0
        """``c`` frames published so far."""
        self.last_sent = asyncio.get_running_loop().time()
        """Loop time of the last frame published (or of the start)."""
        self._ended = False
        self._silenced = False
        self._output = False

    @property
    def open(self) -> bool:
        """Frames may still be published."""
        return not (self._ended or self._silenced)

    @property
    def silenced(self) -> bool:
        """The client went away; nothing more is published."""
        return self._silenced

    @property
    def output_started(self) -> bool:
        """A ``c`` or ``r`` frame was published: the answer can no longer be retried."""
        return self._output

    def silence(self) -> None:
        """Publish nothing more: the client is gone."""
        self._silenced = True

    async def _publish(self, kind: FrameKind, body: bytes) -> None:
        if not self.open:
            return
        try:
            await self._nc.publish(self._subject, encode_frame(kind, body))
        except NatsError as exc:
            raise ReplyLostError(type(exc).__name__) from exc
        self.last_sent = asyncio.get_running_loop().time()

    async def chunk(self, raw: bytes) -> None:
        """One stream chunk, its JSON bytes as received."""
        self._output = True
        await self._publish(FrameKind.CHUNK, raw)
        self.chunks += 1

    async def response(self, raw: bytes) -> None:
        """A whole completion, its JSON bytes as received."""
        self._output = True
        await self._publish(FrameKind.RESPONSE, raw)

    async def started(self, started: CompletionStarted) -> None:
        """Who serves the answer; right before its first ``c`` or ``r`` frame."""
        await self._publish(FrameKind.STARTED, started.model_dump_json().encode())

    async def keepalive(self) -> None:
        """Tell the edge this exchange is still being worked on."""
        await self._publish(FrameKind.KEEPALIVE, b"")

    async def finish(self, finished: CompletionFinished) -> None:
        """End the exchange successfully."""
        await self._publish(FrameKind.END, finished.model_dump_json().encode())
        self._ended = True

    async def fail(
        self, error: GatewayError, *, model: str | None = None, fallbacks: int = 0, retries: int = 0
    ) -> None:
        """End the exchange with ``error``."""
        body = reply_failure(
            self.request_id,
            error,
            chunks=self.chunks,
            model=model,
            fallbacks=fallbacks,
            retries=retries,
        )
        await self._publish(FrameKind.ERROR, body.model_dump_json().encode())
        self._ended = True


@asynccontextmanager
async def keepalive(reply: Reply, interval: float) -> AsyncIterator[None]:
    """Publish a ``k`` frame whenever ``reply`` has been quiet for ``interval`` seconds."""

    async def beat() -> None:
        loop = asyncio.get_running_loop()
        # A failed publish ends the beat; the exchange meets the same failure on its own
        # next frame and deals with it there.
        while reply.open:
            quiet_for = loop.time() - reply.last_sent
            if quiet_for < interval:
                await asyncio.sleep(interval - quiet_for)
                continue
            await reply.keepalive()

    task = asyncio.get_running_loop().create_task(beat(), name=f"keepalive-{reply.request_id}")
    try:
        yield
    finally:
        task.cancel()
        # ``wait`` rather than ``await task``: a cancellation of *this* task must propagate.
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not report it as lost
