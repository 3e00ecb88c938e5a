"""Validation of our responses against OpenAI's published JSON Schemas.

The schemas are ``shared/openai-chat-schemas.json`` beside the checkout (derived from the
official OpenAPI document, https://github.com/openai/openai-openapi; its ``x-oracle`` names
the commit). A checkout cloned anywhere else uses the copy kept in
``tests/support/schemas/`` (a test holds the two equal where both exist);
``SWITCHBOARD_OPENAI_SCHEMAS`` may point elsewhere.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

__all__ = ["KEPT_SCHEMAS", "SHARED_SCHEMAS", "schema_path", "validate", "validator"]

_NAME = "openai-chat-schemas.json"
SHARED_SCHEMAS = Path(__file__).resolve().parents[2].parent / "shared" / _NAME
"""The reference bundle beside the checkout."""
KEPT_SCHEMAS = Path(__file__).resolve().parent / "schemas" / _NAME
"""The project's copy of it, for checkouts with nothing beside them."""

_KINDS = {
    "response": "CreateChatCompletionResponse",
    "chunk": "CreateChatCompletionStreamResponse",
    "models": "ListModelsResponse",
    "model": "Model",
    "error": "ErrorResponse",
    "request": "CreateChatCompletionRequest",
}


def schema_path() -> Path:
    """Where the schema bundle is."""
    explicit = os.environ.get("SWITCHBOARD_OPENAI_SCHEMAS")
    if explicit:
        return Path(explicit)
    shared = SHARED_SCHEMAS
    return shared if shared.exists() else KEPT_SCHEMAS


def _lenient(bundle: dict[str, Any]) -> dict[str, Any]:
    """The bundle with its own ``x-oracle.lenient_patches`` applied.

    They allow what real OpenAI and OpenRouter responses do, e.g. ``system_fingerprint:
    null`` or a message without ``refusal``.
    """
    for patch in bundle["x-oracle"]["lenient_patches"]:
        *parents, last = patch["pointer"].lstrip("/").split("/")
        node: Any = bundle
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        slot = int(last) if isinstance(node, list) else last
        if patch["op"] == "allow_null":
            node[slot] = {"anyOf": [node[slot], {"type": "null"}]}
        elif patch["op"] == "unrequire":
            node[slot]["required"] = [f for f in node[slot]["required"] if f != patch["field"]]
        else:
            raise ValueError(f"unknown lenient patch {patch['op']!r}")
    return bundle


def validator(definition: str) -> Draft202012Validator:
    """A validator for ``#/$defs/<definition>`` of the (lenient) bundle."""
    return _validator_for(definition)


@functools.cache
def _validator_for(definition: str) -> Draft202012Validator:
    bundle = _lenient(json.loads(schema_path().read_text()))
    resource = Resource.from_contents(bundle)
    registry: Registry[Any] = Registry().with_resource(bundle["$id"], resource)
    schema = {"$ref": f"{bundle['$id']}#/$defs/{definition}"}
    return Draft202012Validator(schema, registry=registry)


def validate(kind: str, document: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``document`` is a valid OpenAI ``kind``."""
    _validator_for(_KINDS[kind]).validate(document)
