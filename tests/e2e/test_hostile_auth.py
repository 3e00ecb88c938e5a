"""Nobody in: every way around a key or the admin token — none, an empty or wrong one,
another scheme, a revoked or expired key, the admin token on ``/v1`` and keys on
``/admin``, a key's hash, path tricks, method-override headers — is a 401/403/404/405 in
OpenAI's shape, records no usage, and leaves no secret in any answer or log."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from switchboard.edge import auth
from switchboard.edge.keys import hash_secret
from tests.support.hostile import (
    ADMIN_TOKEN,
    MODEL,
    UPSTREAM_SECRET,
    HostileStack,
    hostile_stack,
    openai_error,
)
from tests.support.rawhttp import RawResponse
from tests.support.secrets import assert_no_secrets

pytestmark = pytest.mark.e2e

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
BODY = orjson.dumps(CHAT)
FAKE_KEY = "sk-sb-" + secrets.token_urlsafe(32)
"""A key that looks real and was never minted."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileStack]:
    """The whole stack with metering: refused requests must leave no row."""
    with hostile_stack(tmp_path_factory.mktemp("hostile-auth"), metering=True) as running:
        running.secrets.append(FAKE_KEY)
        yield running


@pytest.fixture(scope="module")
def key(stack: HostileStack) -> dict[str, Any]:
    """A valid key (``id``, ``key``)."""
    return stack.create_key(name="auth")


def _calls(stack: HostileStack, authorization: str | None) -> dict[str, RawResponse]:
    """The three ``/v1`` endpoints with ``authorization`` byte for byte (None: no header)."""
    return {
        "chat": stack.raw("POST", "/v1/chat/completions", authorization=authorization, body=BODY),
        "models": stack.raw("GET", "/v1/models", authorization=authorization),
        "usage": stack.raw("GET", "/v1/usage", authorization=authorization),
    }


def _variants(key: str) -> dict[str, str | None]:
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    return {
        "none": None,
        "empty": "",
        "scheme only": "Bearer",
        "empty token": "Bearer ",
        "blank token": "Bearer \t ",
        "basic": "Basic " + base64.b64encode(f"user:{key}".encode()).decode(),
        "token scheme": f"Token {key}",
        "no scheme": key,
        "two tokens": f"Bearer {key} {key}",
        "flipped character": f"Bearer {flipped}",
        "upper-cased": f"Bearer {key.upper()}",
        "its hash": f"Bearer {hash_secret(key)}",
        "prefix only": f"Bearer {key[:12]}",
        "never minted": f"Bearer {FAKE_KEY}",
        "another vendor's": "Bearer sk-proj-" + "a" * 48,
        "the upstream's": f"Bearer {UPSTREAM_SECRET}",
        "the admin token": f"Bearer {ADMIN_TOKEN}",
    }


def test_no_valid_key_no_entry(stack: HostileStack, key: dict[str, Any]) -> None:
    stack.upstream.clear()
    for name, authorization in _variants(key["key"]).items():
        for endpoint, response in _calls(stack, authorization).items():
            if endpoint == "usage" and authorization == f"Bearer {ADMIN_TOKEN}":
                # The admin token reads usage by design, of a key it names.
                assert openai_error(response, 400)["param"] == "key_id"
                continue
            error = openai_error(response, 401)
            assert error["type"] == "invalid_request_error", (name, endpoint)
            assert response.header("x-request-id") is None, (name, endpoint)
    assert stack.upstream.calls == []
    assert stack.admin("GET", f"/{key['id']}").json()["usage"]["tokens"] == 0


def test_revoked_expired_and_rotated_out_keys(stack: HostileStack) -> None:
    revoked, expiring, rotated = (stack.create_key(name=n) for n in ("r", "e", "o"))
    for created in (revoked, expiring, rotated):
        assert stack.chat(created["key"], CHAT).status_code == 200
    assert stack.admin("POST", f"/{revoked['id']}/revoke").status_code == 200
    patched = stack.admin("PATCH", f"/{expiring['id']}", json={"expires_at": time.time() - 1})
    assert patched.status_code == 200, patched.text
    renewed = stack.admin("POST", f"/{rotated['id']}/rotate", json={"grace_seconds": 0})
    assert renewed.status_code == 200, renewed.text
    stack.secrets.append(renewed.json()["key"])
    for old, word in ((revoked, "revoked"), (expiring, "expired"), (rotated, None)):
        for response in _calls(stack, f"Bearer {old['key']}").values():
            error = openai_error(response, 401)
            assert error["code"] == "invalid_api_key"
            assert word is None or word in error["message"]
    assert stack.chat(renewed.json()["key"], CHAT).status_code == 200


def test_admin_token_and_keys_stay_in_their_lanes(stack: HostileStack, key: dict[str, Any]) -> None:
    near_misses = [
        key["key"],
        ADMIN_TOKEN.upper(),
        ADMIN_TOKEN[:-1],
        ADMIN_TOKEN + "0",
        hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(),
        "",
    ]
    for token in near_misses:
        for method, path, body in (
            ("GET", "", None),
            ("POST", "", {"name": "intruder"}),
            ("GET", f"/{key['id']}", None),
            ("PATCH", f"/{key['id']}", {"rpm": 1}),
            ("POST", f"/{key['id']}/revoke", None),
            ("POST", f"/{key['id']}/rotate", None),
        ):
            response = stack.raw(
                method,
                f"/admin/keys{path}",
                authorization=f"Bearer {token}",
                body=orjson.dumps(body) if body else b"",
            )
            assert openai_error(response, 401)["type"] == "invalid_request_error", (method, path)
    assert stack.admin("GET", f"/{key['id']}").json()["state"] == "active"
    assert stack.chat(key["key"], CHAT).status_code == 200


def test_comparisons_never_depend_on_how_much_of_a_secret_matched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The admin token is compared in constant time; keys are never compared at all, only
    looked up by their SHA-256 (timing says nothing about a stored secret)."""
    compared: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    token = SecretStr(ADMIN_TOKEN)
    assert auth.admin_token_matches(f"Bearer {ADMIN_TOKEN}", token)
    assert not auth.admin_token_matches(f"Bearer {ADMIN_TOKEN[:-1]}x", token)
    assert len(compared) == 2
    assert hash_secret(FAKE_KEY) == hashlib.sha256(FAKE_KEY.encode()).hexdigest()


_PATHS = [
    "/v1//chat/completions",
    "//v1/chat/completions",
    "/V1/chat/completions",
    "/v1/chat/completions/",
    "/v1/./chat/completions",
    "/v1/x/../chat/completions",
    "/v1/chat/completions%00",
    "/v1/chat/completions;.json",
    "/v1/%2e%2e/admin/keys",
    "/v1/..%2fadmin/keys",
    "/v1/models/..%2f..%2fadmin%2fkeys",
    "/health/../admin/keys",
    "/health/..%2fadmin/keys",
    "/admin//keys",
    "/ADMIN/keys",
    "/admin/keys/",
    "/admin/keys%2f",
    "/admin/keys/..",
    "/admin/keys/%2e%2e",
    "/admin/keys;x",
    "/admin/keys/x/../../keys",
    "/%61dmin/keys",
    "/admin/keys?token=" + ADMIN_TOKEN,
]


@pytest.mark.parametrize("path", _PATHS)
def test_path_tricks_reach_nothing_unguarded(
    stack: HostileStack, key: dict[str, Any], path: str
) -> None:
    """Each path is sent byte for byte. Without credentials nothing answers 2xx; with an
    API key nothing of the admin API does."""
    for method in ("GET", "POST"):
        for authorization in (None, f"Bearer {key['key']}"):
            body = b'{"name":"intruder"}' if method == "POST" else b""
            response = stack.raw(method, path, authorization=authorization, body=body)
            assert response.status < 500, (method, path, response.status)
            assert response.header("x-request-id") is None, (method, path)
            if response.status >= 400:
                openai_error(response)
            admin = "admin" in path.lower() or "%61dmin" in path
            if authorization is None or admin:
                assert response.status in (400, 401, 403, 404, 405), (method, path)
    listed = stack.admin("GET").json()["data"]
    assert "intruder" not in {k["name"] for k in listed}


@pytest.mark.parametrize(
    "override", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"]
)
def test_method_override_headers_are_ignored(
    stack: HostileStack, key: dict[str, Any], override: str
) -> None:
    victim = stack.create_key(name="victim")
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    as_key = {"authorization": f"Bearer {key['key']}"}
    cases = [
        ("GET", f"/admin/keys/{victim['id']}/revoke", "POST", admin),
        ("GET", "/v1/chat/completions", "POST", as_key),
        ("POST", "/v1/models", "GET", as_key),
        ("GET", f"/admin/keys/{victim['id']}", "DELETE", admin),
        ("POST", f"/admin/keys/{victim['id']}/revoke?_method=GET", "GET", as_key),
    ]
    for method, path, wanted, headers in cases:
        response = stack.http.request(method, path, headers={**headers, override: wanted})
        if method == "GET" and path == f"/admin/keys/{victim['id']}":
            assert response.status_code == 200  # the GET it is, nothing deleted
            continue
        if path.endswith("_method=GET"):
            openai_error(response, 401)  # a POST, and an API key is no admin token
            continue
        error = openai_error(response, 405)
        assert error["code"] == "method_not_allowed"
    assert stack.admin("GET", f"/{victim['id']}").json()["state"] == "active"
    for method in ("PUT", "DELETE", "TRACE", "CONNECT"):
        response = stack.http.request(method, f"/admin/keys/{victim['id']}", headers=admin)
        assert response.status_code in (404, 405), method
        openai_error(response)


def test_nothing_refused_reached_the_ledger_and_no_secret_leaked(stack: HostileStack) -> None:
    """Last in the module: every row of the ledger is a request that was let in (and
    answered with an ``x-request-id``); every answer and log is free of secrets."""
    admitted = {
        response.headers["x-request-id"]
        for response in stack.responses
        if "x-request-id" in response.headers
    }
    assert admitted
    stack.wait_for_rows("SELECT count() FROM usage_events FINAL", [[len(admitted)]])
    rows = stack.sql("SELECT request_id FROM usage_events FINAL")
    assert {row[0] for row in rows} == admitted
    assert_no_secrets(stack)
