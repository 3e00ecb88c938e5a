"""A loopback HTTP server answering JSON from a function, in a thread: the stand-in for
small JSON APIs in tests (OSV, PyPI's JSON API)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Answer", "serving_json"]

Answer = Callable[[str, str, Any], tuple[int, Any]]
"""``(method, path without query, parsed JSON body or None) -> (status, JSON answer)``."""


@contextmanager
def serving_json(answer: Answer) -> Iterator[str]:
    """Serve ``answer`` on a free loopback port; yields the root URL
    (``http://127.0.0.1:PORT``). Leaving the block stops the server and closes its port."""

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            status, data = answer(self.command, self.path.split("?")[0], body)
            encoded = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        do_GET = do_POST = _serve  # noqa: N815 - http.server's dispatch names

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
