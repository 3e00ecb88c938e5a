"""Routing through the real edge and router processes, with the official openai SDK."""

from __future__ import annotations

import openai
import pytest

from tests.support.openrouter_emulator import EmulatorServer

pytestmark = pytest.mark.e2e

HAIKU = "anthropic/claude-3.5-haiku"
MINI = "openai/gpt-4o-mini"
LLAMA = "meta-llama/llama-3.1-8b-instruct"
MESSAGES = [{"role": "user", "content": "Which model are you?"}]


def test_a_tier_alias_is_served_by_a_concrete_model(
    client: openai.OpenAI, upstream: EmulatorServer
) -> None:
    raw = client.chat.completions.with_raw_response.create(model="budget", messages=MESSAGES)
    completion = raw.parse()
    assert completion.model == LLAMA
    assert completion.choices[0].message.content == "Echo: Which model are you?"
    assert raw.headers["x-switchboard-model"] == LLAMA
    assert raw.headers["x-switchboard-fallbacks"] == "0"
    (call,) = [c for c in upstream.calls if c.path.endswith("/chat/completions")]
    assert call.body["model"] == LLAMA


def test_the_primary_is_down_and_the_tier_falls_back(
    client: openai.OpenAI, upstream: EmulatorServer
) -> None:
    upstream.add_fault("status", status=503, model=HAIKU, sticky=True)
    raw = client.chat.completions.with_raw_response.create(
        model="standard",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-switchboard-model"] == MINI
    assert raw.headers["x-switchboard-fallbacks"] == "1"
    chunks = list(raw.parse())
    assert {chunk.model for chunk in chunks} == {MINI}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: Which model are you?"
    assert chunks[-1].usage is not None
    calls = [c for c in upstream.calls if c.path.endswith("/chat/completions")]
    assert [c.model for c in calls] == [HAIKU, MINI]
    assert [c.status for c in calls] == [503, 200]


def test_models_list_names_the_tier_aliases(client: openai.OpenAI) -> None:
    models = {model.id: model for model in client.models.list()}
    assert models["standard"].owned_by == "switchboard"
    assert models["budget"].owned_by == "switchboard"
    assert models["auto"].owned_by == "switchboard"
    assert models[MINI].owned_by == "openai"


def test_an_unknown_model_is_404_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nobody/no-such-model", messages=MESSAGES)
    assert caught.value.code == "model_not_found"


def test_a_failed_chain_names_what_it_tried(
    client: openai.OpenAI, upstream: EmulatorServer
) -> None:
    upstream.add_fault("status", status=500, sticky=True)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="standard", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.response.headers["x-switchboard-fallbacks"] == "1"
    assert caught.value.response.headers["x-switchboard-model"] == MINI
