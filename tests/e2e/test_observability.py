"""Observability end to end: one trace per request across every service, the metrics every
service exposes on its ops port, and the alert rules against those metrics.

A stack of its own (edge, router, metering, analytics), each process exporting its spans to
a local OTLP receiver and serving its ops listener on a free port.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.metering import start_metering
from tests.support.openrouter_emulator import EmulatorServer
from tests.support.otlp import CollectedSpan, OtlpReceiver
from tests.support.posthog_capture import CaptureServer, PostHogCapture
from tests.support.servers import ManagedProcess, free_port, start_nats, start_valkey
from tests.support.services import create_key, start_analytics, start_edge, start_router

pytestmark = pytest.mark.e2e

POSTHOG_KEY = "phc_observability"
SERVICES = ("edge", "router", "metering", "analytics")
ALERTS = Path(__file__).parents[2] / "deploy" / "prometheus" / "alerts.yaml"
CHAT_ROUTE = "/v1/chat/completions"


@dataclass
class Observed:
    """The stack, the receiver and where each service's ops listener is."""

    receiver: OtlpReceiver
    processes: dict[str, ManagedProcess]
    ops: dict[str, int]
    edge_url: str
    api_key: str

    def ops_get(self, service: str, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.ops[service]}{path}", timeout=5)

    def metrics(self, service: str) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Samples by name (``_total``, ``_bucket`` … as exposed) of one service."""
        response = self.ops_get(service, "/metrics")
        assert response.status_code == 200
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
        return samples


def _wait_ready(observed: Observed, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    pending = set(SERVICES)
    reports: dict[str, Any] = {}
    while pending and time.monotonic() < deadline:
        for service in sorted(pending):
            try:
                response = observed.ops_get(service, "/health/ready")
            except httpx.TransportError as exc:
                reports[service] = repr(exc)
                continue
            reports[service] = response.text
            if response.status_code == 200 and response.json()["status"] == "ok":
                pending.discard(service)
        time.sleep(0.2)
    logs = "".join(observed.processes[name].log()[-2000:] for name in pending)
    assert not pending, f"not ready: {reports}\n{logs}"


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    """Every service, tracing to a local receiver, each with its ops listener."""
    workdir = tmp_path_factory.mktemp("observability")
    with (
        OtlpReceiver() as receiver,
        EmulatorServer() as upstream,
        CaptureServer(PostHogCapture(api_key=POSTHOG_KEY)) as capture,
    ):
        nats = start_nats(workdir / "nats")
        valkey = start_valkey(workdir / "valkey")
        ops = {service: free_port() for service in SERVICES}
        processes: dict[str, ManagedProcess] = {}

        def env(service: str) -> dict[str, str]:
            return {**receiver.env(), "OPS_PORT": str(ops[service]), "LOG_LEVEL": "DEBUG"}

        try:
            processes["router"] = start_router(
                workdir, nats_url=nats.url, upstream=upstream.base_url, **env("router")
            )
            processes["metering"] = start_metering(
                workdir,
                nats_url=nats.url,
                clickhouse_url=f"chdb://{workdir / 'ledger'}",
                **env("metering"),
            )
            processes["analytics"] = start_analytics(
                workdir,
                nats_url=nats.url,
                posthog_host=capture.host,
                posthog_api_key=POSTHOG_KEY,
                ANALYTICS_FETCH_WAIT="0.2",
                **env("analytics"),
            )
            processes["edge"] = start_edge(
                workdir,
                nats_url=nats.url,
                redis_url=valkey.url,
                EDGE_METRICS_ON_API_PORT="true",
                **env("edge"),
            )
            stack = Observed(
                receiver,
                processes,
                ops,
                processes["edge"].url,
                create_key(valkey.url, "observability")["key"],
            )
            _wait_ready(stack)
            yield stack
        finally:
            for process in reversed(processes.values()):
                process.stop()
            valkey.stop()
            nats.stop()


@dataclass
class Call:
    trace_id: str
    request_id: str
    stream: bool


@pytest.fixture(scope="module")
def traffic(observed: Observed) -> list[Call]:
    """Three chat completions (two whole, one streamed) with GenAI request fields."""
    client = openai.OpenAI(
        base_url=f"{observed.edge_url}/v1", api_key=observed.api_key, max_retries=0, timeout=30
    )
    calls: list[Call] = []
    for stream in (False, True, False):
        raw = client.chat.completions.with_raw_response.create(
            model="openai/gpt-4o-mini",
            messages=[{"role": "user", "content": "trace me"}],
            temperature=0.3,
            max_tokens=50,
            stream=stream,
        )
        parsed: Any = raw.parse()
        if stream:
            assert list(parsed)
        else:
            assert parsed.choices[0].message.content
        calls.append(Call(raw.headers["x-trace-id"], raw.headers["x-request-id"], stream))
    return calls


def _complete(spans: list[CollectedSpan]) -> bool:
    services = {span.service for span in spans}
    kinds = {(span.service, span.kind) for span in spans}
    return {f"switchboard-{name}" for name in SERVICES} <= services and (
        "switchboard-router",
        "CLIENT",
    ) in kinds


def _one(spans: list[CollectedSpan], service: str, kind: str) -> CollectedSpan:
    found = [s for s in spans if s.service == f"switchboard-{service}" and s.kind == kind]
    assert len(found) == 1, [(s.service, s.kind, s.name) for s in spans]
    return found[0]


def test_one_connected_trace_per_request(observed: Observed, traffic: list[Call]) -> None:
    assert len({call.trace_id for call in traffic}) == len(traffic)
    for call in traffic:
        assert re.fullmatch(r"[0-9a-f]{32}", call.trace_id)
        assert call.request_id.startswith("req_")
        spans = observed.receiver.wait_for(call.trace_id, _complete)
        assert _complete(spans), [(s.service, s.kind, s.name) for s in spans]

        edge = _one(spans, "edge", "SERVER")
        assert edge.parent_span_id == ""  # the root: the client sent no traceparent
        assert edge.name == f"POST {CHAT_ROUTE}"
        assert edge.attributes["http.route"] == CHAT_ROUTE
        assert edge.attributes["http.response.status_code"] == 200
        assert edge.attributes["switchboard.request_id"] == call.request_id

        router = _one(spans, "router", "SERVER")
        assert router.parent_span_id == edge.span_id
        attributes = router.attributes
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.model"] == "openai/gpt-4o-mini"
        assert attributes["gen_ai.response.model"]
        assert attributes["gen_ai.provider.name"] == "openrouter"
        assert attributes["gen_ai.request.temperature"] == pytest.approx(0.3)
        assert attributes["gen_ai.request.max_tokens"] == 50
        assert attributes["gen_ai.usage.input_tokens"] > 0
        assert attributes["gen_ai.usage.output_tokens"] > 0
        assert attributes["switchboard.stream"] is call.stream
        assert attributes["switchboard.request_id"] == call.request_id

        attempt = _one(spans, "router", "CLIENT")
        assert attempt.parent_span_id == router.span_id
        assert attempt.attributes["gen_ai.request.model"] == "openai/gpt-4o-mini"

        for consumer in ("metering", "analytics"):
            span = _one(spans, consumer, "CONSUMER")
            assert span.parent_span_id == router.span_id
            assert span.attributes["messaging.system"] == "nats"

    # Every log line written while serving carries the trace id.
    lines = [json.loads(line) for line in observed.processes["router"].log().splitlines()]
    finished = {line["request_id"]: line for line in lines if line.get("event") == "chat.finished"}
    for call in traffic:
        assert finished[call.request_id]["trace_id"] == call.trace_id


def _value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        value
        for found, value in samples.get(name, [])
        if all(found.get(key) == wanted for key, wanted in labels.items())
    )


EXPOSED = {
    "edge": {
        "switchboard_http_requests_total",
        "switchboard_http_request_duration_seconds_bucket",
        "switchboard_http_request_duration_seconds_count",
        "switchboard_cache_hits_total",
        "switchboard_ratelimit_rejections_total",
    },
    "router": {
        "switchboard_chat_requests_total",
        "switchboard_chat_duration_seconds_bucket",
        "switchboard_chat_ttft_seconds_bucket",
        "switchboard_tokens_total",
        "switchboard_cost_usd_total",
        "switchboard_upstream_retries_total",
        "switchboard_fallbacks_total",
        "switchboard_breaker_state",
        "switchboard_usage_events_published_total",
        "switchboard_usage_events_dropped_total",
        "switchboard_usage_backlog",
    },
    "metering": {
        "switchboard_consumer_pending",
        "switchboard_consumer_redeliveries_total",
        "switchboard_insert_batch_size_bucket",
        "switchboard_insert_batch_size_count",
    },
    "analytics": {
        "switchboard_consumer_pending",
        "switchboard_consumer_redeliveries_total",
        "switchboard_posthog_batches_total",
    },
}


def _settled(observed: Observed, requests: int) -> dict[str, Any]:
    """Every service's samples once the usage events went all the way through."""
    deadline = time.monotonic() + 30
    while True:
        scraped = {service: observed.metrics(service) for service in SERVICES}
        done = (
            _value(scraped["router"], "switchboard_usage_events_published_total") >= requests
            and _value(scraped["metering"], "switchboard_insert_batch_size_sum") >= requests
            and _value(
                scraped["analytics"], "switchboard_posthog_batches_total", outcome="accepted"
            )
            >= 1
            and all("switchboard_consumer_pending" in scraped[s] for s in ("metering", "analytics"))
        )
        if done or time.monotonic() > deadline:
            return scraped
        time.sleep(0.5)


def test_every_service_exposes_its_metrics(observed: Observed, traffic: list[Call]) -> None:
    requests = len(traffic)
    scraped = _settled(observed, requests)
    for service, names in EXPOSED.items():
        missing = names - set(scraped[service])
        assert not missing, f"{service} lacks {missing}"

    edge, router = scraped["edge"], scraped["router"]
    chat = {"route": CHAT_ROUTE, "method": "POST", "status": "200"}
    assert _value(edge, "switchboard_http_requests_total", **chat) == requests
    assert _value(edge, "switchboard_http_request_duration_seconds_count", **chat) == requests
    assert _value(edge, "switchboard_cache_hits_total") == 0
    assert {labels["layer"] for labels, _ in edge["switchboard_ratelimit_rejections_total"]} == {
        "rpm",
        "tpm",
        "concurrency",
        "ip",
        "auth_guard",
        "quota",
    }

    model = "openai/gpt-4o-mini"
    assert _value(router, "switchboard_chat_requests_total", status="200") == requests
    assert _value(router, "switchboard_chat_requests_total", stream="true") == 1
    assert _value(router, "switchboard_chat_duration_seconds_count") == requests
    assert _value(router, "switchboard_chat_ttft_seconds_count") == requests
    assert _value(router, "switchboard_tokens_total", model=model, kind="prompt") > 0
    assert _value(router, "switchboard_tokens_total", model=model, kind="completion") > 0
    assert _value(router, "switchboard_cost_usd_total", model=model) > 0
    assert _value(router, "switchboard_usage_events_published_total") == requests
    assert _value(router, "switchboard_usage_events_dropped_total") == 0
    assert _value(router, "switchboard_usage_backlog") == 0
    assert _value(router, "switchboard_breaker_state", provider="openrouter", model=model) == 0

    metering, analytics = scraped["metering"], scraped["analytics"]
    assert _value(metering, "switchboard_insert_batch_size_sum") == requests
    assert _value(metering, "switchboard_consumer_pending", consumer="switchboard-metering") >= 0
    assert _value(analytics, "switchboard_posthog_batches_total", outcome="retry") == 0

    # EDGE_METRICS_ON_API_PORT=true: the API port serves them too.
    api = httpx.get(f"{observed.edge_url}/metrics", timeout=5)
    assert api.status_code == 200
    assert "switchboard_http_requests_total" in api.text


def test_readiness_reports_components(observed: Observed) -> None:
    expected = {
        "edge": {"nats", "redis", "router"},
        "router": {"nats", "catalog", "usage"},
        "metering": {"nats", "clickhouse", "consumer"},
        "analytics": {"nats", "consumer", "posthog"},
    }
    for service, components in expected.items():
        report = observed.ops_get(service, "/health/ready").json()
        assert report["service"] == service
        assert set(report["components"]) == components
        assert observed.ops_get(service, "/health/live").json()["status"] == "ok"


def _alert_metric_names() -> set[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    names: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            names |= set(re.findall(r"\bswitchboard_[a-z0-9_]+", rule["expr"]))
    return names


def test_every_metric_the_alerts_use_is_exported(observed: Observed, traffic: list[Call]) -> None:
    scraped = _settled(observed, len(traffic))
    exported = {name for samples in scraped.values() for name in samples}
    names = _alert_metric_names()
    assert names
    assert not names - exported
