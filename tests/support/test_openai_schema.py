"""The schema bundle the tests validate against: the project's copy is the reference."""

from __future__ import annotations

import pytest
from jsonschema import ValidationError

from tests.support.openai_schema import KEPT_SCHEMAS, SHARED_SCHEMAS, schema_path, validate


def test_the_kept_copy_is_the_shared_reference() -> None:
    if not SHARED_SCHEMAS.exists():
        pytest.skip(f"no reference bundle beside this checkout ({SHARED_SCHEMAS})")
    assert KEPT_SCHEMAS.read_bytes() == SHARED_SCHEMAS.read_bytes()


def test_a_bundle_is_always_found_and_validates() -> None:
    assert schema_path().exists()
    with pytest.raises(ValidationError, match="is a required property"):
        validate("error", {"error": {"message": "m", "type": "t", "param": None}})
