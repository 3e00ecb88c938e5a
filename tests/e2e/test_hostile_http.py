"""Hostile HTTP: header and CRLF injection, bodies too large, too deep or not JSON,
numbers JSON cannot carry, duplicate keys, slow clients. The edge answers each with a 4xx
in OpenAI's shape (or refuses the bytes before any application sees them), reflects
nothing a client or an upstream could use to split a response, and keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.hostile import (
    HOSTILE_MODELS,
    MODEL,
    REQUEST_ID,
    HostileStack,
    hostile_stack,
    openai_error,
)
from tests.support.rawhttp import RawResponse, raw_exchange, request_bytes
from tests.support.secrets import assert_no_secrets

pytestmark = pytest.mark.e2e

MAX_BODY = 256 * 1024
HEADER_TIMEOUT = 1.0
SLOW_CLIENTS = 200


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileStack]:
    """The whole stack, with a small body limit and short client deadlines."""
    with hostile_stack(
        tmp_path_factory.mktemp("hostile-http"),
        EDGE_MAX_BODY_BYTES=str(MAX_BODY),
        EDGE_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        EDGE_BODY_TIMEOUT="2",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def key(stack: HostileStack) -> str:
    """A key without limits."""
    return str(stack.create_key(name="http")["key"])


def _chat(content: str = "hi", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def _raw_chat(
    stack: HostileStack, key: str, body: bytes, *headers: tuple[bytes, bytes]
) -> RawResponse:
    all_headers = [
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-type", b"application/json"),
        *headers,
    ]
    request = request_bytes(
        "POST", "/v1/chat/completions", host="edge", headers=all_headers, body=body
    )
    return raw_exchange(stack.port, request)


def _no_server_error(status: int) -> None:
    assert status < 500, status


# ------------------------------------------------------------------ header injection


@pytest.mark.parametrize(
    "header",
    [
        (b"x-request-id", b"abc\nx-injected: yes"),
        (b"x-request-id", b"abc\rx-injected: yes"),
        (b"x-request-id", b"abc\x00x-injected: yes"),
        (b"traceparent", b"00-\nx-injected: yes"),
        (b"x-request-id", b"abc\r\n x-injected: yes"),  # obsolete line folding
    ],
)
def test_cr_lf_and_nul_in_request_headers_are_refused(
    stack: HostileStack, key: str, header: tuple[bytes, bytes]
) -> None:
    response = _raw_chat(stack, key, b"{}", header)
    assert response.status == 400
    assert b"\r\nx-injected" not in response.raw_head.lower()  # no header line of its own
    assert stack.healthy()


def test_client_chosen_ids_are_not_reflected(stack: HostileStack, key: str) -> None:
    """The edge names requests itself: a client's ``x-request-id`` goes nowhere, and the
    ``x-trace-id`` is 32 hex digits whatever ``traceparent`` said."""
    evil = "req_evil x-injected: yes"
    response = stack.chat(
        key,
        _chat(),
        headers={
            "x-request-id": evil,
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    )
    assert response.status_code == 200
    assert REQUEST_ID.fullmatch(response.headers["x-request-id"])
    assert evil not in str(response.headers)
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-trace-id"])
    junk = stack.chat(key, _chat(), headers={"traceparent": "00-zz-x-01 x-injected: yes"})
    assert junk.status_code == 200
    assert "injected" not in str(junk.headers)


def _model_header_is_inert(response: RawResponse) -> None:
    _no_server_error(response.status)
    assert "x-injected" not in response.header_names()
    assert b"\r\nx-injected" not in response.raw_head.lower()  # no header line of its own
    value = response.header("x-switchboard-model")
    assert value is None or value.isprintable()


@pytest.mark.parametrize("name", list(HOSTILE_MODELS))
def test_a_served_model_name_cannot_split_the_response(
    stack: HostileStack, key: str, name: str
) -> None:
    """An upstream names the model that served; the edge reflects it in a header."""
    model = HOSTILE_MODELS[name]
    for fields in ({}, {"stream": True}, {"temperature": 0}, {"temperature": 0, "stream": True}):
        body = httpx.Request("POST", "/", json=_chat(model=model, **fields)).read()
        _model_header_is_inert(_raw_chat(stack, key, body))
    assert stack.healthy()


# ------------------------------------------------------------------ bodies


def test_bodies_over_the_limit_are_413(stack: HostileStack, key: str) -> None:
    big = httpx.Request("POST", "/", json=_chat("x" * MAX_BODY)).read()
    error = openai_error(stack.chat(key, big), 413)
    assert error["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts what arrives
        yield big[:1000]
        yield big[1000:]

    streamed = stack.http.post(
        "/v1/chat/completions",
        content=chunks(),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    assert openai_error(streamed, 413)["code"] == "request_too_large"
    admin = stack.admin("POST", json={"name": "x", "owner": "y" * MAX_BODY})
    assert openai_error(admin, 413)["code"] == "request_too_large"
    assert stack.chat(key, _chat()).status_code == 200


@pytest.mark.parametrize(
    "where",
    [
        "content",  # arrays in a message's content
        "metadata",  # objects in metadata
        "tools",  # objects in a tool's parameters
        "unknown",  # a field the edge forwards untouched
    ],
)
def test_deeply_nested_json_is_400(stack: HostileStack, key: str, where: str) -> None:
    depth = 10_000
    arrays = b"[" * depth + b"]" * depth
    objects = b'{"a":' * depth + b"1" + b"}" * depth
    start = b'{"model":"' + MODEL.encode() + b'",'
    message = b'"messages":[{"role":"user","content":"hi"}]'
    bodies = {
        "content": start + b'"messages":[{"role":"user","content":' + arrays + b"}]}",
        "metadata": start + message + b',"metadata":' + objects + b"}",
        "tools": start
        + message
        + b',"tools":[{"type":"function","function":{"name":"f","parameters":'
        + objects
        + b"}}]}",
        "unknown": start + message + b',"x_nested":' + arrays + b"}",
    }
    assert openai_error(stack.chat(key, bodies[where]), 400)["type"] == "invalid_request_error"
    admin = stack.admin("POST", content=b'{"name":' + arrays + b"}")
    openai_error(admin, 400)
    assert stack.healthy()


@pytest.mark.parametrize(
    ("fragment", "status"),
    [
        (b'"seed":' + b"9" * 400, 400),
        (b'"max_tokens":' + b"9" * 30, 400),
        (b'"max_tokens":9223372036854775807,"n":128', 200),
        (b'"logit_bias":{"1":' + b"9" * 30 + b"}", 400),
        (b'"x_unknown":' + b"9" * 40, 200),  # beyond 64 bits: forwarded as a number
        (b'"temperature":NaN', 400),
        (b'"temperature":Infinity', 400),
        (b'"x_unknown":-Infinity', 400),
        (b'"temperature":1e999', 400),
        (b'"temperature":1e-400', 200),
        (b'"temperature":-0.0', 200),
        (b'"seed":1.5', 400),
    ],
)
def test_numbers(stack: HostileStack, key: str, fragment: bytes, status: int) -> None:
    body = b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"hi"}],'
    response = stack.chat(key, body + fragment + b"}")
    assert response.status_code == status, response.text
    if status >= 400:
        openai_error(response)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"m","messages":[{"role":"user","content":"\xff\xfe"}]}',
        b'{"model":"m","messages":[{"role":"user","content":"\xc0\xaf"}]}',  # overlong
        b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}',  # lone surrogate
        b"\xef\xbb\xbf" + httpx.Request("POST", "/", json=_chat()).read(),  # UTF-8 BOM
        httpx.Request("POST", "/", json=_chat()).read().decode().encode("utf-16"),
        b"",
        b"null",
        b"[]",
        b'"string"',
        b"{",
    ],
)
def test_bodies_that_are_not_json_objects_are_400(
    stack: HostileStack, key: str, body: bytes
) -> None:
    error = openai_error(stack.chat(key, body), 400)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "application/xml",
    ],
)
def test_the_content_type_does_not_change_how_the_body_is_read(
    stack: HostileStack, key: str, content_type: str | None
) -> None:
    """The body is JSON or a 400, whatever the client calls it (a key is needed anyway,
    so a browser's cross-site "simple request" gets nowhere)."""
    headers = {"authorization": f"Bearer {key}"}
    if content_type is not None:
        headers["content-type"] = content_type
    good = httpx.Request("POST", "/", json=_chat()).read()
    assert stack.http.post("/v1/chat/completions", content=good, headers=headers).status_code == 200
    form = stack.http.post("/v1/chat/completions", content=b"model=m&messages=x", headers=headers)
    openai_error(form, 400)


def test_duplicate_keys_resolve_once_for_everyone(stack: HostileStack, key: str) -> None:
    """The last of duplicate keys wins, at the edge; the router and the upstream get the
    request the edge validated, with each key once (no parser disagrees later)."""
    stack.upstream.clear()
    body = (
        b'{"model":"anthropic/claude-3.5-haiku","model":"' + MODEL.encode() + b'",'
        b'"messages":[],"messages":[{"role":"user","content":"dup"}],'
        b'"stream":true,"stream":false}'
    )
    response = stack.chat(key, body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    (call,) = stack.upstream.calls
    assert call.body["model"] == MODEL
    assert call.body["messages"] == [{"role": "user", "content": "dup"}]
    empty_last = stack.chat(
        key,
        b'{"model":"'
        + MODEL.encode()
        + b'","messages":[{"role":"user","content":"x"}],"messages":[]}',
    )
    assert openai_error(empty_last, 400)["param"] == "messages"


# ------------------------------------------------------------------ slow clients


async def _slow_client(port: int, closed: list[bool]) -> None:
    """Sends a request's headers a byte every 0.2 s; records whether the server hung up."""
    request = request_bytes("POST", "/v1/chat/completions", host="edge", body=b"{}")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    hung_up = False
    try:
        for byte in request:
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.2)  # an answer, or the end
                hung_up = True
                break
    except ConnectionError:
        hung_up = True
    finally:
        closed.append(hung_up)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _slowloris(stack: HostileStack, key: str, seconds: float) -> tuple[list[bool], list[int]]:
    closed: list[bool] = []
    clients = [asyncio.create_task(_slow_client(stack.port, closed)) for _ in range(SLOW_CLIENTS)]
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=stack.edge.url, timeout=30) as http:
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            response = await http.post(
                "/v1/chat/completions", json=_chat(), headers={"authorization": f"Bearer {key}"}
            )
            statuses.append(response.status_code)
            await asyncio.sleep(0.1)
    _done, pending = await asyncio.wait(clients, timeout=0)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return closed, statuses


def test_slow_clients_do_not_starve_others(stack: HostileStack, key: str) -> None:
    _closed, statuses = asyncio.run(_slowloris(stack, key, seconds=2 * HEADER_TIMEOUT))
    assert statuses
    assert set(statuses) == {200}
    assert stack.healthy()


def test_slow_clients_are_disconnected(stack: HostileStack, key: str) -> None:
    closed, statuses = asyncio.run(_slowloris(stack, key, seconds=HEADER_TIMEOUT + 4))
    assert set(statuses) == {200}
    assert len(closed) == SLOW_CLIENTS, "every slow client was hung up on"
    assert all(closed)


def test_no_secret_in_any_answer_or_log(stack: HostileStack) -> None:
    """Last in the module: everything it answered and logged."""
    assert_no_secrets(stack)
