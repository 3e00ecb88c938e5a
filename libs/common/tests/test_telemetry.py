from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from tests.support.servers import free_port, start_nats

from switchboard.common.bus import nats_connection
from switchboard.common.logs import add_trace_ids
from switchboard.common.ops import OpsServer, ops_server, summarize
from switchboard.common.settings import NatsSettings, ServiceSettings
from switchboard.common.telemetry import (
    extract_context,
    flush_telemetry,
    inject_headers,
    meter,
    otlp_traces_enabled,
    setup_telemetry,
    trace_id_of,
    tracer,
)

_tracer = TracerProvider().get_tracer("test")


async def test_trace_context_crosses_nats_in_headers(tmp_path: Path) -> None:
    server = start_nats(tmp_path, jetstream=False)
    try:
        async with nats_connection(NatsSettings(nats_url=server.url), name="t") as nc:
            received: asyncio.Queue[dict[str, str] | None] = asyncio.Queue()

            async def on_message(msg: object) -> None:
                received.put_nowait(msg.headers)  # type: ignore[attr-defined]

            await nc.subscribe("t.trace", cb=on_message)
            with _tracer.start_as_current_span("publisher") as span:
                await nc.publish("t.trace", b"x", headers=inject_headers({"Other": "kept"}))
            headers = await asyncio.wait_for(received.get(), 5)
        assert headers is not None
        assert headers["Other"] == "kept"
        parent = trace.get_current_span(extract_context(headers)).get_span_context()
        assert parent.trace_id == span.get_span_context().trace_id
        assert parent.span_id == span.get_span_context().span_id
        with _tracer.start_as_current_span("consumer", context=extract_context(headers)) as child:
            assert trace_id_of(child) == trace_id_of(span)
    finally:
        server.stop()


def test_no_headers_no_context() -> None:
    assert not trace.get_current_span(extract_context(None)).get_span_context().is_valid
    assert trace_id_of() is None


def test_log_lines_carry_the_current_trace_id() -> None:
    assert add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}
    with _tracer.start_as_current_span("work") as span:
        line = add_trace_ids(None, "info", {"event": "x"})
    context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")


@pytest.mark.parametrize(
    ("environ", "enabled"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, True),
    ],
)
def test_otlp_export_follows_the_standard_variables(environ: dict[str, str], enabled: bool) -> None:
    assert otlp_traces_enabled(environ) is enabled


def test_summary_of_components() -> None:
    assert summarize("s", {"a": {"status": "ok"}})[0] == 200
    code, body = summarize("s", {"a": {"status": "ok"}, "b": {"status": "degraded"}})
    assert (code, body["status"]) == (200, "degraded")
    code, body = summarize("s", {"a": {"status": "down"}, "b": {"status": "degraded"}})
    assert (code, body["status"], body["service"]) == (503, "unavailable", "s")


async def test_ops_server_serves_health_and_metrics() -> None:
    telemetry = setup_telemetry("test", environ={})
    assert setup_telemetry("again") is telemetry  # once per process
    assert not telemetry.exporting
    # Exporting nothing, spans record nothing, yet trace ids exist and travel.
    with tracer().start_as_current_span("x") as span:
        assert not span.is_recording()
        assert span.get_span_context().trace_id != 0
        assert inject_headers({})["traceparent"].split("-")[1] == trace_id_of(span)
    meter("test").create_counter("switchboard_test_ops_hits").add(2, {"kind": "x"})
    state = {"dep": {"status": "ok"}}

    async def readiness() -> dict[str, dict[str, object]]:
        if state["dep"]["status"] == "boom":
            raise RuntimeError("broken check")
        return dict(state)

    settings = ServiceSettings(ops_port=free_port())
    async with ops_server(settings, "test", readiness) as server:
        assert server is not None
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base) as client:
            live = await client.get("/health/live")
            assert live.json() == {"status": "ok", "service": "test"}
            ready = await client.get("/health/ready")
            assert ready.status_code == 200
            assert ready.json()["components"] == {"dep": {"status": "ok"}}
            state["dep"] = {"status": "down"}
            assert (await client.get("/health/ready")).status_code == 503
            state["dep"] = {"status": "boom"}
            failed = await client.get("/health/ready")
            assert failed.status_code == 503
            assert failed.json()["components"]["readiness"]["error"] == "RuntimeError"
            metrics = await client.get("/metrics?x=1")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            assert 'switchboard_test_ops_hits_total{kind="x"' in metrics.text
            assert (await client.get("/nope")).status_code == 404
            assert (await client.post("/metrics")).status_code == 405
            assert (await client.head("/health/live")).content == b""
        # A client that connects and sends nothing is dropped without harm.
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.close()
    flush_telemetry()


async def test_ops_port_zero_disables_the_listener() -> None:
    async def readiness() -> dict[str, dict[str, object]]:
        return {}

    async with ops_server(ServiceSettings(ops_port=0), "test", readiness) as server:
        assert server is None
    unstarted = OpsServer("test", readiness, host="127.0.0.1", port=1234)
    assert unstarted.port == 1234
    await unstarted.stop()
