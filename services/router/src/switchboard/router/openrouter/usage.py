"""What the upstream says it did: which model and provider served, tokens, cost.

Read from a whole completion or from stream chunks, whichever carries it; with
``stream_options.include_usage`` OpenRouter sends usage on a last chunk without choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from switchboard.common.wire import CompletionFinished, TokenUsage

__all__ = ["DEFAULT_PROVIDER", "UpstreamReport", "token_usage"]

DEFAULT_PROVIDER = "openrouter"


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


def _cost(usage: dict[str, Any]) -> float | None:
    cost = usage.get("cost")
    if isinstance(cost, bool) or not isinstance(cost, int | float):
        return None
    return float(cost)


@dataclass
class UpstreamReport:
    """Accumulates what the upstream reports over one exchange."""

    served_model: str | None = None
    provider: str | None = None
    usage: TokenUsage | None = None
    cost_usd: float | None = None

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
            self.cost_usd = _cost(usage)

    def finished(self, request_id: str, *, requested_model: str, chunks: int) -> CompletionFinished:
        """The ``t`` frame for this exchange."""
        return CompletionFinished(
            request_id=request_id,
            served_model=self.served_model or requested_model,
            provider=self.provider or DEFAULT_PROVIDER,
            usage=self.usage,
            cost_usd=self.cost_usd,
            chunks=chunks,
        )
