"""Which models, at which providers, may serve a request, in the order to try them.

A request names one of:

- a tier (``premium``, ``standard``, ``budget``) or custom alias: its model chain;
- ``auto``: every model of the allowed tiers that fits (context window, tools), healthy
  ones first, cheapest first;
- a concrete model: that model, then its configured ``fallbacks``;

and may add OpenRouter's ``models`` array: more models to fall back to, in order.

Each model expands to one candidate per provider route (``models.<id>.providers`` in the
routing config; the default provider otherwise). The key's restrictions are enforced here
again (the edge checks them first): a model outside them is 403 ``model_not_allowed``; a
name that is neither an alias nor a known model is 404 ``model_not_found``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from fnmatch import fnmatchcase

from switchboard.common.chat import ChatCompletionRequest, message_text_length
from switchboard.common.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from switchboard.common.wire import KeyIdentity
from switchboard.router.breaker import Breakers
from switchboard.router.catalog import ModelCatalog
from switchboard.router.config import AUTO, Provider, Routing
from switchboard.router.cost import Pricing

__all__ = ["Candidate", "Planner", "Route"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One model at one provider."""

    model: str
    """The model id (as in the catalog and the routing config)."""
    provider: Provider
    upstream_model: str
    """The model's id at the provider: what the upstream is asked for."""
    timeout: float | None
    """Read timeout of a call (``None``: ``ROUTER_UPSTREAM_READ_TIMEOUT``)."""
    retries: int
    """Retries of this candidate after a retryable failure."""


@dataclass(frozen=True, slots=True)
class Route:
    """The plan for one request."""

    requested_model: str
    tier: str | None
    """The alias (or ``auto``) the request named, if any."""
    candidates: tuple[Candidate, ...]


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _not_allowed(model: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"This API key is not allowed to use the model `{model}`.",
        code="model_not_allowed",
        param="model",
    )


def _not_found(model: str) -> NotFoundError:
    return NotFoundError(
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


class Planner:
    """Builds the :class:`Route` of a request from config, catalog and breaker health."""

    def __init__(self, routing: Routing, catalog: ModelCatalog, breakers: Breakers) -> None:
        self._routing = routing
        self._catalog = catalog
        self._breakers = breakers

    def plan(self, request: ChatCompletionRequest, key: KeyIdentity) -> Route:
        """The route of ``request``; raises a 4xx :class:`GatewayError` when there is none."""
        requested, aliases = request.model, self._routing.aliases
        tier: str | None = None
        if requested == AUTO:
            self._check_alias(key, AUTO)
            models, tier = self._auto(request, key), AUTO
        elif requested in aliases:
            self._check_alias(key, requested)
            models, tier = list(aliases[requested]), requested
        else:
            self._check_model(key, requested)
            fallbacks = self._routing.model(requested).fallbacks
            models = [requested, *(m for m in fallbacks if self._allowed_model(key, m))]
        models += self._extra_models(request, key)
        candidates = tuple(self._candidates(_unique(models)))
        return Route(requested_model=requested, tier=tier, candidates=candidates)

    def pricing(self, model: str) -> Pricing | None:
        """The prices of ``model``: the routing config's, else the catalog's."""
        configured = self._routing.model(model).pricing
        if configured is not None:
            return Pricing(
                prompt=configured.prompt,
                completion=configured.completion,
                input_cache_read=configured.input_cache_read,
                internal_reasoning=configured.internal_reasoning,
                request=configured.request,
            )
        found = self._catalog.get(model)
        return found.pricing if found else None

    # ------------------------------------------------------------------ key restrictions

    @staticmethod
    def _allowed_model(key: KeyIdentity, model: str) -> bool:
        if not key.restricted:
            return True
        return any(fnmatchcase(model, pattern) for pattern in key.allowed_models or ())

    def _check_alias(self, key: KeyIdentity, alias: str) -> None:
        restricted = key.restricted and alias not in (key.allowed_tiers or ())
        if restricted and not self._allowed_model(key, alias):
            raise _not_allowed(alias)

    def _check_model(self, key: KeyIdentity, model: str) -> None:
        if not self._allowed_model(key, model):
            raise _not_allowed(model)
        if not self._known(model):
            raise _not_found(model)

    def _known(self, model: str) -> bool:
        routing = self._routing
        if model in routing.config.models:
            return True
        # Only the catalog provider's models can be checked; others pass through.
        if routing.config.default_provider != routing.catalog_provider:
            return True
        return not self._catalog.loaded or self._catalog.get(model) is not None

    def _extra_models(self, request: ChatCompletionRequest, key: KeyIdentity) -> list[str]:
        """OpenRouter's ``models`` fallback array, checked like ``model``."""
        extra = (request.model_extra or {}).get("models")
        if extra is None:
            return []
        if not isinstance(extra, list) or not all(isinstance(m, str) and m for m in extra):
            raise InvalidRequestError("'models' must be an array of model ids.", param="models")
        models: list[str] = []
        aliases = self._routing.aliases
        for model in extra:
            if model in aliases:
                self._check_alias(key, model)
                models += aliases[model]
            else:
                self._check_model(key, model)
                models.append(model)
        return models

    # ------------------------------------------------------------------------------ auto

    def _auto_pool(self, key: KeyIdentity) -> list[str]:
        config = self._routing.config
        tiers = list(config.auto.tiers)
        if key.restricted:
            chosen = [tier for tier in tiers if tier in (key.allowed_tiers or ())]
            tiers = chosen or tiers  # only `auto` itself allowed: every auto tier
        return _unique(model for tier in tiers for model in config.tiers.get(tier, []))

    def _auto(self, request: ChatCompletionRequest, key: KeyIdentity) -> list[str]:
        pool = self._auto_pool(key)
        if not pool:
            raise NotFoundError(
                "`auto` has no tier models to choose from in this gateway's routing config.",
                code="model_not_found",
                param="model",
            )
        policy = self._routing.config.auto
        prompt = math.ceil(message_text_length(request) / policy.chars_per_token)
        answer = request.max_completion_tokens or request.max_tokens
        needed = prompt + (answer or 0)
        tools = bool(request.tools)
        ranked: list[tuple[bool, bool, Decimal, int, str]] = []
        too_small = 0
        for position, model in enumerate(pool):
            override, found = self._routing.model(model), self._catalog.get(model)
            window = override.context_length or (found.context_length if found else None)
            if window is not None and window < needed:
                too_small += 1
                continue
            supports = override.supports_tools
            if supports is None:
                parameters = found.supported_parameters if found else None
                supports = parameters is None or "tools" in parameters
            if tools and not supports:
                continue
            pricing = self.pricing(model)
            price = (
                pricing.estimate(prompt, answer or policy.completion_tokens) if pricing else None
            )
            healthy = any(
                self._breakers.available(c.provider.name, c.model)
                for c in self._candidates([model])
            )
            ranked.append((not healthy, price is None, price or Decimal(0), position, model))
        if ranked:
            return [entry[-1] for entry in sorted(ranked)]
        if too_small:
            raise ContextLengthExceededError(
                f"No model `auto` may choose has a context window for this request "
                f"(about {needed} tokens).",
                param="messages",
            )
        raise InvalidRequestError(
            "No model `auto` may choose supports tools.", code="model_not_found", param="tools"
        )

    # ------------------------------------------------------------------------ candidates

    def _candidates(self, models: Iterable[str]) -> Iterator[Candidate]:
        routing = self._routing
        default_retries = routing.config.retry.max_retries
        for model in models:
            spec = routing.model(model)
            for route in spec.routes(routing.config.default_provider):
                provider = routing.providers[route.provider]
                yield Candidate(
                    model=model,
                    provider=provider,
                    upstream_model=route.model or model,
                    timeout=spec.timeout or provider.timeout,
                    retries=default_retries if spec.retries is None else spec.retries,
                )
