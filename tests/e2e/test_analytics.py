"""LLM analytics end to end: a request through the edge and router becomes exactly one
``$ai_generation`` that the real ``posthog`` SDK, inside the analytics process, posts to a
PostHog capture endpoint on loopback; a PostHog outage delays events, never loses or
duplicates them; SIGTERM stops analytics cleanly."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.conftest import Stack
from tests.support.openrouter_emulator import EmulatorServer
from tests.support.posthog_capture import CaptureServer, PostHogCapture
from tests.support.servers import ManagedProcess
from tests.support.services import create_key, start_analytics

pytestmark = pytest.mark.e2e

POSTHOG_KEY = "phc_e2eProjectKey0123456789abcdef"
MODEL = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hi to alice@example.com"}]


@pytest.fixture(scope="module")
def capture() -> Iterator[CaptureServer]:
    """The PostHog capture endpoint the analytics process posts to."""
    with CaptureServer(PostHogCapture(api_key=POSTHOG_KEY)) as server:
        yield server


@pytest.fixture(scope="module")
def analytics(stack: Stack, capture: CaptureServer) -> Iterator[ManagedProcess]:
    """An analytics process on the stack's NATS (its durable consumer sees every request)."""
    process = start_analytics(
        stack.workdir,
        nats_url=stack.nats.url,
        posthog_host=capture.host,
        posthog_api_key=POSTHOG_KEY,
        ANALYTICS_FETCH_WAIT="0.2",
        ANALYTICS_RETRY_INITIAL="0.2",
        ANALYTICS_RETRY_MAX="1",
    )
    try:
        _wait_for_log(process, "analytics.consuming")
        yield process
    finally:
        process.stop()


@pytest.fixture
def posthog(capture: CaptureServer, analytics: ManagedProcess) -> Iterator[CaptureServer]:
    """The capture endpoint, accepting, with analytics running."""
    capture.accept()
    yield capture
    capture.accept()


def _wait_for_log(process: ManagedProcess, event: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while f'"event":"{event}"' not in process.log().replace(" ", ""):
        if process.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"analytics never logged {event}:\n{process.log()[-3000:]}")
        time.sleep(0.05)


def _generations(capture: CaptureServer, request_id: str) -> list[dict[str, Any]]:
    return [
        event
        for event in capture.events
        if event["event"] == "$ai_generation"
        and event["properties"].get("$ai_trace_id") == request_id
    ]


def _the_generation(
    capture: CaptureServer, request_id: str, timeout: float = 20.0
) -> dict[str, Any]:
    """The one event for ``request_id``: waits for it, then makes sure no second one follows."""
    deadline = time.monotonic() + timeout
    while not _generations(capture, request_id):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no $ai_generation for {request_id} after {timeout} s")
        time.sleep(0.05)
    time.sleep(0.5)
    [event] = _generations(capture, request_id)
    return event


def test_a_request_becomes_one_generation(
    client: openai.OpenAI, api_key: dict[str, str], posthog: CaptureServer
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,
        user="end-user-1",
        temperature=0.3,
        max_tokens=50,  # type: ignore[arg-type]
    )
    completion = raw.parse()
    event = _the_generation(posthog, raw.headers["x-request-id"])
    assert event["distinct_id"] == "end-user-1"
    properties = event["properties"]
    assert properties["$ai_model"] == completion.model
    assert properties["$ai_is_error"] is False
    assert properties["$ai_http_status"] == 200
    assert properties["$ai_stream"] is False
    assert completion.usage is not None
    assert properties["$ai_input_tokens"] == completion.usage.prompt_tokens
    assert properties["$ai_output_tokens"] == completion.usage.completion_tokens
    assert properties["$ai_temperature"] == 0.3
    assert properties["$ai_max_tokens"] == 50
    assert properties["$ai_latency"] > 0
    assert properties["switchboard_key_id"] == api_key["id"]
    # Default privacy mode: no prompt or output text leaves.
    assert "$ai_input" not in properties and "$ai_output_choices" not in properties
    assert "alice" not in str(properties)


def test_a_streamed_request_becomes_one_generation(
    client: openai.OpenAI, api_key: dict[str, str], posthog: CaptureServer
) -> None:
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=MESSAGES,
        stream=True,  # type: ignore[arg-type]
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    assert chunks
    event = _the_generation(posthog, request_id)
    properties = event["properties"]
    assert properties["$ai_stream"] is True
    assert properties["$ai_time_to_first_token"] >= 0
    # No `user` field: the key identifies the caller.
    assert event["distinct_id"] == api_key["id"]


def test_a_full_privacy_key_sends_redacted_text(
    stack: Stack, upstream: EmulatorServer, posthog: CaptureServer
) -> None:
    key = create_key(stack.valkey.url, "full", "--privacy-mode", "full", "--owner", "team-x")
    client = openai.OpenAI(base_url=stack.base_url, api_key=key["key"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    event = _the_generation(posthog, raw.headers["x-request-id"])
    assert event["distinct_id"] == "team-x"  # no `user` field: the key's owner
    properties = event["properties"]
    assert properties["$ai_input"] == [{"role": "user", "content": "Say hi to [email]"}]
    (choice,) = properties["$ai_output_choices"]
    assert choice["role"] == "assistant"
    assert choice["content"] == "Echo: Say hi to [email]"
    assert "alice@example.com" not in str(event)


def test_a_failed_request_is_an_error_generation(
    client: openai.OpenAI, upstream: EmulatorServer, posthog: CaptureServer
) -> None:
    upstream.add_fault("status", status=500)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    request_id = caught.value.response.headers["x-request-id"]
    properties = _the_generation(posthog, request_id)["properties"]
    assert properties["$ai_is_error"] is True
    assert properties["$ai_http_status"] == caught.value.status_code
    assert properties["$ai_error"]


def test_a_posthog_outage_delays_events_without_losing_or_duplicating_them(
    client: openai.OpenAI, posthog: CaptureServer
) -> None:
    posthog.fail(503)
    failed_before = sum(r.status == 503 for r in posthog.requests)
    request_ids = [
        client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES).headers[  # type: ignore[arg-type]
            "x-request-id"
        ]
        for _ in range(3)
    ]
    deadline = time.monotonic() + 20
    while sum(r.status == 503 for r in posthog.requests) < failed_before + 2:
        assert time.monotonic() < deadline, "analytics never retried"
        time.sleep(0.05)
    assert not any(_generations(posthog, request_id) for request_id in request_ids)

    posthog.accept()
    for request_id in request_ids:
        _the_generation(posthog, request_id)  # exactly one each


def test_sigterm_stops_analytics_cleanly(stack: Stack) -> None:
    # Its own consumer and PostHog: it reads the whole stream, which is no concern of the above.
    with CaptureServer(PostHogCapture(api_key=POSTHOG_KEY)) as capture:
        process = start_analytics(
            stack.workdir / "analytics-sigterm",
            nats_url=stack.nats.url,
            posthog_host=capture.host,
            posthog_api_key=POSTHOG_KEY,
            ANALYTICS_CONSUMER="e2e-sigterm",
        )
        try:
            _wait_for_log(process, "analytics.consuming")
            assert f"sending LLM analytics to PostHog at {capture.host}" in process.log()
            process.proc.send_signal(signal.SIGTERM)
            assert process.proc.wait(15) == 0
            assert '"analytics.stopped"' in process.log()
        finally:
            process.kill()
