"""What a request cost, in USD, with :class:`~decimal.Decimal` arithmetic.

The upstream's own ``usage.cost`` (OpenRouter reports it) wins; otherwise the cost is
computed from per-token prices (the catalog's, or the routing config's):

- prompt tokens include the cached ones: ``(prompt - cached) * prompt + cached *
  input_cache_read`` (cached tokens at the prompt price when no cache price above 0 is known);
- completion tokens include the reasoning ones: ``(completion - reasoning) * completion +
  reasoning * internal_reasoning`` (reasoning at the completion price when no reasoning
  price above 0 is known, as OpenRouter lists ``"0"`` for models that bill it as output);
- plus the per-request price, if any.

The result is rounded half-even to 10 decimal places (1e-10 USD) once, at the end, and
carried as a JSON number.

The cost is also split into input (prompt, cached tokens included) and output
(completion, reasoning tokens and any per-request price included) so that ``input +
output == total`` exactly in decimal: the input share is rounded, the output is the rest.
A catalog cost splits by its own terms; an upstream total splits in the ratio of the
catalog's terms for the same usage when the model has prices, else in the ratio of
OpenRouter's ``usage.cost_details`` (``upstream_inference_prompt_cost`` :
``upstream_inference_completions_cost``), else not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from switchboard.common.events import CostSource
from switchboard.common.wire import TokenUsage

__all__ = ["QUANTUM", "Cost", "Pricing", "parse_price", "request_cost"]

QUANTUM = Decimal("1e-10")
"""Cost rounding step, in USD."""
_ZERO = Decimal(0)


def parse_price(value: object) -> Decimal | None:
    """A price from the catalog (a decimal string) or the config; ``None`` if unusable."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        price = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        return None
    return price if price.is_finite() and price >= 0 else None


@dataclass(frozen=True, slots=True)
class Pricing:
    """USD per token (and per request)."""

    prompt: Decimal
    completion: Decimal
    input_cache_read: Decimal | None = None
    internal_reasoning: Decimal | None = None
    request: Decimal = _ZERO

    @property
    def unit_price(self) -> Decimal:
        """Prompt plus completion price of one token each: a rough ranking key."""
        return self.prompt + self.completion

    def estimate(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """Expected USD for a call of that size (to rank models by price)."""
        return prompt_tokens * self.prompt + completion_tokens * self.completion + self.request

    def input_cost(self, usage: TokenUsage) -> Decimal:
        """Exact USD of the prompt tokens of ``usage`` (cached ones included)."""
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        cache_price = self.input_cache_read if self.input_cache_read else self.prompt
        return (usage.prompt_tokens - cached) * self.prompt + cached * cache_price

    def output_cost(self, usage: TokenUsage) -> Decimal:
        """Exact USD of the completion tokens of ``usage`` (reasoning ones included) plus
        the per-request price."""
        reasoning = min(usage.reasoning_tokens, usage.completion_tokens)
        reasoning_price = self.internal_reasoning if self.internal_reasoning else self.completion
        return (
            (usage.completion_tokens - reasoning) * self.completion
            + reasoning * reasoning_price
            + self.request
        )

    def cost(self, usage: TokenUsage) -> Decimal:
        """Exact USD for ``usage``, not rounded."""
        return self.input_cost(usage) + self.output_cost(usage)


@dataclass(frozen=True, slots=True)
class Cost:
    """A request's cost, where it comes from, and its input/output split if known."""

    usd: float | None
    source: CostSource
    input_usd: float | None = None
    """The prompt's share of ``usd``; ``None`` when the split is unknown."""
    output_usd: float | None = None
    """The rest of ``usd``: ``input_usd + output_usd == usd`` in decimal."""


def _quantized(usd: Decimal) -> Decimal:
    return usd.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def _split(total: Decimal, input_part: Decimal, whole: Decimal) -> tuple[float, float] | None:
    """``total`` (already quantized) shared in the ratio ``input_part : whole - input_part``;
    the input share rounded, the output the exact rest. ``None`` without a usable ratio."""
    if whole <= 0:
        return None
    input_usd = _quantized(total * input_part / whole)
    return float(input_usd), float(total - input_usd)


def _upstream_split(
    total: Decimal,
    usage: TokenUsage | None,
    pricing: Pricing | None,
    reported_split: tuple[float, float] | None,
) -> tuple[float, float] | tuple[None, None]:
    if total == 0:
        return 0.0, 0.0
    if usage is not None and pricing is not None:
        split = _split(total, pricing.input_cost(usage), pricing.cost(usage))
        if split is not None:
            return split
    if reported_split is not None:
        prompt, completion = (parse_price(part) for part in reported_split)
        if prompt is not None and completion is not None:
            split = _split(total, prompt, prompt + completion)
            if split is not None:
                return split
    return None, None


def request_cost(
    usage: TokenUsage | None,
    *,
    reported: float | None,
    pricing: Pricing | None,
    reported_split: tuple[float, float] | None = None,
) -> Cost:
    """The cost of a request: ``reported`` by the upstream if any, else from ``pricing``.

    ``reported_split``: the upstream's own prompt and completion costs (OpenRouter's
    ``usage.cost_details``), used as the ratio to split ``reported`` by when ``pricing``
    cannot.
    """
    if reported is not None:
        price = parse_price(reported)
        if price is not None:
            total = _quantized(price)
            return Cost(
                float(total), "upstream", *_upstream_split(total, usage, pricing, reported_split)
            )
    if usage is not None and pricing is not None:
        total = _quantized(pricing.cost(usage))
        input_usd = _quantized(pricing.input_cost(usage))
        return Cost(float(total), "catalog", float(input_usd), float(total - input_usd))
    return Cost(None, "unknown")
