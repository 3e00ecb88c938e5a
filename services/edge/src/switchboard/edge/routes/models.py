"""``GET /v1/models``: the model list, as the routers know it."""

from __future__ import annotations

from typing import Literal

from litestar import MediaType, Response, get
from litestar.openapi.datastructures import ResponseSpec
from pydantic import BaseModel

from switchboard.common import subjects
from switchboard.common.errors import GatewayError, UpstreamError
from switchboard.common.wire import CompletionFailed, FrameKind
from switchboard.edge.errors import API_ERROR_RESPONSES
from switchboard.edge.lifespan import HttpRequest, services_of

__all__ = ["list_models"]

_MODELS_TIMEOUT = 10.0


class ModelEntry(BaseModel):
    """One model of the list (documentation: the router's bytes are relayed as they are)."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    """OpenAI's model list."""

    object: Literal["list"]
    data: list[ModelEntry]


_RESPONSES = {
    200: ResponseSpec(ModelList, description="OpenAI's model list.", generate_examples=False),
    **API_ERROR_RESPONSES,
}


@get("/v1/models", responses=_RESPONSES)
async def list_models(request: HttpRequest) -> Response[bytes]:
    """Models this gateway can serve, in OpenAI's list format."""
    services = services_of(request.app)
    gate = services.gate
    ip = gate.client_ip(request.client.host if request.client else None, request.headers)
    await gate.authenticate(request.headers.get("authorization"), ip)
    frame = await services.bus.request_frame(subjects.MODELS_LIST, b"", timeout=_MODELS_TIMEOUT)
    if frame.kind is FrameKind.RESPONSE:
        return Response(content=frame.body, media_type=MediaType.JSON)
    if frame.kind is FrameKind.ERROR:
        failed = CompletionFailed.model_validate_json(frame.body)
        raise GatewayError(
            failed.error.message,
            code=failed.error.code,
            status_code=failed.status,
            error_type=failed.error.type,
        )
    raise UpstreamError("The router sent an unexpected reply.", code="protocol_error")
