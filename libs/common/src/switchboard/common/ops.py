"""The ops listener every service runs: ``/health/live``, ``/health/ready``, ``/metrics``.

A few dozen lines of HTTP/1.1 on :func:`asyncio.start_server`, in the service's own event
loop, so that readiness reads the service's live state without locks, and no web framework
(or its signal handling) comes into worker processes. Each connection serves one ``GET``
and is closed. ``OPS_PORT=0`` disables it.

Readiness is a :data:`Readiness` callback returning each component's report,
``{"status": "ok" | "degraded" | "down", ...}``; any ``down`` makes ``/health/ready``
answer 503. ``degraded`` still answers 200: the service serves, with less.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from switchboard.common.logs import get_logger
from switchboard.common.settings import ServiceSettings

__all__ = ["Components", "OpsServer", "Readiness", "metrics_text", "ops_server", "summarize"]

log = get_logger(__name__)

Components = dict[str, dict[str, Any]]
Readiness = Callable[[], Awaitable[Components]]

_READ_TIMEOUT = 5.0
_MAX_HEAD = 16 * 1024
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def metrics_text() -> bytes:
    """This process's metrics in Prometheus' text format."""
    return generate_latest(REGISTRY)


def summarize(service: str, components: Components) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body of a readiness report."""
    states = {component.get("status") for component in components.values()}
    if "down" in states:
        status, code = "unavailable", 503
    elif "degraded" in states:
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    return code, {"status": status, "service": service, "components": components}


class OpsServer:
    """Serves the ops endpoints of one service until :meth:`stop`."""

    def __init__(self, service: str, readiness: Readiness, *, host: str, port: int) -> None:
        self.service = service
        self._readiness = readiness
        self._host, self._port = host, port
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        """The bound port (the real one when asked for port 0)."""
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen; raises :class:`OSError` when the port is taken."""
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            self._server.close()
            for writer in self._open:
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
            method, _, target = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = target.split(" ", 1)[0].split("?", 1)[0]
            status, content_type, body = await self._route(method, path)
            reason = _REASONS.get(status, "")
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that went away or sent no request: nothing to answer
        except Exception:
            log.exception("ops.failed")
        finally:
            self._open.discard(writer)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        json_type = "application/json"
        if path not in ("/health/live", "/health/ready", "/metrics"):
            return 404, json_type, b'{"status":"not_found"}'
        if method not in ("GET", "HEAD"):
            return 405, json_type, b'{"status":"method_not_allowed"}'
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, metrics_text()
        if path == "/health/live":
            return 200, json_type, orjson.dumps({"status": "ok", "service": self.service})
        try:
            components = await self._readiness()
        except Exception as exc:
            log.exception("ops.readiness_failed")
            components = {"readiness": {"status": "down", "error": type(exc).__name__}}
        code, report = summarize(self.service, components)
        return code, json_type, orjson.dumps(report)


@asynccontextmanager
async def ops_server(
    settings: ServiceSettings, service: str, readiness: Readiness
) -> AsyncIterator[OpsServer | None]:
    """Run the ops listener of ``settings`` (none when ``OPS_PORT`` is 0) for the block."""
    if not settings.ops_port:
        yield None
        return
    server = OpsServer(service, readiness, host=settings.ops_host, port=settings.ops_port)
    await server.start()
    log.info("ops.listening", host=settings.ops_host, port=server.port)
    try:
        yield server
    finally:
        await server.stop()
