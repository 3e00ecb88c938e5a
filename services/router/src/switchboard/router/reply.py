"""The frames of one exchange, published on its reply subject.

:class:`Reply` keeps the promises of :mod:`switchboard.common.wire`: frames go out in
order, ``CompletionFinished.chunks`` counts the ``c`` frames, and exactly one terminal
frame (``t`` or ``e``) ends the exchange, after which nothing more is published. Once the
client has gone (:meth:`Reply.silence`) nothing at all is published.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager

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


class _Keepalive:
    """The beat of :func:`keepalive`: a timer of the event loop, not a task, so that
    entering and leaving it never suspends the exchange (frames published just before and
    after leave in one write)."""

    __slots__ = ("_beat", "_interval", "_loop", "_reply", "_timer")

    def __init__(self, reply: Reply, interval: float) -> None:
        self._reply = reply
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._beat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        self._timer = self._loop.call_later(self._interval, self._due)

    async def __aexit__(self, *_: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._beat is not None:
            self._beat.cancel()

    def _due(self) -> None:
        reply = self._reply
        if not reply.open:
            return
        quiet_for = self._loop.time() - reply.last_sent
        if quiet_for < self._interval:
            self._timer = self._loop.call_later(self._interval - quiet_for, self._due)
            return
        self._beat = self._loop.create_task(self._send(), name=f"keepalive-{reply.request_id}")

    async def _send(self) -> None:
        try:
            await self._reply.keepalive()
        except ReplyLostError:
            # A failed publish ends the beat; the exchange meets the same failure on its
            # own next frame and deals with it there.
            return
        self._timer = self._loop.call_later(self._interval, self._due)


def keepalive(reply: Reply, interval: float) -> AbstractAsyncContextManager[None]:
    """Publish a ``k`` frame whenever ``reply`` has been quiet for ``interval`` seconds."""
    return _Keepalive(reply, interval)
