"""Error bodies of both APIs, status -> type tables, upstream error conversion and redaction."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.translate.errors import (
    UpstreamError,
    anthropic_error_body,
    anthropic_error_status,
    anthropic_error_type,
    openai_error_body,
    openai_error_type,
    parse_error_body,
    redact_secrets,
    to_anthropic_error,
    to_openai_error,
)


def test_openai_error_body_shape() -> None:
    assert openai_error_body("bad model", type="invalid_request_error", param="model") == {
        "error": {
            "message": "bad model",
            "type": "invalid_request_error",
            "param": "model",
            "code": None,
        }
    }


def test_anthropic_error_body_shape() -> None:
    assert anthropic_error_body("slow down", type="rate_limit_error") == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (409, "invalid_request_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_anthropic_error_type(status: int, expected: str) -> None:
    assert anthropic_error_type(status) == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "invalid_request_error"),
        (413, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "service_unavailable_error"),
        (529, "service_unavailable_error"),
    ],
)
def test_openai_error_type(status: int, expected: str) -> None:
    assert openai_error_type(status) == expected


def test_anthropic_error_status_inverts_the_documented_table() -> None:
    for status in (400, 401, 402, 403, 404, 413, 429, 500, 504, 529):
        assert anthropic_error_status(anthropic_error_type(status)) == status
    assert anthropic_error_status("something_new") == 500


def test_anthropic_upstream_error_to_openai() -> None:
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    assert to_openai_error(body, status=529) == {
        "error": {
            "message": "Overloaded",
            "type": "service_unavailable_error",
            "param": None,
            "code": "overloaded_error",
        }
    }


def test_anthropic_stream_error_without_status_to_openai() -> None:
    data = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}
    assert to_openai_error(data)["error"]["type"] == "rate_limit_error"
    assert to_openai_error(data)["error"]["code"] == "rate_limit_error"


def test_openai_upstream_error_to_anthropic() -> None:
    body = json.dumps(
        {
            "error": {
                "message": "Rate limit reached",
                "type": "requests",
                "code": "rate_limit_exceeded",
            }
        }
    )
    assert to_anthropic_error(body, status=429) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Rate limit reached"},
    }


def test_openai_stream_error_without_status_to_anthropic() -> None:
    body = {"error": {"message": "boom", "type": "server_error"}}
    assert to_anthropic_error(body)["error"]["type"] == "api_error"
    unknown = {"error": {"message": "boom", "type": "weird"}}
    assert to_anthropic_error(unknown)["error"]["type"] == "api_error"


def test_openai_shape_keeps_its_own_type_code_and_param() -> None:
    body = {
        "error": {
            "message": "too long",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    assert to_openai_error(body, status=400) == body


def test_anthropic_shape_keeps_its_own_type() -> None:
    body = {"type": "error", "error": {"type": "billing_error", "message": "pay"}}
    assert to_anthropic_error(body, status=400) == body


def test_ollama_error_string() -> None:
    assert to_anthropic_error(b'{"error": "model \\"x\\" not found"}', status=404) == {
        "type": "error",
        "error": {"type": "not_found_error", "message": 'model "x" not found'},
    }
    assert to_openai_error({"error": "oops"})["error"] == {
        "message": "oops",
        "type": "server_error",
        "param": None,
        "code": None,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", "<html><body>502 Bad Gateway</body></html>"),
        (b"", "upstream error (HTTP 502)"),
        (None, "upstream error (HTTP 502)"),
        (b"\xff\xfe not utf8", "\ufffd\ufffd not utf8"),
        ('{"status": 502, "message": "GigaChat down"}', "GigaChat down"),
        (b'[{"error": {"message": "list body", "type": "x"}}]', "list body"),
        (b"42", "42"),
        (b'{"weird": true}', '{"weird": true}'),
    ],
)
def test_malformed_or_foreign_bodies(body: bytes | str | None, message: str) -> None:
    assert to_openai_error(body, status=502)["error"]["message"] == message
    assert to_anthropic_error(body, status=502)["error"]["message"] == message


def test_long_messages_are_truncated() -> None:
    message = to_openai_error("x" * 10_000, status=500)["error"]["message"]
    assert len(message) < 2100
    assert message.endswith("...")


def test_parse_error_body_kinds() -> None:
    assert parse_error_body({"type": "error", "error": {"type": "api_error", "message": "m"}}) == (
        UpstreamError("anthropic", "m", type="api_error")
    )
    assert parse_error_body({"error": {"message": "m", "code": 5}}) == UpstreamError(
        "openai", "m", code="5"
    )
    assert parse_error_body(b"plain") == UpstreamError("text", "plain")


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",
        "sk-ant-api03-AbCdEf_gh-1234567890",
        "sk-abc1********************xyz9",
        "Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        "Basic dXNlcjpwYXNzd29yZA==",
    ],
)
def test_secrets_never_leak(secret: str) -> None:
    text = f"Incorrect API key provided: {secret}. See docs."
    for body in (
        text,
        json.dumps({"error": {"message": text, "type": "invalid_request_error"}}),
        json.dumps({"type": "error", "error": {"type": "authentication_error", "message": text}}),
        json.dumps({"error": text}),
    ):
        for converted in (to_openai_error(body, status=401), to_anthropic_error(body, status=401)):
            dumped = json.dumps(converted)
            assert secret not in dumped
            assert "[REDACTED]" in dumped


def test_key_value_secrets_are_redacted() -> None:
    assert redact_secrets('bad api_key="abc123xyz" given') == 'bad api_key="[REDACTED]" given'
    assert redact_secrets("x-api-key: zzz999") == "x-api-key: [REDACTED]"
    assert redact_secrets("authorization=Bearer abcdef") == "authorization=[REDACTED]"


def test_prose_is_not_redacted() -> None:
    text = "The task-force asked: is this a risk-free change?"
    assert redact_secrets(text) == text


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.integers(100, 599))
def test_conversion_never_raises_and_keeps_shape(body: bytes, status: int) -> None:
    openai = to_openai_error(body, status=status)
    assert set(openai["error"]) == {"message", "type", "param", "code"}
    assert isinstance(openai["error"]["message"], str)
    anthropic = to_anthropic_error(body, status=status)
    assert anthropic["type"] == "error"
    assert set(anthropic["error"]) == {"type", "message"}
