"""The HTTP client of an OpenRouter-compatible upstream; the only module that imports httpx.

One call is one attempt: every failure leaves as an
:class:`~switchboard.router.openrouter.errors.UpstreamCallError` that keeps what the upstream
said, so that retries and fallbacks can be layered on top without touching this module.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from typing import Any, Self

import httpx
import orjson
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
# Idle pooled connections are dropped before typical load balancers (60 s) drop them.
_KEEPALIVE_EXPIRY = 30.0


@contextmanager
def _translated() -> Iterator[None]:
    """Turn httpx's exceptions into upstream failures (the one place that knows both)."""
    try:
        yield
    except httpx.PoolTimeout as exc:
        raise UpstreamBusyError("no free upstream connection") from exc
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise UpstreamUnreachableError(type(exc).__name__) from exc
    except httpx.TimeoutException as exc:
        raise UpstreamTimeoutError(type(exc).__name__) from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        raise UpstreamDisconnectedError(type(exc).__name__) from exc
    except (httpx.HTTPError, SSEError) as exc:
        raise UpstreamProtocolError(type(exc).__name__) from exc


@asynccontextmanager
async def open_pool(
    settings: RouterSettings, *, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The process's one pooled HTTP client, shared by every provider; closed on exit."""
    connect = settings.router_upstream_connect_timeout
    read = settings.router_upstream_read_timeout
    http = httpx.AsyncClient(
        headers={"Accept": _JSON},
        timeout=httpx.Timeout(connect=connect, read=read, write=read, pool=connect),
        limits=httpx.Limits(
            max_connections=settings.router_max_connections,
            max_keepalive_connections=settings.router_max_connections,
            keepalive_expiry=_KEEPALIVE_EXPIRY,
        ),
        transport=transport,
    )
    async with http:
        yield http


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
        self, http: httpx.AsyncClient, provider: Provider, *, connect_timeout: float = 5.0
    ) -> None:
        self._http = http
        self.provider = provider
        self._base_url = provider.base_url.rstrip("/")
        self._headers = dict(provider.headers)
        if provider.api_key:
            self._headers["Authorization"] = f"Bearer {provider.api_key}"
        self._secrets = (provider.api_key,) if provider.api_key else ()
        self._connect_timeout = connect_timeout

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: RouterSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> AsyncIterator[Self]:
        """A client of the ``OPENROUTER_*`` upstream with a pool of its own (tests, tools)."""
        async with open_pool(settings, transport=transport) as http:
            yield cls(
                http,
                default_provider(settings),
                connect_timeout=settings.router_upstream_connect_timeout,
            )

    def _timeout(self, read: float | None) -> httpx.Timeout:
        if read is None:
            return self._http.timeout
        connect = self._connect_timeout
        return httpx.Timeout(connect=connect, read=read, write=read, pool=connect)

    def to_gateway_error(self, exc: UpstreamCallError) -> GatewayError:
        """What the client is told about ``exc``; never contains the API key."""
        return to_gateway_error(exc, secrets=self._secrets)

    async def complete(
        self, body: dict[str, Any], *, timeout: float | None = None
    ) -> UpstreamObject:
        """One non-streamed chat completion, its JSON body as received; ``timeout``
        overrides the read timeout."""
        with _translated():
            response = await self._http.post(
                f"{self._base_url}/chat/completions",
                content=orjson.dumps(body),
                headers=inject_headers({**self._headers, "Content-Type": _JSON}),
                timeout=self._timeout(timeout),
            )
        _raise_for_status(response, body)
        return parse_object(response.content)

    @asynccontextmanager
    async def stream(
        self, body: dict[str, Any], *, timeout: float | None = None
    ) -> AsyncIterator[AsyncIterator[UpstreamObject]]:
        """A streamed chat completion as its chunks; leaving the block closes the connection."""
        with _translated():
            async with self._http.stream(
                "POST",
                f"{self._base_url}/chat/completions",
                content=orjson.dumps(body),
                timeout=self._timeout(timeout),
                headers=inject_headers(
                    {
                        **self._headers,
                        "Content-Type": _JSON,
                        "Accept": "text/event-stream",
                        "Cache-Control": "no-store",
                    }
                ),
            ) as response:
                if not response.is_success:
                    await response.aread()
                    _raise_for_status(response, body)
                async with aclosing(_chunks(response)) as chunks:
                    yield chunks

    async def list_models(self) -> dict[str, Any]:
        """The upstream's ``GET /models`` body, parsed."""
        with _translated():
            response = await self._http.get(f"{self._base_url}/models", headers=self._headers)
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
