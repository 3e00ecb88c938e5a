"""The key store against a real valkey-server, and the key models."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from switchboard.edge.keymodels import KeyPatch, KeyPolicy, KeyRecord, KeySpec, month_of
from switchboard.edge.keys import KEY_PREFIX, KeyRevokedError, KeyStore, hash_secret


async def test_create_stores_only_a_hash(redis: Redis) -> None:
    store = KeyStore(redis, invalidation_wait=0)
    created = await store.create(KeySpec(name="ci", owner="team-a", rpm=10))
    assert created.key.startswith(KEY_PREFIX)
    assert len(created.key) == len(KEY_PREFIX) + 43
    assert created.id.startswith("key_")
    assert created.state == "active"
    dump = {key: await redis.get(key) for key in await redis.keys("sb:secret:*")}
    assert dump == {f"sb:secret:{hash_secret(created.key)}": created.id}
    stored = await redis.get(f"sb:keyrec:{created.id}")
    assert stored is not None
    assert created.key not in stored
    record = await store.get(created.id)
    assert record is not None
    assert (record.name, record.owner, record.rpm) == ("ci", "team-a", 10)
    assert "secret_hash" not in record.view().model_dump()
    assert await store.get("key_nope") is None


async def test_list_in_creation_order(redis: Redis) -> None:
    store = KeyStore(redis, invalidation_wait=0)
    ids = [(await store.create(KeySpec(name=f"k{n}"))).id for n in range(3)]
    assert [record.id for record in await store.list()] == ids


async def test_update_changes_only_given_fields(redis: Redis) -> None:
    store = KeyStore(redis, invalidation_wait=0)
    created = await store.create(
        KeySpec(name="k", rpm=10, tpm=1000, allowed_models=["openai/*"], expires_at=2e9)
    )
    patch = KeyPatch.model_validate({"rpm": 20, "tpm": None, "allowed_models": None})
    change = await store.update(created.id, patch)
    assert change is not None
    assert change.edges == 0  # nobody listens in this test
    record = change.record
    assert (record.rpm, record.tpm, record.allowed_models) == (20, None, [])
    assert record.expires_at == 2e9
    assert record.name == "k"
    assert record.updated_at is not None
    assert KeyPatch.model_validate({"name": None}).changes() == {}
    assert await store.update("key_nope", patch) is None
    with pytest.raises(ValidationError):
        KeyPatch.model_validate({"rpm": 0})
    with pytest.raises(ValidationError):
        KeyPatch.model_validate({"allowed_tiers": ["openai/*"]})


async def test_revoke_is_idempotent(redis: Redis) -> None:
    store = KeyStore(redis, invalidation_wait=0)
    created = await store.create(KeySpec(name="k"))
    first = await store.revoke(created.id)
    second = await store.revoke(created.id)
    assert first is not None
    assert second is not None
    assert first.record.status == second.record.status == "revoked"
    assert first.record.revoked_at == second.record.revoked_at
    assert await store.revoke("key_nope") is None
    with pytest.raises(KeyRevokedError):
        await store.rotate(created.id, grace=10)


async def test_rotate_keeps_the_old_secret_for_the_grace(redis: Redis) -> None:
    store = KeyStore(redis, invalidation_wait=0)
    created = await store.create(KeySpec(name="k"))
    change = await store.rotate(created.id, grace=60)
    assert change is not None
    assert change.created is not None
    new = change.created
    assert new.key != created.key
    assert new.id == created.id
    assert new.previous_secret_expires_at == pytest.approx(time.time() + 60, abs=2)
    assert 59 < await redis.ttl(f"sb:secret:{hash_secret(created.key)}") <= 60
    assert await redis.ttl(f"sb:secret:{hash_secret(new.key)}") == -1
    # A rotation without grace ends the old secret at once.
    again = await store.rotate(created.id, grace=0)
    assert again is not None
    assert again.created is not None
    assert await redis.exists(f"sb:secret:{hash_secret(new.key)}") == 0
    assert await store.rotate("key_nope", grace=0) is None


async def test_usage_of_a_month(redis: Redis) -> None:
    store = KeyStore(redis, invalidation_wait=0)
    await redis.set("sb:quota:usd:key_u:2030-01", "0.25")
    await redis.set("sb:quota:tok:key_u:2030-01", "1234")
    usage = await store.usage("key_u", "2030-01")
    assert (usage.month, usage.cost_usd, usage.tokens) == ("2030-01", 0.25, 1234)
    now = await store.usage("key_u")
    assert (now.month, now.cost_usd, now.tokens) == (month_of(time.time()), 0, 0)


@pytest.mark.parametrize(
    ("policy", "model", "allowed"),
    [
        (KeyPolicy(), "anything/at-all", True),
        (KeyPolicy(), "premium", True),
        (KeyPolicy(allowed_models=["openai/*"]), "openai/gpt-4o-mini", True),
        (KeyPolicy(allowed_models=["openai/*"]), "anthropic/claude-3.5-haiku", False),
        (KeyPolicy(allowed_models=["openai/*"]), "auto", False),
        (KeyPolicy(allowed_models=["*"]), "budget", False),
        (KeyPolicy(allowed_models=["meta-llama/llama-3.1-8b-instruct"]), "meta-llama/x", False),
        (KeyPolicy(allowed_tiers=["budget"]), "budget", True),
        (KeyPolicy(allowed_tiers=["budget"]), "premium", False),
        (KeyPolicy(allowed_tiers=["budget"]), "openai/gpt-4o-mini", False),
        (KeyPolicy(allowed_tiers=["fast"]), "fast", True),  # an alias of the routing config
        (KeyPolicy(allowed_models=["fa*"]), "fast", True),
    ],
)
def test_model_restrictions(policy: KeyPolicy, model: str, allowed: bool) -> None:
    assert policy.allows(model) is allowed


def test_state_reports_expiry() -> None:
    created = time.time()
    spec = KeySpec(name="k", expires_at=created + 10)

    record = KeyRecord(**spec.model_dump(), id="key_1", created_at=created)
    assert record.state(created) == "active"
    assert record.state(created + 11) == "expired"
    assert record.model_copy(update={"status": "revoked"}).state(created) == "revoked"


def test_identity_carries_restrictions_to_the_router() -> None:
    assert KeyPolicy().identity("key_1", "n").restricted is False
    identity = KeyPolicy(allowed_models=["openai/*"]).identity("key_1", "n")
    assert (identity.allowed_models, identity.allowed_tiers) == (["openai/*"], [])
    assert identity.restricted


def test_identity_carries_owner_and_privacy_mode_for_analytics() -> None:
    identity = KeyPolicy(owner="team-a", privacy_mode="full").identity("key_1", "n")
    assert (identity.owner, identity.privacy_mode) == ("team-a", "full")
    assert KeyPolicy().identity("key_1", "n").privacy_mode is None
