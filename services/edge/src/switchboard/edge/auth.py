"""Bearer credentials: the API key of a request, and the admin token of the admin API."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from switchboard.common.errors import AuthenticationError

__all__ = ["admin_token_matches", "bearer_secret"]

_MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


def _token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def bearer_secret(authorization: str | None) -> str:
    """The key in ``Authorization: Bearer <key>``, or OpenAI's 401 for a missing one.

    No error ever repeats the presented key, not even a prefix of it.
    """
    token = _token(authorization)
    if token is None:
        raise AuthenticationError(_MISSING, code=None)
    return token


def admin_token_matches(authorization: str | None, expected: SecretStr) -> bool:
    """True when the header carries the admin token (compared in constant time)."""
    token = _token(authorization)
    if token is None:
        return False
    return hmac.compare_digest(token.encode(), expected.get_secret_value().encode())
