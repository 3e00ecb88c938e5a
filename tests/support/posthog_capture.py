"""A PostHog capture endpoint on loopback, for tests where the real ``posthog`` SDK sends.

It speaks the capture API the ``posthog`` Python SDK posts to (version 0, the SDK's
default):

- ``POST /batch/`` (the analytics lane) and ``POST /i/v0/ai/batch/`` (the SDK's AI lane):
  ``{"api_key", "batch": [event, ...], "historical_migration", "sent_at"}``;
- ``POST /i/v0/e/``, ``/e/``, ``/capture/``: one event (``{"api_key", "event", ...}``) or
  a batch as above.

Bodies may be gzip- or deflate-compressed (``Content-Encoding``, or ``?compression=gzip``
as the browser SDK spells it). An accepted request is answered ``200 {"status": "Ok"}``,
as PostHog does. Each event is kept as the SDK sent it (``event``, ``uuid``,
``distinct_id``, ``timestamp``, ``properties``).

Outages, set from the test (or over the control API when the server runs alone):

- :meth:`PostHogCapture.fail`: answer ``status`` (503 by default) to the next ``times``
  requests, or to all of them until :meth:`PostHogCapture.accept`;
- :meth:`PostHogCapture.hang`: hold requests open without answering until the mode changes
  or the server stops (the client's timeout fires first). ``ingest=True`` records the
  events as accepted before hanging: PostHog took them but the client never heard back,
  the case where PostHog's de-duplication on ``uuid`` matters;
- :meth:`CaptureServer.stop` and :meth:`CaptureServer.start` again: the port refuses
  connections in between, then is served again with everything recorded so far.

:meth:`PostHogCapture.reject` makes it refuse, with 400 and nothing ingested, every
request that holds one of the given event uuids (an event PostHog will never take).

Control API (JSON): ``GET /_capture/events`` (accepted events), ``GET /_capture/requests``,
``DELETE /_capture/events`` (forget everything), ``POST /_capture/mode``
(``{"mode": "accept"|"fail"|"hang", "status": 503, "times": null, "ingest": false}``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import logging
import socket
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qs

import uvicorn

__all__ = [
    "BATCH_PATHS",
    "CaptureRequest",
    "CaptureServer",
    "PostHogCapture",
    "main",
    "running_capture",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BATCH_PATHS = frozenset({"/batch/", "/batch", "/i/v0/ai/batch/", "/i/v0/ai/batch"})
"""Paths whose body is a batch; the SDK's analytics lane posts to ``/batch/``."""
SINGLE_PATHS = frozenset({"/i/v0/e/", "/i/v0/e", "/e/", "/e", "/capture/", "/capture"})
"""Paths that take one event (or a batch, as PostHog's capture does)."""
_CONTROL_PREFIX = "/_capture/"

Mode = Literal["accept", "fail", "hang"]


@dataclass
class CaptureRequest:
    """One request to a capture path and how it was answered."""

    path: str
    events: list[dict[str, Any]]
    api_key: str | None
    compressed: bool
    status: int = 0
    """The status answered; ``0`` while it hangs, or when the client left first."""
    ingested: bool = False
    """The events count as received by PostHog."""
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "events": self.events,
            "api_key": self.api_key,
            "compressed": self.compressed,
            "status": self.status,
            "ingested": self.ingested,
            "at": self.at,
        }


class PostHogCapture:
    """The recording and the outage switch; :meth:`app` is the ASGI application.

    Thread-safe: the server runs on its own thread while the test reads and switches.
    """

    def __init__(self, *, api_key: str | None = None) -> None:
        """``api_key``: when set, requests with another project key get PostHog's 401."""
        self.api_key = api_key
        self._lock = threading.Condition()
        self._requests: list[CaptureRequest] = []
        self._mode: Mode = "accept"
        self._fail_status = 503
        self._fail_times: int | None = None
        self._hang_ingest = False
        self._stopping = False
        self._rejected: set[str] = set()

    # ------------------------------------------------------------------ what was received

    @property
    def requests(self) -> list[CaptureRequest]:
        """Every request to a capture path, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event PostHog would have received, duplicates included, in arrival order."""
        with self._lock:
            return [
                event for request in self._requests if request.ingested for event in request.events
            ]

    def unique_events(self) -> dict[str, dict[str, Any]]:
        """The received events by ``uuid``, the first of each: what PostHog keeps."""
        unique: dict[str, dict[str, Any]] = {}
        for event in self.events:
            unique.setdefault(str(event.get("uuid")), event)
        return unique

    def wait_for_events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until at least ``count`` events were received; return them all."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                events = [e for r in self._requests if r.ingested for e in r.events]
                if len(events) >= count:
                    return events
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(events)} of {count} events after {timeout} s")
                self._lock.wait(remaining)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[CaptureRequest]:
        """Block until at least ``count`` requests arrived (answered or not)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{len(self._requests)} of {count} requests after {timeout} s"
                    )
                self._lock.wait(remaining)
            return list(self._requests)

    def clear(self) -> None:
        """Forget every request and go back to accepting."""
        with self._lock:
            self._requests.clear()
            self._mode, self._fail_times, self._hang_ingest = "accept", None, False
            self._rejected.clear()
            self._lock.notify_all()

    # -------------------------------------------------------------------------- outages

    def accept(self) -> None:
        """Answer 200 again (ends a failure or a hang; hanging requests are released)."""
        self._set_mode("accept")

    def fail(self, status: int = 503, *, times: int | None = None) -> None:
        """Answer ``status`` to the next ``times`` requests (``None``: until :meth:`accept`)."""
        self._set_mode("fail", status=status, times=times)

    def hang(self, *, ingest: bool = False) -> None:
        """Hold requests open unanswered until :meth:`accept` (or :meth:`fail`, or a stop)."""
        self._set_mode("hang", ingest=ingest)

    def reject(self, uuids: set[str] | frozenset[str]) -> None:
        """Answer 400 to any request holding one of these event uuids, whatever the mode."""
        with self._lock:
            self._rejected = set(uuids)

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._mode

    def _set_mode(
        self, mode: Mode, *, status: int = 503, times: int | None = None, ingest: bool = False
    ) -> None:
        with self._lock:
            self._mode, self._fail_status, self._fail_times = mode, status, times
            self._hang_ingest = ingest
            self._lock.notify_all()

    def _stop_hanging(self, stopping: bool) -> None:
        with self._lock:
            self._stopping = stopping
            self._lock.notify_all()

    # ----------------------------------------------------------------------------- ASGI

    def app(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """The ASGI application."""
        return self._asgi

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        body = await _read_body(receive)
        if path.startswith(_CONTROL_PREFIX):
            await self._control(method, path[len(_CONTROL_PREFIX) :].rstrip("/"), body, send)
        elif path not in BATCH_PATHS and path not in SINGLE_PATHS:
            await _send_json(send, 404, {"type": "validation_error", "code": "not_found"})
        elif method != "POST":
            await _send_json(send, 405, {"type": "validation_error", "code": "method_not_allowed"})
        else:
            await self._capture(scope, body, receive, send)

    async def _capture(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            payload, compressed = _decode(body, headers, query)
            api_key, events = _events_of(payload)
        except (ValueError, OSError, zlib.error, EOFError) as exc:
            await _send_json(send, 400, {"type": "validation_error", "detail": str(exc)})
            return
        request = CaptureRequest(scope["path"], events, api_key, compressed)
        with self._lock:
            self._requests.append(request)
            refused = any(str(event.get("uuid")) in self._rejected for event in events)
            self._lock.notify_all()
        if self.api_key is not None and api_key != self.api_key:
            body_401 = {"type": "authentication_error", "code": "invalid_api_key"}
            await self._answer(request, send, 401, body_401)
        elif refused:
            body_400 = {"type": "validation_error", "code": "invalid_payload", "detail": "refused"}
            await self._answer(request, send, 400, body_400)
        else:
            await self._serve(request, receive, send)

    async def _serve(self, request: CaptureRequest, receive: Receive, send: Send) -> None:
        disconnected = asyncio.ensure_future(receive())
        try:
            while True:
                with self._lock:
                    mode, status = self._mode, self._fail_status
                    if mode == "fail" and self._fail_times is not None:
                        self._fail_times -= 1
                        if self._fail_times <= 0:
                            self._mode, self._fail_times = "accept", None
                    if mode == "hang" and self._hang_ingest and not request.ingested:
                        request.ingested = True
                        self._lock.notify_all()
                    stopping = self._stopping
                if mode == "accept":
                    await self._answer(request, send, 200, {"status": "Ok"}, ingest=True)
                    return
                if mode == "fail" or stopping:
                    await self._answer(
                        request, send, status if mode == "fail" else 503, _unavailable()
                    )
                    return
                # Hanging: wait for a new mode, a stop, or the client giving up.
                done, _ = await asyncio.wait({disconnected}, timeout=0.02)
                if done:
                    return
        finally:
            disconnected.cancel()

    async def _answer(
        self,
        request: CaptureRequest,
        send: Send,
        status: int,
        body: dict[str, Any],
        *,
        ingest: bool = False,
    ) -> None:
        with self._lock:
            request.status = status
            request.ingested = request.ingested or ingest
            self._lock.notify_all()
        await _send_json(send, status, body)

    async def _control(self, method: str, resource: str, body: bytes, send: Send) -> None:
        if (resource, method) == ("events", "GET"):
            await _send_json(send, 200, {"data": self.events})
        elif (resource, method) == ("requests", "GET"):
            await _send_json(send, 200, {"data": [r.to_dict() for r in self.requests]})
        elif (resource, method) == ("events", "DELETE"):
            self.clear()
            await _send_json(send, 200, {"cleared": True})
        elif (resource, method) == ("mode", "POST"):
            try:
                spec = json.loads(body or b"{}")
                mode = spec.get("mode", "accept")
                if mode == "fail":
                    self.fail(int(spec.get("status", 503)), times=spec.get("times"))
                elif mode == "hang":
                    self.hang(ingest=bool(spec.get("ingest", False)))
                elif mode == "accept":
                    self.accept()
                else:
                    raise ValueError(f"unknown mode {mode!r}")
            except (ValueError, TypeError, AttributeError) as exc:
                await _send_json(send, 400, {"detail": str(exc)})
                return
            await _send_json(send, 200, {"mode": self.mode})
        else:
            await _send_json(send, 404, {"detail": "not found"})


def _unavailable() -> dict[str, Any]:
    return {"type": "server_error", "code": "unavailable", "detail": "capture is unavailable"}


def _decode(body: bytes, headers: dict[str, str], query: dict[str, list[str]]) -> tuple[Any, bool]:
    encoding = headers.get("content-encoding", "").lower()
    compression = (query.get("compression") or [""])[0].lower()
    compressed = False
    if encoding == "gzip" or compression in ("gzip", "gzip-js"):
        body, compressed = gzip.decompress(body), True
    elif encoding == "deflate":
        body, compressed = zlib.decompress(body), True
    return json.loads(body), compressed


def _events_of(payload: Any) -> tuple[str | None, list[dict[str, Any]]]:
    if isinstance(payload, list):
        batch, api_key = payload, None
    elif isinstance(payload, dict) and "batch" in payload:
        batch, api_key = payload["batch"], payload.get("api_key")
    elif isinstance(payload, dict) and "event" in payload:
        batch, api_key = [payload], payload.get("api_key")
    else:
        raise ValueError("expected a batch or an event")
    if not isinstance(batch, list) or not all(isinstance(e, dict) for e in batch):
        raise ValueError("batch must be a list of events")
    for event in batch:
        if not isinstance(event.get("event"), str):
            raise ValueError("every event needs an event name")  # noqa: TRY004 - a 400, not a bug
        api_key = api_key or event.get("api_key") or event.get("token")
    return api_key, batch


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send_json(send: Send, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class CaptureServer:
    """Serves a :class:`PostHogCapture` with uvicorn on a background thread.

    ``with CaptureServer() as capture:`` then point the SDK at ``capture.host``. After
    :meth:`stop` (connections refused) :meth:`start` serves again on the same port.
    """

    def __init__(
        self, capture: PostHogCapture | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.capture = capture if capture is not None else PostHogCapture()
        self.bind_host = host
        self.port = port
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None

    @property
    def host(self) -> str:
        """The value for ``POSTHOG_HOST``: ``http://127.0.0.1:PORT``."""
        return f"http://{self.bind_host}:{self.port}"

    def __getattr__(self, name: str) -> Any:
        # Recording and outage switches are the capture's: ``server.fail()``, ``server.events``.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.capture, name)

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, timeout: float = 5.0) -> Self:
        """Serve; returns once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("the capture server is already running")
        self.capture._stop_hanging(False)
        sock = _bind(self.bind_host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.capture.app(),
            host=self.bind_host,
            log_level="warning",
            access_log=False,
            lifespan="off",
            interface="asgi3",
            timeout_graceful_shutdown=1,
            log_config=None,
        )
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._run, args=(server, sock), name=f"posthog-capture-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the capture server did not start on port {self.port}")
            time.sleep(0.002)
        return self

    @staticmethod
    def _run(server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        finally:
            sock.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving (hanging requests are answered 503); the port then refuses connections."""
        thread, server = self._thread, self._server
        if thread is None or server is None:
            return
        self.capture._stop_hanging(True)
        server.should_exit = True
        thread.join(timeout)
        self._thread = self._server = None
        if thread.is_alive():
            raise RuntimeError("the capture server did not stop in time")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def running_capture(**options: Any) -> Iterator[CaptureServer]:
    """A :class:`CaptureServer` over a new :class:`PostHogCapture` built with ``options``."""
    with CaptureServer(PostHogCapture(**options)) as server:
        yield server


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.support.posthog_capture --port N [--api-key KEY]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", default=None, help="answer 401 to other project keys")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    capture = PostHogCapture(api_key=args.api_key)
    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            capture.app(), host=args.host, log_level="warning", lifespan="off", interface="asgi3"
        )
    )
    print(f"PostHog capture on http://{args.host}:{port}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


if __name__ == "__main__":
    main()
