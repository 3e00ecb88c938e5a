"""The edge's ASGI application. ``create_app`` is the only thing here."""

from __future__ import annotations

from functools import partial

from litestar import Litestar
from litestar.openapi import OpenAPIConfig

from switchboard.edge.errors import exception_handlers
from switchboard.edge.headers import security_headers
from switchboard.edge.lifespan import edge_lifespan
from switchboard.edge.routes.chat import chat_completions
from switchboard.edge.routes.health import health, live, ready
from switchboard.edge.routes.models import list_models
from switchboard.edge.settings import EdgeSettings

__all__ = ["create_app"]


def create_app(settings: EdgeSettings) -> Litestar:
    """Build the HTTP API around ``settings``; clients connect in the lifespan."""
    return Litestar(
        route_handlers=[chat_completions, list_models, health, ready, live],
        lifespan=[partial(edge_lifespan, settings)],
        exception_handlers=exception_handlers(),
        before_send=[security_headers],
        request_max_body_size=settings.edge_max_body_bytes,
        openapi_config=OpenAPIConfig(title="Switchboard", version="1.0.0", path="/openapi"),
        debug=False,
    )
