"""Bearer authentication against the key store."""

from __future__ import annotations

from redis.exceptions import RedisError

from switchboard.common.errors import AuthenticationError, ServiceUnavailableError
from switchboard.common.wire import KeyIdentity
from switchboard.edge.keys import KeyStore

__all__ = ["authenticate"]

_MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_INCORRECT = "Incorrect API key provided."


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationError(_MISSING, code=None)
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError(_MISSING, code=None)
    return token


async def authenticate(store: KeyStore, authorization: str | None) -> KeyIdentity:
    """The identity of the caller, or an OpenAI-shaped 401.

    The error never repeats the presented key, not even a prefix of it.
    """
    secret = _bearer(authorization)
    try:
        record = await store.lookup(secret)
    except (RedisError, OSError) as exc:
        raise ServiceUnavailableError(
            "API keys cannot be checked right now; try again shortly.", code="auth_unavailable"
        ) from exc
    if record is None:
        raise AuthenticationError(_INCORRECT)
    if record.status == "revoked":
        raise AuthenticationError("This API key has been revoked.")
    return KeyIdentity(key_id=record.id, name=record.name)
