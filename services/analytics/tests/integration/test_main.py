"""``switchboard-analytics`` as a process: settings errors, start line, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from tests.support.posthog_capture import CaptureServer
from tests.support.servers import ManagedProcess

from switchboard.analytics.generation import event_uuid

from ..conftest import POSTHOG_KEY, UsageFactory
from .conftest import Publish


def _env(**values: str) -> dict[str, str]:
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("POSTHOG_", "ANALYTICS_"))
    }
    return {**inherited, "LOG_LEVEL": "INFO", **values}


def _log_text(path: Path) -> str:
    return path.read_text(errors="replace")


def _log_lines(path: Path) -> list[dict[str, object]]:
    lines = []
    for line in _log_text(path).splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return lines


def test_without_an_api_key_it_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "switchboard.analytics"],
        env=_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"settings.invalid" in result.stderr
    assert b"posthog_api_key" in result.stderr


@pytest.fixture
def analytics_process(
    tmp_path: Path, nats_server: ManagedProcess, capture: CaptureServer
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m switchboard.analytics`` on this test's NATS and capture endpoint."""
    log_path = tmp_path / "analytics.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "switchboard.analytics"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_env(
                NATS_URL=nats_server.url,
                POSTHOG_API_KEY=POSTHOG_KEY,
                POSTHOG_HOST=capture.host,
                ANALYTICS_FETCH_WAIT="0.2",
                ANALYTICS_RETRY_INITIAL="0.1",
                ANALYTICS_RETRY_MAX="0.5",
            ),
        )
    proc.log_path = log_path  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_it_says_where_it_sends_serves_and_stops_on_sigterm(
    analytics_process: subprocess.Popen[bytes],
    nc: Client,
    usage_stream: str,
    publish: Publish,
    capture: CaptureServer,
    make_usage: UsageFactory,
) -> None:
    log_path: Path = analytics_process.log_path  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while not any(line.get("event") == "analytics.consuming" for line in _log_lines(log_path)):
        assert analytics_process.poll() is None, _log_text(log_path)
        assert time.monotonic() < deadline, _log_text(log_path)
        await asyncio.sleep(0.05)
    [started] = [line for line in _log_lines(log_path) if line.get("event") == "analytics.started"]
    assert started["posthog_host"] == capture.host
    assert started["message"] == f"sending LLM analytics to PostHog at {capture.host}"
    assert POSTHOG_KEY not in _log_text(log_path)

    event = make_usage()
    await publish(event)
    [sent] = await asyncio.to_thread(capture.wait_for_events, 1, 20)
    assert sent["uuid"] == event_uuid(event.event_id)

    analytics_process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(analytics_process.wait, 15) == 0
    events = [line.get("event") for line in _log_lines(log_path)]
    shutdown = [e for e in events if str(e).startswith("analytics.s")][-3:]
    assert shutdown == ["analytics.signal", "analytics.stopping", "analytics.stopped"]
    assert events[-1] == "analytics.stopped"
