"""The upstream HTTP client against ``httpx.MockTransport``: requests, streams, failures."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import httpx
import orjson
import pytest

from switchboard.router.openrouter.client import OpenRouterClient
from switchboard.router.openrouter.errors import (
    UpstreamBusyError,
    UpstreamDisconnectedError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamReportedError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from switchboard.router.settings import RouterSettings

Handler = Callable[[httpx.Request], Any]
ClientFactory = Callable[..., AbstractAsyncContextManager[OpenRouterClient]]

SSE = {"content-type": "text/event-stream"}
BODY = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def chunk(content: str, **extra: Any) -> bytes:
    return orjson.dumps(
        {
            "id": "gen-1",
            "object": "chat.completion.chunk",
            "model": "openai/gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
            **extra,
        }
    )


async def byte_stream(
    *parts: bytes, delay: float = 0.0, fail: Exception | None = None
) -> AsyncIterator[bytes]:
    for part in parts:
        if delay:
            await asyncio.sleep(delay)
        yield part
    if fail is not None:
        raise fail


def recording(
    respond: Callable[[httpx.Request], httpx.Response],
) -> tuple[list[httpx.Request], Handler]:
    """A handler answering with ``respond`` and the list of the requests it saw."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return respond(request)

    return seen, handler


@pytest.fixture
def upstream(make_settings: Callable[..., RouterSettings]) -> ClientFactory:
    """An OpenRouterClient whose HTTP calls go to ``handler``."""

    def open_client(
        handler: Handler, **settings: Any
    ) -> AbstractAsyncContextManager[OpenRouterClient]:
        return OpenRouterClient.open(
            make_settings(**settings), transport=httpx.MockTransport(handler)
        )

    return open_client


async def collect(client: OpenRouterClient, body: dict[str, Any] = BODY) -> list[bytes]:
    async with client.stream(body) as chunks:
        return [c.raw async for c in chunks]


# ------------------------------------------------------------------------------ requests


async def test_complete_sends_headers_and_body_and_returns_raw_bytes(
    upstream: ClientFactory,
) -> None:
    raw = b'{"id":"gen-1","model":"openai/gpt-4o-mini","choices":[] , "usage":{"total_tokens":3}}'
    seen, handler = recording(
        lambda _request: httpx.Response(
            200, content=raw, headers={"content-type": "application/json"}
        )
    )

    async with upstream(
        handler, openrouter_http_referer="https://example.org", openrouter_app_title="Switchboard"
    ) as client:
        result = await client.complete({**BODY, "provider": {"order": ["OpenAI"]}})
    assert result.raw == raw  # exactly as received, odd spacing included
    assert result.data["usage"] == {"total_tokens": 3}
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == "http://127.0.0.1:9/api/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-or-v1-test-secret-key"
    assert request.headers["http-referer"] == "https://example.org"
    assert request.headers["x-title"] == "Switchboard"
    assert request.headers["content-type"] == "application/json"
    assert orjson.loads(request.content) == {**BODY, "provider": {"order": ["OpenAI"]}}


async def test_compressed_answers_are_decoded_and_timeouts_are_set(
    upstream: ClientFactory,
) -> None:
    raw = b'{"id":"gen-1","choices":[]}'
    seen, handler = recording(
        lambda _request: httpx.Response(
            200, content=gzip.compress(raw), headers={"content-encoding": "gzip"}
        )
    )

    async with upstream(handler, router_upstream_read_timeout=42) as client:
        assert (await client.complete(BODY, timeout=7)).raw == raw
        await client.list_models()
    assert seen[0].headers["accept-encoding"] == "gzip, deflate"
    assert seen[0].headers["user-agent"].startswith("python-httpx/")
    assert seen[0].extensions["timeout"]["read"] == 7
    assert seen[1].extensions["timeout"]["read"] == 42
    assert seen[1].headers["accept"] == "application/json"


async def test_no_key_and_no_attribution_means_no_headers(upstream: ClientFactory) -> None:
    seen, handler = recording(lambda _request: httpx.Response(200, json={"choices": []}))

    async with upstream(handler, openrouter_api_key=None) as client:
        await client.complete(BODY)
    assert "authorization" not in seen[0].headers
    assert "http-referer" not in seen[0].headers
    assert "x-title" not in seen[0].headers


async def test_complete_error_status(upstream: ClientFactory) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, json={"error": {"code": 429, "message": "slow"}}, headers={"Retry-After": "2"}
        )

    async with upstream(handler) as client:
        with pytest.raises(UpstreamHTTPError) as caught:
            await client.complete(BODY)
    assert caught.value.status_code == 429
    assert caught.value.headers["retry-after"] == "2"
    assert caught.value.model_name == "openai/gpt-4o-mini"
    assert client.to_gateway_error(caught.value).retry_after == 2.0


async def test_complete_that_is_an_error_object(upstream: ClientFactory) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"error": {"code": 502, "message": "provider down"}})

    async with upstream(handler) as client:
        with pytest.raises(UpstreamReportedError) as caught:
            await client.complete(BODY)
    assert caught.value.message == "provider down"
    assert caught.value.code == 502


@pytest.mark.parametrize("content", [b"<html>", b"[1]", b""])
async def test_complete_that_is_not_a_json_object(upstream: ClientFactory, content: bytes) -> None:
    async with upstream(lambda _request: httpx.Response(200, content=content)) as client:
        with pytest.raises(UpstreamProtocolError):
            await client.complete(BODY)


async def test_the_key_never_reaches_an_error_message(upstream: ClientFactory) -> None:
    key = "sk-or-v1-test-secret-key"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": f"bad header {key}"}})

    async with upstream(handler) as client:
        with pytest.raises(UpstreamHTTPError) as caught:
            await client.complete(BODY)
    assert key not in client.to_gateway_error(caught.value).message


def _wrapping(cause: BaseException) -> httpx.HTTPError:
    """An httpx error as the aiohttp transport raises it: coarse, with aiohttp's as cause."""
    exc = httpx.ConnectTimeout(str(cause))
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (_wrapping(aiohttp.ConnectionTimeoutError("slow")), UpstreamUnreachableError),
        (_wrapping(aiohttp.ServerDisconnectedError()), UpstreamDisconnectedError),
        (_wrapping(aiohttp.SocketTimeoutError("silent")), UpstreamTimeoutError),
        (aiohttp.ServerDisconnectedError(), UpstreamDisconnectedError),
        (aiohttp.ClientError("odd"), UpstreamProtocolError),
    ],
    ids=["connect-timeout", "disconnected", "read-timeout", "raw-disconnect", "raw-other"],
)
async def test_aiohttp_errors_are_translated_by_their_own_type(
    upstream: ClientFactory, raised: Exception, expected: type[Exception]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    async with upstream(handler) as client:
        with pytest.raises(expected):
            await client.complete(BODY)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.ConnectError("refused"), UpstreamUnreachableError),
        (httpx.ConnectTimeout("slow dns"), UpstreamUnreachableError),
        (httpx.ReadTimeout("silent"), UpstreamTimeoutError),
        (httpx.WriteTimeout("stuck"), UpstreamTimeoutError),
        (httpx.PoolTimeout("busy"), UpstreamBusyError),
        (httpx.ReadError("reset"), UpstreamDisconnectedError),
        (httpx.RemoteProtocolError("closed"), UpstreamDisconnectedError),
        (httpx.UnsupportedProtocol("ftp"), UpstreamProtocolError),
        (httpx.DecodingError("gzip"), UpstreamProtocolError),
    ],
)
async def test_transport_errors_are_translated(
    upstream: ClientFactory, raised: Exception, expected: type[Exception]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    async with upstream(handler) as client:
        with pytest.raises(expected) as caught:
            await client.complete(BODY)
        with pytest.raises(expected):
            await collect(client)
        with pytest.raises(expected):
            await client.list_models()
    assert caught.value.__cause__ is raised


# ------------------------------------------------------------------------------- streams


async def test_stream_asks_for_events_and_yields_chunks_as_received(
    upstream: ClientFactory,
) -> None:
    first = b'{"id": "gen-1",  "choices": [{"delta": {"content": "caf\\u00e9"}}]}'

    def respond(_request: httpx.Request) -> httpx.Response:
        body = b"data: " + first + b"\n\ndata: " + chunk("b") + b"\n\ndata: [DONE]\n\n"
        return httpx.Response(200, content=body, headers=SSE)

    seen, handler = recording(respond)

    async with upstream(handler) as client:
        chunks = await collect(client, {**BODY, "stream": True})
    assert chunks == [first, chunk("b")]
    assert seen[0].headers["accept"] == "text/event-stream"
    assert orjson.loads(seen[0].content)["stream"] is True


async def test_stream_skips_comments_and_ignorable_events(upstream: ClientFactory) -> None:
    body = (
        b": OPENROUTER PROCESSING\n\n"
        b"data: " + chunk("a") + b"\n\n"
        b": OPENROUTER PROCESSING\n\n"
        b"event: ping\n\n"
        b"id: 7\ndata:\n\n"
        b"data: " + chunk("b") + b"\r\n\r\n"
        b"data: [DONE]\n\n"
    )
    async with upstream(lambda _request: httpx.Response(200, content=body, headers=SSE)) as client:
        assert await collect(client) == [chunk("a"), chunk("b")]


async def test_stream_joins_multi_line_data_into_one_line(upstream: ClientFactory) -> None:
    pretty = orjson.dumps(orjson.loads(chunk("a b")), option=orjson.OPT_INDENT_2)
    event = b"".join(b"data: " + line + b"\n" for line in pretty.split(b"\n")) + b"\n"
    body = event + b"data: [DONE]\n\n"
    async with upstream(lambda _request: httpx.Response(200, content=body, headers=SSE)) as client:
        (raw,) = await collect(client)
    assert b"\n" not in raw
    assert orjson.loads(raw) == orjson.loads(chunk("a b"))


async def test_stream_events_split_across_network_reads(upstream: ClientFactory) -> None:
    whole = b"data: " + chunk("a") + b"\n\ndata: " + chunk("b") + b"\n\ndata: [DONE]\n\n"
    parts = [whole[i : i + 7] for i in range(0, len(whole), 7)]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=byte_stream(*parts), headers=SSE)

    async with upstream(handler) as client:
        assert await collect(client) == [chunk("a"), chunk("b")]


async def test_stream_stops_at_done(upstream: ClientFactory) -> None:
    body = b"data: " + chunk("a") + b"\n\ndata: [DONE]\n\ndata: " + chunk("late") + b"\n\n"
    async with upstream(lambda _request: httpx.Response(200, content=body, headers=SSE)) as client:
        assert await collect(client) == [chunk("a")]


async def test_stream_mid_stream_error_event(upstream: ClientFactory) -> None:
    error = chunk(
        "",
        error={"code": "server_error", "message": "Provider disconnected unexpectedly"},
    ).replace(b'"finish_reason":null', b'"finish_reason":"error"')
    body = b"data: " + chunk("a") + b"\n\ndata: " + error + b"\n\n"
    seen: list[bytes] = []

    async def consume(client: OpenRouterClient) -> None:
        async with client.stream(BODY) as chunks:
            async for item in chunks:
                seen.append(item.raw)

    async with upstream(lambda _request: httpx.Response(200, content=body, headers=SSE)) as client:
        with pytest.raises(UpstreamReportedError) as caught:
            await consume(client)
    assert seen == [chunk("a")]
    assert caught.value.message == "Provider disconnected unexpectedly"
    assert caught.value.code == "server_error"


async def test_stream_finish_reason_error_without_error_object(upstream: ClientFactory) -> None:
    error = chunk("").replace(b'"finish_reason":null', b'"finish_reason":"error"')
    body = b"data: " + error + b"\n\n"
    async with upstream(lambda _request: httpx.Response(200, content=body, headers=SSE)) as client:
        with pytest.raises(UpstreamReportedError) as caught:
            await collect(client)
    assert caught.value.message == ""


async def test_stream_that_ends_without_done_was_cut_off(upstream: ClientFactory) -> None:
    body = b"data: " + chunk("a") + b"\n\n"
    async with upstream(lambda _request: httpx.Response(200, content=body, headers=SSE)) as client:
        with pytest.raises(UpstreamDisconnectedError):
            await collect(client)


async def test_stream_connection_dropped(upstream: ClientFactory) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        content = byte_stream(
            b"data: " + chunk("a") + b"\n\n",
            fail=httpx.RemoteProtocolError("peer closed connection without sending complete body"),
        )
        return httpx.Response(200, content=content, headers=SSE)

    async with upstream(handler) as client:
        with pytest.raises(UpstreamDisconnectedError):
            await collect(client)


async def test_stream_read_timeout(upstream: ClientFactory) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=byte_stream(fail=httpx.ReadTimeout("silent")), headers=SSE
        )

    async with upstream(handler) as client:
        with pytest.raises(UpstreamTimeoutError):
            await collect(client)


async def test_stream_chunk_that_is_not_json(upstream: ClientFactory) -> None:
    body = b"data: {not json\n\n"
    async with upstream(lambda _request: httpx.Response(200, content=body, headers=SSE)) as client:
        with pytest.raises(UpstreamProtocolError):
            await collect(client)


async def test_stream_answered_with_json_instead_of_events(upstream: ClientFactory) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": []})

    async with upstream(handler) as client:
        with pytest.raises(UpstreamProtocolError):
            await collect(client)


async def test_stream_error_status_before_any_event(upstream: ClientFactory) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            402, json={"error": {"code": 402, "message": "Insufficient credits"}}, headers=SSE
        )

    async with upstream(handler) as client:
        with pytest.raises(UpstreamHTTPError) as caught:
            await collect(client)
    assert caught.value.status_code == 402
    assert orjson.loads(caught.value.body)["error"]["message"] == "Insufficient credits"


async def test_leaving_the_stream_early_closes_the_response(upstream: ClientFactory) -> None:
    closed = asyncio.Event()

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            while True:
                yield b"data: " + chunk("x") + b"\n\n"
                await asyncio.sleep(0)

        async def aclose(self) -> None:
            closed.set()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Endless(), headers=SSE)

    async with upstream(handler) as client, client.stream(BODY) as chunks:
        async for _ in chunks:
            break
    assert closed.is_set()


# -------------------------------------------------------------------------------- models


async def test_list_models(upstream: ClientFactory) -> None:
    seen, handler = recording(
        lambda _request: httpx.Response(200, json={"data": [{"id": "openai/gpt-4o"}]})
    )

    async with upstream(handler) as client:
        assert await client.list_models() == {"data": [{"id": "openai/gpt-4o"}]}
    assert seen[0].method == "GET"
    assert str(seen[0].url) == "http://127.0.0.1:9/api/v1/models"


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(503, text="down"), UpstreamHTTPError),
        (httpx.Response(200, text="<html>"), UpstreamProtocolError),
        (httpx.Response(200, json=[1, 2]), UpstreamProtocolError),
    ],
)
async def test_list_models_failures(
    upstream: ClientFactory, response: httpx.Response, expected: type[Exception]
) -> None:
    async with upstream(lambda _request: response) as client:
        with pytest.raises(expected):
            await client.list_models()


async def test_base_url_with_trailing_slash(upstream: ClientFactory) -> None:
    seen, handler = recording(lambda _request: httpx.Response(200, json={"data": []}))

    async with upstream(handler, openrouter_base_url="http://127.0.0.1:9/v1/") as client:
        await client.list_models()
    assert str(seen[0].url) == "http://127.0.0.1:9/v1/models"
