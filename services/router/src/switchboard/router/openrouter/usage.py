"""What the upstream says it did: which model and provider served, tokens, cost.

Read from a whole completion or from stream chunks, whichever carries it; with
``stream_options.include_usage`` OpenRouter sends usage on a last chunk without choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from switchboard.common.wire import TokenUsage

__all__ = ["UpstreamReport", "token_usage"]


def _count(container: object, name: str) -> int:
    value = container.get(name) if isinstance(container, dict) else None
    # bool is an int subclass; a provider sending ``true`` as a count is not a count.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(int(value), 0)


def token_usage(usage: dict[str, Any]) -> TokenUsage:
    """OpenAI/OpenRouter ``usage`` as :class:`TokenUsage` (missing counts are 0)."""
    prompt = _count(usage, "prompt_tokens")
    completion = _count(usage, "completion_tokens")
    return TokenUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=_count(usage, "total_tokens") or prompt + completion,
        cached_tokens=_count(usage.get("prompt_tokens_details"), "cached_tokens"),
        reasoning_tokens=_count(usage.get("completion_tokens_details"), "reasoning_tokens"),
    )


def _number(container: object, name: str) -> float | None:
    value = container.get(name) if isinstance(container, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _cost_split(usage: dict[str, Any]) -> tuple[float, float] | None:
    """OpenRouter's ``usage.cost_details``: the prompt and completion costs, if both given."""
    details = usage.get("cost_details")
    prompt = _number(details, "upstream_inference_prompt_cost")
    completion = _number(details, "upstream_inference_completions_cost")
    return None if prompt is None or completion is None else (prompt, completion)


@dataclass
class UpstreamReport:
    """Accumulates what the upstream reports over one exchange."""

    served_model: str | None = None
    provider: str | None = None
    usage: TokenUsage | None = None
    cost_usd: float | None = None
    cost_split: tuple[float, float] | None = None
    """The prompt and completion costs the upstream reported (``usage.cost_details``)."""

    def observe(self, data: dict[str, Any]) -> None:
        """Take note of one completion or chunk; later values win over earlier ones."""
        model = data.get("model")
        if isinstance(model, str) and model:
            self.served_model = model
        provider = data.get("provider")
        if isinstance(provider, str) and provider:
            self.provider = provider
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.usage = token_usage(usage)
            self.cost_usd = _number(usage, "cost")
            self.cost_split = _cost_split(usage)
