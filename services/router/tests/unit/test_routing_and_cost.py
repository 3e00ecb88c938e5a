"""Route planning (tier, concrete, auto, models array, key restrictions) and cost arithmetic."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from switchboard.common.chat import ChatCompletionRequest
from switchboard.common.errors import GatewayError
from switchboard.common.wire import KeyIdentity, TokenUsage
from switchboard.router.breaker import Breakers
from switchboard.router.catalog import ModelCatalog, parse_models
from switchboard.router.config import Provider, Routing, RoutingConfig
from switchboard.router.cost import Pricing, parse_price, request_cost
from switchboard.router.routing import Planner

CATALOG = {
    "data": [
        {
            "id": "big/expensive",
            "context_length": 200_000,
            "pricing": {"prompt": "0.00001", "completion": "0.00003"},
            "supported_parameters": ["tools", "temperature"],
        },
        {
            "id": "small/cheap",
            "context_length": 100,
            "pricing": {"prompt": "0.0000001", "completion": "0.0000002"},
            "supported_parameters": ["temperature"],
        },
        {
            "id": "mid/model",
            "context_length": 8_000,
            "pricing": {"prompt": "0.000001", "completion": "0.000002"},
            "supported_parameters": ["tools"],
        },
        {"id": "unpriced/model", "context_length": 8_000},
    ]
}
CONFIG: dict[str, Any] = {
    "providers": {"direct": {"base_url": "http://direct/v1"}},
    "tiers": {
        "premium": ["big/expensive"],
        "standard": ["mid/model", "unpriced/model"],
        "budget": ["small/cheap"],
    },
    "aliases": {"fast": ["small/cheap", "mid/model"]},
    "models": {
        "mid/model": {
            "providers": ["openrouter", {"provider": "direct", "model": "mid"}],
            "timeout": 7,
            "retries": 1,
            "fallbacks": ["big/expensive", "small/cheap"],
        },
        "own/model": {
            "providers": ["direct"],
            "pricing": {"prompt": "0.5", "completion": 1, "input_cache_read": "0.1"},
        },
    },
}
OPEN = KeyIdentity(key_id="k")


def planner(config: dict[str, Any] | None = None, *, loaded: bool = True) -> Planner:
    routing_config = RoutingConfig.model_validate(CONFIG if config is None else config)
    providers = {
        "openrouter": Provider("openrouter", "http://or/v1"),
        "direct": Provider("direct", "http://direct/v1"),
    }
    routing = Routing(routing_config, providers, "openrouter")

    async def fetch() -> dict[str, Any]:
        return CATALOG

    catalog = ModelCatalog(fetch, cache_path=None, refresh_interval=60, fetch_timeout=1)
    if loaded:
        catalog._models = parse_models(CATALOG)
    return Planner(routing, catalog, Breakers(routing_config.breaker))


def request(model: str, text: str = "hi", **fields: Any) -> ChatCompletionRequest:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **fields}
    return ChatCompletionRequest.model_validate(body)


def chain(route: Any) -> list[tuple[str, str, str]]:
    return [(c.model, c.provider.name, c.upstream_model) for c in route.candidates]


def error_of(call: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        call()
    return caught.value


def test_tier_alias_is_its_chain_with_provider_routes() -> None:
    route = planner().plan(request("standard"), OPEN)
    assert (route.requested_model, route.tier) == ("standard", "standard")
    assert chain(route) == [
        ("mid/model", "openrouter", "mid/model"),
        ("mid/model", "direct", "mid"),
        ("unpriced/model", "openrouter", "unpriced/model"),
    ]
    first = route.candidates[0]
    assert (first.timeout, first.retries) == (7, 1)
    assert route.candidates[2].retries == 2


def test_concrete_model_then_its_fallbacks() -> None:
    route = planner().plan(request("mid/model"), OPEN)
    assert route.tier is None
    assert [c.model for c in route.candidates] == [
        "mid/model",
        "mid/model",
        "big/expensive",
        "small/cheap",
    ]


def test_openrouter_models_array_adds_fallbacks() -> None:
    route = planner().plan(request("small/cheap", models=["big/expensive", "fast"]), OPEN)
    assert [c.model for c in route.candidates] == [
        "small/cheap",
        "big/expensive",
        "mid/model",
        "mid/model",
    ]
    bad = error_of(lambda: planner().plan(request("small/cheap", models="x"), OPEN))
    assert (bad.status, bad.param) == (400, "models")
    missing = error_of(lambda: planner().plan(request("small/cheap", models=["no/such"]), OPEN))
    assert (missing.status, missing.code) == (404, "model_not_found")


def test_unknown_models_are_404_only_when_the_catalog_knows() -> None:
    error = error_of(lambda: planner().plan(request("no/such"), OPEN))
    assert (error.status, error.type, error.code, error.param) == (
        404,
        "invalid_request_error",
        "model_not_found",
        "model",
    )
    assert "`no/such`" in error.message
    assert chain(planner(loaded=False).plan(request("no/such"), OPEN)) == [
        ("no/such", "openrouter", "no/such")
    ]
    assert planner().plan(request("small/cheap:free"), OPEN).candidates
    assert chain(planner().plan(request("own/model"), OPEN)) == [
        ("own/model", "direct", "own/model")
    ]
    other = {**CONFIG, "default_provider": "direct"}
    assert planner(other).plan(request("no/such"), OPEN).candidates


def test_key_restrictions_are_enforced_again() -> None:
    key = KeyIdentity(key_id="k", allowed_tiers=["budget"], allowed_models=["mid/*"])
    p = planner()
    assert p.plan(request("budget"), key).candidates
    assert p.plan(request("mid/model"), key).candidates[-1].model == "mid/model"  # fallbacks cut
    for model in ("premium", "big/expensive", "auto", "fast"):
        denied = error_of(lambda model=model: p.plan(request(model), key))
        assert (denied.status, denied.type, denied.code) == (
            403,
            "permission_error",
            "model_not_allowed",
        )
    denied = error_of(lambda: p.plan(request("mid/model", models=["big/expensive"]), key))
    assert denied.code == "model_not_allowed"
    only_tiers = KeyIdentity(key_id="k", allowed_tiers=["fast"])
    assert p.plan(request("fast"), only_tiers).candidates
    assert error_of(lambda: p.plan(request("small/cheap"), only_tiers)).status == 403


def test_auto_picks_the_cheapest_that_fits() -> None:
    p = planner()
    assert [c.model for c in p.plan(request("auto"), OPEN).candidates][:3] == [
        "small/cheap",
        "mid/model",
        "mid/model",
    ]
    # Too long for small/cheap's 100-token window (400 characters ~ 100 tokens + answer).
    route = p.plan(request("auto", "x" * 400, max_tokens=10), OPEN)
    assert route.tier == "auto"
    assert route.candidates[0].model == "mid/model"
    assert route.candidates[-1].model == "unpriced/model"  # unknown price goes last
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert p.plan(request("auto", tools=tools), OPEN).candidates[0].model == "mid/model"


def test_auto_prefers_healthy_models() -> None:
    p = planner()
    p._breakers = Breakers(
        RoutingConfig.model_validate({"breaker": {"failure_threshold": 1}}).breaker
    )
    p._breakers.get("openrouter", "small/cheap").failure()
    assert p.plan(request("auto"), OPEN).candidates[0].model == "mid/model"
    assert p.plan(request("auto"), OPEN).candidates[-1].model == "small/cheap"


def test_auto_within_a_restricted_keys_tiers() -> None:
    p = planner()
    premium = KeyIdentity(key_id="k", allowed_tiers=["auto", "premium"])
    assert [c.model for c in p.plan(request("auto"), premium).candidates] == ["big/expensive"]
    any_tier = KeyIdentity(key_id="k", allowed_tiers=["auto"])
    assert len(p.plan(request("auto"), any_tier).candidates) == 5


def test_auto_when_nothing_fits() -> None:
    p = planner()
    huge = error_of(lambda: p.plan(request("auto", "x" * 1_000_000), OPEN))
    assert (huge.status, huge.code) == (400, "context_length_exceeded")
    budget_only = KeyIdentity(key_id="k", allowed_tiers=["auto", "budget"])
    tools = [{"type": "function", "function": {"name": "f"}}]
    no_tools = error_of(lambda: p.plan(request("auto", tools=tools), budget_only))
    assert (no_tools.status, no_tools.param) == (400, "tools")
    empty = error_of(lambda: planner({}).plan(request("auto"), OPEN))
    assert (empty.status, empty.code) == (404, "model_not_found")


def test_config_pricing_overrides_the_catalog() -> None:
    p = planner()
    own = p.pricing("own/model")
    assert own is not None
    assert (own.prompt, own.completion, own.input_cache_read) == (
        Decimal("0.5"),
        Decimal(1),
        Decimal("0.1"),
    )
    cheap = p.pricing("small/cheap")
    assert cheap is not None
    assert cheap.prompt == Decimal("0.0000001")
    assert p.pricing("no/such") is None


# ---------------------------------------------------------------------------------- cost

PRICING = Pricing(
    prompt=Decimal("0.000003"),
    completion=Decimal("0.000015"),
    input_cache_read=Decimal("0.0000003"),
    internal_reasoning=Decimal("0.00002"),
)


def test_cost_of_prompt_and_completion() -> None:
    usage = TokenUsage(prompt_tokens=1000, completion_tokens=500, total_tokens=1500)
    cost = request_cost(usage, reported=None, pricing=PRICING)
    # 1000 * 0.000003 + 500 * 0.000015 = 0.003 + 0.0075
    assert (cost.usd, cost.source) == (0.0105, "catalog")


def test_cached_and_reasoning_tokens_have_their_own_prices() -> None:
    usage = TokenUsage(
        prompt_tokens=1000, completion_tokens=500, cached_tokens=800, reasoning_tokens=200
    )
    # 200 * 0.000003 + 800 * 0.0000003 + 300 * 0.000015 + 200 * 0.00002
    expected = Decimal("0.0006") + Decimal("0.00024") + Decimal("0.0045") + Decimal("0.004")
    assert PRICING.cost(usage) == expected
    assert request_cost(usage, reported=None, pricing=PRICING).usd == float(expected)


def test_without_cache_or_reasoning_prices_they_bill_as_prompt_and_completion() -> None:
    plain = Pricing(prompt=Decimal("0.000001"), completion=Decimal("0.000002"))
    usage = TokenUsage(prompt_tokens=10, completion_tokens=10, cached_tokens=50, reasoning_tokens=5)
    assert plain.cost(usage) == Decimal("0.00003")  # cached capped at the prompt count
    zero = Pricing(
        prompt=Decimal(1), completion=Decimal(2), input_cache_read=Decimal(0), request=Decimal(3)
    )
    assert zero.cost(TokenUsage(prompt_tokens=1, cached_tokens=1)) == Decimal(4)


def test_upstream_cost_is_preferred_and_rounded() -> None:
    usage = TokenUsage(prompt_tokens=1000, completion_tokens=500)
    cost = request_cost(usage, reported=0.000123456789012345, pricing=PRICING)
    assert (cost.usd, cost.source) == (0.0001234568, "upstream")
    assert request_cost(usage, reported=float("nan"), pricing=PRICING).source == "catalog"
    assert request_cost(usage, reported=None, pricing=None).source == "unknown"
    assert request_cost(None, reported=None, pricing=PRICING).usd is None


def test_rounding_is_half_even_to_ten_places() -> None:
    tiny = Pricing(prompt=Decimal("0.00000000005"), completion=Decimal(0))
    assert request_cost(TokenUsage(prompt_tokens=1), reported=None, pricing=tiny).usd == 0.0
    assert request_cost(TokenUsage(prompt_tokens=3), reported=None, pricing=tiny).usd == 2e-10


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.5", Decimal("0.5")),
        (1, Decimal(1)),
        ("-1", None),
        ("x", None),
        (True, None),
        (None, None),
    ],
)
def test_parse_price(value: object, expected: Decimal | None) -> None:
    assert parse_price(value) == expected


def test_estimate_ranks_by_expected_cost() -> None:
    assert PRICING.estimate(100, 10) == Decimal("0.00045")
    assert PRICING.unit_price == Decimal("0.000018")
