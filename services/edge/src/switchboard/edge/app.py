"""The edge's ASGI application. ``create_app`` is the only thing here."""

from __future__ import annotations

from functools import partial

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from switchboard.edge.errors import exception_handlers
from switchboard.edge.headers import require_https, security_headers
from switchboard.edge.lifespan import edge_lifespan
from switchboard.edge.routes.admin import ADMIN_SECURITY_SCHEME, AdminKeys
from switchboard.edge.routes.chat import chat_completions
from switchboard.edge.routes.health import health, live, metrics, ready
from switchboard.edge.routes.models import list_models
from switchboard.edge.routes.usage import get_usage
from switchboard.edge.settings import EdgeSettings

__all__ = ["create_app"]


def create_app(settings: EdgeSettings) -> Litestar:
    """Build the HTTP API around ``settings``; clients connect in the lifespan."""
    return Litestar(
        route_handlers=[
            chat_completions,
            list_models,
            get_usage,
            health,
            ready,
            live,
            AdminKeys,
            *([metrics] if settings.edge_metrics_on_api_port else []),
        ],
        lifespan=[partial(edge_lifespan, settings)],
        exception_handlers=exception_handlers(),
        before_request=partial(require_https, settings) if settings.edge_require_https else None,
        before_send=[security_headers],
        request_max_body_size=settings.edge_max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Switchboard",
            version="1.0.0",
            path="/openapi",
            components=Components(
                security_schemes={
                    ADMIN_SECURITY_SCHEME: SecurityScheme(
                        type="http",
                        scheme="bearer",
                        description="`SWITCHBOARD_ADMIN_TOKEN` of the edge.",
                    )
                }
            ),
        ),
        debug=False,
    )
