"""The PostHog capture endpoint: what the SDK sends arrives; outages behave as told."""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from posthog import Posthog

from tests.support.posthog_capture import CaptureServer, PostHogCapture, running_capture

KEY = "phc_captureTestKey"


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    """A capture endpoint requiring ``KEY``."""
    with running_capture(api_key=KEY) as server:
        yield server


def _batch(*uuids: str, api_key: str = KEY) -> dict[str, Any]:
    events = [{"event": "e", "uuid": u, "distinct_id": "d", "properties": {}} for u in uuids]
    return {"api_key": api_key, "batch": events}


def _post(capture: CaptureServer, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{capture.host}{path}", json=body, timeout=5, **kwargs)


def test_the_real_sdk_posts_gzipped_batches(capture: CaptureServer) -> None:
    errors: list[Exception] = []
    client = Posthog(
        KEY, host=capture.host, gzip=True, max_retries=0, on_error=lambda e, _: errors.append(e)
    )
    try:
        client.capture("$ai_generation", distinct_id="u1", properties={"$ai_model": "m"})
        client.capture("$ai_generation", distinct_id="u2")
        client.flush(timeout_seconds=None)
    finally:
        client.shutdown()
    assert errors == []
    [request] = capture.requests
    assert (request.path, request.compressed, request.api_key, request.status) == (
        "/batch/",
        True,
        KEY,
        200,
    )
    assert [e["distinct_id"] for e in capture.events] == ["u1", "u2"]
    assert capture.events[0]["properties"]["$ai_model"] == "m"


def test_single_events_and_compression_variants(capture: CaptureServer) -> None:
    single = {"api_key": KEY, "event": "one", "uuid": "u-1", "properties": {}}
    assert _post(capture, "/i/v0/e/", single).json() == {"status": "Ok"}
    deflated = zlib.compress(json.dumps(_batch("u-2")).encode())
    response = httpx.post(
        f"{capture.host}/batch/",
        content=deflated,
        headers={"Content-Encoding": "deflate"},
        timeout=5,
    )
    assert response.status_code == 200
    gzipped = gzip.compress(json.dumps(_batch("u-3")).encode())
    response = httpx.post(f"{capture.host}/batch/?compression=gzip-js", content=gzipped, timeout=5)
    assert response.status_code == 200
    assert [e["uuid"] for e in capture.events] == ["u-1", "u-2", "u-3"]
    assert [r.compressed for r in capture.requests] == [False, True, True]


def test_bad_requests(capture: CaptureServer) -> None:
    assert _post(capture, "/nowhere", {}).status_code == 404
    assert httpx.get(f"{capture.host}/batch/", timeout=5).status_code == 405
    assert _post(capture, "/batch/", {"nothing": 1}).status_code == 400
    assert _post(capture, "/batch/", {"batch": [{"no": "name"}]}).status_code == 400
    assert httpx.post(f"{capture.host}/batch/", content=b"{", timeout=5).status_code == 400
    assert _post(capture, "/batch/", _batch("u", api_key="phc_other")).status_code == 401
    assert capture.events == []


def test_fail_for_a_number_of_requests(capture: CaptureServer) -> None:
    capture.fail(502, times=2)
    statuses = [_post(capture, "/batch/", _batch(f"u{i}")).status_code for i in range(3)]
    assert statuses == [502, 502, 200]
    assert [e["uuid"] for e in capture.events] == ["u2"]
    assert capture.mode == "accept"


def test_hang_until_released(capture: CaptureServer) -> None:
    capture.hang()
    answers: list[int] = []
    thread = threading.Thread(
        target=lambda: answers.append(_post(capture, "/batch/", _batch("h")).status_code)
    )
    thread.start()
    capture.wait_for_requests(1)
    time.sleep(0.1)
    assert answers == [] and capture.events == []
    capture.accept()
    thread.join(5)
    assert answers == [200]
    assert [e["uuid"] for e in capture.events] == ["h"]


def test_hang_with_ingest_records_before_the_client_gives_up(capture: CaptureServer) -> None:
    capture.hang(ingest=True)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{capture.host}/batch/", json=_batch("late"), timeout=0.3)
    assert [e["uuid"] for e in capture.events] == ["late"]
    assert capture.requests[0].status == 0


def test_a_stop_answers_hanging_requests_and_a_start_serves_the_same_port(
    capture: CaptureServer,
) -> None:
    capture.hang()
    answers: list[int] = []
    thread = threading.Thread(
        target=lambda: answers.append(_post(capture, "/batch/", _batch("s")).status_code)
    )
    thread.start()
    capture.wait_for_requests(1)
    port = capture.port
    capture.stop()
    thread.join(5)
    assert answers == [503]
    with pytest.raises(httpx.ConnectError):
        _post(capture, "/batch/", _batch("refused"))
    capture.start()
    assert capture.port == port
    capture.accept()
    assert _post(capture, "/batch/", _batch("back")).status_code == 200
    assert [e["uuid"] for e in capture.events] == ["back"]


def test_rejected_uuids_get_400(capture: CaptureServer) -> None:
    capture.reject({"bad"})
    assert _post(capture, "/batch/", _batch("good", "bad")).status_code == 400
    assert _post(capture, "/batch/", _batch("good")).status_code == 200
    assert [e["uuid"] for e in capture.events] == ["good"]


def test_unique_events_keep_one_per_uuid(capture: CaptureServer) -> None:
    _post(capture, "/batch/", _batch("a", "b"))
    _post(capture, "/batch/", _batch("a"))
    assert len(capture.events) == 3
    assert list(capture.unique_events()) == ["a", "b"]
    assert len(capture.wait_for_events(3)) == 3
    with pytest.raises(TimeoutError):
        capture.wait_for_events(4, timeout=0.1)
    with pytest.raises(TimeoutError):
        capture.wait_for_requests(3, timeout=0.1)


def test_the_control_api(capture: CaptureServer) -> None:
    base = f"{capture.host}/_capture"
    _post(capture, "/batch/", _batch("c"))
    assert [e["uuid"] for e in httpx.get(f"{base}/events", timeout=5).json()["data"]] == ["c"]
    assert httpx.get(f"{base}/requests", timeout=5).json()["data"][0]["status"] == 200
    assert httpx.post(f"{base}/mode", json={"mode": "fail", "status": 500}, timeout=5).json() == {
        "mode": "fail"
    }
    assert _post(capture, "/batch/", _batch("x")).status_code == 500
    assert httpx.post(f"{base}/mode", json={"mode": "hang"}, timeout=5).json() == {"mode": "hang"}
    assert httpx.post(f"{base}/mode", json={"mode": "accept"}, timeout=5).json() == {
        "mode": "accept"
    }
    assert httpx.post(f"{base}/mode", json={"mode": "nope"}, timeout=5).status_code == 400
    assert httpx.delete(f"{base}/events", timeout=5).json() == {"cleared": True}
    assert capture.events == [] and capture.requests == []
    assert httpx.get(f"{base}/other", timeout=5).status_code == 404


def test_starting_twice_is_an_error() -> None:
    server = CaptureServer(PostHogCapture())
    with server, pytest.raises(RuntimeError, match="already running"):
        server.start()
    server.stop()  # stopping a stopped server is harmless
