"""Models, ping, credentials, concurrency and graceful shutdown of a real router."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.errors import NoRespondersError
from tests.support.openrouter_emulator import EmulatorServer
from tests.support.servers import ManagedProcess, free_port

from switchboard.common import subjects
from switchboard.common.wire import CompletionFailed, FrameKind, RouterPong, decode_frame
from switchboard.router.service import RouterService

from ._support import UPSTREAM_KEY, wait_for_router


async def test_ping(start_router: Any, nc: Any) -> None:
    router = await start_router()
    msg = await nc.request(subjects.ROUTER_PING, b"", timeout=2)
    assert RouterPong.model_validate_json(msg.data).instance_id == router.instance_id


async def test_models_in_openai_shape_and_cached(
    start_router: Any, nc: Any, emulator: EmulatorServer
) -> None:
    await start_router()
    frames = [
        decode_frame((await nc.request(subjects.MODELS_LIST, b"", timeout=2)).data)
        for _ in range(3)
    ]
    assert {frame.kind for frame in frames} == {FrameKind.RESPONSE}
    listing = orjson.loads(frames[0].body)
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == list(emulator.emulator.models)
    first = listing["data"][0]
    assert first == {
        "id": "openai/gpt-4o-mini",
        "object": "model",
        "created": 1_721_260_800,
        "owned_by": "openai",
    }
    # Answered from the catalog fetched at start: no call per request.
    assert [call for call in emulator.calls if call.path.endswith("/models")] == []


async def test_models_when_the_upstream_is_unreachable(start_router: Any, nc: Any) -> None:
    await start_router(openrouter_base_url=f"http://127.0.0.1:{free_port()}/api/v1")
    frame = decode_frame((await nc.request(subjects.MODELS_LIST, b"", timeout=5)).data)
    assert frame.kind is FrameKind.ERROR
    error = CompletionFailed.model_validate_json(frame.body)
    assert (error.status, error.error.code) == (502, "catalog_unavailable")


async def test_rejected_upstream_key_is_reported_without_leaking(
    start_router: Any, exchange: Any, emulator: EmulatorServer
) -> None:
    wrong = "sk-or-v1-wrong-and-secret"
    await start_router(openrouter_api_key=wrong)
    ex = await exchange(stream=True)
    frames = await ex.until_end()
    error = CompletionFailed.model_validate_json(frames[-1].body)
    assert (error.status, error.error.type, error.error.code) == (
        502,
        "api_error",
        "upstream_auth_failed",
    )
    assert wrong not in frames[-1].body.decode()
    assert emulator.calls[0].headers["authorization"] == f"Bearer {wrong}"


async def test_in_flight_cap(start_router: Any, exchange: Any, emulator: EmulatorServer) -> None:
    await start_router(router_max_in_flight=1)
    emulator.add_fault("delay", seconds=0.3, sticky=True)
    first, second = await exchange(), await exchange()
    await asyncio.gather(first.until_end(), second.until_end())
    assert first.kinds.endswith("rt")
    assert second.kinds.endswith("rt")
    a, b = sorted(call.time for call in emulator.calls)
    assert b - a >= 0.25, "the second call waited for the first to finish"


async def test_graceful_stop_finishes_in_flight_requests(
    exchange: Any, emulator: EmulatorServer, nc: Any, router_settings: Any
) -> None:
    settings = router_settings()
    service = RouterService(settings)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    await wait_for_router(nc)
    emulator.add_fault("delay", chunk_delay=0.1)
    ex = await exchange(stream=True)
    assert (await ex.next()).kind in (FrameKind.CHUNK, FrameKind.KEEPALIVE)
    stop.set()
    frames = await ex.until_end()
    assert frames[-1].kind is FrameKind.END
    assert ex.kinds.count("c") >= 5
    await asyncio.wait_for(running, 5)
    with pytest.raises(NoRespondersError):
        await nc.request(subjects.ROUTER_PING, b"", timeout=1)


async def test_stop_after_the_grace_period_tells_the_client(
    exchange: Any, emulator: EmulatorServer, nc: Any, router_settings: Any
) -> None:
    settings = router_settings(nats_drain_timeout=0.3)
    service = RouterService(settings)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    await wait_for_router(nc)
    emulator.add_fault("hang", after_chunks=1)
    ex = await exchange(stream=True)
    assert (await ex.next()).kind is FrameKind.CHUNK
    stop.set()
    frames = await ex.until_end()
    error = CompletionFailed.model_validate_json(frames[-1].body)
    assert (error.status, error.error.code, error.chunks) == (503, "router_shutdown", 1)
    await asyncio.wait_for(running, 5)
    (call,) = [call for call in emulator.calls if call.path.endswith("/chat/completions")]
    async with asyncio.timeout(3):
        await call.wait_async()
    assert call.disconnected


# ---------------------------------------------------------------------------- entry point


def _router_process(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "switchboard.router"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )


async def test_entry_point_serves_and_stops_on_sigterm(
    tmp_path: Path, nats_server: ManagedProcess, emulator: EmulatorServer, exchange: Any, nc: Any
) -> None:
    proc = _router_process(
        tmp_path,
        {
            "NATS_URL": nats_server.url,
            "OPENROUTER_BASE_URL": emulator.base_url,
            "OPENROUTER_API_KEY": UPSTREAM_KEY,
            "LOG_LEVEL": "INFO",
        },
    )
    try:
        await wait_for_router(nc, alive=lambda: proc.poll() is None)
        frames = await (await exchange(stream=True)).until_end()
        assert frames[-1].kind is FrameKind.END
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    lines = [orjson.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]
    events = [line["event"] for line in lines]
    assert "router.started" in events
    assert "chat.finished" in events
    assert events.index("router.signal") < events.index("router.stopped")
    finished = next(line for line in lines if line["event"] == "chat.finished")
    assert {"request_id", "key_id", "model", "latency_ms", "status"} <= finished.keys()
    assert UPSTREAM_KEY.encode() not in stderr
    assert b"Hello there" not in stderr, "prompt text must not be logged"


def test_entry_point_refuses_bad_settings(tmp_path: Path) -> None:
    proc = _router_process(
        tmp_path, {"ROUTER_MAX_IN_FLIGHT": "zero", "OPENROUTER_API_KEY": "sk-or-v1-x"}
    )
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2
    line = orjson.loads(stderr.splitlines()[-1])
    assert line["event"] == "settings.invalid"
    assert line["errors"][0]["loc"] == ["router_max_in_flight"]


def test_entry_point_refuses_a_bad_routing_config(tmp_path: Path) -> None:
    config = tmp_path / "routing.yaml"
    config.write_text(
        "tiers:\n  premium: []\n  gold: [a/b]\nproviders:\n  x: {base_url: ftp://x}\n"
    )
    proc = _router_process(
        tmp_path, {"SWITCHBOARD_CONFIG": str(config), "OPENROUTER_API_KEY": "sk-or-v1-x"}
    )
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2
    text = stderr.decode()
    assert "switchboard-router: " in text
    assert "invalid routing config" in text
    assert "tiers: Value error, unknown tier(s) ['gold']" in text
    assert "providers.x.base_url" in text
