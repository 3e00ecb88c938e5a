from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from switchboard.common.chat import ChatCompletionRequest, message_text_length


def _request(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_every_role_and_content_form_is_accepted() -> None:
    request = ChatCompletionRequest.model_validate(
        _request(
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,AA", "detail": "low"},
                        },
                        {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}},
                        {"type": "file", "file": {"file_id": "f1"}},
                    ],
                    "name": "ann",
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a":1}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
                {"role": "function", "name": "f", "content": "old style"},
            ]
        )
    )
    assert len(request.messages) == 7


def test_all_sampling_and_tool_fields_validate() -> None:
    request = ChatCompletionRequest.model_validate(
        _request(
            stream=True,
            stream_options={"include_usage": True},
            temperature=0,
            top_p=1,
            n=1,
            max_tokens=10,
            max_completion_tokens=10,
            stop=["a", "b"],
            seed=7,
            user="u",
            logprobs=True,
            top_logprobs=2,
            logit_bias={"50256": -100},
            frequency_penalty=0.5,
            presence_penalty=-0.5,
            parallel_tool_calls=False,
            metadata={"k": "v"},
            store=False,
            tools=[
                {
                    "type": "function",
                    "function": {"name": "get_weather", "parameters": {"type": "object"}},
                }
            ],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "out", "schema": {"type": "object"}},
            },
            reasoning_effort="low",
        )
    )
    assert request.wants_stream and request.wants_usage_chunk
    assert request.model_dump(exclude_unset=True, by_alias=True)["response_format"]["json_schema"][
        "schema"
    ] == {"type": "object"}


@pytest.mark.parametrize(
    "fields",
    [
        {"messages": []},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"temperature": 3},
        {"n": 0},
        {"stop": ["1", "2", "3", "4", "5"]},
        {"tool_choice": "sometimes"},
        {"response_format": {"type": "yaml"}},
        {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
        {"model": ""},
    ],
)
def test_invalid_requests_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate(_request(**fields))


def test_text_length_counts_parts_and_tool_arguments() -> None:
    request = ChatCompletionRequest.model_validate(
        _request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "abc"},
                        {"type": "image_url", "image_url": {"url": "u"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": "de",
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "xyz"},
                        }
                    ],
                },
                {"role": "function", "name": "f", "content": None},
            ]
        )
    )
    assert message_text_length(request) == 8
    assert not request.wants_stream
