"""The upstream client over its real connection pool against a raw socket server that
misbehaves: each way a connection can fail maps to the right upstream failure."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from switchboard.router.openrouter.client import OpenRouterClient
from switchboard.router.openrouter.errors import (
    UpstreamCallError,
    UpstreamDisconnectedError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from switchboard.router.settings import RouterSettings

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
BODY = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    """One request, read whole; returns its head (request line and headers)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    await reader.readexactly(length)
    return head


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.close()


async def _reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()


async def _short_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    writer.write(b"Content-Length: 500\r\n\r\n")
    writer.write(b'{"id": "gen-1", "choi')
    await writer.drain()
    writer.close()


async def _half_a_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    event = b'data: {"id": "gen-1", "choices": [{"delta": {"content": "hi"}}]}\n\n'
    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.transport.abort()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    await asyncio.sleep(30)


@asynccontextmanager
async def _server(behaviour: Behaviour) -> AsyncIterator[str]:
    handlers: list[tuple[asyncio.Task[None], asyncio.StreamWriter]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append((task, writer))
        await behaviour(reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/api/v1"
    finally:
        server.close()
        for task, writer in handlers:
            task.cancel()
            writer.transport.abort()
        await asyncio.gather(*(task for task, _ in handlers), return_exceptions=True)
        await server.wait_closed()


async def _fails_with(
    settings: RouterSettings, call: Callable[[OpenRouterClient], Awaitable[object]]
) -> UpstreamCallError:
    async with OpenRouterClient.open(settings) as client:
        with pytest.raises(UpstreamCallError) as caught:
            await asyncio.wait_for(call(client), 10)
    return caught.value


async def _complete(client: OpenRouterClient) -> object:
    return await client.complete(BODY)


async def _stream(client: OpenRouterClient) -> object:
    async with client.stream({**BODY, "stream": True}) as chunks:
        return [chunk async for chunk in chunks]


@pytest.mark.parametrize(
    ("behaviour", "call", "expected"),
    [
        (_hang_up, _complete, UpstreamDisconnectedError),
        (_reset, _complete, UpstreamDisconnectedError),
        (_short_body, _complete, UpstreamDisconnectedError),
        (_half_a_stream, _stream, UpstreamDisconnectedError),
        (_hang_up, _stream, UpstreamDisconnectedError),
    ],
    ids=["hang-up", "reset", "short-body", "half-a-stream", "hang-up-stream"],
)
async def test_a_dropped_connection_is_a_disconnect(
    make_settings: Callable[..., RouterSettings],
    behaviour: Behaviour,
    call: Callable[[OpenRouterClient], Awaitable[object]],
    expected: type[UpstreamCallError],
) -> None:
    async with _server(behaviour) as url:
        failure = await _fails_with(make_settings(openrouter_base_url=url), call)
    assert isinstance(failure, expected), repr(failure)


async def test_a_silent_upstream_times_out(make_settings: Callable[..., RouterSettings]) -> None:
    async with _server(_silent) as url:
        settings = make_settings(openrouter_base_url=url, router_upstream_read_timeout=0.3)
        failure = await _fails_with(settings, _complete)
    assert isinstance(failure, UpstreamTimeoutError)


async def test_a_closed_port_is_unreachable(make_settings: Callable[..., RouterSettings]) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(openrouter_base_url=f"http://127.0.0.1:{port}/api/v1")
    assert isinstance(await _fails_with(settings, _complete), UpstreamUnreachableError)
    assert isinstance(await _fails_with(settings, _stream), UpstreamUnreachableError)


async def _one_request_per_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answers a connection's first request (keep-alive), then hangs up on the next, as a
    server does when its idle timeout fires just as a request arrives."""
    await _read_request(reader)
    body = b'{"id": "gen-1", "choices": [{"message": {"content": "hi"}}]}'
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    await _read_request(reader)
    writer.close()


async def test_an_idle_pooled_connection_is_not_reused_past_the_keepalive_expiry(
    make_settings: Callable[..., RouterSettings],
) -> None:
    """A POST cannot be resent, so the pool must not offer a connection idle for as long as
    servers commonly keep one open (uvicorn and Node close after 5 s)."""
    async with _server(_one_request_per_connection) as url:
        settings = make_settings(openrouter_base_url=url)
        async with OpenRouterClient.open(settings) as client:
            await client.complete(BODY)
            await asyncio.sleep(4.2)  # past the pool's keep-alive expiry (4 s)
            answer = await client.complete(BODY)
    assert answer.data["id"] == "gen-1"


async def test_no_cookie_is_kept_between_requests_over_the_real_pool(
    make_settings: Callable[..., RouterSettings],
) -> None:
    """An upstream's cookies must never travel from one user's request into another's
    (a host name, not an IP address: a cookie jar would keep cookies for it)."""
    seen: list[bytes] = []

    async def set_cookie(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await _read_request(reader)
            cookies = [line for line in head.split(b"\r\n") if line.lower().startswith(b"cookie:")]
            seen.append(b"; ".join(cookies))
            body = b'{"id": "gen-1", "choices": []}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            writer.write(b"Set-Cookie: session=user-a; Path=/\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    async with _server(set_cookie) as url:
        settings = make_settings(openrouter_base_url=url.replace("127.0.0.1", "localhost"))
        async with OpenRouterClient.open(settings) as client:
            for _ in range(3):
                await client.complete(BODY)
    assert seen == [b"", b"", b""]
