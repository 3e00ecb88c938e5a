"""The input/output split of a request's cost: it always adds up to the total, exactly."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from switchboard.common.wire import TokenUsage
from switchboard.router.cost import Cost, Pricing, request_cost
from switchboard.router.openrouter.usage import UpstreamReport

PRICING = Pricing(
    prompt=Decimal("0.000003"),
    completion=Decimal("0.000015"),
    input_cache_read=Decimal("0.0000003"),
    internal_reasoning=Decimal("0.00002"),
)


def exact(value: float | None) -> Decimal:
    assert value is not None
    return Decimal(repr(value))


def assert_adds_up(cost: Cost) -> None:
    assert cost.input_usd is not None
    assert cost.output_usd is not None
    assert cost.input_usd >= 0
    assert cost.output_usd >= 0
    assert exact(cost.input_usd) + exact(cost.output_usd) == exact(cost.usd)


def test_catalog_cost_splits_by_its_own_terms() -> None:
    usage = TokenUsage(
        prompt_tokens=1000, completion_tokens=500, cached_tokens=800, reasoning_tokens=200
    )
    cost = request_cost(usage, reported=None, pricing=PRICING)
    assert cost.source == "catalog"
    # 200 * 0.000003 + 800 * 0.0000003 | 300 * 0.000015 + 200 * 0.00002
    assert (cost.input_usd, cost.output_usd) == (0.00084, 0.0085)
    assert_adds_up(cost)


def test_a_per_request_price_counts_as_output() -> None:
    pricing = Pricing(prompt=Decimal("0.000001"), completion=Decimal(0), request=Decimal("0.01"))
    cost = request_cost(TokenUsage(prompt_tokens=10), reported=None, pricing=pricing)
    assert (cost.usd, cost.input_usd, cost.output_usd) == (0.01001, 0.00001, 0.01)


def test_rounding_remainder_goes_to_output() -> None:
    tiny = Pricing(prompt=Decimal("0.00000000015"), completion=Decimal("0.00000000015"))
    cost = request_cost(
        TokenUsage(prompt_tokens=1, completion_tokens=1), reported=None, pricing=tiny
    )
    # Total 3e-10 exactly; input 1.5e-10 rounds half-even to 2e-10, output is the rest.
    assert (cost.usd, cost.input_usd, cost.output_usd) == (3e-10, 2e-10, 1e-10)


def test_upstream_total_splits_in_the_catalogs_ratio() -> None:
    usage = TokenUsage(prompt_tokens=1000, completion_tokens=500)
    # Catalog: 0.003 input, 0.0075 output (2 : 5); the upstream billed 0.0007 in all.
    cost = request_cost(usage, reported=0.0007, pricing=PRICING, reported_split=(0.5, 0.5))
    assert cost.source == "upstream"
    assert (cost.usd, cost.input_usd, cost.output_usd) == (0.0007, 0.0002, 0.0005)
    assert_adds_up(cost)


def test_upstream_total_splits_by_cost_details_without_catalog_prices() -> None:
    usage = TokenUsage(prompt_tokens=10, completion_tokens=10)
    cost = request_cost(usage, reported=0.0004, pricing=None, reported_split=(0.0001, 0.0003))
    assert (cost.input_usd, cost.output_usd) == (0.0001, 0.0003)
    # The details are a ratio: they need not add up to the billed total.
    cost = request_cost(usage, reported=0.0008, pricing=None, reported_split=(0.0001, 0.0003))
    assert (cost.input_usd, cost.output_usd) == (0.0002, 0.0006)
    # A free model in the catalog gives no ratio: the details do.
    free = Pricing(prompt=Decimal(0), completion=Decimal(0))
    cost = request_cost(usage, reported=0.0004, pricing=free, reported_split=(0.0003, 0.0001))
    assert (cost.input_usd, cost.output_usd) == (0.0003, 0.0001)


@pytest.mark.parametrize(
    ("usage", "pricing", "split"),
    [
        (TokenUsage(prompt_tokens=10), None, None),
        (None, PRICING, None),
        (TokenUsage(prompt_tokens=10), None, (0.0, 0.0)),
        (TokenUsage(prompt_tokens=10), None, (-1.0, 2.0)),
    ],
)
def test_upstream_total_without_a_usable_ratio_is_not_split(
    usage: TokenUsage | None, pricing: Pricing | None, split: tuple[float, float] | None
) -> None:
    cost = request_cost(usage, reported=0.0004, pricing=pricing, reported_split=split)
    assert (cost.usd, cost.source, cost.input_usd, cost.output_usd) == (
        0.0004,
        "upstream",
        None,
        None,
    )


def test_a_zero_total_splits_into_zeros() -> None:
    cost = request_cost(None, reported=0, pricing=None)
    assert (cost.usd, cost.input_usd, cost.output_usd) == (0.0, 0.0, 0.0)


def test_unknown_cost_has_no_split() -> None:
    assert request_cost(None, reported=None, pricing=None) == Cost(None, "unknown")


def test_split_always_adds_up_exactly() -> None:
    rng = random.Random(6)  # noqa: S311 - reproducible test data, not secrets
    for _ in range(2_000):
        usage = TokenUsage(
            prompt_tokens=rng.randrange(0, 200_000),
            completion_tokens=rng.randrange(1, 50_000),
            cached_tokens=rng.randrange(0, 1_000),
            reasoning_tokens=rng.randrange(0, 1_000),
        )
        pricing = Pricing(
            prompt=Decimal(rng.randrange(1, 10**6)) / 10**12,
            completion=Decimal(rng.randrange(1, 10**6)) / 10**11,
            input_cache_read=Decimal(rng.randrange(0, 10**5)) / 10**12,
            request=Decimal(rng.choice([0, 1, 7])) / 10**4,
        )
        assert_adds_up(request_cost(usage, reported=None, pricing=pricing))
        reported = rng.random() * rng.choice([1e-6, 1e-3, 1, 50])
        assert_adds_up(request_cost(usage, reported=reported, pricing=pricing))
        split = (rng.random(), rng.random())
        assert_adds_up(request_cost(usage, reported=reported, pricing=None, reported_split=split))


def test_the_report_reads_openrouters_cost_details() -> None:
    report = UpstreamReport()
    report.observe(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 3,
                "cost": 0.3,
                "cost_details": {
                    "upstream_inference_cost": None,
                    "upstream_inference_prompt_cost": 0.1,
                    "upstream_inference_completions_cost": 0.2,
                },
            },
        }
    )
    assert (report.cost_usd, report.cost_split) == (0.3, (0.1, 0.2))
    report.observe({"usage": {"cost": 0.3, "cost_details": {"upstream_inference_prompt_cost": 1}}})
    assert report.cost_split is None
    report.observe({"usage": {"cost": 0.3}})
    assert report.cost_split is None
