"""``GET /v1/models/{id}``: one model, in the shape of the SDK that asks.

Both SDKs retrieve a model by the name they would send: ``client.models.retrieve("gpt-4o")``
(OpenAI, base URL with ``/v1``) and ``client.models.retrieve("claude-sonnet")`` (Anthropic, which
sends ``anthropic-version``). A name answers when it resolves to a model of the live table (exact
name, alias or glob alias) that the caller's key may use; anything else is a 404 in the caller's
shape, so a key never learns which models it is not allowed::

    GET /v1/models/gpt4o            -> {"id": "gpt4o", "object": "model", "created": 0,
                                        "owned_by": "interlock"}
    GET /v1/models/gpt4o  (anthropic-version: 2023-06-01)
                                    -> {"type": "model", "id": "gpt4o", "display_name": "gpt4o",
                                        "created_at": "1970-01-01T00:00:00Z"}
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from runtime.errors import GatewayError, error_body, is_anthropic

if TYPE_CHECKING:
    from compiler.table import ApiKey, RouteTable
    from runtime.app import Gateway

__all__ = ["model_info", "retrieve_model_endpoint"]

_EPOCH = "1970-01-01T00:00:00Z"


def model_info(table: RouteTable, key: ApiKey | None, name: str, api: str) -> dict[str, Any]:
    """The model object for `name` in `api`'s shape; raises a 404 `GatewayError` when `name`
    resolves to no model, or to one `key` may not use."""
    model = table.resolve_model(name)
    allowed = model is not None and (
        key is None or key.models_pattern is None or key.models_pattern.fullmatch(model.name)
    )
    if not allowed:
        raise GatewayError(
            404, f"the model '{name}' does not exist", code="model_not_found", param="model"
        )
    if is_anthropic(api):
        return {"type": "model", "id": name, "display_name": name, "created_at": _EPOCH}
    return {"id": name, "object": "model", "created": 0, "owned_by": "interlock"}


def retrieve_model_endpoint(gateway: Gateway) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint for ``GET /v1/models/{model_id:path}``."""

    async def retrieve(request: Request) -> Response:
        snap = gateway.snapshot  # NOTE: read once, as every request does
        api = "anthropic.messages" if "anthropic-version" in request.headers else "openai.chat"
        try:
            key = None
            if snap.keyring is not None:
                key = snap.keyring.authenticate({k.lower(): v for k, v in request.headers.items()})
            info = model_info(snap.table, key, request.path_params["model_id"], api)
        except GatewayError as exc:
            return Response(error_body(api, exc), exc.status, media_type="application/json")
        return JSONResponse(info)

    return retrieve
