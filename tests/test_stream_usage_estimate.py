"""Usage from the first event: a translated Anthropic stream's ``message_start`` carries an
estimate of the prompt's tokens (older Anthropic SDKs end ``get_final_message()`` with that
value), and the final ``message_delta`` carries the upstream's exact count.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import pytest
from anthropic.types import MessageParam

from runtime.translate.anthropic import (
    OpenAIToAnthropicStream,
    count_request_chars,
    estimate_tokens,
)
from tests.served import ServedGateway
from tests.upstreams import MockUpstream

SYSTEM = "You are a terse assistant who answers in one short sentence."
CHAT: list[MessageParam] = [
    {"role": "user", "content": "what is the capital of France, and why is it that city?"}
]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_message_start_reports_the_estimate_and_message_delta_the_exact_count() -> None:
    stream = OpenAIToAnthropicStream("m", message_id="msg_1", input_tokens=42)
    (name, start), *_ = stream.feed(_chunk({"role": "assistant", "content": "Hi"}))
    assert name == "message_start"
    assert start["message"]["usage"] == {"input_tokens": 42, "output_tokens": 0}
    stream.feed(_chunk({}, "stop"))
    events = stream.feed({"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 2}})
    delta = next(data for name, data in events if name == "message_delta")
    assert delta["usage"] == {"input_tokens": 30, "output_tokens": 2}


def test_without_upstream_usage_the_estimate_stays_to_the_end() -> None:
    stream = OpenAIToAnthropicStream("m", message_id="msg_1", input_tokens=9)
    stream.feed(_chunk({"content": "Hi"}, "stop"))
    delta = next(data for name, data in stream.finish() if name == "message_delta")
    assert delta["usage"] == {"input_tokens": 9, "output_tokens": 0}


@pytest.fixture
def gw(served: Callable[[str], ServedGateway], upstream_reset: MockUpstream) -> ServedGateway:
    up = upstream_reset
    return served(
        json.dumps(
            {
                "version": 1,
                "upstreams": {
                    "oai": {"kind": "openai", "base_url": up.base_url("openai"), "api_key": "k"},
                    "olla": {"kind": "ollama", "base_url": up.url},
                },
                "models": {
                    "to-openai": {"targets": [{"upstream": "oai", "model": "gpt-up"}]},
                    "to-ollama": {"targets": [{"upstream": "olla", "model": "llama-up"}]},
                },
            }
        )
    )


@pytest.mark.parametrize("model", ["to-openai", "to-ollama"])
def test_translated_streams_report_input_tokens_from_the_first_event(
    gw: ServedGateway, model: str
) -> None:
    body = {"system": SYSTEM, "messages": CHAT}
    estimate = estimate_tokens(count_request_chars(body))
    exact = len(SYSTEM.split()) + len(str(CHAT[0]["content"]).split())  # the mock counts words
    with anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0) as client:
        events = list(
            client.messages.create(
                model=model, max_tokens=64, system=SYSTEM, messages=CHAT, stream=True
            )
        )
    start, last_delta = events[0], [e for e in events if e.type == "message_delta"][-1]
    assert start.type == "message_start"
    assert start.message.usage.input_tokens == estimate > exact
    assert last_delta.usage.input_tokens == exact
    with (
        anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0) as client,
        client.messages.stream(model=model, max_tokens=64, system=SYSTEM, messages=CHAT) as s,
    ):
        assert s.get_final_message().usage.input_tokens == exact
