"""``switchboard-metering`` as a real process: SIGTERM flushes and acknowledges, SIGKILL
loses nothing, bad settings exit 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as Nats
from tests.support.clickhouse import LedgerTarget, client_for
from tests.support.servers import ManagedProcess

from switchboard.common import subjects

from .._support import eventually, ledger_counts, publish, sql_over_nats, usage_event
from .conftest import ping

pytestmark = pytest.mark.usefixtures("stream")


class MeteringProcess:
    """``python -m switchboard.metering`` with its log in a file."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.log_path = workdir / "metering.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "switchboard.metering"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@pytest.fixture
def spawn(
    tmp_path: Path, nats_server: ManagedProcess, ledger_target: LedgerTarget
) -> Iterator[object]:
    """Start metering processes on this test's NATS and ledger; killed at teardown."""
    started: list[MeteringProcess] = []

    def start(**env: str) -> MeteringProcess:
        process = MeteringProcess(
            tmp_path,
            {
                "NATS_URL": nats_server.url,
                "CLICKHOUSE_URL": ledger_target.url,
                "METERING_BATCH_MAX_WAIT": "0.1",
                "METERING_ACK_WAIT": "2",
                "LOG_LEVEL": "INFO",
                **env,
            },
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop(signal.SIGKILL)


async def _ready(nc: Nats) -> bool:
    pong = await ping(nc)
    return pong is not None and pong.ready and pong.consuming


async def _all_acked(nc: Nats) -> bool:
    info = await nc.jetstream().consumer_info(subjects.USAGE_STREAM, "switchboard-metering")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_sigterm_flushes_the_open_batch_and_exits_0(
    nc: Nats, spawn: object, ledger_target: LedgerTarget
) -> None:
    metering = spawn(METERING_BATCH_MAX_WAIT="60", METERING_BATCH_SIZE="1000")  # type: ignore[operator]
    await eventually(lambda: _ready(nc), within=30, what="metering ready")
    await publish(nc, [usage_event() for _ in range(12)])
    await eventually(lambda: _fetched(nc), what="events fetched")
    assert metering.stop() == 0, metering.log()
    assert await _all_acked(nc)
    log = metering.log()
    assert '"event":"metering.signal"' in log
    assert '"event":"metering.stopped"' in log
    with client_for(ledger_target) as client:  # the process released the data directory
        assert ledger_counts(client) == (12, 12)


async def _fetched(nc: Nats) -> bool:
    info = await nc.jetstream().consumer_info(subjects.USAGE_STREAM, "switchboard-metering")
    return info.num_pending == 0 and info.num_ack_pending == 12


async def test_killed_during_traffic_then_restarted_is_exact(
    nc: Nats, spawn: object, ledger_target: LedgerTarget
) -> None:
    first = spawn()  # type: ignore[operator]
    await eventually(lambda: _ready(nc), within=30, what="metering ready")
    await publish(nc, [usage_event() for _ in range(30)])
    first.stop(signal.SIGKILL)  # a crash: whatever was not acknowledged comes again
    await publish(nc, [usage_event() for _ in range(30)])
    spawn()  # type: ignore[operator]
    await eventually(lambda: _all_acked(nc), within=30, what="all acknowledged")
    # The running process owns the embedded ledger: ask it.
    rows = await sql_over_nats(nc, "SELECT count(), uniqExact(event_id) FROM usage_events FINAL")
    assert rows == [[60, 60]]


def test_invalid_settings_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "switchboard.metering"],
        env={**os.environ, "METERING_BATCH_SIZE": "0"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"settings.invalid" in result.stderr
