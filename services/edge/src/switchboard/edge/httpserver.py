"""The HTTP/1.1 protocol the edge serves with: uvicorn's httptools protocol, guarded
against slow and oversized clients.

uvicorn bounds only the idle time between two requests of a kept-alive connection
(``timeout_keep_alive``). A client may otherwise take for ever to send a request's
headers or body (slowloris), and send as many header bytes as it likes; each such
connection holds a socket and memory, and a few thousand of them exhaust the process.
This protocol:

- closes a connection whose request headers are not complete ``EDGE_HEADER_TIMEOUT``
  seconds after it opened (or, kept alive, after the next request's first byte), with a
  ``408``;
- closes one whose body is not complete ``EDGE_BODY_TIMEOUT`` seconds after its headers
  (``408`` if no response started);
- refuses more than ``EDGE_MAX_HEADER_BYTES`` of request line and headers with ``431``;
- answers a request it cannot parse with OpenAI's error body instead of uvicorn's plain
  text;
- offers handlers the ASGI extension ``switchboard.disconnect``
  (:mod:`switchboard.edge.disconnect`): a callback when the connection is lost.

These answers come before the application sees the request, so they are written here, in
the same shape as every other error of the edge.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from switchboard.common.logs import get_logger
from switchboard.edge.disconnect import EXTENSION, Unwatch
from switchboard.edge.settings import EdgeSettings

__all__ = ["GuardedHttpToolsProtocol", "guarded_protocol"]

log = get_logger(__name__)

_LINGER_SECONDS = 2.0
"""How long a connection answered with an error still swallows what the client sends."""
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _HeadersTooLargeError(Exception):
    """Raised in a parser callback: httptools stops parsing and reports a parser error."""


def _error_response(status: int, message: str, code: str) -> bytes:
    body = orjson.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    )
    head = [
        b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"x-content-type-options: nosniff",
        b"cache-control: no-store",
        b"connection: close",
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines for headers and body, and a header cap."""

    header_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 60.0
    max_header_bytes: ClassVar[int] = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._headers_too_large = False
        self._lingering = False
        self._lost = False
        self._on_lost: list[Callable[[], Any]] = []

    # ---------------------------------------------------------------- deadlines

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, phase: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if phase == "headers" and cycle is not None and not cycle.response_complete:
            # A pipelined request waits for the answer to the one before it.
            self._arm(self.header_timeout, phase)
            return
        log.warning("http.slow_client", phase=phase)
        # A request whose headers never completed has no cycle of its own yet (the current
        # one, if any, is the previous request's, answered).
        if phase == "headers" or cycle is None or not cycle.response_started:
            self.transport.write(
                _error_response(
                    408, f"The request {phase} did not arrive in time.", "request_timeout"
                )
            )
            self._hang_up()
        else:
            self.transport.close()

    # ---------------------------------------------------------------- connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        self._lost = True
        callbacks, self._on_lost = self._on_lost, []
        for callback in callbacks:
            callback()

    def _watch_disconnect(self, callback: Callable[[], Any]) -> Unwatch:
        """The ``switchboard.disconnect`` extension: ``callback`` once the connection is
        lost, unless the returned function was called first."""
        if self._lost:
            self.loop.call_soon(callback)
            return lambda: None
        self._on_lost.append(callback)

        def unwatch() -> None:
            with contextlib.suppress(ValueError):
                self._on_lost.remove(callback)

        return unwatch

    def send_400_response(self, msg: str) -> None:
        self._disarm()
        if self._headers_too_large:
            limit = self.max_header_bytes
            message = f"The request line and headers are larger than {limit} bytes."
            self.transport.write(_error_response(431, message, "request_headers_too_large"))
        else:
            self.transport.write(_error_response(400, f"{msg}", "invalid_http_request"))
        self._hang_up()

    def _hang_up(self) -> None:
        """Close after an error answer, lingering: end our side (FIN after the answer) and
        drop what the client still sends for a moment. Closing outright while its bytes
        keep arriving makes the kernel reset the connection, and a reset discards the
        answer the client has not read yet."""
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(_LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self._lingering:
            super().data_received(data)

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {EXTENSION: {"watch": self._watch_disconnect}}
        self._header_bytes = 0
        if self._deadline is None:  # a kept-alive connection's next request starts
            self._arm(self.header_timeout, "headers")

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            self._headers_too_large = True
            raise _HeadersTooLargeError

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._arm(self.body_timeout, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


def guarded_protocol(settings: EdgeSettings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=``, with the limits of ``settings``."""
    return type(
        "EdgeHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout": settings.edge_header_timeout,
            "body_timeout": settings.edge_body_timeout,
            "max_header_bytes": settings.edge_max_header_bytes,
        },
    )
