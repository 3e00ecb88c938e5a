"""Health endpoints: liveness, readiness and a component report.

``/health`` (and ``/health/ready``) answer 200 only when NATS is connected, Redis answers
and at least one router answers a ping; otherwise 503, with each component's state.
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Litestar, MediaType, Response, get
from prometheus_client import CONTENT_TYPE_LATEST

from switchboard.common import subjects
from switchboard.common.errors import GatewayError
from switchboard.common.ops import Components, metrics_text
from switchboard.common.wire import RouterPong
from switchboard.edge.lifespan import EdgeServices, HttpRequest, services_of

__all__ = ["components", "health", "live", "metrics", "readiness", "ready"]


async def _check_redis(services: EdgeServices) -> dict[str, Any]:
    try:
        await asyncio.wait_for(services.redis.ping(), services.settings.edge_health_timeout)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ok", reported by type
        return {"status": "down", "error": type(exc).__name__}
    return {"status": "ok"}


async def _check_router(services: EdgeServices) -> dict[str, Any]:
    try:
        reply = await services.bus.request(
            subjects.ROUTER_PING, b"", timeout=services.settings.edge_health_timeout
        )
        pong = RouterPong.model_validate_json(reply)
    except GatewayError as exc:
        return {"status": "down", "error": exc.code}
    return {"status": "ok", "instance": pong.instance_id}


async def components(services: EdgeServices) -> Components:
    """Each dependency's state: NATS, Redis, a router."""
    nats_ok = services.nc.is_connected
    components: dict[str, dict[str, Any]] = {"nats": {"status": "ok" if nats_ok else "down"}}
    redis, router = await asyncio.gather(
        _check_redis(services),
        _check_router(services) if nats_ok else asyncio.sleep(0, {"status": "down"}),
    )
    components["redis"] = redis
    components["router"] = router
    return components


async def readiness(app: Litestar) -> Components:
    """The ops listener's readiness of a running app (down until its lifespan started)."""
    services: EdgeServices | None = getattr(app.state, "services", None)
    if services is None:
        return {"edge": {"status": "down", "error": "starting"}}
    return await components(services)


async def _report(request: HttpRequest) -> Response[dict[str, Any]]:
    found = await components(services_of(request.app))
    healthy = all(component["status"] == "ok" for component in found.values())
    return Response(
        content={"status": "ok" if healthy else "unavailable", "components": found},
        status_code=200 if healthy else 503,
        media_type=MediaType.JSON,
    )


@get("/health", cache=False)
async def health(request: HttpRequest) -> Response[dict[str, Any]]:
    """Component status as JSON; 503 when any dependency is down."""
    return await _report(request)


@get("/health/ready", cache=False)
async def ready(request: HttpRequest) -> Response[dict[str, Any]]:
    """Readiness: same checks as ``/health``."""
    return await _report(request)


@get("/health/live", cache=False)
async def live() -> dict[str, str]:
    """Liveness: the process serves HTTP."""
    return {"status": "ok"}


@get("/metrics", cache=False, include_in_schema=False)
async def metrics() -> Response[bytes]:
    """Prometheus metrics; routed only with ``EDGE_METRICS_ON_API_PORT=true``."""
    return Response(content=metrics_text(), media_type=CONTENT_TYPE_LATEST)
