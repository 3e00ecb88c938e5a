"""The security headers added to the start of every response."""

from __future__ import annotations

from typing import Any

from switchboard.edge.headers import security_headers


async def test_added_once_and_never_over_what_the_response_set() -> None:
    message: dict[str, Any] = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"Cache-Control", b"max-age=60"), (b"content-type", b"text/plain")],
    }
    await security_headers(message, {})  # type: ignore[arg-type]
    names = [bytes(name).lower() for name, _ in message["headers"]]
    assert len(names) == len(set(names))
    assert dict(message["headers"])[b"Cache-Control"] == b"max-age=60"
    headers = {bytes(name).lower(): value for name, value in message["headers"]}
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"x-frame-options"] == b"DENY"
    assert headers[b"strict-transport-security"].startswith(b"max-age=")
    assert headers[b"content-security-policy"] == b"default-src 'none'; frame-ancestors 'none'"
    assert headers[b"referrer-policy"] == b"no-referrer"

    body = {"type": "http.response.body", "body": b"x"}
    await security_headers(body, {})  # type: ignore[arg-type]
    assert body == {"type": "http.response.body", "body": b"x"}

    bare: dict[str, Any] = {"type": "http.response.start", "status": 204}
    await security_headers(bare, {})  # type: ignore[arg-type]
    assert {bytes(name) for name, _ in bare["headers"]} >= {b"cache-control", b"x-frame-options"}
