"""What an API key is: its record, what an operator may set, and what is shown back.

These models are the admin API's request and response bodies (and so its OpenAPI schema),
the ``keys`` command's ``--json`` output, and the JSON stored in Redis. None of them ever
holds a secret except :class:`CreatedKey`, which exists only to be shown once.
"""

from __future__ import annotations

import time
from fnmatch import fnmatchcase
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from switchboard.common.events import PrivacyMode
from switchboard.common.wire import KeyIdentity

__all__ = [
    "TIERS",
    "CreatedKey",
    "KeyList",
    "KeyPatch",
    "KeyPolicy",
    "KeyRecord",
    "KeySpec",
    "KeyUsage",
    "KeyView",
    "RotateRequest",
    "Tier",
    "month_of",
]

TIERS: frozenset[str] = frozenset(("premium", "standard", "budget", "auto"))
"""The built-in tier aliases: model names that stand for a tier rather than one model."""
Tier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
"""A tier alias: one of :data:`TIERS` or an alias of the router's routing configuration."""

ModelPattern = str


def month_of(unix: float) -> str:
    """The UTC calendar month of a Unix time, ``YYYY-MM``: the period of monthly quotas."""
    return time.strftime("%Y-%m", time.gmtime(unix))


class KeyPolicy(BaseModel):
    """What an operator decides about a key. ``None`` means "not limited"."""

    model_config = ConfigDict(extra="forbid")

    owner: str | None = Field(default=None, max_length=200, description="Who the key is for.")
    expires_at: float | None = Field(
        default=None, gt=0, description="Unix time after which the key stops working."
    )
    allowed_models: list[ModelPattern] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "Model ids or glob patterns (`openai/*`) the key may use. Empty, together with "
            "an empty `allowed_tiers`: every model."
        ),
    )
    allowed_tiers: list[Tier] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Tier aliases the key may name as its `model`: `premium`, `standard`, `budget`, "
            "`auto`, or an alias of the routing configuration."
        ),
    )
    rpm: int | None = Field(default=None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(default=None, ge=1, description="Tokens per minute.")
    max_concurrent: int | None = Field(default=None, ge=1, description="Requests in flight.")
    monthly_budget_usd: float | None = Field(
        default=None, ge=0, description="USD the key may spend per UTC calendar month."
    )
    monthly_token_quota: int | None = Field(
        default=None, ge=0, description="Tokens the key may use per UTC calendar month."
    )
    privacy_mode: PrivacyMode | None = Field(
        default=None,
        description=(
            "What LLM analytics may see of this key's traffic: `off`, `metadata` or `full` "
            "(prompt and output text, redacted). Unset: the deployment's default."
        ),
    )

    @property
    def restricted(self) -> bool:
        """True when the key may use only some models."""
        return bool(self.allowed_models or self.allowed_tiers)

    def allows(self, model: str) -> bool:
        """Whether ``model`` (an id or a tier alias) is allowed for this key.

        A name listed in ``allowed_tiers`` is allowed; a built-in tier alias only then (it
        may route to any model); any other name when it matches one of ``allowed_models``.
        """
        if not self.restricted or model in self.allowed_tiers:
            return True
        if model in TIERS:
            return False
        return any(fnmatchcase(model, pattern) for pattern in self.allowed_models)

    def identity(self, key_id: str, name: str) -> KeyIdentity:
        """The key as the bus carries it: restrictions included, so the router enforces
        them again and routes ``auto`` within the allowed tiers."""
        restricted = self.restricted
        return KeyIdentity(
            key_id=key_id,
            name=name,
            owner=self.owner,
            privacy_mode=self.privacy_mode,
            allowed_tiers=list(self.allowed_tiers) if restricted else None,
            allowed_models=list(self.allowed_models) if restricted else None,
        )


class KeySpec(KeyPolicy):
    """A key to create."""

    name: str = Field(min_length=1, max_length=200, description="A label for people.")


class KeyPatch(BaseModel):
    """Changes to a key: only the fields present are changed; ``null`` clears a limit."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    owner: str | None = Field(default=None, max_length=200)
    expires_at: float | None = Field(default=None, gt=0)
    allowed_models: list[ModelPattern] | None = Field(default=None, max_length=256)
    allowed_tiers: list[Tier] | None = Field(default=None, max_length=64)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)
    monthly_budget_usd: float | None = Field(default=None, ge=0)
    monthly_token_quota: int | None = Field(default=None, ge=0)
    privacy_mode: PrivacyMode | None = None

    def changes(self) -> dict[str, object]:
        """The fields that were given, ``null`` lists read as empty lists."""
        changes: dict[str, object] = {}
        for field in self.model_fields_set:
            value = getattr(self, field)
            if field in ("allowed_models", "allowed_tiers") and value is None:
                value = []
            if field == "name" and value is None:
                continue
            changes[field] = value
        return changes


class KeyRecord(KeySpec):
    """A key as stored in Redis (``sb:keyrec:<id>``): never the secret, only its hash."""

    model_config = ConfigDict(extra="ignore")

    id: str
    status: Literal["active", "revoked"] = "active"
    created_at: float
    updated_at: float | None = None
    revoked_at: float | None = None
    rotated_at: float | None = None
    secret_hash: str = ""
    """Hex SHA-256 of the current secret (older ones live on only as ``sb:secret:*``)."""

    def expired(self, now: float) -> bool:
        """True when the key has an expiry and it has passed."""
        return self.expires_at is not None and self.expires_at <= now

    def state(self, now: float) -> Literal["active", "revoked", "expired"]:
        """``active``, ``revoked`` or ``expired``, as of ``now``."""
        if self.status == "revoked":
            return "revoked"
        return "expired" if self.expired(now) else "active"

    def view(self, usage: KeyUsage | None = None) -> KeyView:
        """What operators see (no hash)."""
        data = self.model_dump(exclude={"secret_hash"})
        data["state"] = self.state(time.time())
        return KeyView(**data, usage=usage)


class KeyUsage(BaseModel):
    """What a key consumed in one month, as charged against its quotas."""

    month: str = Field(description="UTC calendar month, `YYYY-MM`.")
    cost_usd: float = Field(description="USD charged (upstream-reported cost).")
    tokens: int = Field(description="Tokens charged (`usage.total_tokens`).")


class KeyView(KeySpec):
    """A key as the admin API and ``keys show`` present it."""

    model_config = ConfigDict(extra="ignore")

    id: str
    status: Literal["active", "revoked"]
    state: Literal["active", "revoked", "expired"] = Field(
        description="`status`, or `expired` when an active key is past `expires_at`."
    )
    created_at: float
    updated_at: float | None = None
    revoked_at: float | None = None
    rotated_at: float | None = None
    usage: KeyUsage | None = None


class CreatedKey(KeyView):
    """A new secret: the plaintext ``key`` is in this object and nowhere else."""

    key: str = Field(description="The secret, shown once. Store it now.")
    previous_secret_expires_at: float | None = Field(
        default=None,
        description="After a rotation: Unix time until which the previous secret still works.",
    )


class KeyList(BaseModel):
    """Keys, oldest first."""

    object: Literal["list"] = "list"
    data: list[KeyView]


class RotateRequest(BaseModel):
    """How to rotate a key."""

    model_config = ConfigDict(extra="forbid")

    grace_seconds: float | None = Field(
        default=None,
        ge=0,
        description="Seconds the old secret keeps working (default `EDGE_ROTATE_GRACE`).",
    )
