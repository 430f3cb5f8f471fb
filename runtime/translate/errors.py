"""Error bodies of the OpenAI and Anthropic APIs, and conversion of any upstream error to either.

Shapes::

    OpenAI:    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
    Anthropic: {"type": "error", "error": {"type": ..., "message": ...}}

`to_openai_error` / `to_anthropic_error` accept whatever an upstream sent (either shape, Ollama's
``{"error": "text"}``, a GigaChat-style ``{"message": ...}``, HTML or plain text, bytes or a dict)
and never pass on an API key: ``sk-...``, ``Bearer ...``, ``Basic ...`` and ``api_key=...`` values
are replaced by ``[REDACTED]``. Example::

    >>> to_anthropic_error(b'{"error": "model not found"}', status=404)
    {'type': 'error', 'error': {'type': 'not_found_error', 'message': 'model not found'}}

HTTP statuses are not translated: both SDKs classify by status and retry 429 and 5xx (529 too).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "UpstreamError",
    "anthropic_error_body",
    "anthropic_error_status",
    "anthropic_error_type",
    "openai_error_body",
    "openai_error_type",
    "parse_error_body",
    "redact_secrets",
    "to_anthropic_error",
    "to_openai_error",
]

MAX_MESSAGE_CHARS = 2000

# SECURITY: upstream messages echo credentials ("Incorrect API key provided: sk-proj-***9xQ").
_SECRET_TOKEN_RE = re.compile(
    r"\bsk-[A-Za-z0-9_*\-]{4,}"
    r"|\b(?:Bearer|Basic)\s+[A-Za-z0-9._~+/*=\-]{4,}",
    re.IGNORECASE,
)
_SECRET_FIELD_RE = re.compile(
    r"""((?:api[_-]?key|x-api-key|access[_-]?token|authorization)["']?\s*[:=]\s*["']?)"""
    r"""([^\s"',;}]+)""",
    re.IGNORECASE,
)

_ANTHROPIC_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STATUS_BY_ANTHROPIC_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_OPENAI_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
    529: "service_unavailable_error",
}
_ANTHROPIC_TYPE_BY_OPENAI_TYPE = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "insufficient_quota": "billing_error",
    "requests": "rate_limit_error",
    "tokens": "rate_limit_error",
    "server_error": "api_error",
    "service_unavailable_error": "overloaded_error",
}


def openai_error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """``openai_error_body("bad", type="invalid_request_error")`` ->
    ``{"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}}``.
    """
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def anthropic_error_body(message: str, *, type: str) -> dict[str, Any]:
    """``anthropic_error_body("slow down", type="rate_limit_error")`` ->
    ``{"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}``.
    """
    return {"type": "error", "error": {"type": type, "message": message}}


def anthropic_error_type(status: int) -> str:
    """Anthropic's documented error type for an HTTP status: 529 -> ``overloaded_error``.

    503 is ``overloaded_error`` and 504 ``timeout_error``; other 4xx are
    ``invalid_request_error`` (as Anthropic documents) and anything else ``api_error``.
    """
    found = _ANTHROPIC_TYPE_BY_STATUS.get(status)
    if found is not None:
        return found
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def anthropic_error_status(type: str) -> int:
    """The HTTP status Anthropic pairs with an error type: ``overloaded_error`` -> 529.

    Unknown types give 500.
    """
    return _STATUS_BY_ANTHROPIC_TYPE.get(type, 500)


def openai_error_type(status: int) -> str:
    """OpenAI-style error type for an HTTP status: 429 -> ``rate_limit_error``.

    Other 4xx give ``invalid_request_error``, other statuses ``server_error``.
    """
    found = _OPENAI_TYPE_BY_STATUS.get(status)
    if found is not None:
        return found
    return "invalid_request_error" if 400 <= status < 500 else "server_error"


def redact_secrets(text: str) -> str:
    """Replace anything that looks like a credential.

    Example: ``redact_secrets("key sk-abc123")`` -> ``"key [REDACTED]"``.
    """
    text = _SECRET_TOKEN_RE.sub("[REDACTED]", text)
    return _SECRET_FIELD_RE.sub(r"\1[REDACTED]", text)


@dataclass(frozen=True, slots=True)
class UpstreamError:
    """What could be read from an upstream error body, already redacted.

    ``kind`` says whose shape it was; ``type``/``code``/``param`` are None where absent.
    """

    kind: Literal["openai", "anthropic", "ollama", "text"]
    message: str
    type: str | None = None
    code: str | None = None
    param: str | None = None


def parse_error_body(body: bytes | str | Mapping[str, Any] | None) -> UpstreamError:
    """Read any upstream error body; never raises.

    Example: ``parse_error_body(b"<html>Bad Gateway</html>")`` ->
    ``UpstreamError(kind="text", message="<html>Bad Gateway</html>")``.
    """
    value: object = body
    if isinstance(body, bytes | str):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            value = json.loads(text)
        except ValueError:
            return UpstreamError("text", _clean(text))
    if isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, Mapping):
        return UpstreamError("text", _clean("" if value is None else str(value)))
    error = value.get("error")
    if isinstance(error, Mapping):
        kind: Literal["openai", "anthropic"] = (
            "anthropic" if value.get("type") == "error" else "openai"
        )
        return UpstreamError(
            kind,
            _clean(_as_text(error.get("message"))),
            type=_optional_text(error.get("type")),
            code=_optional_text(error.get("code")),
            param=_optional_text(error.get("param")),
        )
    if isinstance(error, str):
        return UpstreamError("ollama", _clean(error))
    for key in ("message", "detail", "error_description"):
        if isinstance(value.get(key), str):
            return UpstreamError("text", _clean(value[key]))
    return UpstreamError("text", _clean(json.dumps(value, ensure_ascii=False)))


def to_openai_error(
    body: bytes | str | Mapping[str, Any] | None, *, status: int | None = None
) -> dict[str, Any]:
    """Any upstream error -> an OpenAI error body.

    An OpenAI-shaped body keeps its type, code and param. Otherwise the type follows `status`
    (or, without one, the Anthropic type's usual status) and an Anthropic type is kept as
    ``code``. Example: ``to_openai_error({"type": "error", "error": {"type": "overloaded_error",
    "message": "Overloaded"}}, status=529)`` -> ``{"error": {"message": "Overloaded",
    "type": "service_unavailable_error", "param": None, "code": "overloaded_error"}}``.
    """
    parsed = parse_error_body(body)
    if parsed.kind == "openai" and parsed.type:
        return openai_error_body(
            _message(parsed, status), type=parsed.type, param=parsed.param, code=parsed.code
        )
    if status is None:
        status = anthropic_error_status(parsed.type) if parsed.type else 500
    code = parsed.type if parsed.kind == "anthropic" else parsed.code
    return openai_error_body(
        _message(parsed, status), type=openai_error_type(status), param=parsed.param, code=code
    )


def to_anthropic_error(
    body: bytes | str | Mapping[str, Any] | None, *, status: int | None = None
) -> dict[str, Any]:
    """Any upstream error -> an Anthropic error body.

    An Anthropic-shaped body keeps its type; otherwise the type follows `status`, or without one
    the OpenAI type (``rate_limit_error`` -> ``rate_limit_error``, ``server_error`` ->
    ``api_error``). Example: ``to_anthropic_error('{"error": {"message": "slow",
    "type": "requests"}}', status=429)`` -> ``{"type": "error", "error": {"type":
    "rate_limit_error", "message": "slow"}}``.
    """
    parsed = parse_error_body(body)
    if parsed.kind == "anthropic" and parsed.type:
        kind = parsed.type
    elif status is not None:
        kind = anthropic_error_type(status)
    else:
        kind = _ANTHROPIC_TYPE_BY_OPENAI_TYPE.get(parsed.type or "", "api_error")
    return anthropic_error_body(_message(parsed, status), type=kind)


def _message(parsed: UpstreamError, status: int | None) -> str:
    if parsed.message:
        return parsed.message
    return f"upstream error (HTTP {status})" if status is not None else "upstream error"


def _clean(text: str) -> str:
    text = redact_secrets(text.strip())
    return text[:MAX_MESSAGE_CHARS] + "..." if len(text) > MAX_MESSAGE_CHARS else text


def _as_text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _optional_text(value: object) -> str | None:
    if value is None:
        return None
    return _clean(value if isinstance(value, str) else str(value))
