"""``/admin/keys``: the key lifecycle over HTTP, behind ``SWITCHBOARD_ADMIN_TOKEN``.

Without the setting the admin API does not exist (404). A wrong token is a 401 and counts
as a failed authentication for the client IP's guard, like a wrong API key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Controller, get, patch, post
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from redis.exceptions import RedisError

from switchboard.common.errors import (
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from switchboard.common.logs import get_logger
from switchboard.edge.auth import admin_token_matches
from switchboard.edge.errors import ADMIN_ERROR_RESPONSES
from switchboard.edge.keymodels import (
    CreatedKey,
    KeyList,
    KeyPatch,
    KeySpec,
    KeyView,
    RotateRequest,
)
from switchboard.edge.keys import KeyChange, KeyRevokedError
from switchboard.edge.lifespan import EdgeServices, HttpRequest, services_of

__all__ = ["ADMIN_SECURITY_SCHEME", "AdminKeys"]

log = get_logger(__name__)

ADMIN_SECURITY_SCHEME = "AdminToken"
"""Name of the OpenAPI security scheme (HTTP bearer) of the admin API."""


async def _admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    services = services_of(connection.app)
    token = services.settings.switchboard_admin_token
    if token is None:
        raise NotFoundError("Unknown request URL.", code="unknown_url")
    gate = services.gate
    ip = gate.client_ip(connection.client.host if connection.client else None, connection.headers)
    gate.check_blocked(ip)
    if not admin_token_matches(connection.headers.get("authorization"), token):
        raise await gate.refuse_admin(ip)


@asynccontextmanager
async def _redis_errors() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        log.warning("admin.redis_failed", error=type(exc).__name__)
        raise ServiceUnavailableError(
            "The key store is unavailable; try again shortly.", code="key_store_unavailable"
        ) from exc


def _not_found(key_id: str) -> NotFoundError:
    return NotFoundError(f"No API key with id '{key_id}'.", param="key_id", code="key_not_found")


async def _change(key_id: str, action: Callable[[], Awaitable[KeyChange | None]]) -> KeyChange:
    async with _redis_errors():
        change = await action()
    if change is None:
        raise _not_found(key_id)
    if change.confirmed < change.edges:
        log.warning(
            "admin.invalidation_unconfirmed",
            key_id=key_id,
            edges=change.edges,
            confirmed=change.confirmed,
        )
    return change


def _services(request: HttpRequest) -> EdgeServices:
    return services_of(request.app)


class AdminKeys(Controller):
    """API keys: create, list, show, update, revoke, rotate."""

    path = "/admin/keys"
    guards = [_admin_guard]  # noqa: RUF012 - Litestar's declared class attribute
    security = [{ADMIN_SECURITY_SCHEME: []}]  # noqa: RUF012
    tags = ["admin"]  # noqa: RUF012

    @post("", status_code=201, summary="Create a key", responses=ADMIN_ERROR_RESPONSES)
    async def create(self, request: HttpRequest, data: KeySpec) -> CreatedKey:
        """Mint a key. The response is the only place its secret ever appears."""
        async with _redis_errors():
            created = await _services(request).keys.create(data)
        log.info("admin.key_created", key_id=created.id)
        return created

    @get("", summary="List keys", cache=False, responses=ADMIN_ERROR_RESPONSES)
    async def list_keys(self, request: HttpRequest) -> KeyList:
        """Every key, oldest first (revoked ones included; no secrets, no hashes)."""
        async with _redis_errors():
            records = await _services(request).keys.list()
        return KeyList(data=[record.view() for record in records])

    @get("/{key_id:str}", summary="Show a key", cache=False, responses=ADMIN_ERROR_RESPONSES)
    async def show(self, request: HttpRequest, key_id: str) -> KeyView:
        """One key, with what it was charged this month."""
        keys = _services(request).keys
        async with _redis_errors():
            record = await keys.get(key_id)
            if record is None:
                raise _not_found(key_id)
            return record.view(await keys.usage(key_id))

    @patch("/{key_id:str}", summary="Update a key", responses=ADMIN_ERROR_RESPONSES)
    async def update(self, request: HttpRequest, key_id: str, data: KeyPatch) -> KeyView:
        """Change a key's name, owner, expiry, models or limits; ``null`` clears a limit.

        Every edge applies the change within a second.
        """
        change = await _change(key_id, lambda: _services(request).keys.update(key_id, data))
        log.info("admin.key_updated", key_id=key_id, fields=sorted(data.model_fields_set))
        return change.record.view()

    @post(
        "/{key_id:str}/revoke",
        status_code=200,
        summary="Revoke a key",
        responses=ADMIN_ERROR_RESPONSES,
    )
    async def revoke(self, request: HttpRequest, key_id: str) -> KeyView:
        """Stop every secret of the key from working, on every edge within a second."""
        change = await _change(key_id, lambda: _services(request).keys.revoke(key_id))
        log.info("admin.key_revoked", key_id=key_id)
        return change.record.view()

    @post(
        "/{key_id:str}/rotate",
        status_code=200,
        summary="Rotate a key's secret",
        responses=ADMIN_ERROR_RESPONSES,
    )
    async def rotate(
        self, request: HttpRequest, key_id: str, data: RotateRequest | None = None
    ) -> CreatedKey:
        """Issue a new secret; the old one keeps working for ``grace_seconds``
        (default ``EDGE_ROTATE_GRACE``), then stops."""
        services = _services(request)
        grace = services.settings.edge_rotate_grace
        if data is not None and data.grace_seconds is not None:
            grace = data.grace_seconds
        try:
            change = await _change(key_id, lambda: services.keys.rotate(key_id, grace))
        except KeyRevokedError as exc:
            raise InvalidRequestError(str(exc), param="key_id", code="key_revoked") from exc
        log.info("admin.key_rotated", key_id=key_id, grace=grace)
        if change.created is None:  # rotate always returns the new secret
            raise _not_found(key_id)
        return change.created
