"""Validation of our responses against OpenAI's published JSON Schemas.

The schemas are ``shared/openai-chat-schemas.json`` beside the checkout (derived from the
official OpenAPI document). ``SWITCHBOARD_OPENAI_SCHEMAS`` may point elsewhere.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

__all__ = ["schema_path", "validate"]

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
    return Path(__file__).resolve().parents[2].parent / "shared" / "openai-chat-schemas.json"


@functools.cache
def _validator(kind: str) -> Draft202012Validator:
    bundle = json.loads(schema_path().read_text())
    resource = Resource.from_contents(bundle)
    registry: Registry[Any] = Registry().with_resource(bundle["$id"], resource)
    schema = {"$ref": f"{bundle['$id']}#/$defs/{_KINDS[kind]}"}
    return Draft202012Validator(schema, registry=registry)


def validate(kind: str, document: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``document`` is a valid OpenAI ``kind``."""
    _validator(kind).validate(document)
