"""The guarded HTTP protocol: slow and oversized clients are answered and disconnected,
others served as before. uvicorn runs in the test's loop over a tiny ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from switchboard.edge.disconnect import EXTENSION, watch_disconnect
from switchboard.edge.httpserver import guarded_protocol
from switchboard.edge.settings import EdgeSettings


async def _echo_length(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, answers its length."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """A server with short deadlines (0.3 s headers, 0.5 s body, 1 KiB of headers)."""
    settings = EdgeSettings(
        edge_header_timeout=0.3, edge_body_timeout=0.5, edge_max_header_bytes=1024
    )
    async with _serving(_echo_length, settings) as port:
        yield port


@contextlib.asynccontextmanager
async def _serving(app: Any, settings: EdgeSettings) -> AsyncIterator[int]:
    """uvicorn with the guarded protocol serving ``app`` in this loop; yields its port."""
    config = uvicorn.Config(app, http=guarded_protocol(settings), lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(1000):  # uvicorn says so by a flag only
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        server.force_exit = True
        await task


@contextlib.asynccontextmanager
async def _connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (bounded, so a test cannot hang)."""
    return await asyncio.wait_for(reader.read(), timeout=10)


def _status_and_json(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def test_ordinary_requests_and_keep_alive(port: int) -> None:
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    async with _connection(port) as (reader, writer):
        for _ in range(2):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(1) == b"5"
            await asyncio.sleep(0.4)  # idle between requests: uvicorn's keep-alive, not ours


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET / HTTP/1.1\r\nHo", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nab"],
)
async def test_a_request_that_does_not_arrive_in_time_is_closed_with_408(
    port: int, sent: bytes
) -> None:
    async with _connection(port) as (reader, writer):
        writer.write(sent)
        status, body = _status_and_json(await _read_all(reader))
    assert status == 408
    assert body["error"]["code"] == "request_timeout"
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_a_byte_at_a_time_does_not_extend_the_deadline(port: int) -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 500
    sent = 0
    async with _connection(port) as (reader, writer):
        reply = asyncio.create_task(_read_all(reader))
        with contextlib.suppress(ConnectionError):
            while not reply.done() and sent < len(request):
                writer.write(request[sent : sent + 1])
                await writer.drain()
                sent += 1
                await asyncio.sleep(0.01)
        answer = await reply
    assert sent < len(request)
    assert answer.startswith(b"HTTP/1.1 408")


async def test_the_next_request_of_a_kept_alive_connection_has_a_deadline(port: int) -> None:
    async with _connection(port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n0")
        writer.write(b"GET / HT")
        assert (await _read_all(reader)).startswith(b"HTTP/1.1 408")


async def test_too_many_header_bytes_are_431(port: int) -> None:
    async with _connection(port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
        status, body = _status_and_json(await _read_all(reader))
        assert (status, body["error"]["code"]) == (431, "request_headers_too_large")


async def test_an_unparsable_request_gets_an_openai_error(port: int) -> None:
    async with _connection(port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nBad: a\nInjected: b\r\n\r\n")
        status, body = _status_and_json(await _read_all(reader))
        assert (status, body["error"]["type"]) == (400, "invalid_request_error")
        assert body["error"]["code"] == "invalid_http_request"


# ------------------------------------------------------------------ disconnect extension


@pytest.fixture
async def watching() -> AsyncIterator[tuple[int, list[str]]]:
    """A server whose app watches for its client's disconnect, and reports what happened:
    ``/wait`` waits (up to 5 s) for the disconnect; ``/unwatch`` stops watching, answers,
    and waits as long; ``/late`` registers only once the client has gone."""
    events: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        events.append("extension" if EXTENSION in scope.get("extensions", {}) else "none")
        gone = asyncio.Event()
        if scope["path"] == "/late":
            await asyncio.sleep(0.3)
        unwatch = watch_disconnect(scope, receive, gone.set)
        if scope["path"] == "/unwatch":
            unwatch()
            unwatch()  # idempotent
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gone.wait(), 1 if scope["path"] == "/unwatch" else 5)
        events.append("gone" if gone.is_set() else "still there")

    async with _serving(app, EdgeSettings()) as port:
        yield port, events


async def _leave_after(port: int, path: str, seconds: float) -> None:
    async with _connection(port) as (_reader, writer):
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode())
        await writer.drain()
        await asyncio.sleep(seconds)


async def _until(events: list[str], count: int) -> None:
    for _ in range(600):
        if len(events) >= count:
            return
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("path", "stay", "outcome"),
    [
        ("/wait", 0.1, "gone"),  # told when its client leaves
        ("/unwatch", 0.1, "still there"),  # not told once it stopped watching
        ("/late", 0.05, "gone"),  # told even when it watches after the client left
    ],
)
async def test_the_protocol_tells_the_handler_its_client_left(
    watching: tuple[int, list[str]], path: str, stay: float, outcome: str
) -> None:
    port, events = watching
    await _leave_after(port, path, stay)
    await _until(events, 2)
    assert events == ["extension", outcome]


async def test_other_servers_fall_back_to_http_disconnect() -> None:
    messages = [{"type": "http.request"}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return messages.pop(0)

    gone = asyncio.Event()
    watch_disconnect({"type": "http"}, receive, gone.set)  # type: ignore[arg-type]
    await asyncio.wait_for(gone.wait(), 5)

    never = asyncio.Event()
    unwatch = watch_disconnect({"type": "http"}, asyncio.Event().wait, never.set)  # type: ignore[arg-type]
    unwatch()
    await asyncio.sleep(0.05)
    assert not never.is_set()
