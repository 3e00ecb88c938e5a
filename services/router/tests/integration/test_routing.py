"""Routing, retries, fallbacks, breakers, catalog outages, cost and usage events, on a real
nats-server with JetStream, the router in-process and the emulator's scripted faults."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client
from nats.js.errors import NotFoundError as StreamNotFoundError
from tests.support.openrouter_emulator import EmulatorServer

from switchboard.common import subjects
from switchboard.common.events import UsageRecorded
from switchboard.common.wire import (
    ChatRequest,
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    FrameKind,
    RouterHealth,
    RouterPong,
    decode_frame,
)

from ._support import Exchange

HAIKU = "anthropic/claude-3.5-haiku"
MINI = "openai/gpt-4o-mini"
LLAMA = "meta-llama/llama-3.1-8b-instruct"
FAST_RETRIES = {"max_retries": 2, "base_delay": 0.01, "max_delay": 0.05}
CONFIG: dict[str, Any] = {
    "tiers": {"standard": [HAIKU, MINI], "budget": [LLAMA], "premium": [HAIKU]},
    "aliases": {"solo": [HAIKU]},
    "retry": FAST_RETRIES,
    "breaker": {"failure_threshold": 2, "cooldown": 0.5, "min_calls": 100},
}


async def send(nc: Client, make_envelope: Any, *, started: bool = True, **request: Any) -> Exchange:
    envelope = make_envelope(**request)
    data = envelope.model_dump(exclude_unset=True, by_alias=True)
    if started:
        data["accepts_started"] = True
    return await Exchange(nc, ChatRequest.model_validate(data)).start()


def body_kinds(ex: Exchange) -> str:
    return ex.kinds.replace("k", "")


def frame_of(ex: Exchange, kind: FrameKind) -> bytes:
    return next(frame.body for frame in ex.frames if frame.kind is kind)


def finished(ex: Exchange) -> CompletionFinished:
    return CompletionFinished.model_validate_json(frame_of(ex, FrameKind.END))


def failed(ex: Exchange) -> CompletionFailed:
    return CompletionFailed.model_validate_json(frame_of(ex, FrameKind.ERROR))


def chat_calls(emulator: EmulatorServer, model: str | None = None) -> list[Any]:
    return [
        c
        for c in emulator.calls
        if c.path.endswith("/chat/completions") and (model is None or c.model == model)
    ]


async def usage_events(nc: Client, count: int, *, settle: float = 0.3) -> list[UsageRecorded]:
    """Every event of the usage stream, read with an ordered consumer, once ``count`` are
    there and no more arrived for ``settle`` s."""
    js = nc.jetstream()
    events: list[UsageRecorded] = []
    async with asyncio.timeout(5):  # the router may still be (re)creating the stream
        while True:
            try:
                await js.stream_info(subjects.USAGE_STREAM)
                break
            except StreamNotFoundError:
                await asyncio.sleep(0.05)
    sub = await js.subscribe(subjects.USAGE_RECORDED, ordered_consumer=True)
    try:
        async with asyncio.timeout(10):
            while len(events) < count:
                msg = await sub.next_msg(timeout=10)
                events.append(UsageRecorded.model_validate_json(msg.data))
        while True:
            try:
                msg = await sub.next_msg(timeout=settle)
            except TimeoutError:
                return events
            events.append(UsageRecorded.model_validate_json(msg.data))
    finally:
        await sub.unsubscribe()


async def health(nc: Client) -> RouterHealth:
    msg = await nc.request(subjects.ROUTER_HEALTH, b"", timeout=2)
    return RouterHealth.model_validate_json(msg.data)


# --------------------------------------------------------------------------------- retries


async def test_retry_then_success(
    start_router: Any, nc: Client, make_envelope: Any, emulator: EmulatorServer
) -> None:
    await start_router(config=CONFIG)
    emulator.add_fault("status", status=500, model=MINI)
    ex = await send(nc, make_envelope, model=MINI)
    await ex.until_end()
    assert body_kinds(ex) == "srt"
    end = finished(ex)
    assert (end.served_model, end.retries, end.fallbacks) == (MINI, 1, 0)
    started = CompletionStarted.model_validate_json(frame_of(ex, FrameKind.STARTED))
    assert (started.served_model, started.provider, started.retries) == (MINI, "openrouter", 1)
    assert [c.status for c in chat_calls(emulator)] == [500, 200]
    (event,) = await usage_events(nc, 1)
    assert (event.status, event.retries, event.http_status) == ("ok", 1, 200)
    assert [(a.status, a.http_status, a.error_code) for a in event.attempts] == [
        ("error", 500, "upstream_error"),
        ("ok", 200, None),
    ]


async def test_429_with_retry_after_is_honoured(
    start_router: Any, nc: Client, make_envelope: Any, emulator: EmulatorServer
) -> None:
    await start_router(config=CONFIG)
    emulator.add_fault("status", status=429, retry_after=0.4)
    began = time.monotonic()
    ex = await send(nc, make_envelope, model=MINI, stream=True)
    await ex.until_end()
    assert time.monotonic() - began >= 0.4
    assert finished(ex).retries == 1
    first, second = chat_calls(emulator)
    assert second.time - first.time >= 0.4


async def test_a_retry_after_past_the_deadline_is_not_waited_for(
    start_router: Any, nc: Client, make_envelope: Any, emulator: EmulatorServer
) -> None:
    await start_router(config=CONFIG)
    emulator.add_fault("status", status=429, retry_after=5, sticky=True)
    began = time.monotonic()
    ex = await send(nc, make_envelope, model=MINI, deadline_in=2)
    await ex.until_end()
    assert time.monotonic() - began < 1
    error = failed(ex)
    assert (error.status, error.retry_after, error.model) == (429, 5, MINI)
    assert len(chat_calls(emulator)) == 1


# ------------------------------------------------------------------------------- fallbacks


async def test_primary_down_falls_back_and_says_who_served(
    start_router: Any, nc: Client, make_envelope: Any, emulator: EmulatorServer
) -> None:
    await start_router(config={**CONFIG, "breaker": {"failure_threshold": 10}})
    emulator.add_fault("status", status=503, model=HAIKU, sticky=True)
    ex = await send(nc, make_envelope, model="standard", stream=True)
    await ex.until_end()
    assert body_kinds(ex).startswith("sc")
    assert body_kinds(ex).endswith("t")
    started = CompletionStarted.model_validate_json(frame_of(ex, FrameKind.STARTED))
    assert (started.served_model, started.fallbacks, started.retries) == (MINI, 1, 2)
    assert {chunk["model"] for chunk in ex.chunks()} == {MINI}
    end = finished(ex)
    assert (end.served_model, end.fallbacks, end.retries) == (MINI, 1, 2)
    assert [c.model for c in chat_calls(emulator)] == [HAIKU, HAIKU, HAIKU, MINI]
    (event,) = await usage_events(nc, 1)
    assert (event.requested_model, event.tier, event.served_model) == ("standard", "standard", MINI)
    assert (event.fallbacks, event.retries, len(event.attempts)) == (1, 2, 4)
    assert event.provider == "openrouter"
    assert event.provider_base_url == emulator.base_url


async def test_openrouter_models_array_is_walked_by_the_router(
    start_router: Any, nc: Client, make_envelope: Any, emulator: EmulatorServer
) -> None:
    await start_router(config={"retry": {"max_retries": 0}})
    emulator.add_fault("status", status=502, model=HAIKU)
    ex = await send(nc, make_envelope, model=HAIKU, models=[LLAMA], started=False)
    await ex.until_end()
    assert body_kinds(ex) == "rt"  # no `s` frame for an edge that did not ask for it
    assert finished(ex).served_model == LLAMA
    calls = chat_calls(emulator)
    assert [c.model for c in calls] == [HAIKU, LLAMA]
    assert "models" not in calls[1].body


async def test_breaker_opens_skips_and_recovers(
    start_router: Any, nc: Client, make_envelope: Any, emulator: EmulatorServer
) -> None:
    await start_router(config={**CONFIG, "retry": {"max_retries": 0}})
    emulator.add_fault("status", status=500, model=HAIKU, sticky=True)
    for _ in range(2):
        ex = await send(nc, make_envelope, model="standard")
        await ex.until_end()
        assert finished(ex).fallbacks == 1
    assert len(chat_calls(emulator, HAIKU)) == 2
    report = await health(nc)
    (haiku,) = [b for b in report.breakers if b.model == HAIKU]
    assert (haiku.state, haiku.provider, haiku.consecutive_failures) == ("open", "openrouter", 2)

    ex = await send(nc, make_envelope, model="standard")
    await ex.until_end()
    assert (finished(ex).served_model, finished(ex).fallbacks) == (MINI, 1)
    assert len(chat_calls(emulator, HAIKU)) == 2, "an open breaker skips the model"

    ex = await send(nc, make_envelope, model="solo")
    await ex.until_end()
    error = failed(ex)
    assert (error.status, error.error.code) == (503, "no_healthy_model")
    assert error.retry_after is not None
    assert error.retry_after <= 0.5

    emulator.emulator.clear_faults()
    await asyncio.sleep(0.55)
    assert next(b for b in (await health(nc)).breakers if b.model == HAIKU).state == "half_open"
    ex = await send(nc, make_envelope, model="standard")
    await ex.until_end()
    assert (finished(ex).served_model, finished(ex).fallbacks) == (HAIKU, 0)
    assert next(b for b in (await health(nc)).breakers if b.model == HAIKU).state == "closed"


async def test_mid_stream_failure_ends_cleanly_without_retry(
    start_router: Any, nc: Client, make_envelope: Any, emulator: EmulatorServer
) -> None:
    await start_router(config=CONFIG)
    emulator.add_fault("stream_error", after_chunks=2, model=HAIKU)
    ex = await send(nc, make_envelope, model="standard", stream=True)
    await ex.until_end()
    assert body_kinds(ex) == "scce"
    error = failed(ex)
    assert (error.status, error.chunks, error.model) == (502, 2, HAIKU)
    assert len(chat_calls(emulator)) == 1, "nothing is retried once bytes went out"
    (event,) = await usage_events(nc, 1)
    assert (event.status, event.http_status, event.error_code) == ("error", 502, "upstream_error")
    assert event.ttft_ms is not None


# --------------------------------------------------------------------------------- catalog


async def test_catalog_outage_at_start_uses_the_persisted_copy(
    start_router: Any, nc: Client, make_envelope: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    saved = orjson.loads(emulator.emulator.models_json)
    cache = tmp_path / "catalog-copy.json"
    cache.write_bytes(orjson.dumps({"fetched_at": 1.0, "data": saved["data"]}))
    emulator.emulator.models_status = 503
    await start_router(config=CONFIG, router_catalog_cache=cache)
    report = await health(nc)
    assert (report.status, report.catalog, report.catalog_models) == ("ok", "cached", 4)
    assert report.catalog_fetched_at == 1.0
    frame = decode_frame((await nc.request(subjects.MODELS_LIST, b"", timeout=2)).data)
    listing = orjson.loads(frame.body)["data"]
    assert [m["id"] for m in listing][:4] == list(emulator.emulator.models)
    aliases = [m for m in listing if m["owned_by"] == "switchboard"]
    assert {m["id"] for m in aliases} == {"standard", "budget", "premium", "solo", "auto"}
    ex = await send(nc, make_envelope, model="auto")
    await ex.until_end()
    assert finished(ex).served_model == LLAMA, "auto: the cheapest, priced from the copy"


async def test_catalog_outage_without_a_copy_starts_degraded(
    start_router: Any, nc: Client, make_envelope: Any, emulator: EmulatorServer, tmp_path: Path
) -> None:
    emulator.emulator.models_status = 503
    await start_router(config=CONFIG, router_catalog_cache=tmp_path / "none" / "catalog.json")
    pong = RouterPong.model_validate_json((await nc.request(subjects.ROUTER_PING, b"")).data)
    assert pong.status == "degraded"
    report = await health(nc)
    assert (report.status, report.catalog) == ("degraded", "empty")
    frame = decode_frame((await nc.request(subjects.MODELS_LIST, b"", timeout=5)).data)
    assert frame.kind is FrameKind.ERROR
    assert CompletionFailed.model_validate_json(frame.body).error.code == "catalog_unavailable"
    ex = await send(nc, make_envelope, model=MINI)
    await ex.until_end()
    assert finished(ex).served_model == MINI, "concrete models still pass through"
    emulator.emulator.models_status = None
    frame = decode_frame((await nc.request(subjects.MODELS_LIST, b"", timeout=5)).data)
    assert frame.kind is FrameKind.RESPONSE, "the list is fetched again when asked for"
    assert (await health(nc)).catalog == "fresh"


# ------------------------------------------------------------------------------------ cost


async def test_cost_from_catalog_pricing_matches_the_emulator(
    start_router: Any, nc: Client, make_envelope: Any, emulator: EmulatorServer
) -> None:
    emulator.emulator.report_cost = False
    await start_router(config=CONFIG)
    ex = await send(
        nc,
        make_envelope,
        model=HAIKU,
        stream=True,
        messages=[{"role": "user", "content": "What does a circuit breaker do? " * 20}],
    )
    await ex.until_end()
    end = finished(ex)
    assert end.usage is not None
    assert end.cost_source == "catalog"
    spec = emulator.emulator.models[HAIKU]
    expected = end.usage.prompt_tokens * Decimal(spec.prompt) + end.usage.completion_tokens * (
        Decimal(spec.completion)
    )
    assert end.cost_usd == float(expected.quantize(Decimal("1e-10")))
    assert end.cost_usd == round(
        emulator.emulator.cost(HAIKU, end.usage.prompt_tokens, end.usage.completion_tokens), 10
    )
    (event,) = await usage_events(nc, 1)
    assert (event.cost_usd, event.cost_source) == (end.cost_usd, "catalog")


async def test_cost_reported_by_the_upstream_is_preferred(
    start_router: Any, nc: Client, make_envelope: Any, emulator: EmulatorServer
) -> None:
    await start_router(config=CONFIG)
    ex = await send(nc, make_envelope, model=MINI, stream=True)
    await ex.until_end()
    end = finished(ex)
    assert end.usage is not None
    assert end.cost_source == "upstream"
    assert end.cost_usd == emulator.emulator.cost(
        MINI, end.usage.prompt_tokens, end.usage.completion_tokens
    )


# ---------------------------------------------------------------------------- usage events


async def test_exactly_one_usage_event_per_request(
    start_router: Any, nc: Client, make_envelope: Any, emulator: EmulatorServer
) -> None:
    await start_router(config=CONFIG)
    ok = await send(nc, make_envelope, model="budget", stream=True, user="end-user-7")
    await ok.until_end()
    missing = await send(nc, make_envelope, model="no/such-model")
    await missing.until_end()
    emulator.add_fault("status", status=400, message="bad temperature")
    rejected = await send(nc, make_envelope, model=MINI, temperature=1.5, max_tokens=50)
    await rejected.until_end()
    emulator.add_fault("hang", after_chunks=1)
    cancelled = await send(nc, make_envelope, model=MINI, stream=True)
    assert (await cancelled.next()).kind is FrameKind.STARTED
    assert (await cancelled.next()).kind is FrameKind.CHUNK
    await nc.publish(subjects.chat_cancel(cancelled.envelope.request_id), b"")
    early = make_envelope(model=MINI)
    await nc.publish(subjects.chat_cancel(early.request_id), b"")
    await nc.flush()
    await Exchange(nc, early).start()

    events = {e.request_id: e for e in await usage_events(nc, 5)}
    assert len(events) == 5
    served = events[ok.envelope.request_id]
    assert (served.status, served.tier, served.served_model, served.end_user) == (
        "ok",
        "budget",
        LLAMA,
        "end-user-7",
    )
    assert served.stream
    assert served.prompt_tokens > 0
    assert served.total_tokens == served.prompt_tokens + served.completion_tokens
    assert served.ttft_ms is not None
    assert served.ttft_ms <= served.latency_ms
    assert served.received_at <= served.started_at <= served.finished_at
    assert (served.key_id, served.key_name, served.cost_source) == ("key_test", "tests", "upstream")
    unknown = events[missing.envelope.request_id]
    assert (unknown.status, unknown.http_status, unknown.error_code) == (
        "error",
        404,
        "model_not_found",
    )
    assert unknown.attempts == []
    bad = events[rejected.envelope.request_id]
    assert (bad.http_status, bad.error_type, bad.temperature, bad.max_tokens) == (
        400,
        "invalid_request_error",
        1.5,
        50,
    )
    assert bad.error_message == "bad temperature"
    gone = events[cancelled.envelope.request_id]
    assert (gone.status, gone.http_status) == ("cancelled", 499)
    assert [a.status for a in gone.attempts] == ["cancelled"]
    assert events[early.request_id].status == "cancelled"
    for event in events.values():
        assert "Hello there" not in event.model_dump_json(), "no prompt text in usage events"


async def test_a_republished_event_is_deduplicated(
    start_router: Any, nc: Client, make_envelope: Any
) -> None:
    await start_router(config=CONFIG)
    envelope = make_envelope(model=MINI)
    for _ in range(2):  # the same request id served twice: one event
        ex = await Exchange(nc, envelope).start()
        await ex.until_end()
        assert ex.kinds.endswith("t")
    (event,) = await usage_events(nc, 1, settle=0.5)
    assert event.event_id == envelope.request_id
    js = nc.jetstream()
    info = await js.stream_info(subjects.USAGE_STREAM)
    assert info.state.messages == 1
    assert info.config.duplicate_window is not None
    assert info.config.duplicate_window >= 120


async def test_the_stream_is_recreated_when_it_went_missing(
    start_router: Any, nc: Client, make_envelope: Any
) -> None:
    router = await start_router(config=CONFIG)
    js = nc.jetstream()
    await js.delete_stream(subjects.USAGE_STREAM)
    ex = await send(nc, make_envelope, model=MINI)
    await ex.until_end()
    assert ex.kinds.endswith("t"), "the client's answer never waits for JetStream"
    (event,) = await usage_events(nc, 1)
    assert event.request_id == ex.envelope.request_id
    assert router.usage is not None
    assert router.usage.backlog == 0


async def test_per_model_timeout_moves_on_to_the_next_model(
    start_router: Any, nc: Client, make_envelope: Any, emulator: EmulatorServer
) -> None:
    config = {**CONFIG, "models": {HAIKU: {"timeout": 0.3, "retries": 0}}}
    await start_router(config=config)
    emulator.add_fault("delay", seconds=3, model=HAIKU)
    began = time.monotonic()
    ex = await send(nc, make_envelope, model="standard")
    await ex.until_end()
    assert time.monotonic() - began < 2
    assert (finished(ex).served_model, finished(ex).fallbacks) == (MINI, 1)
    (event,) = await usage_events(nc, 1)
    assert [(a.model, a.error_code) for a in event.attempts] == [
        (HAIKU, "timeout"),
        (MINI, None),
    ]
