"""The model catalog: ids, context windows, prices and parameters from ``GET /models``.

Fetched from the catalog provider at start (waiting at most ``ROUTER_CATALOG_FETCH_TIMEOUT``
s), then refreshed every ``ROUTER_CATALOG_REFRESH_INTERVAL`` s in the background. Every
good copy is written to ``ROUTER_CATALOG_CACHE`` (atomically), and read back at start, so a
router starts and routes during an upstream outage. Without either, the router still
serves (concrete models pass through unchecked) and reports itself degraded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import orjson

from switchboard.common.logs import get_logger
from switchboard.router.backoff import backoff_delay
from switchboard.router.cost import Pricing, parse_price
from switchboard.router.openrouter.errors import UpstreamCallError

__all__ = ["CatalogModel", "CatalogStatus", "ModelCatalog", "openai_model_list", "parse_models"]

log = get_logger(__name__)

CatalogStatus = Literal["fresh", "cached", "stale", "empty"]
_DEFAULT_OWNER = "openrouter"
_RETRY_BASE = 2.0  # seconds; a failed refresh is retried sooner than the interval


@dataclass(frozen=True, slots=True)
class CatalogModel:
    """What the router needs to know about one model."""

    id: str
    created: int = 0
    owned_by: str = _DEFAULT_OWNER
    context_length: int | None = None
    pricing: Pricing | None = None
    supported_parameters: frozenset[str] | None = None
    """``None``: unknown (assume supported)."""

    def openai_entry(self) -> dict[str, Any]:
        """The entry of OpenAI's model list."""
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by,
        }


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _pricing(value: object) -> Pricing | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = parse_price(value.get("prompt")), parse_price(value.get("completion"))
    if prompt is None or completion is None:
        return None
    return Pricing(
        prompt=prompt,
        completion=completion,
        input_cache_read=parse_price(value.get("input_cache_read")),
        internal_reasoning=parse_price(value.get("internal_reasoning")),
        request=parse_price(value.get("request")) or Decimal(0),
    )


def _model(entry: object) -> CatalogModel | None:
    if not isinstance(entry, dict):
        return None
    model_id = entry.get("id")
    if not isinstance(model_id, str) or not model_id:
        return None
    owner, slash, _ = model_id.partition("/")
    parameters = entry.get("supported_parameters")
    return CatalogModel(
        id=model_id,
        created=_int(entry.get("created")) or 0,
        owned_by=owner if slash and owner else _DEFAULT_OWNER,
        context_length=_int(entry.get("context_length")),
        pricing=_pricing(entry.get("pricing")),
        supported_parameters=(
            frozenset(p for p in parameters if isinstance(p, str))
            if isinstance(parameters, list)
            else None
        ),
    )


def parse_models(upstream: Mapping[str, Any]) -> dict[str, CatalogModel]:
    """OpenRouter's ``{"data": [...]}`` by model id; unusable entries are left out."""
    entries = upstream.get("data")
    models = [m for m in map(_model, entries if isinstance(entries, list) else []) if m]
    return {model.id: model for model in models}


def openai_model_list(upstream: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``{"object": "list", "data": [...]}`` from OpenRouter's model list.

    ``owned_by`` is the vendor part of an OpenRouter id (``openai`` in ``openai/gpt-4o``).
    """
    return {"object": "list", "data": [m.openai_entry() for m in parse_models(upstream).values()]}


class ModelCatalog:
    """The catalog in use, its refresh loop and its persisted copy."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[dict[str, Any]]],
        *,
        cache_path: Path | None,
        refresh_interval: float,
        fetch_timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch
        self._cache_path = cache_path
        self._refresh_interval = refresh_interval
        self._fetch_timeout = fetch_timeout
        self._clock = clock
        self._models: dict[str, CatalogModel] = {}
        self._fetched_at: float | None = None
        self._from_upstream = False
        self._failing = False
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def models(self) -> Mapping[str, CatalogModel]:
        """The models by id (empty when there is no catalog)."""
        return self._models

    @property
    def loaded(self) -> bool:
        """There is a catalog (fetched or persisted) to check models against."""
        return bool(self._models)

    @property
    def fetched_at(self) -> float | None:
        """Unix time the catalog in use was fetched from the upstream."""
        return self._fetched_at

    @property
    def status(self) -> CatalogStatus:
        """``fresh``, ``cached`` (persisted copy), ``stale`` (refreshes failing) or ``empty``."""
        if not self._models:
            return "empty"
        if not self._from_upstream:
            return "cached"
        return "stale" if self._failing else "fresh"

    def get(self, model_id: str) -> CatalogModel | None:
        """The model, also for OpenRouter variants (``…:free``, ``…:nitro``) of a known id."""
        found = self._models.get(model_id)
        if found is None and ":" in model_id:
            found = self._models.get(model_id.partition(":")[0])
        return found

    async def start(self) -> None:
        """Load the persisted copy, try one fetch, then keep refreshing in the background."""
        self._load_cached()
        with contextlib.suppress(UpstreamCallError, TimeoutError):
            await self.refresh()
        if not self._models:
            log.error("catalog.empty", cache=str(self._cache_path))
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="catalog-refresh")

    async def stop(self) -> None:
        """Stop refreshing."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None

    async def refresh(self) -> None:
        """Fetch now; raises the upstream failure (or ``TimeoutError``) and keeps the old copy."""
        async with self._lock:
            await self._fetch_and_store()

    async def ensure(self) -> None:
        """Fetch now if there is no catalog at all (raises when that fails)."""
        if self._models:
            return
        async with self._lock:  # concurrent askers share one upstream call
            if not self._models:
                await self._fetch_and_store()

    async def _fetch_and_store(self) -> None:
        try:
            async with asyncio.timeout(self._fetch_timeout):
                upstream = await self._fetch()
        except (UpstreamCallError, TimeoutError) as exc:
            self._failing = True
            log.warning("catalog.refresh_failed", failure=type(exc).__name__, status=self.status)
            raise
        models = parse_models(upstream)
        if not models:
            self._failing = True
            log.warning("catalog.refresh_empty")
            return
        self._models, self._fetched_at = models, self._clock()
        self._from_upstream, self._failing = True, False
        log.info("catalog.refreshed", count=len(models))
        self._persist(upstream)

    async def _loop(self) -> None:
        failures = 0
        while True:
            wait = (
                min(self._refresh_interval, backoff_delay(failures, base=_RETRY_BASE, cap=300))
                if self._failing
                else self._refresh_interval
            )
            await asyncio.sleep(wait)
            try:
                await self.refresh()
            except (UpstreamCallError, TimeoutError):
                failures += 1
            else:
                failures = 0

    def _persist(self, upstream: dict[str, Any]) -> None:
        path = self._cache_path
        if path is None:
            return
        data = orjson.dumps({"fetched_at": self._fetched_at, "data": upstream.get("data")})
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_bytes(data)
            temporary.replace(path)  # atomic: a reader never sees half a file
        except OSError as exc:
            log.warning("catalog.persist_failed", path=str(path), error=str(exc))

    def _load_cached(self) -> None:
        path = self._cache_path
        if path is None or not path.exists():
            return
        try:
            saved = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("catalog.cache_unreadable", path=str(path), error=str(exc))
            return
        models = parse_models(saved) if isinstance(saved, dict) else {}
        if models:
            fetched_at = saved.get("fetched_at")
            self._models = models
            self._fetched_at = fetched_at if isinstance(fetched_at, int | float) else None
            log.info("catalog.loaded_cache", path=str(path), count=len(models))
