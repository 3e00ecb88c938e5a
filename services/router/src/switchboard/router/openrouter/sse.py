"""An OpenRouter chat completion stream, event by event.

``httpx-sse`` does the Server-Sent Events framing: it skips comment lines (OpenRouter's
``: OPENROUTER PROCESSING``) and joins a multi-line ``data:`` field with ``\\n``. What is
left here is the chat stream protocol: every ``data`` is one JSON chunk until ``[DONE]``;
a chunk with an ``error`` object ends the stream as a failure; a stream that stops without
``[DONE]`` was cut off.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable

from httpx_sse import ServerSentEvent

from switchboard.router.openrouter.errors import UpstreamDisconnectedError
from switchboard.router.openrouter.payloads import UpstreamObject, parse_object

__all__ = ["DONE", "chunk_bytes", "parse_stream"]

DONE = "[DONE]"


def chunk_bytes(data: str) -> bytes:
    """The chunk's JSON as one line of bytes.

    A JSON text cannot hold a raw line break inside a string, so the breaks that joined a
    multi-line ``data:`` field sit between tokens, where a space means the same. One line
    is what the edge can write after ``data: `` without breaking the client's SSE framing.
    """
    if "\n" in data:
        data = data.replace("\n", " ")
    return data.encode()


async def parse_stream(events: AsyncIterable[ServerSentEvent]) -> AsyncGenerator[UpstreamObject]:
    """Yield each chunk of the stream until ``[DONE]``.

    Raises :class:`~switchboard.router.openrouter.errors.UpstreamReportedError` on an
    error event, :class:`~switchboard.router.openrouter.errors.UpstreamProtocolError` on a
    chunk that is not a JSON object and
    :class:`~switchboard.router.openrouter.errors.UpstreamDisconnectedError` when the events
    end without ``[DONE]``.
    """
    async for event in events:
        data = event.data
        if data.strip() == DONE:
            return
        if not data:
            # An event with only ``event:``/``id:`` fields, or a bare blank ``data:``.
            continue
        yield parse_object(chunk_bytes(data))
    raise UpstreamDisconnectedError("the stream ended without [DONE]")
