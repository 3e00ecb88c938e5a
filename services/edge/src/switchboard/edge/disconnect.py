"""Telling a request handler that its client went away, without a task per request.

The edge's HTTP protocol (:mod:`switchboard.edge.httpserver`) offers the ASGI extension
:data:`EXTENSION` in each request's scope (ASGI extensions are dicts: its ``watch`` is a
function that registers a callback, called once when the connection is lost). Under any
other server, a task waits for ASGI's ``http.disconnect`` instead (what every non-streamed
chat completion did before: that task, and the second one it had to be raced against, cost
about a tenth of the edge's time per request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from litestar.types import Receive, Scope

__all__ = ["EXTENSION", "Unwatch", "watch_disconnect"]

EXTENSION = "switchboard.disconnect"

Unwatch = Callable[[], object]
"""Stops watching (idempotent)."""


def watch_disconnect(scope: Scope, receive: Receive, callback: Callable[[], Any]) -> Unwatch:
    """Call ``callback`` once if the client disconnects before the returned function is
    called. ``receive`` is only used when the server does not offer :data:`EXTENSION`;
    the request's body must have been read already."""
    extension = (scope.get("extensions") or {}).get(EXTENSION) or {}
    watch = extension.get("watch")
    if callable(watch):
        unwatch: Unwatch = watch(callback)
        return unwatch
    task = asyncio.get_running_loop().create_task(_wait_for_disconnect(receive, callback))
    return task.cancel


async def _wait_for_disconnect(receive: Receive, callback: Callable[[], Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    callback()
