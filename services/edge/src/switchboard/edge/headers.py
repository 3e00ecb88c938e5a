"""Security headers on every response (OWASP secure headers project), and HTTPS enforcement."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.types import Message, Scope

from switchboard.common.errors import PermissionDeniedError
from switchboard.edge.clientip import forwarded_https
from switchboard.edge.settings import EdgeSettings

__all__ = ["require_https", "security_headers"]

_HEADERS = {
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}

_PROBES = "/health"
"""Health probes (load balancers, kubelets) may use plain HTTP."""


_ENCODED = [(name.encode(), value.encode()) for name, value in _HEADERS.items()]


async def security_headers(message: Message, _scope: Scope) -> None:
    """Add the headers to the start of each HTTP response (keeps any already set)."""
    if message["type"] == "http.response.start":
        headers = list(message.get("headers") or ())
        present = {bytes(name).lower() for name, _ in headers}
        headers += [header for header in _ENCODED if header[0] not in present]
        message["headers"] = headers


async def require_https(settings: EdgeSettings, request: Request[Any, Any, Any]) -> None:
    """Refuse a plain-HTTP request with 403 ``https_required`` (``EDGE_REQUIRE_HTTPS``).

    Refused rather than redirected: a client that sent its key over plain HTTP has already
    leaked it, and a redirected POST would send it again. Behind a trusted proxy, the
    proxy's ``X-Forwarded-Proto`` (or ``Forwarded: proto=``) says what the client used.
    """
    if request.url.path.startswith(_PROBES):
        return
    if not forwarded_https(
        request.client.host if request.client else None,
        settings.edge_trusted_proxies,
        scheme=request.url.scheme,
        forwarded=request.headers.getall("forwarded", []),
        x_forwarded_proto=request.headers.getall("x-forwarded-proto", []),
    ):
        raise PermissionDeniedError(
            "This API is served over HTTPS only; use an https:// URL.", code="https_required"
        )
