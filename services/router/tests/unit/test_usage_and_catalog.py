"""Usage extraction, the catalog (parse, persist, refresh) and the OpenAI model list."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from switchboard.common.wire import TokenUsage
from switchboard.router.catalog import ModelCatalog, openai_model_list, parse_models
from switchboard.router.openrouter.errors import UpstreamUnreachableError
from switchboard.router.openrouter.payloads import parse_object
from switchboard.router.openrouter.usage import UpstreamReport, token_usage

OPENROUTER_USAGE = {
    "prompt_tokens": 120,
    "completion_tokens": 30,
    "total_tokens": 150,
    "cost": 0.000123,
    "is_byok": False,
    "prompt_tokens_details": {"cached_tokens": 100, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 12, "image_tokens": 0},
}


def test_token_usage_reads_details() -> None:
    assert token_usage(OPENROUTER_USAGE) == TokenUsage(
        prompt_tokens=120,
        completion_tokens=30,
        total_tokens=150,
        cached_tokens=100,
        reasoning_tokens=12,
    )


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({}, TokenUsage()),
        (
            {"prompt_tokens": 3, "completion_tokens": 4},
            TokenUsage(prompt_tokens=3, completion_tokens=4, total_tokens=7),
        ),
        ({"prompt_tokens": None, "completion_tokens": "5"}, TokenUsage()),
        ({"prompt_tokens": True, "prompt_tokens_details": None}, TokenUsage()),
        (
            {"prompt_tokens": -2, "completion_tokens": 2.0},
            TokenUsage(completion_tokens=2, total_tokens=2),
        ),
    ],
)
def test_token_usage_tolerates_missing_and_odd_values(
    usage: dict[str, Any], expected: TokenUsage
) -> None:
    assert token_usage(usage) == expected


def test_report_from_a_stream() -> None:
    report = UpstreamReport()
    report.observe(
        {"model": "openai/gpt-4o-mini", "provider": "OpenAI", "choices": [], "usage": None}
    )
    report.observe({"model": "", "choices": [{"delta": {"content": "x"}}]})
    report.observe({"model": "openai/gpt-4o-mini", "choices": [], "usage": OPENROUTER_USAGE})
    assert report.served_model == "openai/gpt-4o-mini"
    assert report.provider == "OpenAI"
    assert report.usage is not None
    assert report.usage.cached_tokens == 100
    assert report.cost_usd == 0.000123


def test_report_defaults_when_the_upstream_says_nothing() -> None:
    report = UpstreamReport()
    report.observe({"choices": [], "usage": {"prompt_tokens": 1, "cost": True}})
    assert (report.served_model, report.provider, report.cost_usd) == (None, None, None)
    assert UpstreamReport().usage is None


def test_usage_only_chunk() -> None:
    assert parse_object(b'{"choices": [], "usage": {"total_tokens": 1}}').is_usage_only
    assert not parse_object(
        b'{"choices": [{"delta": {}}], "usage": {"total_tokens": 1}}'
    ).is_usage_only
    assert not parse_object(b'{"choices": [], "usage": null}').is_usage_only
    assert not parse_object(b'{"choices": []}').is_usage_only


# ------------------------------------------------------------------------------ catalog

OPENROUTER_MODELS = {
    "data": [
        {
            "id": "openai/gpt-4o-mini",
            "name": "OpenAI: GPT-4o-mini",
            "created": 1721260800,
            "pricing": {},
        },
        {"id": "anthropic/claude-3.5-haiku", "created": 1730678400},
        {"id": "openrouter/auto"},
        {"id": "solo-model", "created": "yesterday"},
        {"id": ""},
        {"name": "no id"},
        "junk",
    ]
}


def test_openai_model_list() -> None:
    assert openai_model_list(OPENROUTER_MODELS) == {
        "object": "list",
        "data": [
            {
                "id": "openai/gpt-4o-mini",
                "object": "model",
                "created": 1721260800,
                "owned_by": "openai",
            },
            {
                "id": "anthropic/claude-3.5-haiku",
                "object": "model",
                "created": 1730678400,
                "owned_by": "anthropic",
            },
            {"id": "openrouter/auto", "object": "model", "created": 0, "owned_by": "openrouter"},
            {"id": "solo-model", "object": "model", "created": 0, "owned_by": "openrouter"},
        ],
    }


def test_openai_model_list_of_nothing() -> None:
    assert openai_model_list({}) == {"object": "list", "data": []}
    assert openai_model_list({"data": {"id": "x"}}) == {"object": "list", "data": []}


class Upstream:
    """A model list source that counts calls and can fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def fetch(self) -> dict[str, Any]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise UpstreamUnreachableError("down")
        return {
            "data": [
                {
                    "id": f"vendor/model-{self.calls}",
                    "created": 1,
                    "context_length": 1000,
                    "pricing": {"prompt": "0.000001", "completion": "0.000002"},
                    "supported_parameters": ["tools", 7],
                }
            ]
        }


def catalog_of(upstream: Upstream, path: Path | None, **options: Any) -> ModelCatalog:
    values: dict[str, Any] = {"refresh_interval": 60, "fetch_timeout": 1, **options}
    return ModelCatalog(upstream.fetch, cache_path=path, **values)


async def test_catalog_start_fetches_parses_and_persists(tmp_path: Path) -> None:
    upstream, path = Upstream(), tmp_path / "sub" / "catalog.json"
    catalog = catalog_of(upstream, path, clock=lambda: 1234.0)
    assert (catalog.status, catalog.loaded) == ("empty", False)
    await catalog.start()
    try:
        model = catalog.get("vendor/model-1")
        assert model is not None
        assert (model.context_length, model.owned_by, model.created) == (1000, "vendor", 1)
        assert model.pricing is not None
        assert model.pricing.prompt == Decimal("0.000001")
        assert model.supported_parameters == frozenset({"tools"})
        assert catalog.get("vendor/model-1:free") is model
        assert catalog.get("vendor/other") is None
        assert (catalog.status, catalog.fetched_at) == ("fresh", 1234.0)
        saved = orjson.loads(path.read_bytes())
        assert saved["fetched_at"] == 1234.0
        assert saved["data"][0]["id"] == "vendor/model-1"
    finally:
        await catalog.stop()


async def test_catalog_uses_the_persisted_copy_during_an_outage(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    first = catalog_of(Upstream(), path)
    await first.refresh()
    down = Upstream()
    down.fail = True
    catalog = catalog_of(down, path)
    await catalog.start()
    try:
        assert catalog.status == "cached"
        assert list(catalog.models) == ["vendor/model-1"]
        with pytest.raises(UpstreamUnreachableError):
            await catalog.refresh()
        assert catalog.status == "cached"
    finally:
        await catalog.stop()


async def test_catalog_goes_stale_then_recovers(tmp_path: Path) -> None:
    upstream = Upstream()
    catalog = catalog_of(upstream, None)
    await catalog.refresh()
    upstream.fail = True
    with pytest.raises(UpstreamUnreachableError):
        await catalog.refresh()
    assert catalog.status == "stale"
    upstream.fail = False
    await catalog.refresh()
    assert (catalog.status, list(catalog.models)) == ("fresh", ["vendor/model-3"])


async def test_catalog_refreshes_in_the_background() -> None:
    upstream = Upstream()
    catalog = catalog_of(upstream, None, refresh_interval=0.02)
    await catalog.start()
    try:
        async with asyncio.timeout(2):
            while upstream.calls < 3:  # noqa: ASYNC110 - polling a plain counter
                await asyncio.sleep(0.01)
        upstream.fail = True  # failures are retried with backoff, the loop survives
        calls = upstream.calls
        async with asyncio.timeout(2):
            while upstream.calls < calls + 2:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        await catalog.stop()
    assert catalog.status == "stale"


async def test_catalog_without_upstream_or_copy_is_empty(tmp_path: Path) -> None:
    upstream = Upstream()
    upstream.fail = True
    catalog = catalog_of(upstream, tmp_path / "none.json")
    await catalog.start()
    await catalog.stop()
    assert catalog.status == "empty"
    with pytest.raises(UpstreamUnreachableError):
        await catalog.ensure()


async def test_catalog_ignores_a_bad_copy_and_an_empty_answer(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text("{not json")
    upstream = Upstream()
    catalog = catalog_of(upstream, path)
    catalog._load_cached()
    assert catalog.status == "empty"

    async def nothing() -> dict[str, Any]:
        return {"data": []}

    empty = ModelCatalog(nothing, cache_path=None, refresh_interval=1, fetch_timeout=1)
    await empty.refresh()
    assert empty.status == "empty"


async def test_catalog_persist_failure_is_logged_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    catalog = catalog_of(Upstream(), blocker / "catalog.json")
    await catalog.refresh()
    assert catalog.loaded


async def test_catalog_fetch_timeout() -> None:
    upstream = Upstream()
    upstream.gate = asyncio.Event()
    catalog = catalog_of(upstream, None, fetch_timeout=0.05)
    with pytest.raises(TimeoutError):
        await catalog.refresh()
    await catalog.start()  # does not raise either
    await catalog.stop()
    assert catalog.status == "empty"


async def test_concurrent_refreshes_run_one_at_a_time() -> None:
    upstream = Upstream()
    upstream.gate = asyncio.Event()
    catalog = catalog_of(upstream, None)
    waiting = [asyncio.create_task(catalog.ensure()) for _ in range(3)]
    await asyncio.sleep(0.01)
    upstream.gate.set()
    await asyncio.gather(*waiting)
    assert upstream.calls == 1


def test_pricing_parse_rules() -> None:
    models = parse_models(
        {
            "data": [
                {"id": "a/x", "pricing": {"prompt": "bad", "completion": "1"}},
                {"id": "a/y", "pricing": {"prompt": "-1", "completion": "1"}},
                {"id": "a/z", "pricing": "free", "supported_parameters": "tools"},
                {"id": "a/w", "pricing": {"prompt": "1", "completion": "2", "request": "0.5"}},
            ]
        }
    )
    assert models["a/x"].pricing is None
    assert models["a/y"].pricing is None
    assert models["a/z"].pricing is None
    assert models["a/z"].supported_parameters is None
    pricing = models["a/w"].pricing
    assert pricing is not None
    assert pricing.request == Decimal("0.5")
