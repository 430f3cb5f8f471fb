"""Errors the gateway answers with, always in the shape of the API the client called.

`GatewayError(404, "model 'x' not found", code="model_not_found")` renders as OpenAI's
``{"error": {"message", "type", "param", "code"}}`` on `/v1/chat/completions` and as Anthropic's
``{"type": "error", "error": {"type", "message"}}`` on `/v1/messages`.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from runtime.translate.errors import (
    anthropic_error_body,
    anthropic_error_type,
    openai_error_body,
    openai_error_type,
)

_encode = msgspec.json.Encoder().encode


class GatewayError(Exception):
    """A request that ends with an error response (never a traceback)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        failure: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = tuple(headers)
        self.failure = failure  # the failure class, when an upstream caused it


def is_anthropic(api: str) -> bool:
    return api.startswith("anthropic.")


def error_body(api: str, error: GatewayError) -> bytes:
    """The JSON body for `error` in the shape of `api` (``openai.*`` or ``anthropic.*``)."""
    if is_anthropic(api):
        return _encode(anthropic_error_body(error.message, type=anthropic_error_type(error.status)))
    body = openai_error_body(
        error.message, type=openai_error_type(error.status), param=error.param, code=error.code
    )
    return _encode(body)


def stream_error_event(api: str, error: GatewayError, sequence: int = 0) -> bytes:
    """The SSE event that reports a failure after a stream started (OpenAI: a data chunk with an
    ``error`` object; Anthropic: ``event: error``; Responses: an ``error`` event numbered
    `sequence`, the stream's next sequence number)."""
    if api == "openai.responses":
        event = {
            "type": "error",
            "code": error.code or openai_error_type(error.status),
            "message": error.message,
            "param": error.param,
            "sequence_number": sequence,
        }
        return b"event: error\ndata: " + _encode(event) + b"\n\n"
    body = error_body(api, error)
    if is_anthropic(api):
        return b"event: error\ndata: " + body + b"\n\n"
    return b"data: " + body + b"\n\n"
