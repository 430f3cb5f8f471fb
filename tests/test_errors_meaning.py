"""Errors that keep their meaning across protocols, through both official SDKs.

An Anthropic upstream's 529 reaches Anthropic clients as 529 ``overloaded_error`` (so code that
catches ``anthropic.OverloadedError`` sees it) and OpenAI clients as 503
``service_unavailable_error``; the other error types both APIs have map one to one, in bodies and
in the middle of a stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import anthropic
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from tests.served import ServedGateway
from tests.upstreams import MockUpstream, Status, StreamError

Served = Callable[[str], ServedGateway]
ANT_CHAT: list[MessageParam] = [{"role": "user", "content": "hello there"}]
OAI_CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


def _config(up: MockUpstream, retry: dict[str, object] | None = None) -> str:
    anthropic_upstream: dict[str, object] = {
        "kind": "anthropic",
        "base_url": up.url,
        "api_key": "sk-ant-x",
    }
    if retry is not None:
        anthropic_upstream["retry"] = retry
    return json.dumps(
        {
            "version": 1,
            "upstreams": {
                "ant": anthropic_upstream,
                "oai": {"kind": "openai", "base_url": up.base_url("openai"), "api_key": "sk-x"},
            },
            "models": {
                "to-anthropic": {"targets": [{"upstream": "ant", "model": "claude-up"}]},
                "to-openai": {"targets": [{"upstream": "oai", "model": "gpt-up"}]},
            },
        }
    )


@pytest.fixture
def up(upstream_reset: MockUpstream) -> MockUpstream:
    return upstream_reset


@pytest.fixture
def gw(served: Served, up: MockUpstream) -> ServedGateway:
    return served(_config(up))


def _anthropic(gw: ServedGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)


def _openai(gw: ServedGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)


def _stream_to_the_end(gw: ServedGateway, model: str) -> None:
    with (
        _anthropic(gw) as client,
        client.messages.stream(model=model, max_tokens=16, messages=ANT_CHAT) as stream,
    ):
        stream.get_final_message()


# --- 529 -----------------------------------------------------------------------------------


def test_upstream_529_is_an_overloaded_error_for_anthropic_clients(
    gw: ServedGateway, up: MockUpstream
) -> None:
    up.script("anthropic", Status(529))
    with _anthropic(gw) as client, pytest.raises(anthropic.OverloadedError) as caught:
        client.messages.create(model="to-anthropic", max_tokens=16, messages=ANT_CHAT)
    assert caught.value.status_code == 529
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "overloaded_error"
    assert caught.value.response.headers["x-should-retry"] == "false"


def test_upstream_529_is_a_503_for_openai_clients(gw: ServedGateway, up: MockUpstream) -> None:
    up.script("anthropic", Status(529))
    with _openai(gw) as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="to-anthropic", messages=OAI_CHAT)
    assert caught.value.status_code == 503
    assert caught.value.type == "service_unavailable_error"
    assert caught.value.code == "upstream_overloaded"


def test_a_streamed_request_meeting_529_is_an_overloaded_error(
    gw: ServedGateway, up: MockUpstream
) -> None:
    up.script("anthropic", Status(529))
    with pytest.raises(anthropic.OverloadedError):
        _stream_to_the_end(gw, "to-anthropic")


def test_529_is_retried_when_the_policy_says_so(served: Served, up: MockUpstream) -> None:
    gw = served(
        _config(up, retry={"attempts": 2, "on_status": [529], "backoff": {"initial_ms": 1}})
    )
    up.script("anthropic", Status(529))
    with _anthropic(gw) as client:
        reply = client.messages.create(model="to-anthropic", max_tokens=16, messages=ANT_CHAT)
    assert reply.content[0].type == "text" and reply.content[0].text == "echo: hello there"
    assert len(up.requests_to("anthropic")) == 2


def test_other_5xx_stay_502_upstream_errors(gw: ServedGateway, up: MockUpstream) -> None:
    up.script("anthropic", Status(500))
    with _anthropic(gw) as client, pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model="to-anthropic", max_tokens=16, messages=ANT_CHAT)
    assert caught.value.status_code == 502
    assert not isinstance(caught.value, anthropic.OverloadedError)


# --- mid-stream ----------------------------------------------------------------------------


def test_overloaded_mid_stream_reaches_anthropic_clients_with_its_type(
    gw: ServedGateway, up: MockUpstream
) -> None:
    up.script("anthropic", StreamError(after_events=2))
    with pytest.raises(anthropic.APIStatusError) as caught:
        _stream_to_the_end(gw, "to-anthropic")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "overloaded_error"


def test_anthropic_overloaded_mid_stream_reaches_openai_clients_as_unavailable(
    gw: ServedGateway, up: MockUpstream
) -> None:
    up.script("anthropic", StreamError(after_events=2))
    with _openai(gw) as client, pytest.raises(openai.APIError) as caught:
        for _ in client.chat.completions.create(
            model="to-anthropic",
            messages=OAI_CHAT,
            stream=True,
        ):
            pass
    assert caught.value.type == "service_unavailable_error"
    assert caught.value.code == "overloaded_error"


def test_openai_unavailable_mid_stream_reaches_anthropic_clients_as_overloaded(
    gw: ServedGateway, up: MockUpstream
) -> None:
    up.script("openai", StreamError(after_events=2, error_type="service_unavailable_error"))
    with pytest.raises(anthropic.APIStatusError) as caught:
        _stream_to_the_end(gw, "to-openai")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}


# --- one to one ----------------------------------------------------------------------------

# upstream status -> (Anthropic client's exception and type, OpenAI client's exception and type)
ONE_TO_ONE = [
    (400, anthropic.BadRequestError, "invalid_request_error", openai.BadRequestError),
    (402, anthropic.APIStatusError, "billing_error", openai.APIStatusError),
    (404, anthropic.NotFoundError, "not_found_error", openai.NotFoundError),
    (413, anthropic.APIStatusError, "request_too_large", openai.APIStatusError),
    (429, anthropic.RateLimitError, "rate_limit_error", openai.RateLimitError),
]


@pytest.mark.parametrize(("status", "ant_error", "ant_type", "oai_error"), ONE_TO_ONE)
def test_openai_upstream_errors_map_one_to_one_for_anthropic_clients(
    gw: ServedGateway,
    up: MockUpstream,
    status: int,
    ant_error: type[anthropic.APIStatusError],
    ant_type: str,
    oai_error: type[openai.APIStatusError],
) -> None:
    up.script("openai", Status(status))
    with _anthropic(gw) as client, pytest.raises(ant_error) as caught:
        client.messages.create(model="to-openai", max_tokens=16, messages=ANT_CHAT)
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == ant_type


@pytest.mark.parametrize(("status", "ant_error", "ant_type", "oai_error"), ONE_TO_ONE)
def test_anthropic_upstream_errors_map_one_to_one_for_openai_clients(
    gw: ServedGateway,
    up: MockUpstream,
    status: int,
    ant_error: type[anthropic.APIStatusError],
    ant_type: str,
    oai_error: type[openai.APIStatusError],
) -> None:
    up.script("anthropic", Status(status))
    with _openai(gw) as client, pytest.raises(oai_error) as caught:
        client.chat.completions.create(model="to-anthropic", messages=OAI_CHAT)
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict)
    expected = {402: "insufficient_quota", 429: "rate_limit_error"}.get(
        status, "invalid_request_error"
    )
    assert caught.value.body["type"] == expected
