"""Serving the emulator with uvicorn on a background thread, or standalone."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self, Unpack

import uvicorn

from tests.support.openrouter_emulator.asgi import EmulatorApp
from tests.support.openrouter_emulator.model import (
    CallRecord,
    Fault,
    FaultKind,
    FaultOptions,
    OpenRouterEmulator,
)

# --------------------------------------------------------------------------------- server


class _QuietAbort(logging.Filter):
    """Drops uvicorn's error log for the connections the emulator cuts on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


def _quiet_uvicorn() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietAbort) for f in logger.filters):
        logger.addFilter(_QuietAbort())


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


def _config(app: EmulatorApp, host: str, *, own_logging: bool = False) -> uvicorn.Config:
    """uvicorn's settings; ``own_logging`` lets uvicorn configure logging (standalone only)."""
    return uvicorn.Config(
        app,
        host=host,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
        # In tests, leave logging to pytest rather than let uvicorn reconfigure it.
        log_config=uvicorn.config.LOGGING_CONFIG if own_logging else None,
    )


class EmulatorServer:
    """Serves an :class:`OpenRouterEmulator` with uvicorn on a background thread.

    Use it as a context manager::

        with EmulatorServer() as upstream:
            client = OpenAI(base_url=upstream.base_url, api_key="test")
            upstream.add_fault("status", status=429, retry_after=1)
    """

    def __init__(
        self,
        emulator: OpenRouterEmulator | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """``port`` 0 picks a free port; ``emulator`` defaults to a new one."""
        self.emulator = emulator if emulator is not None else OpenRouterEmulator()
        self.host = host
        self.port = port
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._app: EmulatorApp | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenRouter-style base URL, ``http://127.0.0.1:PORT/api/v1``."""
        return f"{self.origin}/api/v1"

    @property
    def calls(self) -> list[CallRecord]:
        """The calls received so far."""
        return self.emulator.calls

    def add_fault(self, fault: Fault | FaultKind, /, **options: Unpack[FaultOptions]) -> Fault:
        """See :meth:`OpenRouterEmulator.add_fault`."""
        return self.emulator.add_fault(fault, **options)

    def clear(self) -> None:
        """Forget calls and faults."""
        self.emulator.clear()

    def start(self, timeout: float = 5.0) -> Self:
        """Start serving; returns once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the emulator server is already running")
        _quiet_uvicorn()
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._app = self.emulator.app()
        self._server = server = uvicorn.Server(_config(self._app, self.host))
        self._thread = threading.Thread(
            target=self._run,
            args=(server, sock),
            name=f"openrouter-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the emulator server did not start on port {self.port}")
            time.sleep(0.002)
        return self

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            await server.serve(sockets=[sock])

        try:
            asyncio.run(serve(), loop_factory=server.config.get_loop_factory())
        finally:
            sock.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: wakes hanging handlers, so it takes well under a second."""
        thread, server, app, loop = self._thread, self._server, self._app, self._loop
        if thread is None or server is None or app is None:
            return
        server.should_exit = True
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(app.shutdown)
        thread.join(timeout)
        self._thread = self._server = self._app = self._loop = None
        if thread.is_alive():
            raise RuntimeError("the emulator server did not stop in time")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def running_emulator(**options: Any) -> Iterator[EmulatorServer]:
    """An :class:`EmulatorServer` over a new emulator built with ``options``."""
    with EmulatorServer(OpenRouterEmulator(**options)) as server:
        yield server


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.support.openrouter_emulator --port N [--chunk-delay S]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds before chunks")
    parser.add_argument("--chunks", type=int, default=4, help="pieces per streamed answer")
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    parser.add_argument("--max-calls", type=int, default=10_000, help="calls kept on record")
    parser.add_argument("--no-processing-comment", action="store_true")
    args = parser.parse_args(argv)
    emulator = OpenRouterEmulator(
        stream_chunks=args.chunks,
        chunk_delay=args.chunk_delay,
        processing_comment=not args.no_processing_comment,
        api_key=args.api_key,
        max_calls=args.max_calls,
    )
    _quiet_uvicorn()
    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(_config(emulator.app(), args.host, own_logging=True))
    print(f"OpenRouter emulator on http://{args.host}:{port}/api/v1", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
