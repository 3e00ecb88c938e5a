"""Usage extraction and the model list conversion and cache."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from switchboard.common.wire import TokenUsage
from switchboard.router.catalog import ModelCatalog, openai_model_list
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
    finished = report.finished("r1", requested_model="openai/gpt-4o", chunks=3)
    assert finished.request_id == "r1"
    assert finished.served_model == "openai/gpt-4o-mini"
    assert finished.provider == "OpenAI"
    assert finished.usage is not None
    assert finished.usage.cached_tokens == 100
    assert finished.cost_usd == 0.000123
    assert finished.chunks == 3


def test_report_defaults_when_the_upstream_says_nothing() -> None:
    report = UpstreamReport()
    report.observe({"choices": [], "usage": {"prompt_tokens": 1, "cost": True}})
    finished = report.finished("r1", requested_model="openai/gpt-4o", chunks=0)
    assert finished.served_model == "openai/gpt-4o"
    assert finished.provider == "openrouter"
    assert finished.cost_usd is None
    assert UpstreamReport().finished("r", requested_model="m", chunks=0).usage is None


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
        return {"data": [{"id": f"vendor/model-{self.calls}", "created": 1}]}


def ids(body: bytes) -> list[str]:
    return [model["id"] for model in orjson.loads(body)["data"]]


async def test_catalog_caches_for_the_ttl() -> None:
    now = [1000.0]
    upstream = Upstream()
    catalog = ModelCatalog(upstream.fetch, ttl=60, clock=lambda: now[0])
    assert ids(await catalog.body()) == ["vendor/model-1"]
    now[0] += 59
    assert ids(await catalog.body()) == ["vendor/model-1"]
    now[0] += 1
    assert ids(await catalog.body()) == ["vendor/model-2"]
    assert upstream.calls == 2


async def test_catalog_ttl_zero_always_asks() -> None:
    upstream = Upstream()
    catalog = ModelCatalog(upstream.fetch, ttl=0)
    await catalog.body()
    await catalog.body()
    assert upstream.calls == 2


async def test_catalog_serves_stale_while_the_upstream_fails() -> None:
    now = [0.0]
    upstream = Upstream()
    catalog = ModelCatalog(upstream.fetch, ttl=10, clock=lambda: now[0])
    first = await catalog.body()
    upstream.fail = True
    now[0] = 100
    assert await catalog.body() == first
    upstream.fail = False
    assert ids(await catalog.body()) == ["vendor/model-3"]


async def test_catalog_without_a_list_raises() -> None:
    upstream = Upstream()
    upstream.fail = True
    with pytest.raises(UpstreamUnreachableError):
        await ModelCatalog(upstream.fetch, ttl=10).body()


async def test_concurrent_askers_share_one_call() -> None:
    upstream = Upstream()
    upstream.gate = asyncio.Event()
    catalog = ModelCatalog(upstream.fetch, ttl=10)
    waiting = [asyncio.create_task(catalog.body()) for _ in range(5)]
    await asyncio.sleep(0.01)
    upstream.gate.set()
    bodies = await asyncio.gather(*waiting)
    assert upstream.calls == 1
    assert len(set(bodies)) == 1
