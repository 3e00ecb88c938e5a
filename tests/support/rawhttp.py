"""HTTP/1.1 on a bare socket, for requests no client library would send.

httpx and every other client refuse (rightly) to put CR or LF in a header, normalise
``/./`` and ``..`` out of paths and send a body as fast as they can. These helpers send
exactly the bytes a test gives, and read the answer with the standard library's parser.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RawResponse", "raw_exchange", "request_bytes"]


@dataclass
class RawResponse:
    """One response as it came over the wire."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = field(repr=False, default=b"")

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_names(self) -> set[str]:
        """Every header name, lower-cased."""
        return {key.lower() for key, _ in self.headers}

    def json(self) -> Any:
        return json.loads(self.body)


class _Received:
    """What ``http.client.HTTPResponse`` needs of a socket (``makefile``), over bytes
    already read."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, _mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self._data))


def request_bytes(
    method: str,
    target: str | bytes,
    *,
    host: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
) -> bytes:
    """A request's bytes, ``target`` and header values unchecked (CR and LF included).

    ``Host``, ``Content-Length`` (when there is a body) and ``Connection: close`` are added.
    """
    path = target if isinstance(target, bytes) else target.encode("latin-1")
    lines = [method.encode() + b" " + path + b" HTTP/1.1", b"Host: " + host.encode()]
    lines += [name + b": " + value for name, value in headers or []]
    if body:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def raw_exchange(port: int, data: bytes, *, timeout: float = 15.0) -> RawResponse:
    """Send ``data`` to 127.0.0.1:``port``, read until the server closes, parse one response
    (chunked or not). ``raw_head`` keeps the status line and headers as sent."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        while chunk := sock.recv(65536):
            received += chunk
    raw = bytes(received)
    response = http.client.HTTPResponse(_Received(raw))  # type: ignore[arg-type]
    response.begin()
    body = response.read()
    head = raw.split(b"\r\n\r\n", 1)[0]
    return RawResponse(response.status, list(response.getheaders()), body, head)
