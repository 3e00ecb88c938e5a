"""Nothing lost: strings that break hand-built SQL (quotes, backslashes, NUL, unicode,
ClickHouse's own ``{param:Type}`` syntax, 10,000 characters) in every field that reaches
ClickHouse — the request's ``user`` and ``metadata``, model names, key names and owners,
``/v1/usage``'s parameters, erasure — are stored and read back verbatim, or refused with
a clean 400; the tables stay, and the ledger counts exactly one row per request that
reached a router or the response cache (``x-request-id``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from switchboard.common.subjects import METERING_ERASE
from tests.support.hostile import (
    ADMIN_TOKEN,
    INJECTIONS,
    MODEL,
    REQUEST_ID,
    HostileStack,
    hostile_stack,
    openai_error,
)

pytestmark = pytest.mark.e2e

TABLES = "SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileStack]:
    """The whole stack with metering on an embedded ledger."""
    with hostile_stack(tmp_path_factory.mktemp("hostile-ledger"), metering=True) as running:
        yield running


def _chat(content: str = "hi", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def _header_safe(value: str) -> bytes | None:
    """``value`` as a header value, or None when no HTTP client can send it."""
    if not value.isascii() or any(c in value for c in "\r\n\x00") or len(value) > 4000:
        return None
    return value.encode()


def _ledger_rows(stack: HostileStack, key_id: str, *columns: str) -> dict[str, list[Any]]:
    """``request_id`` → the columns, for every event of the key (key ids are ours: safe)."""
    assert key_id.replace("_", "").isalnum()
    selected = ", ".join(columns)
    query = f"SELECT request_id, {selected} FROM usage_events FINAL WHERE key_id = '{key_id}'"  # noqa: S608
    return {row[0]: row[1:] for row in stack.sql(query)}


def _wait_for_count(stack: HostileStack, key_id: str, count: int) -> None:
    assert key_id.replace("_", "").isalnum()
    query = f"SELECT count() FROM usage_events FINAL WHERE key_id = '{key_id}'"  # noqa: S608
    stack.wait_for_rows(query, [[count]])


def test_injections_in_requests_are_stored_verbatim(stack: HostileStack) -> None:
    tables = stack.sql(TABLES)
    assert ["usage_events"] in tables
    key = stack.create_key(name="ledger", owner="team-ledger")
    sent: dict[str, tuple[str | None, str, bool]] = {}
    """request id → (the ``user`` sent, the model named, answered from the cache)"""
    for index, value in enumerate(INJECTIONS):
        header = _header_safe(value)
        fake_id = {"x-request-id": header.decode("latin-1")} if header else {}
        metadata = {"note": value, value[:64]: "key"}
        requests = [
            (_chat(user=value, metadata=metadata), value, MODEL),
            (_chat(value, model=value), None, value),  # an unknown model: the router's 404
            (_chat(f"cache {index}", user=value, temperature=0), value, MODEL),  # a miss,
            (_chat(f"cache {index}", user=value, temperature=0), value, MODEL),  # then a hit
        ]
        for body, user, model in requests:
            response = stack.chat(key["key"], body, headers=fake_id)
            assert response.status_code in (200, 404), response.text
            if response.status_code == 404:
                assert openai_error(response)["code"] == "model_not_found"
            request_id = response.headers["x-request-id"]
            assert REQUEST_ID.fullmatch(request_id), request_id  # a client's is ignored
            hit = response.headers["x-switchboard-cache"] == "hit"
            sent[request_id] = (user, model, hit)
    assert sum(hit for _, _, hit in sent.values()) == len(INJECTIONS)

    _wait_for_count(stack, key["id"], len(sent))
    rows = _ledger_rows(stack, key["id"], "end_user", "requested_model", "cache_hit", "key_name")
    assert set(rows) == set(sent)
    for request_id, (user, model, hit) in sent.items():
        assert rows[request_id] == [user or "", model, hit, "ledger"], request_id
    assert stack.sql(TABLES) == tables
    assert stack.sql("SELECT count() FROM usage_rejects") == [[0]]
    assert stack.healthy()


def test_injections_in_key_names_and_owners(stack: HostileStack) -> None:
    stored = 0
    for value in INJECTIONS:
        response = stack.admin("POST", json={"name": value, "owner": value})
        if len(value) > 200:  # the admin API's limit: a clean 400 naming the field
            assert openai_error(response, 400)["param"] in ("name", "owner")
            continue
        assert response.status_code == 201, response.text
        created = response.json()
        stack.secrets.append(created["key"])
        assert (created["name"], created["owner"]) == (value, value)
        shown = stack.admin("GET", f"/{created['id']}").json()
        assert (shown["name"], shown["owner"]) == (value, value)
        answer = stack.chat(created["key"], _chat())
        assert answer.status_code == 200, answer.text
        _wait_for_count(stack, created["id"], 1)
        assert list(_ledger_rows(stack, created["id"], "key_name").values()) == [[value]]
        stored += 1
    assert stored == len(INJECTIONS) - 1
    assert stack.sql("SELECT count() FROM usage_rejects") == [[0]]


@pytest.mark.parametrize("parameter", ["start_date", "end_date", "key_id"])
def test_usage_parameters_are_values_not_sql(stack: HostileStack, parameter: str) -> None:
    key = stack.create_key(name="usage-reader")
    assert stack.chat(key["key"], _chat()).status_code == 200
    _wait_for_count(stack, key["id"], 1)
    own = {"authorization": f"Bearer {key['key']}"}
    for value in (*INJECTIONS, f"{key['id']}' OR '1'='1", "2024-01-01'; --"):
        by_key = stack.http.get("/v1/usage", params={parameter: value}, headers=own)
        by_admin = stack.http.get(
            "/v1/usage", params={parameter: value, "key_id": key["id"]}, headers=ADMIN
        )
        if parameter != "key_id":  # not a date: 400 naming it, for both callers
            for response in (by_key, by_admin):
                error = openai_error(response, 400)
                assert (error["param"], error["code"]) == (parameter, "invalid_value")
            continue
        if len(value) > 256:
            assert openai_error(by_key, 400)["param"] == "key_id"
            continue
        assert openai_error(by_key, 403)["code"] == "not_your_key"
        # The admin token reads any key: this one has no usage, named verbatim.
        other = stack.http.get("/v1/usage", params={"key_id": value}, headers=ADMIN)
        assert other.status_code == 200, other.text
        assert other.json()["key_id"] == value
        assert other.json()["totals"]["requests"] == 0
    mine = stack.http.get("/v1/usage", params={"group_by": "'; DROP TABLE x; --"}, headers=own)
    assert mine.status_code == 200, mine.text  # unknown parameters are ignored
    assert mine.json()["totals"]["requests"] == 1


def test_erasure_of_an_injected_end_user_erases_only_it(stack: HostileStack) -> None:
    key = stack.create_key(name="erasure")
    # Each end user names itself: erasure reaches an end user's rows of every key.
    users = [f"{INJECTIONS[0]} {key['id']}", f"{INJECTIONS[1]} {key['id']}", key["id"]]
    for user in users:
        for _ in range(2):
            assert stack.chat(key["key"], _chat(user=user)).status_code == 200
    _wait_for_count(stack, key["id"], 6)
    tables = stack.sql(TABLES)

    async def erase(nc: Any) -> dict[str, Any]:
        body = orjson.dumps({"end_user": users[0]})
        reply = await nc.request(METERING_ERASE, body, timeout=60)
        result: dict[str, Any] = orjson.loads(reply.data)
        return result

    result = stack.on_nats(erase)
    assert result["events"] == 2
    rows = _ledger_rows(stack, key["id"], "end_user")
    assert sorted(row[0] for row in rows.values()) == sorted(users[1:] * 2)
    assert stack.sql(TABLES) == tables
