"""Faults on real processes: routers killed or frozen, NATS restarted, metering, ClickHouse
and PostHog down, upstreams that time out or reset. Every client either gets its answer
or a clean OpenAI-shaped error (never a hang), and afterwards the ledger holds exactly one
row per request id the clients saw, whatever failed (one known gap: see
``test_router_restarted_under_load``). Each test prints its figures (``pytest -s``).

One stack for the module (:mod:`tests.support.faults`); every test mends what it broke
and uses a key of its own, so it reads only its own ledger rows. Redis restarts are in
``test_hardening.py`` (with the same ledger check); metering and PostHog failing on
synthetic events in ``test_metering.py`` and ``test_analytics.py``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from switchboard.common import subjects
from switchboard.common.events import UsageRecorded
from tests.e2e.gatekeeping import poll
from tests.support.faults import (
    CLEAN_CODES,
    MODEL,
    SLOW_MODEL,
    FaultStack,
    Seen,
    Traffic,
    chat,
    fault_stack,
    logged,
)
from tests.support.metering import publish_usage
from tests.support.openrouter_emulator import Fault
from tests.support.servers import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """The module's stack (every process replaceable)."""
    with fault_stack(tmp_path_factory.mktemp("faults")) as stack:
        yield stack


@pytest.fixture
def stack(faults: FaultStack) -> Iterator[FaultStack]:
    """The stack whole and healthy (mended if a test before failed half-way), with a quiet
    upstream and an accepting PostHog."""
    faults.upstream.clear()
    faults.capture.accept()
    if not faults.capture.running:
        faults.capture.start()
    if faults.nats.proc.poll() is not None:
        faults.start_nats()
    if faults.router.proc.poll() is not None:
        faults.start_router()
    if faults.metering.proc.poll() is not None:
        faults.start_metering()
    faults.wait_healthy()
    faults.wait_metering()
    yield faults
    faults.upstream.clear()
    faults.close_clients()


def _figures(name: str, seen: list[Seen], rows: int, **more: object) -> None:
    codes = Counter(s.code for s in seen if not s.ok)
    answered = sum(s.ok for s in seen)
    failed = sum(s.clean_failure for s in seen)
    extra = " ".join(f"{k}={v}" for k, v in more.items())
    print(
        f"\n[{name}] requests={len(seen)} answered={answered} failed_cleanly={failed}"
        f" codes={dict(codes)} ledger_rows={rows} lost={len(seen) - rows} {extra}"
    )


def _assert_clean(seen: list[Seen]) -> None:
    unclean = [s for s in seen if not s.ok and not s.clean_failure]
    assert not unclean, unclean
    assert {s.code for s in seen if not s.ok} <= CLEAN_CODES, Counter(s.code for s in seen)


def _raw_stream(
    stack: FaultStack, key: dict[str, Any], first_chunk: threading.Event
) -> tuple[str, list[str]]:
    """A streamed request read line by line: its request id and ``data:`` lines."""
    client = stack.client(key)
    lines: list[str] = []
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=[{"role": "user", "content": "tell me"}], stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: "):
                lines.append(line)
                first_chunk.set()
    return request_id, lines


# ------------------------------------------------------------------------------ routers


def test_router_killed_mid_request(stack: FaultStack) -> None:
    """SIGKILL while two streams and a non-streamed request are in flight: the edge notices
    within its idle timeout; streams end with an error event and ``[DONE]``, the other
    gets a 502; the edge records all three in the ledger; a new router serves again."""
    key = stack.new_key()
    stack.upstream.add_fault("delay", stream=True, chunk_delay=0.4, sticky=True)
    stack.upstream.add_fault("delay", stream=False, seconds=30, sticky=True)
    chunks_arrived = [threading.Event(), threading.Event()]
    with ThreadPoolExecutor(3) as pool:
        raw = pool.submit(_raw_stream, stack, key, chunks_arrived[0])
        sdk = pool.submit(chat, stack.client(key), stream=True, first_chunk=chunks_arrived[1])
        plain = pool.submit(chat, stack.client(key), stream=False)
        poll(lambda: len(stack.upstream.calls) == 3, timeout=10)
        assert all(arrived.wait(10) for arrived in chunks_arrived)
        stack.kill_router()
        killed = time.monotonic()
        request_id, lines = raw.result(timeout=30)
        streamed, answered = sdk.result(timeout=30), plain.result(timeout=30)
    given_up_after = time.monotonic() - killed

    assert lines[-1] == "data: [DONE]"
    error = orjson.loads(lines[-2].removeprefix("data: "))["error"]
    assert (error["type"], error["code"]) == ("api_error", "router_unresponsive")
    assert len(lines) >= 3  # chunks before it
    assert (streamed.status, streamed.code) == (200, "router_unresponsive")
    assert streamed.chunks >= 1
    assert (answered.status, answered.code) == (502, "router_unresponsive")

    started = time.monotonic()
    stack.start_router()
    stack.wait_healthy()
    recovered = chat(stack.client(key), stream=True)
    assert recovered.ok
    recovery = time.monotonic() - started

    raw_seen = Seen(request_id, True, 200, error["code"], error, chunks=len(lines) - 2)
    seen = [raw_seen, streamed, answered, recovered]
    rows = stack.settled_ledger(key["id"], seen)
    for lost in seen[:3]:
        row = rows[lost.request_id or ""]
        assert (row.status, row.http_status, row.error_code) == (
            "error",
            502,
            "router_unresponsive",
        )
    # Streams had started: the router's started frame named the model; the cost is unknown.
    assert rows[request_id].served_model == MODEL
    assert rows[request_id].cost_usd is None
    plain_row = rows[answered.request_id or ""]  # nothing had started: no model, no cost
    assert (plain_row.served_model, float(plain_row.cost_usd or "nan")) == ("", 0)
    assert rows[recovered.request_id or ""].status == "ok"
    _figures(
        "router killed",
        seen,
        len(rows),
        given_up_after_s=round(given_up_after, 2),
        router_back_after_s=round(recovery, 2),
    )


async def last_event(nc: Any) -> UsageRecorded:
    """The usage event stored last in JetStream."""
    stored = await nc.jetstream().get_last_msg(subjects.USAGE_STREAM, subjects.USAGE_RECORDED)
    return UsageRecorded.model_validate_json(stored.data)


def test_a_slow_router_and_the_edge_both_publish_and_one_row_remains(stack: FaultStack) -> None:
    """A router frozen (SIGSTOP) past the idle timeout is only slow: the edge gives up and
    publishes first; the router, thawed, hears the cancel and publishes its own event for
    the same request, which JetStream drops (same ``Nats-Msg-Id``). Beyond the duplicate
    window both would reach metering: the ledger still keeps one row, the last written."""
    key = stack.new_key()
    stack.upstream.add_fault("delay", seconds=30, sticky=True)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(chat, stack.client(key), stream=False)
        poll(lambda: len(stack.upstream.calls) == 1, timeout=10)
        with stack.frozen(stack.router):
            seen = pending.result(timeout=30)
            assert (seen.status, seen.code) == (502, "router_unresponsive")
            request_id = seen.request_id or ""
            # Thawed only once the edge's event is stored, so the edge's is the first.
            poll(
                lambda: stack.on_nats(last_event).request_id == request_id,
                timeout=15,
                interval=0.1,
            )
    poll(lambda: logged(stack.router, "usage.duplicate", request_id=request_id), timeout=15)
    rows = stack.settled_ledger(key["id"], [seen])
    assert (rows[request_id].status, rows[request_id].error_code) == (
        "error",
        "router_unresponsive",
    )  # the edge's event: published first
    edge_event = stack.on_nats(last_event)
    assert edge_event.request_id == request_id
    late_copy = edge_event.model_copy(
        update={"status": "cancelled", "http_status": 499, "error_code": None}
    )

    async def publish_without_msg_id(nc: Any) -> int:
        return await publish_usage(nc, [late_copy], msg_id="")

    assert stack.on_nats(publish_without_msg_id) == 1  # past JetStream's de-duplication
    poll(lambda: stack.ledger(key["id"])[0].status == "cancelled", timeout=15)
    rows = stack.settled_ledger(key["id"], [seen])
    assert rows[request_id].status == "cancelled"  # ReplacingMergeTree(ingested_at): the last


def test_router_restarted_under_load(stack: FaultStack) -> None:
    """Six clients, streaming and not, while the router is killed and a new one started.

    A router sends each usage event on its connection ahead of the answer's last frame, so
    even the answers the killed router finished in its last moments have their row: every
    request, answered or failed, has exactly one.
    """
    key = stack.new_key()
    client = stack.client(key)
    stack.upstream.add_fault("delay", seconds=0.1, chunk_delay=0.05, sticky=True)
    while_down: list[Seen] = []
    with Traffic(lambda: stack.client(key), [True, False] * 3, pause=0.2) as traffic:
        traffic.wait_all_answered(0.0)
        stack.kill_router()
        # NATS notices the dead connection at once (loopback): no responders. A request
        # that beat it would wait out the idle timeout instead, so try a few.
        while not any(s.code == "no_router" for s in while_down):
            assert len(while_down) < 5, while_down
            while_down.append(chat(client, stream=True))
        time.sleep(0.3)
        restarted = time.monotonic()
        stack.start_router()
        traffic.wait_all_answered(restarted)
        first = traffic.first_answer_since(restarted)
    after = [chat(client, stream=stream) for stream in (True, False, True, False)]
    assert all(s.ok for s in after), after
    seen = traffic.seen + while_down + after
    _assert_clean(seen)
    answered_by_killed_router = traffic.answered_before(restarted)
    rows = stack.settled_ledger(key["id"], seen)
    assert all(rows[s.request_id or ""].status == "ok" for s in after)
    no_router = rows[while_down[-1].request_id or ""]
    assert (no_router.status, no_router.http_status, no_router.error_code) == (
        "error",
        503,
        "no_router",
    )
    _figures(
        "router restarted under load",
        seen,
        len(rows),
        recovery_s=round((first or restarted) - restarted, 2),
        answered_by_killed_router=len(answered_by_killed_router),
    )


# --------------------------------------------------------------------------------- NATS


def test_nats_restarted(stack: FaultStack) -> None:
    """nats-server SIGKILLed and started again on the same port and store, under traffic.
    Metering is frozen meanwhile, so the events stored before the restart are still
    unconsumed in JetStream's file store when it goes down: they must all come back. A
    request while NATS is down gets 503 ``bus_unavailable``; its usage event, which the
    edge publishes, waits for NATS to be back."""
    key = stack.new_key()
    client = stack.client(key)
    stored_before = stack.stream_messages()
    while_down: list[Seen] = []
    with stack.frozen(stack.metering):
        before = [chat(client, stream=s) for s in (True, False) * 3]
        assert all(s.ok for s in before), before
        poll(lambda: stack.stream_messages() >= stored_before + len(before), timeout=15)
        with Traffic(lambda: stack.client(key), [True, False], pause=0.1) as traffic:
            traffic.wait_all_answered(0.0)
            stack.kill_nats()
            # The edge sees the connection close at once (loopback); a request sent before
            # it did would wait out the idle timeout instead, so try a few.
            while not any(s.code == "bus_unavailable" for s in while_down):
                assert len(while_down) < 5, while_down
                while_down.append(chat(client, stream=False))
            time.sleep(0.3)  # down a little longer: clients reconnect every 0.5 s
            restarted = time.monotonic()
            stack.start_nats()
            traffic.wait_all_answered(restarted)
            first = traffic.first_answer_since(restarted)
    stack.wait_healthy()
    stack.wait_metering()
    seen = before + while_down + traffic.seen
    _assert_clean(seen)
    rows = stack.settled_ledger(key["id"], seen)
    assert all(rows[s.request_id or ""].status == "ok" for s in before)
    unavailable = rows[while_down[-1].request_id or ""]
    assert (unavailable.status, unavailable.http_status, unavailable.error_code) == (
        "error",
        503,
        "bus_unavailable",
    )
    for process in (stack.edge, stack.router, stack.metering, stack.analytics):
        assert '"nats.reconnected"' in process.log().replace(" ", ""), process.name
    _figures(
        "nats restarted",
        seen,
        len(rows),
        stored_before_restart=len(before),
        recovery_s=round((first or restarted) - restarted, 2),
    )


# ------------------------------------------------------------------ metering and PostHog


def test_metering_clickhouse_and_posthog_down_during_traffic(stack: FaultStack) -> None:
    """Metering SIGKILLed, then running on a ClickHouse that is down, and PostHog refusing
    connections, all while clients send requests: every request is answered, and once
    everything is back the ledger has one row and PostHog one event per request."""
    key = stack.new_key()
    with Traffic(lambda: stack.client(key), [True, False], pause=0.1) as traffic:

        def more(count: int) -> None:
            target = len(traffic.seen) + count
            poll(lambda: len(traffic.seen) >= target, timeout=30)

        more(4)
        stack.kill_metering()
        more(6)
        stack.start_metering(
            CLICKHOUSE_URL=f"http://default:@127.0.0.1:{free_port()}/default",
            CLICKHOUSE_CONNECT_TIMEOUT="1",
        )
        assert not stack.wait_metering(ready=False)["ready"]
        stack.capture.stop()
        more(6)
        stack.stop_metering()
        stack.start_metering()
        stack.capture.start()
        more(4)
    seen = traffic.seen
    assert all(s.ok for s in seen), [s for s in seen if not s.ok]
    stack.wait_metering()
    rows = stack.settled_ledger(key["id"], seen)
    expected = {s.request_id for s in seen}
    poll(lambda: set(stack.generations(key["id"])) >= expected, timeout=30)
    generations = stack.generations(key["id"])
    assert set(generations) == expected
    assert all(len(uuids) == 1 for uuids in generations.values())
    _figures("metering, clickhouse, posthog down", seen, len(rows), posthog=len(generations))


# ------------------------------------------------------------------------------ upstream


UPSTREAM_CASES: list[tuple[str, dict[str, Any], str, bool, tuple[int, str | None], int]] = [
    # (case, emulator fault, model, stream, (client's status, code), ledger http_status)
    ("read timeout", {"kind": "hang"}, SLOW_MODEL, False, (504, "timeout"), 504),
    ("no first chunk", {"kind": "hang", "stream": True}, SLOW_MODEL, True, (504, "timeout"), 504),
    ("reset", {"kind": "disconnect"}, MODEL, False, (502, "upstream_error"), 502),
    (
        "reset mid-stream",
        {"kind": "disconnect", "after_chunks": 2},
        MODEL,
        True,
        (200, "upstream_error"),
        502,
    ),
    ("fallback", {"kind": "hang", "model": SLOW_MODEL}, "resilient", False, (200, None), 200),
    ("fallback stream", {"kind": "hang", "model": SLOW_MODEL}, "resilient", True, (200, None), 200),
]


def test_upstream_timeouts_and_resets(stack: FaultStack) -> None:
    """Each case: the emulator's fault, what the client gets (an OpenAI error, an error
    event after the chunks already sent, or a fallback's answer), what the ledger says."""
    key = stack.new_key()
    client = stack.client(key)
    seen: list[Seen] = []
    for _, fault, model, stream, _, _ in UPSTREAM_CASES:
        stack.upstream.add_fault(Fault.from_dict(fault))
        seen.append(chat(client, stream=stream, model=model))
        stack.upstream.clear()
    rows = stack.settled_ledger(key["id"], seen)
    for outcome, (case, _, _, _, client_gets, ledger_status) in zip(
        seen, UPSTREAM_CASES, strict=True
    ):
        assert (outcome.status, outcome.code) == client_gets, (case, outcome)
        assert outcome.ok or outcome.clean_failure, (case, outcome)
        row = rows[outcome.request_id or ""]
        expected = ("ok", 200, "") if outcome.ok else ("error", ledger_status, outcome.code)
        assert (row.status, row.http_status, row.error_code) == expected, (case, row)
        if case.startswith("fallback"):
            assert (row.served_model, row.fallbacks) == (MODEL, 1), (case, row)
        if case == "reset mid-stream":
            assert outcome.chunks == 2
    _figures("upstream faults", seen, len(rows))
