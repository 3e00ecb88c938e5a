from __future__ import annotations

import json
from typing import Any

import pytest

from switchboard.common.errors import ContextLengthExceededError, InvalidRequestError
from switchboard.edge.requests import parse_chat_request


def _body(**fields: Any) -> bytes:
    return json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    ).encode()


def test_valid_body_keeps_unknown_fields() -> None:
    request = parse_chat_request(_body(route="fallback"), max_content_chars=10)
    assert request.model_dump(exclude_unset=True)["route"] == "fallback"


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
            "missing_required_parameter",
        ),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        (
            {"tools": [{"type": "function", "function": {"name": "has space"}}]},
            "tools[0].function.name",
            "invalid_value",
        ),
        ({"stream": "yes please"}, "stream", "invalid_value"),
    ],
)
def test_errors_name_the_deepest_field(fields: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request(_body(**fields), max_content_chars=1000)
    assert (caught.value.param, caught.value.code, caught.value.status) == (param, code, 400)
    assert param in caught.value.message


def test_content_limit_is_inclusive() -> None:
    body = _body(messages=[{"role": "user", "content": "x" * 10}])
    assert parse_chat_request(body, max_content_chars=10)
    with pytest.raises(ContextLengthExceededError) as caught:
        parse_chat_request(body, max_content_chars=9)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe"])
def test_unparseable_bodies(body: bytes) -> None:
    with pytest.raises(InvalidRequestError, match="parse the JSON"):
        parse_chat_request(body, max_content_chars=10)


@pytest.mark.parametrize("body", [b"[]", b"3", b"null", b'"s"'])
def test_non_object_bodies(body: bytes) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request(body, max_content_chars=10)
    assert caught.value.code == "invalid_type"


def test_message_and_tool_counts_are_limited() -> None:
    tool = {"type": "function", "function": {"name": "f"}}
    body = _body(messages=[{"role": "user", "content": "x"}] * 3, tools=[tool] * 2)
    assert parse_chat_request(body, max_content_chars=100, max_messages=3, max_tools=2)
    with pytest.raises(InvalidRequestError) as messages:
        parse_chat_request(body, max_content_chars=100, max_messages=2, max_tools=2)
    assert (messages.value.param, messages.value.code) == ("messages", "array_above_max_length")
    assert "maximum length 2" in messages.value.message
    with pytest.raises(InvalidRequestError) as tools:
        parse_chat_request(body, max_content_chars=100, max_messages=3, max_tools=1)
    assert (tools.value.param, tools.value.code) == ("tools", "array_above_max_length")


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
@pytest.mark.parametrize("field", [b"temperature", b"seed", b"x_unknown"])
def test_numbers_json_cannot_carry_are_not_json(number: bytes, field: bytes) -> None:
    """Refused like any other invalid JSON: accepted, they crashed whoever wrote the
    request as JSON again (the cache key, the router's upstream call)."""
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"' + field + b'":' + number
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request(body + b"}", max_content_chars=1000)
    assert caught.value.message.startswith("We could not parse the JSON body")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", 2**63),
        ("seed", -(2**63) - 1),
        ("max_tokens", 2**64),
        ("max_completion_tokens", 10**30),
        ("logit_bias", {"50256": 101}),
    ],
)
def test_integers_beyond_64_bits_are_invalid_values(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request(_body(**{field: value}), max_content_chars=1000)
    assert caught.value.code == "invalid_value"
    assert (caught.value.param or "").startswith(field)


def test_64_bit_integers_are_accepted_and_larger_unknown_ones_become_numbers() -> None:
    body = _body(seed=2**63 - 1, max_tokens=2**63 - 1, x_known=2**64 - 1, x_big=2**70)
    request = parse_chat_request(body, max_content_chars=10)
    assert (request.seed, request.max_tokens) == (2**63 - 1, 2**63 - 1)
    extra = request.model_extra or {}
    assert (extra["x_known"], extra["x_big"]) == (2**64 - 1, float(2**70))
