"""The model list, in OpenAI's shape, from the upstream's ``GET /models``, cached."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from switchboard.common.logs import get_logger
from switchboard.router.openrouter.errors import UpstreamCallError

__all__ = ["ModelCatalog", "openai_model_list"]

log = get_logger(__name__)

_DEFAULT_OWNER = "openrouter"


def _model(entry: object) -> dict[str, Any] | None:
    if not isinstance(entry, dict):
        return None
    model_id = entry.get("id")
    if not isinstance(model_id, str) or not model_id:
        return None
    created = entry.get("created")
    owner, slash, _ = model_id.partition("/")
    return {
        "id": model_id,
        "object": "model",
        "created": created if isinstance(created, int) and not isinstance(created, bool) else 0,
        "owned_by": owner if slash and owner else _DEFAULT_OWNER,
    }


def openai_model_list(upstream: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``{"object": "list", "data": [...]}`` from OpenRouter's model list.

    ``owned_by`` is the vendor part of an OpenRouter id (``openai`` in ``openai/gpt-4o``);
    entries without a usable id are left out.
    """
    entries = upstream.get("data")
    models = [m for m in map(_model, entries if isinstance(entries, list) else []) if m]
    return {"object": "list", "data": models}


class ModelCatalog:
    """The encoded model list, fetched at most once per ``ttl`` seconds.

    While the upstream fails, the last good list is served (stale beats nothing for a
    list that changes a few times a day); with none yet, the failure is raised.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[dict[str, Any]]],
        *,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._clock = clock
        self._body: bytes | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    def _fresh_body(self) -> bytes | None:
        if self._body is not None and self._clock() - self._fetched_at < self._ttl:
            return self._body
        return None

    async def body(self) -> bytes:
        """The model list as JSON bytes; raises an upstream failure if there is none."""
        body = self._fresh_body()
        if body is not None:
            return body
        async with self._lock:  # concurrent askers share one upstream call
            return self._fresh_body() or await self._refresh()

    async def _refresh(self) -> bytes:
        try:
            upstream = await self._fetch()
        except UpstreamCallError as exc:
            if self._body is None:
                raise
            log.warning("models.stale", failure=type(exc).__name__)
            return self._body
        listing = openai_model_list(upstream)
        self._body = orjson.dumps(listing)
        self._fetched_at = self._clock()
        log.info("models.refreshed", count=len(listing["data"]))
        return self._body
