"""The smallest app shaped like the edge's hot path, for ``bench.servers``.

``POST /v1/chat/completions`` in Litestar answers a fixed body (``FLOOR_MODE=plain``) or
what a NATS responder sends back to a request-reply with the request's body
(``FLOOR_MODE=nats``, responder: ``python -m bench.asgi_floor echo``). Neither parses,
authenticates nor routes anything: what it costs is the floor under the edge.
"""

from __future__ import annotations

import asyncio
import os
import sys

import nats
from litestar import Litestar, post
from litestar.response import Response

__all__ = ["app"]

SUBJECT = "bench.floor.echo"
_ANSWER = b'{"ok":true}'
_MODE = os.environ.get("FLOOR_MODE", "plain")
_connection: list[nats.aio.client.Client] = []


async def _connect() -> None:
    if _MODE == "nats":
        _connection.append(await nats.connect(os.environ["NATS_URL"]))


@post("/v1/chat/completions")
async def chat(body: bytes) -> Response[bytes]:
    """The fixed answer, or the responder's."""
    if _connection:
        reply = await _connection[0].request(SUBJECT, body, timeout=5)
        return Response(content=reply.data, media_type="application/json")
    return Response(content=_ANSWER, media_type="application/json")


app = Litestar([chat], on_startup=[_connect])


async def _echo() -> None:
    connection = await nats.connect(os.environ["NATS_URL"])

    async def answer(message: nats.aio.msg.Msg) -> None:
        await message.respond(_ANSWER)

    await connection.subscribe(SUBJECT, cb=answer)
    await asyncio.Event().wait()


if __name__ == "__main__" and sys.argv[1:] == ["echo"]:
    asyncio.run(_echo())
