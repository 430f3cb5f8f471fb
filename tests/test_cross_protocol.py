"""Request fields that cross protocols without vanishing: each row of the README's "Across
protocols" table, as the bridge for that client API and upstream family translates it (mapped,
or refused with a 400 naming the parameter), and a few through the SDKs against a served
Interlock."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import MessageParam

from runtime.bridge import bridge_for
from runtime.translate import TranslationError
from tests.served import ServedGateway, two_protocol_config
from tests.upstreams import MockUpstream

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {**CHAT, "max_tokens": 100}
RESPONSES = {"model": "m", "input": "hi"}
BASE = {"openai.chat": CHAT, "anthropic.messages": MESSAGES, "openai.responses": RESPONSES}


def translate(api: str, family: str, extra: dict[str, Any]) -> dict[str, Any]:
    bridge = bridge_for(api, family, "openai-compatible")
    assert bridge is not None and bridge.request is not None
    return bridge.request({**BASE[api], **extra})


# (client API, field and value, upstream family, what the upstream gets: a predicate)
MAPPED: list[tuple[str, dict[str, Any], str, Callable[[dict[str, Any]], bool]]] = [
    (
        "openai.chat",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "W", "schema": SCHEMA},
            }
        },
        "anthropic",
        lambda b: (
            b["tools"] == [{**b["tools"][0], "name": "json_response", "input_schema": SCHEMA}]
            and b["tool_choice"] == {"type": "tool", "name": "json_response"}
        ),
    ),
    (
        "openai.chat",
        {"response_format": {"type": "json_object"}},
        "anthropic",
        lambda b: b["tools"][0]["input_schema"] == {"type": "object"},
    ),
    (
        "openai.chat",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "W", "schema": SCHEMA},
            }
        },
        "ollama",
        lambda b: b["format"] == SCHEMA,
    ),
    (
        "openai.chat",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "W", "schema": SCHEMA},
            }
        },
        "gigachat",
        lambda b: b["response_format"] == {"type": "json_schema", "schema": SCHEMA},
    ),
    ("openai.chat", {"n": 1}, "anthropic", lambda b: "n" not in b),
    (
        "openai.chat",
        {"reasoning_effort": "high", "max_tokens": 100},
        "anthropic",
        lambda b: (
            b["thinking"] == {"type": "enabled", "budget_tokens": 16384}
            and b["max_tokens"] == 16484
        ),
    ),
    ("openai.chat", {"reasoning_effort": "minimal"}, "anthropic", lambda b: "thinking" not in b),
    (
        "anthropic.messages",
        {"thinking": {"type": "enabled", "budget_tokens": 2000}},
        "openai",
        lambda b: b["reasoning_effort"] == "medium",
    ),
    (
        "anthropic.messages",
        {"thinking": {"type": "enabled", "budget_tokens": 1024}},
        "gigachat",
        lambda b: b["reasoning_effort"] == "low",
    ),
    (
        "anthropic.messages",
        {"thinking": {"type": "disabled"}},
        "openai",
        lambda b: "reasoning_effort" not in b,
    ),
    (
        "anthropic.messages",
        {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}, "effort": "low"}},
        "openai",
        lambda b: (
            b["response_format"]
            == {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}
            and b["reasoning_effort"] == "low"
        ),
    ),
    (
        "anthropic.messages",
        {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
        "ollama",
        lambda b: b["format"] == SCHEMA,
    ),
    ("anthropic.messages", {"top_k": 40}, "ollama", lambda b: b["options"]["top_k"] == 40),
    (
        "openai.responses",
        {"text": {"format": {"type": "json_schema", "name": "W", "schema": SCHEMA}}},
        "anthropic",
        lambda b: b["tool_choice"] == {"type": "tool", "name": "json_response"},
    ),
    (
        "openai.responses",
        {"reasoning": {"effort": "low"}, "max_output_tokens": 50},
        "anthropic",
        lambda b: (
            b["thinking"] == {"type": "enabled", "budget_tokens": 1024} and b["max_tokens"] == 1074
        ),
    ),
]


@pytest.mark.parametrize(
    ("api", "extra", "family", "check"),
    MAPPED,
    ids=[f"{a}-{next(iter(e))}-{f}" for a, e, f, _ in MAPPED],
)
def test_mapped(
    api: str, extra: dict[str, Any], family: str, check: Callable[[dict[str, Any]], bool]
) -> None:
    assert check(translate(api, family, extra))


# (client API, field and value, upstream family, the parameter the 400 names)
REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    ("openai.chat", {"n": 2}, "anthropic", "n"),
    ("openai.chat", {"n": 3}, "ollama", "n"),
    ("openai.chat", {"n": 2}, "gigachat", "n"),
    (
        "openai.chat",
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "array"}}}},
        "anthropic",
        "response_format",
    ),
    ("anthropic.messages", {"top_k": 40}, "openai", "top_k"),
    ("anthropic.messages", {"top_k": 40}, "gigachat", "top_k"),
]


@pytest.mark.parametrize(
    ("api", "extra", "family", "param"),
    REFUSED,
    ids=[f"{a}-{next(iter(e))}-{f}" for a, e, f, _ in REFUSED],
)
def test_refused(api: str, extra: dict[str, Any], family: str, param: str) -> None:
    with pytest.raises(TranslationError) as caught:
        translate(api, family, extra)
    assert caught.value.param == param


def test_hosted_responses_tools_are_dropped_for_other_families() -> None:
    # NOTE: named in x-interlock-dropped-params by the gateway (tests/test_responses_api.py)
    body = translate("openai.responses", "anthropic", {"tools": [{"type": "web_search"}]})
    assert not body.get("tools")


# --- through the SDKs -----------------------------------------------------------------------


@pytest.fixture
def gw(served: Callable[[str], ServedGateway], upstream_reset: MockUpstream) -> ServedGateway:
    return served(two_protocol_config(upstream_reset))


CHAT_MESSAGES: list[MessageParam] = [{"role": "user", "content": "where?"}]


def test_openai_n_above_1_to_anthropic_is_a_400(
    gw: ServedGateway, upstream_reset: MockUpstream
) -> None:
    with (
        openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0) as client,
        pytest.raises(openai.BadRequestError) as caught,
    ):
        client.chat.completions.create(
            model="to-anthropic", messages=[{"role": "user", "content": "hi"}], n=2
        )
    assert caught.value.param == "n"
    assert upstream_reset.requests == []


def test_openai_json_schema_to_anthropic_comes_back_as_json(gw: ServedGateway) -> None:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0) as client:
        reply = client.chat.completions.create(
            model="to-anthropic",
            messages=[{"role": "user", "content": "where?"}],
            response_format={"type": "json_schema", "json_schema": {"name": "W", "schema": SCHEMA}},
        )
    choice = reply.choices[0]
    assert json.loads(choice.message.content or "") == {"city": "Paris"}
    assert choice.finish_reason == "stop" and not choice.message.tool_calls


def test_anthropic_top_k_to_openai_is_a_400(gw: ServedGateway) -> None:
    with (
        anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0) as client,
        pytest.raises(anthropic.BadRequestError) as caught,
    ):
        client.messages.create(
            model="to-openai", max_tokens=16, messages=CHAT_MESSAGES, extra_body={"top_k": 5}
        )
    assert "top_k" in str(caught.value)


def test_anthropic_output_format_to_openai_is_a_response_format(
    gw: ServedGateway, upstream_reset: MockUpstream
) -> None:
    with anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0) as client:
        reply = client.messages.create(
            model="to-openai",
            max_tokens=64,
            messages=CHAT_MESSAGES,
            extra_body={"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
        )
    assert reply.content[0].type == "text"
    assert json.loads(reply.content[0].text) == {"city": "Paris"}
    sent = upstream_reset.last_request("/v1/chat/completions").body
    assert sent["response_format"]["json_schema"]["schema"] == SCHEMA
