"""``switchboard-edge keys …`` in-process, against the test valkey."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from tests.support.servers import ManagedProcess

from switchboard.edge.__main__ import main


@pytest.fixture
def cli(
    redis: Redis,
    valkey_server: ManagedProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Any:
    """Runs ``keys`` commands; returns (exit status, stdout, stderr)."""
    monkeypatch.setenv("REDIS_URL", valkey_server.url)
    monkeypatch.setenv("EDGE_INVALIDATION_WAIT", "0")

    def run(*argv: str) -> tuple[int, str, str]:
        status = main(["keys", *argv])
        out = capsys.readouterr()
        return status, out.out, out.err

    return run


def test_create_show_update_list_in_json_and_tables(cli: Any) -> None:
    status, out, err = cli(
        "create",
        "--name",
        "ci",
        "--owner",
        "team-a",
        "--rpm",
        "60",
        "--tpm",
        "10000",
        "--max-concurrent",
        "4",
        "--budget",
        "2.5",
        "--token-quota",
        "100000",
        "--models",
        "openai/*,anthropic/claude-3.5-haiku",
        "--tiers",
        "budget",
        "--expires-in",
        "30d",
        "--privacy-mode",
        "full",
        "--json",
    )
    assert status == 0, err
    created = json.loads(out)
    assert created["key"].startswith("sk-sb-")
    assert created["allowed_models"] == ["openai/*", "anthropic/claude-3.5-haiku"]
    assert created["expires_at"] == pytest.approx(time.time() + 30 * 86400, abs=5)
    key_id = created["id"]

    status, out, _ = cli("show", key_id)
    assert status == 0
    assert "owner:" in out
    assert "team-a" in out
    assert "$2.5" in out
    assert "privacy mode:" in out
    assert created["privacy_mode"] == "full"
    assert created["key"] not in out

    status, out, err = cli("update", key_id, "--rpm", "none", "--name", "ci-2", "--json")
    assert status == 0, err
    updated = json.loads(out)
    assert (updated["rpm"], updated["name"], updated["tpm"]) == (None, "ci-2", 10000)
    assert "applied by 0 running edge(s)" in err

    status, out, _ = cli("update", key_id, "--models", "none", "--expires-at", "2031-01-01")
    assert status == 0
    assert "models:" in out
    assert "2031-01-01 00:00:00Z" in out

    status, out, _ = cli("list")
    assert status == 0
    header, row = out.splitlines()
    assert header.split()[:4] == ["ID", "NAME", "OWNER", "STATE"]
    assert row.split()[:4] == [key_id, "ci-2", "team-a", "active"]

    status, out, _ = cli("list", "--json")
    listed = json.loads(out)
    assert listed["object"] == "list"
    assert [key["id"] for key in listed["data"]] == [key_id]
    assert "secret_hash" not in listed["data"][0]

    status, out, _ = cli("show", key_id, "--json")
    assert json.loads(out)["usage"]["tokens"] == 0


def test_create_plain_output_and_revoke(cli: Any) -> None:
    status, out, err = cli("create", "--name", "laptop", "--expires-at", "4102444800")
    assert status == 0
    assert "key:" in out
    assert "not shown again" in err
    key_id = next(line.split()[1] for line in out.splitlines() if line.startswith("id:"))
    status, out, _ = cli("revoke", key_id)
    assert (status, out.strip()) == (0, f"revoked {key_id} (laptop)")
    status, out, _ = cli("revoke", key_id, "--json")
    assert json.loads(out)["status"] == "revoked"
    status, _, err = cli("rotate", key_id)
    assert status == 1
    assert "revoked" in err


def test_rotate(cli: Any) -> None:
    _, out, _ = cli("create", "--name", "r", "--json")
    created = json.loads(out)
    status, out, err = cli("rotate", created["id"], "--grace", "90s", "--json")
    assert status == 0, err
    rotated = json.loads(out)
    assert rotated["key"] != created["key"]
    assert rotated["previous_secret_expires_at"] == pytest.approx(time.time() + 90, abs=5)
    status, out, err = cli("rotate", created["id"])
    assert status == 0
    assert "old secret until:" in out
    assert "not shown again" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("create", "--name", "x", "--rpm", "many"), "--rpm: not a valid value"),
        (("create", "--name", "x", "--rpm", "0"), "rpm"),
        (("create", "--name", "x", "--tiers", "open/ai"), "allowed_tiers"),
        (("create", "--name", "x", "--expires-in", "soon"), "not a duration"),
        (("create", "--name", "x", "--expires-at", "someday"), "not a time"),
        (("create", "--name", "x", "--privacy-mode", "everything"), "privacy_mode"),
    ],
)
def test_bad_values_are_usage_errors(cli: Any, argv: tuple[str, ...], message: str) -> None:
    status, out, err = cli(*argv)
    assert status == 2
    assert message in err
    assert out == ""


@pytest.mark.parametrize("action", ["show", "update", "revoke", "rotate"])
def test_unknown_id(cli: Any, action: str) -> None:
    status, _, err = cli(action, "key_nope")
    assert status == 1
    assert "no key with id key_nope" in err


def test_redis_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")
    monkeypatch.setenv("EDGE_REDIS_TIMEOUT", "0.5")
    assert main(["keys", "list"]) == 1
    assert "cannot reach Redis" in capsys.readouterr().err
