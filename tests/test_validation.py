"""Validation of what the gateway reads: types and ranges of model, messages, token limits,
stream, stream_options, temperature, top_p, n, tools and tool_choice, and Anthropic's required
max_tokens. A bad value is a 400 in the caller's API shape naming the parameter, before any
upstream is called; values in range and unknown fields pass through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import GatewayError
from runtime.request import RequestContext
from tests.served import ServedGateway
from tests.upstreams import MockUpstream

CHAT = [{"role": "user", "content": "hi"}]
VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "m", "messages": CHAT},
    "/v1/completions": {"model": "m", "prompt": "hi"},
    "/v1/responses": {"model": "m", "input": "hi"},
    "/v1/messages": {"model": "a", "max_tokens": 16, "messages": CHAT},
    "/v1/messages/count_tokens": {"model": "a", "messages": CHAT},
}
API = {
    "/v1/chat/completions": "openai.chat",
    "/v1/completions": "openai.completions",
    "/v1/responses": "openai.responses",
    "/v1/messages": "anthropic.messages",
    "/v1/messages/count_tokens": "anthropic.count_tokens",
}
FUNCTION_TOOL = {"type": "function", "function": {"name": "f", "parameters": {}}}

# (path, parameter, bad value); `None` as value means "leave the parameter out"
BAD: list[tuple[str, str, Any]] = [
    *((path, "model", value) for path in VALID for value in (3, "", ["m"], {"name": "m"}, True)),
    *(
        (path, "messages", value)
        for path in ("/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens")
        for value in ([], "hi", {"role": "user"}, None)
    ),
    ("/v1/chat/completions", "max_tokens", "many"),
    ("/v1/chat/completions", "max_tokens", 0),
    ("/v1/chat/completions", "max_tokens", 1.5),
    ("/v1/chat/completions", "max_tokens", True),
    ("/v1/chat/completions", "max_completion_tokens", -1),
    ("/v1/chat/completions", "max_completion_tokens", "10"),
    ("/v1/completions", "max_tokens", -1),
    ("/v1/completions", "max_tokens", "many"),
    ("/v1/responses", "max_output_tokens", 0),
    ("/v1/responses", "max_output_tokens", "many"),
    ("/v1/messages", "max_tokens", None),
    ("/v1/messages", "max_tokens", 0),
    ("/v1/messages", "max_tokens", "many"),
    ("/v1/messages", "max_tokens", 2.5),
    *(
        (path, "stream", value)
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages")
        for value in ("yes", 1, {})
    ),
    ("/v1/chat/completions", "stream_options", "usage"),
    ("/v1/chat/completions", "stream_options", {"include_usage": "yes"}),
    ("/v1/completions", "stream_options", [True]),
    ("/v1/responses", "stream_options", {"include_obfuscation": "no"}),
    *(
        (path, "temperature", value)
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses")
        for value in ("hot", -0.1, 2.01, [1])
    ),
    ("/v1/messages", "temperature", 1.5),
    ("/v1/messages", "temperature", "hot"),
    *(
        (path, "top_p", value)
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages")
        for value in (1.01, -1, "all")
    ),
    *(
        (path, "n", value)
        for path in ("/v1/chat/completions", "/v1/completions")
        for value in (0, 129, "2", 1.5)
    ),
    ("/v1/messages", "top_k", -1),
    ("/v1/chat/completions", "tools", {"type": "function"}),
    ("/v1/chat/completions", "tools", ["f"]),
    ("/v1/chat/completions", "tools", [{"type": "function"}]),
    ("/v1/chat/completions", "tools", [{"type": "function", "function": {"description": "x"}}]),
    ("/v1/chat/completions", "tools", [{"function": {"name": "f"}}]),
    ("/v1/responses", "tools", [{"type": "function"}]),
    ("/v1/responses", "tools", "f"),
    ("/v1/messages", "tools", [{"input_schema": {}}]),
    ("/v1/messages", "tools", {"name": "f"}),
    ("/v1/messages/count_tokens", "tools", [{"name": 3}]),
    ("/v1/chat/completions", "tool_choice", "maybe"),
    ("/v1/chat/completions", "tool_choice", 1),
    ("/v1/chat/completions", "tool_choice", {"type": "function"}),
    ("/v1/responses", "tool_choice", "any"),
    ("/v1/responses", "tool_choice", {"type": "function"}),
    ("/v1/messages", "tool_choice", "auto"),
    ("/v1/messages", "tool_choice", {"type": "required"}),
    ("/v1/messages", "tool_choice", {"type": "tool"}),
    ("/v1/responses", "input", None),
    ("/v1/responses", "input", 5),
    ("/v1/responses", "input", {"role": "user"}),
]
# values in range, at the edges, or null: accepted
GOOD: list[tuple[str, str, Any]] = [
    ("/v1/chat/completions", "temperature", 0),
    ("/v1/chat/completions", "temperature", 2),
    ("/v1/chat/completions", "temperature", None),
    ("/v1/chat/completions", "top_p", 1),
    ("/v1/chat/completions", "n", 1),
    ("/v1/chat/completions", "max_tokens", 1),
    ("/v1/chat/completions", "max_completion_tokens", None),
    ("/v1/chat/completions", "tools", [FUNCTION_TOOL, {"type": "custom", "custom": {}}]),
    ("/v1/chat/completions", "tool_choice", {"type": "function", "function": {"name": "f"}}),
    ("/v1/chat/completions", "tool_choice", "required"),
    ("/v1/completions", "max_tokens", 0),
    ("/v1/responses", "temperature", 1.7),
    ("/v1/responses", "tool_choice", {"type": "function", "name": "f"}),
    ("/v1/responses", "store", False),
    ("/v1/messages", "temperature", 1),
    ("/v1/messages", "top_k", 0),
    ("/v1/messages", "tool_choice", {"type": "tool", "name": "f"}),
    ("/v1/messages", "tools", [{"name": "web_search", "type": "web_search_20250305"}]),
]


def _body(path: str, param: str, value: Any) -> dict[str, Any]:
    body = dict(VALID[path])
    if value is None and param in body:
        del body[param]
    else:
        body[param] = value
    return body


def _parse(path: str, body: dict[str, Any]) -> RequestContext:
    return RequestContext.parse(API[path], json.dumps(body).encode(), {}, "rid")


@pytest.mark.parametrize(
    ("path", "param", "value"), BAD, ids=[f"{p[4:]}-{n}-{v!r}" for p, n, v in BAD]
)
def test_a_bad_value_is_a_400_naming_the_parameter(path: str, param: str, value: Any) -> None:
    with pytest.raises(GatewayError) as caught:
        _parse(path, _body(path, param, value))
    assert caught.value.status == 400
    assert caught.value.param == param, caught.value.message
    assert param in caught.value.message


@pytest.mark.parametrize(
    ("path", "param", "value"), GOOD, ids=[f"{p[4:]}-{n}-{v!r}" for p, n, v in GOOD]
)
def test_values_in_range_pass(path: str, param: str, value: Any) -> None:
    _parse(path, _body(path, param, value))


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_openai_temperature_is_accepted_exactly_in_0_to_2(temperature: float) -> None:
    body = _body("/v1/chat/completions", "temperature", temperature)
    if 0 <= temperature <= 2:
        assert _parse("/v1/chat/completions", body).head.temperature == temperature  # type: ignore[union-attr]
    else:
        with pytest.raises(GatewayError) as caught:
            _parse("/v1/chat/completions", body)
        assert caught.value.param == "temperature"


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(2**40), max_value=2**40))
def test_anthropic_max_tokens_is_accepted_from_1(max_tokens: int) -> None:
    body = _body("/v1/messages", "max_tokens", max_tokens)
    if max_tokens >= 1:
        _parse("/v1/messages", body)
    else:
        with pytest.raises(GatewayError) as caught:
            _parse("/v1/messages", body)
        assert caught.value.param == "max_tokens"


# --- over a real socket: the caller's shape, and no upstream call -----------------------------


@pytest.fixture(scope="module")
def gw(upstream: MockUpstream) -> Iterator[ServedGateway]:
    config = {
        "version": 1,
        "upstreams": {
            "oai": {"kind": "openai", "base_url": upstream.base_url("openai"), "api_key": "k"},
            "ant": {"kind": "anthropic", "base_url": upstream.url, "api_key": "k"},
        },
        "models": {
            "m": {"targets": [{"upstream": "oai", "model": "gpt-up"}]},
            "a": {"targets": [{"upstream": "ant", "model": "claude-up"}]},
        },
    }
    with ServedGateway(json.dumps(config)) as gateway:
        yield gateway


SOCKET_CASES = [
    ("/v1/chat/completions", "max_tokens", "many"),
    ("/v1/chat/completions", "temperature", "hot"),
    ("/v1/responses", "max_output_tokens", -5),
    ("/v1/messages", "max_tokens", None),
    ("/v1/messages", "stream", "yes"),
    ("/v1/messages", "tool_choice", {"type": "tool"}),
]


@pytest.mark.parametrize(("path", "param", "value"), SOCKET_CASES)
def test_the_400_is_in_the_callers_shape_and_no_upstream_is_called(
    gw: ServedGateway, upstream_reset: MockUpstream, path: str, param: str, value: Any
) -> None:
    response = httpx.post(gw.url + path, json=_body(path, param, value))
    assert response.status_code == 400
    body = response.json()
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert param in body["error"]["message"]
    else:
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["param"] == param
    assert upstream_reset.requests == []


def test_unknown_fields_still_pass_through(gw: ServedGateway, upstream_reset: MockUpstream) -> None:
    body = {**VALID["/v1/chat/completions"], "temperature": 0.5, "x_vendor_flag": {"a": [1]}}
    raw = json.dumps(body).encode()
    response = httpx.post(
        gw.url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    assert upstream_reset.last_request("openai").body["x_vendor_flag"] == {"a": [1]}


def test_sdks_raise_bad_request_naming_the_parameter(gw: ServedGateway) -> None:
    with (
        openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0) as client,
        pytest.raises(openai.BadRequestError) as caught,
    ):
        client.chat.completions.create(model="m", messages=[], temperature=0.2)
    assert caught.value.param == "messages"
    with (
        anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0) as ant,
        pytest.raises(anthropic.BadRequestError) as ant_caught,
    ):
        ant.messages.create(
            model="a",
            max_tokens=16,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"temperature": 1.5},
        )
    assert "temperature" in str(ant_caught.value)
