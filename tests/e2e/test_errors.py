"""Bad input, bad keys and failing upstreams: always an OpenAI-shaped error, right status."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Stack
from tests.support.openai_schema import validate
from tests.support.openrouter_emulator import EmulatorServer
from tests.support.servers import start_nats
from tests.support.services import create_key, start_edge, wait_healthy

MODEL = "openai/gpt-4o-mini"


def _post(stack: Stack, key: str | None, body: Any, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, bytes):
        return httpx.post(
            f"{stack.base_url}/chat/completions",
            content=body,
            headers={**headers, "content-type": "application/json"},
            timeout=30,
            **kwargs,
        )
    return httpx.post(
        f"{stack.base_url}/chat/completions", json=body, headers=headers, timeout=30, **kwargs
    )


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    validate("error", body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": MODEL}, "messages", "missing_required_parameter"),
        ({"model": MODEL, "messages": []}, "messages", "invalid_value"),
        (
            {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0]",
            "invalid_value",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user"}]},
            "messages[0].content",
            "missing_required_parameter",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 5},
            "temperature",
            "invalid_value",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
            "missing_required_parameter",
        ),
        ({"messages": [{"role": "user", "content": "x"}]}, "model", "missing_required_parameter"),
    ],
)
def test_validation_errors_name_the_field(
    stack: Stack,
    api_key: dict[str, str],
    upstream: EmulatorServer,
    body: dict[str, Any],
    param: str,
    code: str,
) -> None:
    error = _error(_post(stack, api_key["key"], body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    assert upstream.calls == []


def test_malformed_json_and_non_objects(stack: Stack, api_key: dict[str, str]) -> None:
    assert "parse the JSON" in _error(_post(stack, api_key["key"], b"{not json"), 400)["message"]
    assert _error(_post(stack, api_key["key"], b"[1, 2]"), 400)["code"] == "invalid_type"


def test_sdk_raises_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], n=0
        )
    assert caught.value.param == "n"  # type: ignore[attr-defined]


def test_conversation_size_limit(client: openai.OpenAI, upstream: EmulatorServer) -> None:
    served = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "s" * 16_000},
            {"role": "user", "content": "u" * 16_000},
        ],
    )
    assert served.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "u" * 32_001}]
        )
    assert caught.value.code == "context_length_exceeded"
    assert len(upstream.calls) == 1


def test_body_over_the_limit_is_413(stack: Stack, api_key: dict[str, str]) -> None:
    huge = (
        b'{"model": "m", "messages": [{"role": "user", "content": "'
        + b"x" * (9 * 1024 * 1024)
        + b'"}]}'
    )
    _error(_post(stack, api_key["key"], huge), 413)
    assert httpx.get(f"{stack.edge.url}/health").status_code == 200


@pytest.mark.parametrize("key", [None, "sk-sb-wrong", "not-even-a-key"])
def test_missing_or_wrong_key_is_401(
    stack: Stack, upstream: EmulatorServer, key: str | None
) -> None:
    error = _error(
        _post(stack, key, {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}), 401
    )
    assert error["type"] == "invalid_request_error"
    if key:
        assert error["code"] == "invalid_api_key"
        assert key not in error["message"]
    assert upstream.calls == []


def test_sdk_raises_authentication_error(stack: Stack) -> None:
    wrong = openai.OpenAI(base_url=stack.base_url, api_key="sk-sb-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])


def test_revoked_key_is_refused(stack: Stack) -> None:
    created = create_key(stack.valkey.url, "to-revoke")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    assert _post(stack, created["key"], body).status_code == 200
    subprocess.run(
        [sys.executable, "-m", "switchboard.edge", "keys", "revoke", created["id"]],
        env={"REDIS_URL": stack.valkey.url, "PATH": ""},
        check=True,
        capture_output=True,
    )
    error = _error(_post(stack, created["key"], body), 401)
    assert "revoked" in error["message"]


def test_unknown_route_and_method(stack: Stack) -> None:
    assert _error(httpx.get(f"{stack.base_url}/nothing-here"), 404)["code"] == "unknown_url"
    assert (
        _error(httpx.get(f"{stack.base_url}/chat/completions"), 405)["code"] == "method_not_allowed"
    )


def test_upstream_500_is_a_502(client: openai.OpenAI, upstream: EmulatorServer) -> None:
    upstream.add_fault("status", status=500, sticky=True)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502
    validate("error", caught.value.response.json())
    with pytest.raises(openai.APIStatusError) as streamed:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        )
    assert streamed.value.status_code == 502


def test_upstream_429_keeps_retry_after(
    stack: Stack, api_key: dict[str, str], upstream: EmulatorServer
) -> None:
    upstream.add_fault("status", status=429, retry_after=7)
    response = _post(
        stack, api_key["key"], {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    )
    assert _error(response, 429)["type"] == "rate_limit_exceeded"
    assert response.headers["retry-after"] == "7"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="nobody/nothing", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "model_not_found"


def test_mid_stream_upstream_error_ends_with_error_event(
    stack: Stack, api_key: dict[str, str], upstream: EmulatorServer
) -> None:
    upstream.add_fault("stream_error", after_chunks=2, message="provider overloaded")
    with httpx.stream(
        "POST",
        f"{stack.base_url}/chat/completions",
        headers={"authorization": f"Bearer {api_key['key']}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "a b c d"}], "stream": True},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        events = response.read().decode().split("\n\n")
    assert events[-2] == "data: [DONE]"
    error = json.loads(events[-3].removeprefix("data: "))
    validate("error", error)
    assert "provider overloaded" in error["error"]["message"]


def test_mid_stream_disconnect_surfaces_in_the_sdk(
    client: openai.OpenAI, upstream: EmulatorServer
) -> None:
    upstream.add_fault("disconnect", after_chunks=2)
    with pytest.raises(openai.APIError):
        list(
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "a b c d"}], stream=True
            )
        )


def test_client_disconnect_aborts_the_upstream_call(
    stack: Stack, api_key: dict[str, str], upstream: EmulatorServer
) -> None:
    upstream.add_fault("delay", chunk_delay=0.5)
    with httpx.stream(
        "POST",
        f"{stack.base_url}/chat/completions",
        headers={"authorization": f"Bearer {api_key['key']}"},
        json={
            "model": MODEL,
            "stream": True,
            "messages": [{"role": "user", "content": "one two three four five six"}],
        },
        timeout=30,
    ) as response:
        first = next(response.iter_lines())
        assert first.startswith("data: {")
    deadline = time.monotonic() + 10
    while not (upstream.calls and upstream.calls[0].disconnected) and time.monotonic() < deadline:
        time.sleep(0.05)
    (call,) = upstream.calls
    assert call.disconnected
    assert not call.completed


def test_non_streamed_client_disconnect_aborts_the_upstream_call(
    stack: Stack, api_key: dict[str, str], upstream: EmulatorServer
) -> None:
    upstream.add_fault("hang")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{stack.base_url}/chat/completions",
            headers={"authorization": f"Bearer {api_key['key']}"},
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
            timeout=1.0,
        )
    deadline = time.monotonic() + 10
    while not (upstream.calls and upstream.calls[0].disconnected) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.calls[0].disconnected


@pytest.fixture
def routerless_edge(tmp_path_factory: pytest.TempPathFactory, stack: Stack) -> Iterator[str]:
    """An edge on its own NATS server, where no router listens."""
    workdir = tmp_path_factory.mktemp("routerless")
    nats = start_nats(workdir, jetstream=False)
    edge = start_edge(workdir, nats_url=nats.url, redis_url=stack.valkey.url)
    try:
        wait_healthy(edge, expect=503)
        yield edge.url
    finally:
        edge.stop()
        nats.stop()


def test_no_router_is_503_at_once(routerless_edge: str, api_key: dict[str, str]) -> None:
    report = httpx.get(f"{routerless_edge}/health").json()
    assert report["components"]["router"]["status"] == "down"
    client = openai.OpenAI(
        base_url=f"{routerless_edge}/v1", api_key=api_key["key"], max_retries=0, timeout=5
    )
    # A 5 s client timeout against a 20 s router idle timeout: only NATS's immediate
    # "no responders" can produce the 503 before the client gives up.
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], stream=stream
            )
        assert caught.value.status_code == 503
        assert caught.value.code == "no_router"
