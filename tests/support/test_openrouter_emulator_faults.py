"""The OpenRouter emulator's scripted faults, call records, control API and process, through
real HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse
from jsonschema import Draft202012Validator, ValidationError

from tests.support.emulator_cases import (
    MODEL,
    REPO,
    chat,
    chunks_of,
    content_of,
    stream_events,
)
from tests.support.openrouter_emulator import (
    EmulatorServer,
    Fault,
    OpenRouterEmulator,
    running_emulator,
)
from tests.support.servers import free_port, wait_for_port

# ----------------------------------------------------------------------------------- faults


async def test_status_fault_with_retry_after_is_used_once(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("status", status=429, retry_after=2.0)
    limited = await client.post("/chat/completions", json=chat())
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    assert limited.json() == {"error": {"code": 429, "message": "Rate limit exceeded"}}
    assert (await client.post("/chat/completions", json=chat())).status_code == 200
    assert [call.fault for call in upstream.calls] == ["status", None]
    assert upstream.emulator.faults == []


async def test_status_fault_for_one_model_with_message_and_metadata(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault(
        "status",
        model="anthropic/claude-3.5-haiku",
        status=502,
        message="upstream down",
        metadata={"provider_name": "Anthropic"},
    )
    assert (await client.post("/chat/completions", json=chat())).status_code == 200
    failed = await client.post("/chat/completions", json=chat(model="anthropic/claude-3.5-haiku"))
    assert failed.status_code == 502
    assert "retry-after" not in failed.headers
    assert failed.json()["error"] == {
        "code": 502,
        "message": "upstream down",
        "metadata": {"provider_name": "Anthropic"},
    }


async def test_sticky_fault_applies_until_cleared(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("status", status=503, sticky=True)
    statuses = [(await client.post("/chat/completions", json=chat())).status_code for _ in "abc"]
    assert statuses == [503, 503, 503]
    upstream.emulator.clear_faults()
    assert (await client.post("/chat/completions", json=chat())).status_code == 200


async def test_faults_come_before_the_unknown_model_404(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("status", status=500)
    response = await client.post("/chat/completions", json=chat(model="nope/missing"))
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "Internal Server Error"


async def test_delay_fault_before_answering(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("delay", seconds=0.2)
    started = time.monotonic()
    response = await client.post("/chat/completions", json=chat())
    assert time.monotonic() - started >= 0.2
    assert response.status_code == 200
    assert upstream.calls[0].completed


async def test_delay_fault_between_chunks(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("delay", chunk_delay=0.03)
    started = time.monotonic()
    arrivals = []
    async with aconnect_sse(client, "POST", "/chat/completions", json=chat(stream=True)) as src:
        async for event in src.aiter_sse():
            arrivals.append((time.monotonic() - started, event.data))
    assert arrivals[-1][1] == "[DONE]"
    assert arrivals[-1][0] >= 6 * 0.03  # six chunks, each after a pause
    assert arrivals[1][0] - arrivals[0][0] >= 0.02
    assert upstream.calls[0].completed
    assert upstream.calls[0].chunks_sent == 6


async def test_server_wide_chunk_delay_makes_every_stream_slow(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.emulator.chunk_delay = 0.02
    started = time.monotonic()
    chunks = chunks_of(await stream_events(client, chat(stream=True)))
    assert time.monotonic() - started >= 6 * 0.02
    assert content_of(chunks) == "Echo: hello"


async def test_disconnect_fault_cuts_the_stream_after_k_chunks(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("disconnect", after_chunks=2)
    received: list[str] = []

    async def read_stream() -> None:
        async with aconnect_sse(client, "POST", "/chat/completions", json=chat(stream=True)) as s:
            async for event in s.aiter_sse():
                received.append(event.data)  # keep what came before the cut

    with pytest.raises(httpx.RemoteProtocolError):
        await read_stream()
    assert len(received) == 2
    assert "[DONE]" not in received
    [call] = await upstream.emulator.wait_for_calls_async(1)
    assert (call.fault, call.chunks_sent, call.completed) == ("disconnect", 2, False)


async def test_disconnect_fault_cuts_a_completion(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("disconnect")
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/chat/completions", json=chat())
    assert (await client.post("/chat/completions", json=chat())).status_code == 200


async def test_stream_error_fault_sends_openrouters_error_event(
    upstream: EmulatorServer, client: httpx.AsyncClient, chunk_schema: Draft202012Validator
) -> None:
    upstream.add_fault("stream_error", after_chunks=2, message="Provider disconnected")
    events = await stream_events(client, chat(stream=True))
    assert [event.data for event in events].count("[DONE]") == 0
    chunks = chunks_of(events)
    assert len(chunks) == 3
    error = chunks[-1]
    assert error["error"] == {"code": 502, "message": "Provider disconnected"}
    assert error["choices"] == [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]
    assert error["id"] == chunks[0]["id"]
    with pytest.raises(ValidationError, match="'error' is not valid"):
        chunk_schema.validate(error)  # OpenRouter's finish_reason is not OpenAI's
    [call] = upstream.calls
    assert (call.fault, call.completed) == ("stream_error", True)


async def test_stream_only_faults_wait_for_a_streaming_call(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("stream_error", status=500)
    assert (await client.post("/chat/completions", json=chat())).status_code == 200
    assert len(upstream.emulator.faults) == 1
    chunks = chunks_of(await stream_events(client, chat(stream=True)))
    assert chunks == [chunks[0]]
    assert chunks[0]["error"]["code"] == 500


async def test_multiline_fault_splits_events_over_data_lines(
    upstream: EmulatorServer, client: httpx.AsyncClient, chunk_schema: Draft202012Validator
) -> None:
    upstream.add_fault("multiline")
    body = chat(stream=True, stream_options={"include_usage": True})
    async with client.stream("POST", "/chat/completions", json=body) as response:
        raw = (await response.aread()).decode()
    first_event = raw.split("\n\n")[1]
    assert first_event.count("data: ") > 3
    assert raw.endswith("\n\ndata: [DONE]\n\n")

    upstream.add_fault("multiline")
    events = await stream_events(client, body)
    assert events[-1].data == "[DONE]"
    chunks = chunks_of(events)
    for chunk in chunks:
        chunk_schema.validate(chunk)
    assert content_of(chunks) == "Echo: hello"
    assert chunks[-1]["usage"]["total_tokens"] == 5


async def test_hang_fault_until_the_client_gives_up(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.add_fault("hang")
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/chat/completions", json=chat(), timeout=0.2)
    [call] = upstream.calls
    async with asyncio.timeout(2):
        await call.wait_async()
    assert (call.fault, call.status, call.completed, call.disconnected) == (
        "hang",
        None,
        False,
        True,
    )


async def test_hang_fault_mid_stream(upstream: EmulatorServer, client: httpx.AsyncClient) -> None:
    upstream.add_fault("hang", after_chunks=1)
    received = []
    async with aconnect_sse(client, "POST", "/chat/completions", json=chat(stream=True)) as src:
        async for event in src.aiter_sse():
            received.append(event.data)
            if len(received) == 1:
                break
    [call] = upstream.calls
    async with asyncio.timeout(2):
        await call.wait_async()
    assert (call.chunks_sent, call.completed, call.disconnected) == (1, False, True)


async def test_client_leaving_a_slow_stream_is_recorded_as_disconnected(
    upstream: EmulatorServer, client: httpx.AsyncClient
) -> None:
    upstream.emulator.chunk_delay = 0.05
    async with aconnect_sse(client, "POST", "/chat/completions", json=chat(stream=True)) as src:
        async for _event in src.aiter_sse():
            break
    [call] = upstream.calls
    async with asyncio.timeout(2):
        await call.wait_async()
    assert call.disconnected
    assert not call.completed
    assert call.chunks_sent < 6


# ---------------------------------------------------------------------------------- records


async def test_calls_are_recorded(upstream: EmulatorServer, client: httpx.AsyncClient) -> None:
    before = time.time()
    body = chat(stream=True)
    await stream_events(client, body)
    await client.post("/chat/completions", json=chat(), headers={"X-Title": "Switchboard"})
    await client.get("/models")
    calls = upstream.emulator.wait_for_calls(3)
    stream, completion, models = calls
    assert stream.body == body
    assert (stream.method, stream.path, stream.stream, stream.model) == (
        "POST",
        "/api/v1/chat/completions",
        True,
        MODEL,
    )
    assert (stream.status, stream.completed, stream.disconnected, stream.chunks_sent) == (
        200,
        True,
        False,
        6,
    )
    assert completion.headers["x-title"] == "Switchboard"
    assert completion.headers["content-type"] == "application/json"
    assert all(name == name.lower() for name in completion.headers)
    assert not completion.stream
    assert (models.method, models.path, models.body, models.status) == (
        "GET",
        "/api/v1/models",
        None,
        200,
    )
    assert before <= stream.time <= completion.time <= time.time()
    assert all(call.finished for call in calls)


async def test_call_record_is_bounded() -> None:
    emulator = OpenRouterEmulator(max_calls=2)
    with EmulatorServer(emulator) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            for word in ("one", "two", "three"):
                await http.post("/chat/completions", json=chat(word))
    assert [call.body["messages"][0]["content"] for call in emulator.calls] == ["two", "three"]


# ------------------------------------------------------------------------------ control API


async def test_control_api(upstream: EmulatorServer, client: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(base_url=f"{upstream.origin}/_emulator") as control:
        added = await control.post("/faults", json={"kind": "status", "status": 418})
        assert added.status_code == 201
        assert added.json()["data"][0]["status"] == 418
        listed = await control.post(
            "/faults", json=[{"kind": "delay", "seconds": 0.01}, {"kind": "multiline"}]
        )
        assert [f["kind"] for f in listed.json()["data"]] == ["delay", "multiline"]
        faults = (await control.get("/faults")).json()["data"]
        assert [f["kind"] for f in faults] == ["status", "delay", "multiline"]

        assert (await client.post("/chat/completions", json=chat())).status_code == 418
        assert (await control.delete("/faults")).status_code == 200
        assert (await control.get("/faults")).json()["data"] == []

        calls = (await control.get("/calls")).json()["data"]
        assert len(calls) == 1
        assert calls[0]["fault"] == "status"
        assert calls[0]["body"] == chat()
        assert calls[0]["headers"]["content-type"] == "application/json"
        assert calls[0]["finished"] is True
        assert (await control.delete("/calls")).json() == {"cleared": 1}
        assert (await control.get("/calls")).json()["data"] == []

        for bad in (
            {"kind": "explode"},
            {"status": 500},
            {"kind": "status", "colour": 1},
            {"kind": "status", "status": 200},
            {"kind": "delay", "seconds": -1},
        ):
            response = await control.post("/faults", json=bad)
            assert response.status_code == 400, bad
            assert response.json()["error"]["message"].startswith("Invalid fault")
        assert (await control.post("/faults", content=b"{")).status_code == 400
        half_valid = [{"kind": "status"}, {"kind": "explode"}]
        assert (await control.post("/faults", json=half_valid)).status_code == 400
        assert (await control.get("/faults")).json()["data"] == []  # all or nothing
        assert (await control.get("/nothing")).status_code == 404
    assert upstream.calls == []  # the control API is not recorded


# ------------------------------------------------------------------------------- Python API


def test_python_fault_api() -> None:
    emulator = OpenRouterEmulator()
    fault = emulator.add_fault(Fault("delay", seconds=1))
    assert emulator.faults == [fault]
    with pytest.raises(TypeError):
        emulator.add_fault(fault, sticky=True)
    with pytest.raises(ValueError, match="unknown fault kind"):
        emulator.add_fault("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only applies to streaming"):
        emulator.add_fault("multiline", stream=False)
    assert emulator.take_fault("any/model", stream=False) is fault
    assert emulator.take_fault("any/model", stream=False) is None
    assert Fault.from_dict(fault.to_dict()) == fault
    assert emulator.cost(MODEL, 1_000_000, 0) == pytest.approx(0.15)
    with pytest.raises(TimeoutError):
        emulator.wait_for_calls(1, timeout=0.01)


async def test_server_stops_promptly_while_a_stream_hangs() -> None:
    server = EmulatorServer().start()
    server.add_fault("hang", after_chunks=1)
    body = chat(stream=True)
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=5) as http,
        aconnect_sse(http, "POST", "/chat/completions", json=body) as source,
    ):
        events = source.aiter_sse()
        await anext(events)
        started = time.monotonic()
        await asyncio.to_thread(server.stop)
        assert time.monotonic() - started < 1.0
        with pytest.raises(httpx.RemoteProtocolError):
            await anext(events)
    assert f"openrouter-emulator-{server.port}" not in {t.name for t in threading.enumerate()}
    server.stop()  # stopping twice is harmless


def test_standalone_process(tmp_path: Path) -> None:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tests.support.openrouter_emulator",
        "--port",
        str(port),
        "--chunk-delay",
        "0.001",
    ]
    log = (tmp_path / "emulator.log").open("wb")
    with log, subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT) as proc:
        try:
            wait_for_port(port, proc=proc)
            base_url = f"http://127.0.0.1:{port}/api/v1"
            response = httpx.post(f"{base_url}/chat/completions", json=chat(stream=True))
            assert response.status_code == 200
            assert response.text.endswith("data: [DONE]\n\n")
            calls = httpx.get(f"http://127.0.0.1:{port}/_emulator/calls").json()["data"]
            assert calls[0]["completed"] is True
        finally:
            proc.terminate()
            proc.wait(5)
    assert f"http://127.0.0.1:{port}/api/v1" in (tmp_path / "emulator.log").read_text()


def test_models_status_and_report_cost() -> None:
    """A catalog outage on ``GET /models``, and answers without ``usage.cost``."""
    import httpx as _httpx

    with running_emulator(report_cost=False) as upstream:
        upstream.emulator.models_status = 503
        assert _httpx.get(f"{upstream.base_url}/models").status_code == 503
        upstream.emulator.models_status = None
        assert _httpx.get(f"{upstream.base_url}/models").status_code == 200
        body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        usage = _httpx.post(f"{upstream.base_url}/chat/completions", json=body).json()["usage"]
        assert "cost" not in usage
        assert usage["prompt_tokens"] == 1
