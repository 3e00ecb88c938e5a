"""Prompt and answer text for usage events: the privacy gate, stream assembly, the cap."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from switchboard.common.chat import ChatCompletionRequest
from switchboard.common.wire import KeyIdentity
from switchboard.router.transcript import (
    TRUNCATION_MARK,
    OutputAssembler,
    TextPolicy,
    cap_text,
    input_messages,
)


def chunk(*choices: dict[str, Any]) -> dict[str, Any]:
    return {"id": "gen-1", "object": "chat.completion.chunk", "choices": list(choices)}


def delta(index: int = 0, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "finish_reason": None}


def size(messages: Any, choices: Any) -> int:
    return len(orjson.dumps([messages, choices]))


# ----------------------------------------------------------------------------- the gate


@pytest.mark.parametrize(
    ("default", "per_key", "captures"),
    [
        ("metadata", None, False),
        ("off", None, False),
        ("full", None, True),
        ("metadata", "full", True),
        ("off", "full", True),
        ("full", "metadata", False),
        ("full", "off", False),
    ],
)
def test_the_keys_own_mode_beats_the_setting(default: Any, per_key: Any, captures: bool) -> None:
    key = KeyIdentity(key_id="k", privacy_mode=per_key)
    assert TextPolicy(mode=default).captures(key) is captures


def test_input_messages_are_the_messages_as_sent() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}], "x_extra": 1},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            ],
        }
    )
    assert input_messages(request) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}], "x_extra": 1},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]


# ------------------------------------------------------------------------------ assembly


def test_streamed_text_is_concatenated_per_choice() -> None:
    output = OutputAssembler()
    assert output.choices() is None
    for data in [
        chunk(delta(0, role="assistant", content=""), delta(1, role="assistant", content="")),
        chunk(delta(0, content="Hel")),
        chunk(delta(1, content="Bon")),
        chunk(delta(0, content="lo"), delta(1, content="jour")),
        chunk({"index": 0, "delta": {}, "finish_reason": "stop"}),
        {"id": "gen-1", "choices": [], "usage": {"prompt_tokens": 1}},
    ]:
        output.add(data, streamed=True)
    assert output.choices() == [
        {"role": "assistant", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour"},
    ]


def test_streamed_tool_calls_are_merged_by_index() -> None:
    output = OutputAssembler()
    deltas = [
        delta(role="assistant", content=None),
        delta(
            tool_calls=[
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        ),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city":'}}]),
        # Some providers repeat the name: it is taken from the first delta only.
        delta(tool_calls=[{"index": 0, "function": {"name": "get_weather", "arguments": '"P"}'}}]),
        delta(
            tool_calls=[
                {"index": 1, "id": "call_b", "type": "function", "function": {"name": "time"}}
            ]
        ),
        delta(tool_calls=[{"index": 1, "function": {"arguments": "{}"}}]),
    ]
    for item in deltas:
        output.add(chunk(item), streamed=True)
    assert output.choices() == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"P"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "time", "arguments": "{}"},
                },
            ],
        }
    ]


def test_tool_call_deltas_without_an_index() -> None:
    output = OutputAssembler()
    for item in [
        delta(tool_calls=[{"id": "a", "function": {"name": "f", "arguments": "{"}}]),
        delta(tool_calls=[{"function": {"arguments": "}"}}]),
        delta(tool_calls=[{"id": "b", "function": {"name": "g"}}]),
        delta(tool_calls=["not a call"]),
    ]:
        output.add(chunk(item), streamed=True)
    choices = output.choices()
    assert choices is not None
    assert choices[0]["tool_calls"] == [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "b", "type": "function", "function": {"name": "g", "arguments": ""}},
    ]


def test_a_tool_call_without_id_or_name_still_renders() -> None:
    output = OutputAssembler()
    output.add(chunk(delta(tool_calls=[{"index": 0, "function": "?"}])), streamed=True)
    choices = output.choices()
    assert choices is not None
    assert choices[0]["tool_calls"] == [
        {"type": "function", "function": {"name": "", "arguments": ""}}
    ]


def test_malformed_chunks_are_skipped() -> None:
    output = OutputAssembler()
    output.add({"choices": None}, streamed=True)
    output.add({"choices": ["x", {"index": 0, "delta": "?"}]}, streamed=True)
    assert output.choices() == [{"role": "assistant", "content": None}]


def test_a_completion_gives_one_choice_per_message() -> None:
    output = OutputAssembler()
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    output.add(
        {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": None}},
                {
                    "index": 1,
                    "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                },
                {"index": 2},
            ]
        },
        streamed=False,
    )
    assert output.choices() == [
        {"role": "assistant", "content": "Hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "assistant", "content": None},
    ]


# ------------------------------------------------------------------------------- the cap


def test_small_text_is_left_alone() -> None:
    messages = [{"role": "user", "content": "Hi"}]
    choices = [{"role": "assistant", "content": "Hello"}]
    assert cap_text(messages, choices, 1024) == (messages, choices, False)
    assert cap_text(messages, None, 1024) == (messages, None, False)


def test_long_strings_are_cut_in_proportion() -> None:
    messages = [
        {"role": "system", "content": "s" * 2_000},
        {"role": "user", "content": [{"type": "text", "text": "u" * 8_000}]},
    ]
    choices = [
        {
            "role": "assistant",
            "content": "a" * 4_000,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": "x" * 2_000},
                }
            ],
        }
    ]
    capped_messages, capped_choices, truncated = cap_text(messages, choices, 4_096)
    assert truncated
    assert size(capped_messages, capped_choices) <= 4_096
    assert capped_messages is not None
    assert capped_choices is not None
    system = capped_messages[0]["content"]
    user = capped_messages[1]["content"][0]["text"]
    answer = capped_choices[0]["content"]
    arguments = capped_choices[0]["tool_calls"][0]["function"]["arguments"]
    for text in (system, user, answer, arguments):
        assert text.endswith(TRUNCATION_MARK)
    # Proportional: each keeps about the same share of its length.
    assert len(user) > len(answer) > len(system)
    assert abs(len(user) / 8_000 - len(system) / 2_000) < 0.02
    # Structure is never cut.
    assert capped_messages[1]["content"][0]["type"] == "text"
    assert capped_choices[0]["tool_calls"][0]["id"] == "call_1"
    assert capped_choices[0]["tool_calls"][0]["function"]["name"] == "f"
    # And it still fills most of the budget.
    assert size(capped_messages, capped_choices) > 3_000


def test_multibyte_text_is_cut_within_the_limit() -> None:
    messages = [{"role": "user", "content": "日本語のテキスト" * 1_000 + '"\n' * 500}]
    capped_messages, _, truncated = cap_text(messages, None, 2_048)
    assert truncated
    assert size(capped_messages, None) <= 2_048


def test_too_many_small_messages_drop_the_oldest() -> None:
    messages = [{"role": "user", "content": f"m{i}"} for i in range(500)]
    choices = [{"role": "assistant", "content": "ok"}]
    capped_messages, capped_choices, truncated = cap_text(messages, choices, 2_048)
    assert truncated
    assert capped_choices == choices
    assert capped_messages is not None
    assert 0 < len(capped_messages) < 500
    assert capped_messages == messages[-len(capped_messages) :]
    assert size(capped_messages, capped_choices) <= 2_048
    # The newest ones that fit: one more would not.
    assert size(messages[-len(capped_messages) - 1 :], choices) > 2_048


def test_when_cutting_is_not_enough_the_oldest_messages_go_too() -> None:
    # Short strings cannot be cut (the mark is longer): cutting the long one does not fit.
    messages = [{"role": "user", "content": "abcdefghijklm"} for _ in range(60)] + [
        {"role": "user", "content": "x" * 5_000}
    ]
    capped_messages, _, truncated = cap_text(messages, [], 2_048)
    assert truncated
    assert capped_messages is not None
    assert 0 < len(capped_messages) < len(messages)
    assert capped_messages[-1]["content"].endswith(TRUNCATION_MARK)
    assert size(capped_messages, []) <= 2_048


def test_nothing_at_all_when_even_the_answer_cannot_fit() -> None:
    choices = [{"role": "assistant", "content": "a"} for _ in range(200)]
    messages = [{"role": "user", "content": "q"}]
    assert cap_text(messages, choices, 1_024) == (None, None, True)
