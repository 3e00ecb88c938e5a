"""The key lifecycle end to end: admin API, ``switchboard keys``, propagation to every edge."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.gatekeeping import (
    ADMIN_TOKEN,
    MODEL,
    GatedStack,
    chat_body,
    error_of,
    gated_stack,
    poll,
)

pytestmark = pytest.mark.e2e

PROPAGATION_SLA = 1.0
"""Seconds within which every edge applies a key change (issue 3)."""


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatedStack]:
    """Edge 0 serves the admin API; edge 1 has no admin token. Caches would hold keys for
    a minute without the invalidation events."""
    with gated_stack(
        tmp_path_factory.mktemp("keys"), EDGE_KEY_CACHE_TTL="60", EDGE_ROTATE_GRACE="7200"
    ) as stack:
        stack.start_edge(SWITCHBOARD_ADMIN_TOKEN="")
        yield stack


def _ok(gated: GatedStack, key: str, edge: int) -> bool:
    return gated.chat(key, edge=edge).status_code == 200


def test_admin_api_lifecycle(gated: GatedStack) -> None:
    created = gated.create_key(
        name="svc", owner="team-a", rpm=100, allowed_models=["openai/*"], monthly_budget_usd=5
    )
    assert created["key"].startswith("sk-sb-")
    assert created["state"] == "active"
    key_id = created["id"]
    assert "secret_hash" not in created

    listed = gated.admin("GET")
    assert listed.status_code == 200
    assert key_id in [key["id"] for key in listed.json()["data"]]
    assert all("key" not in key for key in listed.json()["data"])

    assert _ok(gated, created["key"], 0)
    shown = gated.admin("GET", f"/{key_id}")
    assert shown.status_code == 200
    assert shown.json()["owner"] == "team-a"
    assert shown.json()["usage"]["tokens"] > 0
    assert shown.json()["usage"]["cost_usd"] > 0

    updated = gated.admin("PATCH", f"/{key_id}", json={"rpm": None, "name": "svc-2"})
    assert updated.status_code == 200, updated.text
    assert (updated.json()["rpm"], updated.json()["name"]) == (None, "svc-2")
    assert updated.json()["monthly_budget_usd"] == 5

    rotated = gated.admin("POST", f"/{key_id}/rotate", json={"grace_seconds": 0})
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["key"] != created["key"]
    gated.secrets.append(rotated.json()["key"])
    assert gated.chat(created["key"]).status_code == 401
    assert _ok(gated, rotated.json()["key"], 0)

    revoked = gated.admin("POST", f"/{key_id}/revoke")
    assert revoked.status_code == 200
    assert revoked.json()["status"] == revoked.json()["state"] == "revoked"
    error = error_of(gated.chat(rotated.json()["key"]), 401)
    assert error["code"] == "invalid_api_key"
    assert "revoked" in error["message"]
    rotate_revoked = error_of(gated.admin("POST", f"/{key_id}/rotate"), 400)
    assert rotate_revoked["code"] == "key_revoked"


def test_admin_api_errors_are_openai_shaped(gated: GatedStack) -> None:
    for method, path in (
        ("GET", "/key_nope"),
        ("PATCH", "/key_nope"),
        ("POST", "/key_nope/revoke"),
    ):
        kwargs: dict[str, Any] = {"json": {}} if method == "PATCH" else {}
        error = error_of(gated.admin(method, path, **kwargs), 404)
        assert error["code"] == "key_not_found"
    bad = error_of(gated.admin("POST", json={"name": "x", "rpm": 0}), 400)
    assert bad["type"] == "invalid_request_error"
    assert bad["param"] == "rpm"
    unknown_field = error_of(gated.admin("POST", json={"name": "x", "colour": "red"}), 400)
    assert unknown_field["type"] == "invalid_request_error"
    tiers = error_of(gated.admin("POST", json={"name": "x", "allowed_tiers": ["not/a-tier"]}), 400)
    assert tiers["param"] is not None


def test_admin_api_needs_the_token(gated: GatedStack) -> None:
    for token in (None, "wrong-token", ADMIN_TOKEN[:-1]):
        error = error_of(gated.admin("GET", token=token), 401)
        assert error["code"] == "invalid_api_key"
        assert (token or "none") not in error["message"]
    error = error_of(gated.admin("GET", edge=1), 404)  # no admin token: no admin API
    assert error["code"] == "unknown_url"
    assert error_of(gated.admin("POST", edge=1, json={"name": "x"}), 404)


def test_openapi_documents_the_admin_api(gated: GatedStack) -> None:
    schema = httpx.get(f"{gated.edges[0].url}/openapi/openapi.json", timeout=10).json()
    paths = schema["paths"]
    assert set(paths["/admin/keys"]) == {"get", "post"}
    assert set(paths["/admin/keys/{key_id}"]) == {"get", "patch"}
    assert "post" in paths["/admin/keys/{key_id}/rotate"]
    assert "post" in paths["/admin/keys/{key_id}/revoke"]
    assert paths["/admin/keys"]["post"]["security"] == [{"AdminToken": []}]
    assert schema["components"]["securitySchemes"]["AdminToken"]["scheme"] == "bearer"
    spec = schema["components"]["schemas"]["KeySpec"]["properties"]
    assert {"rpm", "tpm", "max_concurrent", "monthly_budget_usd", "allowed_models"} <= set(spec)


def test_revoke_reaches_every_edge_within_a_second(gated: GatedStack) -> None:
    created = gated.create_key()
    assert _ok(gated, created["key"], 0)
    assert _ok(gated, created["key"], 1)  # now cached on both edges (for 60 s)
    started = time.monotonic()
    assert gated.admin("POST", f"/{created['id']}/revoke").status_code == 200
    delays = [
        started
        + poll(lambda edge=edge: gated.chat(created["key"], edge=edge).status_code == 401)
        - started
        for edge in (0, 1)
    ]
    assert max(delays) < PROPAGATION_SLA, delays


def test_update_reaches_every_edge_within_a_second(gated: GatedStack) -> None:
    created = gated.create_key(rpm=1000)
    assert gated.chat(created["key"], edge=1).headers["x-ratelimit-limit-requests"] == "1000"
    started = time.monotonic()
    assert gated.admin("PATCH", f"/{created['id']}", json={"rpm": 7}).status_code == 200

    def applied() -> bool:
        response = gated.chat(created["key"], edge=1)
        return response.headers.get("x-ratelimit-limit-requests") == "7"

    poll(applied)
    assert time.monotonic() - started < PROPAGATION_SLA
    restricted = gated.admin("PATCH", f"/{created['id']}", json={"allowed_models": ["meta/*"]})
    assert restricted.status_code == 200
    error = error_of(gated.chat(created["key"], edge=1), 403)
    assert (error["type"], error["code"]) == ("permission_error", "model_not_allowed")


def test_rotate_reaches_every_edge_and_honours_the_grace(gated: GatedStack) -> None:
    created = gated.create_key()
    old = created["key"]
    assert _ok(gated, old, 0)
    assert _ok(gated, old, 1)
    started = time.monotonic()
    rotated = gated.admin("POST", f"/{created['id']}/rotate", json={"grace_seconds": 1.5})
    assert rotated.status_code == 200
    new = rotated.json()["key"]
    gated.secrets.append(new)
    assert rotated.json()["previous_secret_expires_at"] == pytest.approx(time.time() + 1.5, abs=1)
    # Both secrets work on both edges during the grace...
    for edge in (0, 1):
        assert _ok(gated, new, edge)
        assert _ok(gated, old, edge)
    assert time.monotonic() - started < 1.5
    # ...then the old one stops everywhere, the new one keeps working.
    poll(lambda: gated.chat(old, edge=1).status_code == 401, timeout=5)
    assert time.monotonic() - started < 1.5 + PROPAGATION_SLA
    assert gated.chat(old, edge=0).status_code == 401
    assert _ok(gated, new, 1)
    # Without a grace the old secret stops at once, on every edge.
    again = gated.admin("POST", f"/{created['id']}/rotate", json={"grace_seconds": 0}).json()
    gated.secrets.append(again["key"])
    started = time.monotonic()
    poll(lambda: gated.chat(new, edge=1).status_code == 401)
    assert time.monotonic() - started < PROPAGATION_SLA
    assert _ok(gated, again["key"], 1)


def test_default_rotation_grace_is_the_setting(gated: GatedStack) -> None:
    created = gated.create_key()
    rotated = gated.admin("POST", f"/{created['id']}/rotate").json()
    gated.secrets.append(rotated["key"])
    assert rotated["previous_secret_expires_at"] == pytest.approx(time.time() + 7200, abs=5)
    assert _ok(gated, created["key"], 1)


def test_expired_key_says_so(gated: GatedStack) -> None:
    created = gated.create_key(expires_at=time.time() + 0.5)
    assert _ok(gated, created["key"], 1)
    poll(lambda: gated.chat(created["key"], edge=1).status_code == 401, timeout=3)
    error = error_of(gated.chat(created["key"], edge=0), 401)
    assert "expired" in error["message"]
    assert gated.admin("GET", f"/{created['id']}").json()["state"] == "expired"


def test_model_restrictions(gated: GatedStack) -> None:
    created = gated.create_key(allowed_models=["openai/*"], allowed_tiers=["budget"])
    client = openai.OpenAI(base_url=gated.url(1), api_key=created["key"], max_retries=0)
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(
            model="anthropic/claude-3.5-haiku", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_allowed"
    for model in ("premium", "auto"):
        response = gated.chat(created["key"], chat_body(model=model))
        assert error_of(response, 403)["param"] == "model"
    openrouter_fallbacks = chat_body(models=[MODEL, "anthropic/claude-3.5-haiku"])
    assert gated.chat(created["key"], openrouter_fallbacks).status_code == 403


def _json(result: Any) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_switchboard_keys_cli(gated: GatedStack) -> None:
    created = _json(
        gated.switchboard(
            "keys", "create", "--name", "cli", "--owner", "ops", "--rpm", "30", "--json"
        )
    )
    gated.secrets.append(created["key"])
    key_id = created["id"]
    assert _ok(gated, created["key"], 1)

    table = gated.switchboard("keys", "list")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:4] == ["ID", "NAME", "OWNER", "STATE"]
    assert any(row.split()[:4] == [key_id, "cli", "ops", "active"] for row in rows)
    assert created["key"] not in table.stdout
    assert key_id in [
        key["id"] for key in _json(gated.switchboard("keys", "list", "--json"))["data"]
    ]

    shown = gated.switchboard("keys", "show", key_id)
    assert shown.returncode == 0
    assert "rpm:" in shown.stdout
    assert _json(gated.switchboard("keys", "show", key_id, "--json"))["usage"]["tokens"] > 0

    updated = gated.switchboard("keys", "update", key_id, "--rpm", "5", "--models", "openai/*")
    assert updated.returncode == 0, updated.stderr
    assert "applied by 2 running edge(s)" in updated.stderr
    assert gated.chat(created["key"], edge=1).headers["x-ratelimit-limit-requests"] == "5"

    rotated = _json(gated.switchboard("keys", "rotate", key_id, "--grace", "0s", "--json"))
    gated.secrets.append(rotated["key"])
    assert gated.chat(created["key"], edge=1).status_code == 401  # confirmed before exit
    assert _ok(gated, rotated["key"], 1)
    plain = gated.switchboard("keys", "rotate", key_id, "--grace", "0")
    assert plain.returncode == 0
    latest = next(line.split()[1] for line in plain.stdout.splitlines() if line.startswith("key:"))
    gated.secrets.append(latest)

    revoked = gated.switchboard("keys", "revoke", key_id)
    assert (revoked.returncode, revoked.stdout.strip()) == (0, f"revoked {key_id} (cli)")
    assert gated.chat(latest, edge=1).status_code == 401  # confirmed before exit
    missing = gated.switchboard("keys", "show", "key_nope")
    assert missing.returncode == 1


def test_no_secret_in_logs_or_error_bodies(gated: GatedStack) -> None:
    """Last in the module: every secret minted above, searched for in every log."""
    assert len(gated.secrets) > 10
    wrong = "sk-sb-" + "Z" * 43
    body = gated.chat(wrong).text
    assert wrong not in body
    assert "Z" * 10 not in body
    logs = gated.logs()
    assert "auth.failed" in logs
    for secret in [*gated.secrets, wrong, ADMIN_TOKEN]:
        assert secret not in logs
        assert secret[6:30] not in logs
