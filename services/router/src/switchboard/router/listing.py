"""``GET /v1/models``: the catalog in OpenAI's list format, plus what the routing config adds."""

from __future__ import annotations

import orjson

from switchboard.router.catalog import ModelCatalog
from switchboard.router.config import AUTO, Routing

__all__ = ["OWNER", "model_list"]

OWNER = "switchboard"
"""``owned_by`` of the aliases (tiers, custom aliases, ``auto``)."""


def model_list(catalog: ModelCatalog, routing: Routing) -> bytes:
    """OpenAI's ``{"object": "list", "data": [...]}`` as JSON bytes.

    The catalog's models first, then models only the routing config knows (served by
    another provider; ``owned_by`` is that provider), then the aliases: every tier and
    custom alias, and ``auto`` when a tier has models.
    """
    entries = [model.openai_entry() for model in catalog.models.values()]
    known = set(catalog.models)
    for model_id, spec in routing.config.models.items():
        if model_id not in known:
            routes = spec.routes(routing.config.default_provider)
            entries.append(
                {"id": model_id, "object": "model", "created": 0, "owned_by": routes[0].provider}
            )
            known.add(model_id)
    aliases = list(routing.aliases)
    if routing.config.tiers:
        aliases.append(AUTO)
    entries += [
        {"id": alias, "object": "model", "created": 0, "owned_by": OWNER}
        for alias in aliases
        if alias not in known
    ]
    return orjson.dumps({"object": "list", "data": entries})
