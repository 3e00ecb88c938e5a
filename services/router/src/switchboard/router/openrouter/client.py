"""The HTTP client of an OpenRouter-compatible upstream; the only module that imports httpx.

Requests are httpx requests and responses, sent over aiohttp's connection pool
(``httpx-aiohttp``'s transport): httpcore's pool re-examines every pooled connection,
probing idle sockets, each time a request starts or ends, which capped one router at about
600 upstream calls/s at 32 connections and 400 at 128 on the benchmark machine; aiohttp's
pool did 2,800 and 2,600 (``docs/benchmarks.md``). They go to the transport directly, not
through ``httpx.AsyncClient``, whose per-request machinery (header merging, auth and
redirect hooks, a cookie jar) cost about 0.1 ms of a 0.35 ms call and does nothing for
us. No cookie jar keeps anything (neither httpx's nor aiohttp's): an upstream's cookies
would otherwise ride along with every later request, whoever sent it.

One call is one attempt: every failure leaves as an
:class:`~switchboard.router.openrouter.errors.UpstreamCallError` that keeps what the upstream
said, so that retries and fallbacks can be layered on top without touching this module.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from typing import Any, Self

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport
from httpx_sse import EventSource, SSEError

from switchboard.common.errors import GatewayError
from switchboard.common.telemetry import inject_headers
from switchboard.router.config import Provider
from switchboard.router.openrouter.errors import (
    UpstreamBusyError,
    UpstreamCallError,
    UpstreamDisconnectedError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
    to_gateway_error,
)
from switchboard.router.openrouter.payloads import UpstreamObject, parse_object
from switchboard.router.openrouter.sse import parse_stream
from switchboard.router.settings import RouterSettings

__all__ = ["OpenRouterClient", "default_provider", "open_pool"]

_JSON = "application/json"
_DEFAULT_HEADERS = {
    "Accept-Encoding": "gzip, deflate",
    "User-Agent": f"python-httpx/{httpx.__version__}",
}
# A pooled connection idle for longer is closed, not reused: below the shortest idle
# timeout servers commonly use (5 s: uvicorn, Node), so a request is never sent on a
# connection the server is closing at that moment. A chat request is a POST, which
# neither aiohttp nor we may resend on our own, so that race would fail it (502).
_KEEPALIVE_EXPIRY = 4.0


@contextmanager
def _translated() -> Iterator[None]:
    """Turn transport exceptions into upstream failures (the one place that knows them)."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise _upstream_error(exc) from exc
    except aiohttp.ClientError as exc:  # one the transport left unmapped
        raise _aiohttp_error(exc) or UpstreamProtocolError(type(exc).__name__) from exc
    except SSEError as exc:
        raise UpstreamProtocolError(type(exc).__name__) from exc


def _aiohttp_error(cause: BaseException | None) -> UpstreamCallError | None:
    # The transport maps aiohttp's errors to httpx's coarsely (a server that hangs up
    # becomes a ConnectTimeout); aiohttp's own error, kept as the cause, is precise.
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return UpstreamUnreachableError("ConnectTimeout")
    if isinstance(cause, aiohttp.ClientConnectorError):
        return UpstreamUnreachableError("ConnectError")
    if isinstance(cause, aiohttp.SocketTimeoutError | TimeoutError):
        return UpstreamTimeoutError("ReadTimeout")
    if isinstance(cause, aiohttp.ClientPayloadError | aiohttp.ClientConnectionError):
        return UpstreamDisconnectedError(type(cause).__name__)
    return None


def _upstream_error(exc: httpx.HTTPError) -> UpstreamCallError:
    precise = _aiohttp_error(exc.__cause__)
    if precise is not None:
        return precise
    name = type(exc).__name__
    if isinstance(exc, httpx.PoolTimeout):
        return UpstreamBusyError("no free upstream connection")
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return UpstreamUnreachableError(name)
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeoutError(name)
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return UpstreamDisconnectedError(name)
    return UpstreamProtocolError(name)


@asynccontextmanager
async def open_pool(
    settings: RouterSettings, *, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[httpx.AsyncBaseTransport]:
    """The process's one connection pool, shared by every provider; closed on exit."""
    if transport is None:
        # The session built here rather than by the transport: its cookie jar must keep
        # nothing, or one user's upstream cookies would ride along with every later request.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=settings.router_max_connections,
                keepalive_timeout=_KEEPALIVE_EXPIRY,
                ssl=httpx.create_ssl_context(trust_env=False),
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        transport = AiohttpTransport(client=session, trust_env=False)
    async with transport:
        yield transport


def default_provider(settings: RouterSettings) -> Provider:
    """The ``openrouter`` provider from the ``OPENROUTER_*`` settings alone."""
    secret = settings.openrouter_api_key
    headers = {}
    if settings.openrouter_http_referer:
        headers["HTTP-Referer"] = settings.openrouter_http_referer
    if settings.openrouter_app_title:
        headers["X-Title"] = settings.openrouter_app_title
    return Provider(
        "openrouter",
        settings.openrouter_base_url.rstrip("/"),
        secret.get_secret_value() if secret else None,
        headers,
    )


class OpenRouterClient:
    """Chat completions and the model list from one provider, over the shared pool."""

    def __init__(
        self,
        pool: httpx.AsyncBaseTransport,
        provider: Provider,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self._pool = pool
        self.provider = provider
        self._base_url = provider.base_url.rstrip("/")
        self._headers = {**_DEFAULT_HEADERS, **provider.headers}
        if provider.api_key:
            self._headers["Authorization"] = f"Bearer {provider.api_key}"
        self._secrets = (provider.api_key,) if provider.api_key else ()
        self._urls = {  # parsed once, not per request
            path: httpx.URL(f"{self._base_url}{path}") for path in ("/chat/completions", "/models")
        }
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: RouterSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> AsyncIterator[Self]:
        """A client of the ``OPENROUTER_*`` upstream with a pool of its own (tests, tools)."""
        async with open_pool(settings, transport=transport) as pool:
            yield cls(
                pool,
                default_provider(settings),
                connect_timeout=settings.router_upstream_connect_timeout,
                read_timeout=settings.router_upstream_read_timeout,
            )

    def _request(
        self, method: str, path: str, *, headers: dict[str, str], read: float | None, **kw: Any
    ) -> httpx.Request:
        read = self._read_timeout if read is None else read
        connect = self._connect_timeout
        timeout = {"connect": connect, "read": read, "write": read, "pool": connect}
        return httpx.Request(
            method,
            self._urls[path],
            headers={**self._headers, **headers},
            extensions={"timeout": timeout},
            **kw,
        )

    @asynccontextmanager
    async def _send(self, request: httpx.Request) -> AsyncIterator[httpx.Response]:
        """The response to ``request``, its body still to be read; closed on exit."""
        with _translated():
            response = await self._pool.handle_async_request(request)
        try:
            yield response
        finally:
            with _translated():
                await response.aclose()

    async def _fetch(self, request: httpx.Request) -> httpx.Response:
        """The response to ``request``, its body read."""
        async with self._send(request) as response:
            with _translated():
                await response.aread()
        return response

    def to_gateway_error(self, exc: UpstreamCallError) -> GatewayError:
        """What the client is told about ``exc``; never contains the API key."""
        return to_gateway_error(exc, secrets=self._secrets)

    async def complete(
        self, body: dict[str, Any], *, timeout: float | None = None
    ) -> UpstreamObject:
        """One non-streamed chat completion, its JSON body as received; ``timeout``
        overrides the read timeout."""
        request = self._request(
            "POST",
            "/chat/completions",
            content=orjson.dumps(body),
            headers=inject_headers({"Accept": _JSON, "Content-Type": _JSON}),
            read=timeout,
        )
        response = await self._fetch(request)
        _raise_for_status(response, body)
        return parse_object(response.content)

    @asynccontextmanager
    async def stream(
        self, body: dict[str, Any], *, timeout: float | None = None
    ) -> AsyncIterator[AsyncIterator[UpstreamObject]]:
        """A streamed chat completion as its chunks; leaving the block closes the connection."""
        request = self._request(
            "POST",
            "/chat/completions",
            content=orjson.dumps(body),
            headers=inject_headers(
                {
                    "Content-Type": _JSON,
                    "Accept": "text/event-stream",
                    "Cache-Control": "no-store",
                }
            ),
            read=timeout,
        )
        async with self._send(request) as response:
            if not response.is_success:
                with _translated():
                    await response.aread()
                _raise_for_status(response, body)
            async with aclosing(_chunks(response)) as chunks:
                yield chunks

    async def list_models(self) -> dict[str, Any]:
        """The upstream's ``GET /models`` body, parsed."""
        response = await self._fetch(
            self._request("GET", "/models", headers={"Accept": _JSON}, read=None)
        )
        _raise_for_status(response, None)
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError("model list is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamProtocolError("model list is not a JSON object")
        return data


async def _chunks(response: httpx.Response) -> AsyncGenerator[UpstreamObject]:
    events = EventSource(response).aiter_sse()
    with _translated():
        async with aclosing(events), aclosing(parse_stream(events)) as chunks:
            async for chunk in chunks:
                yield chunk


def _raise_for_status(response: httpx.Response, body: dict[str, Any] | None) -> None:
    if response.is_success:
        return
    model = body.get("model") if body else None
    raise UpstreamHTTPError(
        response.status_code,
        body=response.content,
        headers=response.headers,
        model_name=model if isinstance(model, str) else None,
    )
