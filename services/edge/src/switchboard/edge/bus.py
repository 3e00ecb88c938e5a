"""The edge's side of the NATS conversation with routers.

One wildcard subscription per process (``_INBOX.sb.<instance>.*``) receives every reply
frame; each in-flight request owns one token of it and a queue. Frames are routed by
subject token without being parsed.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from switchboard.common import subjects
from switchboard.common.errors import GatewayTimeoutError, ServiceUnavailableError, UpstreamError
from switchboard.common.logs import get_logger
from switchboard.common.wire import Frame, FrameKind, decode_frame

__all__ = ["Bus", "ClientDisconnectedError", "Exchange"]

log = get_logger(__name__)

_STATUS_HEADER = "Status"
_NO_RESPONDERS = "503"
_DEADLINE_PASSED = "The request deadline passed before the answer was complete."
_NO_ROUTER = "No router is available to serve this request; try again shortly."


class ClientDisconnectedError(Exception):
    """The client of an exchange went away (:meth:`Exchange.interrupt`)."""


class Exchange:
    """The reply frames of one request, in order, as an async iterator.

    Keepalive frames are consumed here; an idle gap longer than ``idle_timeout`` or a
    passed deadline ends the iteration with :class:`GatewayTimeoutError`, and
    :meth:`interrupt` with :class:`ClientDisconnectedError`.
    """

    def __init__(
        self,
        queue: asyncio.Queue[Msg | None],
        *,
        idle_timeout: float,
        deadline: float,
        on_close: Callable[[], object],
    ) -> None:
        self._queue = queue
        self._on_close = on_close
        self._idle_timeout = idle_timeout
        self._deadline = deadline

    def close(self) -> None:
        """Stop receiving this exchange's frames (idempotent)."""
        self._on_close()

    def interrupt(self) -> None:
        """The client went away: the iteration ends after the frames already received."""
        self._queue.put_nowait(None)

    def __aiter__(self) -> Exchange:
        return self

    async def __anext__(self) -> Frame:
        loop = asyncio.get_running_loop()
        while True:
            wait = min(self._idle_timeout, self._deadline - loop.time())
            if wait <= 0:
                raise GatewayTimeoutError(_DEADLINE_PASSED)
            try:
                # Frames often arrive together (a completion's r and t): those already
                # here need no timer.
                msg = (
                    self._queue.get_nowait()
                    if not self._queue.empty()
                    else await asyncio.wait_for(self._queue.get(), wait)
                )
            except TimeoutError:
                if loop.time() >= self._deadline:
                    raise GatewayTimeoutError(_DEADLINE_PASSED) from None
                raise UpstreamError(
                    "The router stopped responding while serving this request.",
                    code="router_unresponsive",
                ) from None
            if msg is None:
                raise ClientDisconnectedError
            if not msg.data:
                if msg.headers and msg.headers.get(_STATUS_HEADER) == _NO_RESPONDERS:
                    raise ServiceUnavailableError(_NO_ROUTER, code="no_router")
                continue
            frame = decode_frame(msg.data)
            if frame.kind is FrameKind.KEEPALIVE:
                continue
            return frame


class Bus:
    """Publishes requests to routers and hands back their reply frames."""

    def __init__(self, nc: NATS, *, idle_timeout: float) -> None:
        self._nc = nc
        self._idle_timeout = idle_timeout
        self._prefix = subjects.reply_inbox_prefix(secrets.token_hex(8))
        self._queues: dict[str, asyncio.Queue[Msg | None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    @property
    def nc(self) -> NATS:
        """The underlying connection (for health checks)."""
        return self._nc

    async def start(self) -> None:
        """Subscribe to this process's reply inbox."""
        await self._nc.subscribe(
            f"{self._prefix}.*", cb=self._dispatch, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        # The server must know the inbox before the first request names it as reply subject.
        await self._nc.flush()

    async def _dispatch(self, msg: Msg) -> None:
        token = msg.subject.rpartition(".")[2]
        queue = self._queues.get(token)
        if queue is not None:
            queue.put_nowait(msg)

    async def open(
        self,
        subject: str,
        payload: bytes,
        *,
        deadline: float,
        headers: dict[str, str] | None = None,
    ) -> Exchange:
        """Publish ``payload`` on ``subject``; the returned exchange yields its reply frames.

        ``deadline`` is on the event loop's clock (``loop.time()``). Close the exchange when
        done with it. ``headers`` go with the message (the trace context).
        """
        if not self._nc.is_connected:
            raise ServiceUnavailableError(
                "The message bus is unavailable; try again shortly.", code="bus_unavailable"
            )
        token = secrets.token_hex(8)
        queue: asyncio.Queue[Msg | None] = asyncio.Queue()
        self._queues[token] = queue
        try:
            await self._nc.publish(
                subject, payload, reply=f"{self._prefix}.{token}", headers=headers
            )
        except BaseException:
            del self._queues[token]
            raise
        return Exchange(
            queue,
            idle_timeout=self._idle_timeout,
            deadline=deadline,
            on_close=lambda: self._queues.pop(token, None),
        )

    async def request(self, subject: str, payload: bytes, *, timeout: float) -> bytes:
        """One request, one reply (pings); errors as :class:`GatewayError`."""
        try:
            msg = await self._nc.request(subject, payload, timeout=timeout)
        except NoRespondersError:
            raise ServiceUnavailableError(_NO_ROUTER, code="no_router") from None
        except TimeoutError:  # nats-py's own subclass, or asyncio's
            raise GatewayTimeoutError("The router did not answer in time.") from None
        return msg.data

    async def request_frame(self, subject: str, payload: bytes, *, timeout: float) -> Frame:
        """One request, one reply frame (the model list)."""
        return decode_frame(await self.request(subject, payload, timeout=timeout))

    def cancel(self, request_id: str) -> None:
        """Tell routers the client of ``request_id`` is gone; safe to call while cancelled."""
        task = asyncio.get_running_loop().create_task(self._publish_cancel(request_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _publish_cancel(self, request_id: str) -> None:
        try:
            await self._nc.publish(subjects.chat_cancel(request_id), b"")
        except Exception as exc:  # noqa: BLE001 - best effort: the deadline still bounds the work
            log.warning("cancel.publish_failed", request_id=request_id, error=type(exc).__name__)
