"""Decoding chat request envelopes, and what a bad one is answered with."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from switchboard.router.handlers import BadEnvelopeError, decode_chat_request


def envelope(**overrides: Any) -> dict[str, Any]:
    now = time.time()
    return {
        "v": 1,
        "request_id": "req1",
        "key": {"key_id": "key_1"},
        "received_at": now,
        "deadline": now + 30,
        "request": {
            "model": "openai/gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}],
            "provider": {"order": ["OpenAI"]},
        },
        **overrides,
    }


def test_valid_envelope_keeps_unknown_request_fields() -> None:
    decoded = decode_chat_request(orjson.dumps(envelope(future_field=1)))
    assert decoded.request_id == "req1"
    assert decoded.request.model_dump(exclude_unset=True)["provider"] == {"order": ["OpenAI"]}


def test_unknown_wire_version_is_a_500() -> None:
    with pytest.raises(BadEnvelopeError) as caught:
        decode_chat_request(orjson.dumps(envelope(v=2, request={"shape": "new"})))
    assert caught.value.error.status == 500
    assert caught.value.error.code == "unsupported_wire_version"
    assert caught.value.request_id == "req1"


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[]", orjson.dumps({"request_id": 5}), orjson.dumps(envelope(deadline="soon"))],
)
def test_malformed_envelope_is_a_500(payload: bytes) -> None:
    with pytest.raises(BadEnvelopeError) as caught:
        decode_chat_request(payload)
    assert caught.value.error.status == 500
    assert caught.value.error.code == "invalid_envelope"


def test_malformed_envelope_still_names_its_request() -> None:
    with pytest.raises(BadEnvelopeError) as caught:
        decode_chat_request(orjson.dumps(envelope(key=None)))
    assert caught.value.request_id == "req1"


def test_invalid_client_request_is_a_400_with_param() -> None:
    bad = envelope()
    bad["request"]["temperature"] = 7
    with pytest.raises(BadEnvelopeError) as caught:
        decode_chat_request(orjson.dumps(bad))
    error = caught.value.error
    assert error.status == 400
    assert error.param == "temperature"
    assert error.detail.type == "invalid_request_error"
    assert "temperature" in error.message


def test_nested_param_and_no_prompt_text_in_the_message() -> None:
    bad = envelope()
    bad["request"]["messages"] = [{"role": "user", "content": "secret prompt"}, {"role": "user"}]
    with pytest.raises(BadEnvelopeError) as caught:
        decode_chat_request(orjson.dumps(bad))
    error = caught.value.error
    assert error.param is not None
    assert error.param.startswith("messages[1]")
    assert "secret prompt" not in error.message
