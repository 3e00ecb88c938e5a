"""``switchboard up``: the whole stack from one command, stopped cleanly by a signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tests.support.openrouter_emulator import EmulatorServer
from tests.support.posthog_capture import CaptureServer
from tests.support.servers import free_port


@dataclass
class Up:
    proc: subprocess.Popen[str]
    data_dir: Path
    base_url: str
    output: list[str]

    def state(self) -> dict[str, object]:
        state: dict[str, object] = json.loads((self.data_dir / "state.json").read_text())
        return state

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "switchboard.cli.main", "--data-dir", str(self.data_dir), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): look at its state.
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split()[2] != "Z"


def _wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive:
            return []
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


@pytest.fixture
def up_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Extra environment for ``switchboard up``: ``posthog`` (indirect parameter) points
    analytics at the ``capture`` fixture."""
    if getattr(request, "param", None) == "posthog":
        capture: CaptureServer = request.getfixturevalue("capture")
        return {"POSTHOG_API_KEY": "phc_up_test", "POSTHOG_HOST": capture.host}
    return {}


@pytest.fixture
def up(tmp_path: Path, upstream: EmulatorServer, up_env: dict[str, str]) -> Iterator[Up]:
    """``switchboard up`` against the emulator, in a fresh data dir."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "switchboard.cli.main",
            "--data-dir",
            str(tmp_path),
            "up",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("POSTHOG_")},
            "OPENROUTER_BASE_URL": upstream.base_url,
            "OPENROUTER_API_KEY": "sk-or-up",
            **up_env,
        },
    )
    output: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        output.append(line)
        if "Switchboard is up" in line or "could not start" in line:
            break
    assert "Switchboard is up" in output[-1], "".join(output)
    running = Up(proc, tmp_path, f"http://127.0.0.1:{port}/v1", output)
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        proc.stdout.close()


def test_up_serves_then_stops_cleanly_on_sigterm(up: Up) -> None:
    assert up.base_url in up.output[-1]
    created = up.cli("keys", "create", "--name", "laptop", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["key"].startswith("sk-sb-")
    client = openai.OpenAI(base_url=up.base_url, api_key=key["key"], max_retries=0, timeout=30)
    reply = client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "up?"}]
    )
    assert reply.choices[0].message.content == "Echo: up?"

    revoked = up.cli("keys", "revoke", key["id"])
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(openai.AuthenticationError):
        client.models.list()

    children = list(up.state()["services"].values())  # type: ignore[union-attr]
    assert set(up.state()["services"]) == {"nats", "valkey", "metering", "router", "edge"}  # type: ignore[arg-type]
    assert any("analytics: off" in line for line in up.output)
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(60) == 0
    assert _wait_gone(children) == []
    assert not (up.data_dir / "state.json").exists()


def test_up_children_do_not_outlive_a_killed_supervisor(up: Up) -> None:
    children = list(up.state()["services"].values())  # type: ignore[union-attr]
    second = up.cli("up", "--port", str(free_port()))
    assert second.returncode == 1
    assert "already runs" in second.stderr
    up.proc.kill()
    up.proc.wait(10)
    assert _wait_gone(children) == []


def test_keys_without_a_stack_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "switchboard.cli.main",
            "--data-dir",
            str(tmp_path),
            "keys",
            "create",
            "--name",
            "x",
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no running stack" in result.stderr


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    """A local PostHog capture endpoint."""
    with CaptureServer() as server:
        yield server


@pytest.mark.parametrize("up_env", ["posthog"], indirect=True)
def test_up_runs_analytics_when_posthog_is_configured(up: Up, capture: CaptureServer) -> None:
    assert "analytics" in up.state()["services"]  # type: ignore[operator]
    assert any("analytics: sending LLM analytics to PostHog" in line for line in up.output)
    created = up.cli("keys", "create", "--name", "ph", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    client = openai.OpenAI(base_url=up.base_url, api_key=key, max_retries=0, timeout=30)
    client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "tracked"}]
    )
    (event,) = capture.wait_for_events(1, timeout=30)
    assert event["event"] == "$ai_generation"
    assert "tracked" not in json.dumps(event)  # metadata mode: no prompt text leaves


def test_status_reports_every_service_of_the_running_stack(up: Up) -> None:
    deadline = time.monotonic() + 60
    while True:
        result = up.cli("status", "--json")
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ready"] is True
    rows = {row["name"]: row for row in report["services"]}
    assert set(rows) == {"nats", "valkey", "metering", "router", "edge"}
    assert rows["edge"]["ports"]["api"] == int(up.base_url.rsplit(":", 1)[1].split("/")[0])
    ops_ports = {name: rows[name]["ports"]["ops"] for name in ("metering", "router", "edge")}
    assert len(set(ops_ports.values())) == 3
    for name in ops_ports:
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["pid"] == up.state()["services"][name]  # type: ignore[index]
    assert rows["metering"]["components"]["consumer"]["status"] == "ok"
    assert rows["router"]["components"]["catalog"]["status"] == "ok"

    table = up.cli("status")
    assert table.returncode == 0
    assert "OPS/METRICS" in table.stdout
    assert str(ops_ports["router"]) in table.stdout

    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(60) == 0
    gone = up.cli("status")
    assert gone.returncode == 2
    assert "no stack runs" in gone.stdout
    assert json.loads(up.cli("status", "--json").stdout)["running"] is False
