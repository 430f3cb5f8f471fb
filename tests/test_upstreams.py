"""The mock upstreams speak the real protocols: the official SDKs and raw httpx parse them."""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion
from openai.types.chat.chat_completion_message_function_tool_call import Function

from tests.upstreams import (
    GIGACHAT_CREDENTIALS,
    CloseMidStream,
    Delay,
    Hang,
    Malformed,
    MockUpstream,
    Reply,
    SlowBody,
    SlowStream,
    Status,
    StreamError,
    example_arguments,
)

# NOTE: conftest may register it too; pytest imports a plugin module once.
pytest_plugins = ["tests.fixtures_upstreams"]

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city"],
}
OPENAI_TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
ANTHROPIC_TOOLS: list[Any] = [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}]
USER_HI: list[Any] = [{"role": "user", "content": "hello there"}]
OPENAI_AUTH = {"authorization": "Bearer sk-test"}
ANTHROPIC_AUTH = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}


@pytest.fixture
def up(upstream_reset: MockUpstream) -> MockUpstream:
    return upstream_reset


@pytest.fixture
def http(up: MockUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=up.url, timeout=5.0) as client:
        yield client


@pytest.fixture
def oai(up: MockUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=up.base_url("openai"), api_key="sk-test", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(up: MockUpstream) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=up.url, api_key="sk-ant-test", max_retries=0) as client:
        yield client


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """'event: a\\ndata: {}\\n\\n' -> [('a', '{}')]"""
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            events.append((fields.get("event"), fields["data"]))
    return events


def first_function(reply: ChatCompletion) -> Function:
    calls = reply.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].type == "function"
    return calls[0].function


def gigachat_token(http: httpx.Client, credentials: str = GIGACHAT_CREDENTIALS) -> httpx.Response:
    headers = {
        "authorization": f"Basic {credentials}",
        "rquid": "6f0b1291-c7f3-43c6-bb2e-9f3efb2dc98e",
    }
    return http.post("/api/v2/oauth", headers=headers, data={"scope": "GIGACHAT_API_PERS"})


# --- OpenAI ----------------------------------------------------------------------------------


def test_openai_chat_echoes_the_last_user_message_with_word_usage(
    up: MockUpstream, oai: openai.OpenAI
) -> None:
    messages: list[Any] = [{"role": "system", "content": "be brief"}, *USER_HI]
    reply = oai.chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 3)
    recorded = up.last_request("/v1/chat/completions")
    assert recorded.headers["authorization"] == "Bearer sk-test"
    assert recorded.body["messages"] == messages


def test_openai_stream_splits_text_and_ends_with_a_usage_chunk(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="m", messages=USER_HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 3
    assert "".join(pieces) == "echo: hello there"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 5
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_openai_stream_without_include_usage_has_no_usage_and_ends_with_done(
    http: httpx.Client,
) -> None:
    body = {"model": "m", "messages": USER_HI, "stream": True}
    response = http.post("/v1/chat/completions", headers=OPENAI_AUTH, json=body)

    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == (None, "[DONE]")
    assert all("usage" not in json.loads(data) for _, data in events[:-1])


def test_openai_tool_call_uses_schema_valid_arguments(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(model="m", messages=USER_HI, tools=OPENAI_TOOLS)

    function = first_function(reply)
    assert reply.choices[0].finish_reason == "tool_calls"
    assert function.name == "get_weather"
    assert json.loads(function.arguments) == {"city": "Paris"}


def test_openai_streamed_tool_call_splits_arguments(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="m", messages=USER_HI, tools=OPENAI_TOOLS, stream=True
    )
    deltas = [c.choices[0].delta for c in stream if c.choices]

    argument_parts = [
        d.tool_calls[0].function.arguments
        for d in deltas
        if d.tool_calls and d.tool_calls[0].function and d.tool_calls[0].function.arguments
    ]
    assert len(argument_parts) >= 2
    assert json.loads("".join(argument_parts)) == {"city": "Paris"}
    first = deltas[0].tool_calls
    assert first is not None and first[0].function is not None
    assert first[0].function.name == "get_weather"


def test_openai_answers_with_text_after_a_tool_result_or_when_tools_are_off(
    oai: openai.OpenAI,
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    after_tool: list[Any] = [
        *USER_HI,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    answered = oai.chat.completions.create(model="m", messages=after_tool, tools=OPENAI_TOOLS)
    disabled = oai.chat.completions.create(
        model="m", messages=USER_HI, tools=OPENAI_TOOLS, tool_choice="none"
    )
    forced = oai.chat.completions.create(
        model="m",
        messages=USER_HI,
        tools=OPENAI_TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )

    assert answered.choices[0].message.content == "echo: hello there"
    assert disabled.choices[0].message.content == "echo: hello there"
    assert first_function(forced).name == "get_time"


def test_openai_legacy_completions(oai: openai.OpenAI) -> None:
    plain = oai.completions.create(model="m", prompt="say it")
    streamed = list(oai.completions.create(model="m", prompt="say it", stream=True))

    assert plain.choices[0].text == "echo: say it"
    assert "".join(c.choices[0].text for c in streamed) == "echo: say it"
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_openai_embeddings_are_deterministic_in_base64_and_float(
    oai: openai.OpenAI, http: httpx.Client
) -> None:
    via_sdk = oai.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    body = {"model": "e", "input": "a b", "encoding_format": "float", "dimensions": 8}
    raw = http.post("/v1/embeddings", headers=OPENAI_AUTH, json=body).json()

    assert [d.index for d in via_sdk.data] == [0, 1]
    assert via_sdk.data[0].embedding == raw["data"][0]["embedding"]
    assert len(raw["data"][0]["embedding"]) == 8
    assert via_sdk.usage.prompt_tokens == 3
    packed = http.post(
        "/v1/embeddings", headers=OPENAI_AUTH, json={**body, "encoding_format": "base64"}
    ).json()["data"][0]["embedding"]
    assert list(struct.unpack("<8f", base64.b64decode(packed))) == raw["data"][0]["embedding"]


def test_openai_models_list(oai: openai.OpenAI) -> None:
    assert "gpt-4o-mini" in [m.id for m in oai.models.list()]


def test_openai_requires_a_bearer_key_and_checks_required_key(
    http: httpx.Client, make_upstream: Callable[..., MockUpstream]
) -> None:
    missing = http.post("/v1/chat/completions", json={"model": "m", "messages": USER_HI})
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "invalid_request_error"

    strict = make_upstream(required_key="sk-right")
    with (
        openai.OpenAI(base_url=strict.base_url("openai"), api_key="sk-wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError) as error,
    ):
        bad.chat.completions.create(model="m", messages=USER_HI)
    assert error.value.code == "invalid_api_key"
    with openai.OpenAI(base_url=strict.base_url("openai"), api_key="sk-right") as good:
        assert good.models.list().data


# --- Anthropic -------------------------------------------------------------------------------


def test_anthropic_message_echoes_with_usage(up: MockUpstream, claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="claude-x", max_tokens=64, system="be brief", messages=USER_HI
    )

    assert message.content[0].type == "text"
    assert message.content[0].text == "echo: hello there"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 3)
    assert "anthropic-version" in up.last_request("/v1/messages").headers


def test_anthropic_stream_has_the_named_event_sequence(
    http: httpx.Client, claude: anthropic.Anthropic
) -> None:
    body = {"model": "c", "max_tokens": 8, "messages": USER_HI, "stream": True}
    events = sse_events(http.post("/v1/messages", headers=ANTHROPIC_AUTH, json=body).text)
    names = [name for name, _ in events]

    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert names.count("content_block_delta") >= 3
    assert all(json.loads(data)["type"] == name for name, data in events)
    with claude.messages.stream(model="c", max_tokens=8, messages=USER_HI) as stream:
        assert stream.get_final_text() == "echo: hello there"


def test_anthropic_streamed_tool_use_splits_input_json(
    http: httpx.Client, claude: anthropic.Anthropic
) -> None:
    with claude.messages.stream(
        model="c", max_tokens=64, tools=ANTHROPIC_TOOLS, messages=USER_HI
    ) as stream:
        final = stream.get_final_message()
    body = {"model": "c", "max_tokens": 8, "messages": USER_HI, "stream": True}
    events = sse_events(
        http.post(
            "/v1/messages", headers=ANTHROPIC_AUTH, json={**body, "tools": ANTHROPIC_TOOLS}
        ).text
    )

    assert final.stop_reason == "tool_use"
    block = final.content[0]
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("get_weather", {"city": "Paris"})
    partials = [json.loads(d)["delta"] for n, d in events if n == "content_block_delta"]
    assert len(partials) >= 2
    assert {p["type"] for p in partials} == {"input_json_delta"}


def test_anthropic_answers_a_tool_result_with_text(claude: anthropic.Anthropic) -> None:
    use = {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}
    messages: list[Any] = [
        *USER_HI,
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [result]},
    ]
    message = claude.messages.create(
        model="c", max_tokens=8, tools=ANTHROPIC_TOOLS, messages=messages
    )

    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"


def test_anthropic_count_tokens(claude: anthropic.Anthropic) -> None:
    count = claude.messages.count_tokens(model="c", system="be brief", messages=USER_HI)

    assert count.input_tokens == 4


def test_anthropic_rejects_missing_credentials_version_and_max_tokens(
    http: httpx.Client, make_upstream: Callable[..., MockUpstream]
) -> None:
    body = {"model": "c", "max_tokens": 8, "messages": USER_HI}
    no_key = http.post("/v1/messages", headers={"anthropic-version": "2023-06-01"}, json=body)
    no_version = http.post("/v1/messages", headers={"x-api-key": "k"}, json=body)
    no_max = http.post("/v1/messages", headers=ANTHROPIC_AUTH, json={**body, "max_tokens": None})

    assert no_key.status_code == 401
    assert no_key.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "x-api-key header is required"},
    }
    assert no_version.status_code == 400
    assert no_version.json()["error"]["type"] == "invalid_request_error"
    assert no_max.status_code == 400
    strict = make_upstream(required_key="sk-ant-right")
    wrong_key = anthropic.Anthropic(base_url=strict.url, api_key="sk-ant-wrong", max_retries=0)
    with wrong_key as bad, pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="c", max_tokens=8, messages=USER_HI)


# --- Ollama ----------------------------------------------------------------------------------


def test_ollama_chat_streams_ndjson_by_default(http: httpx.Client) -> None:
    response = http.post("/api/chat", json={"model": "llama3.2", "messages": USER_HI})
    lines = [json.loads(line) for line in response.text.splitlines()]

    assert response.headers["content-type"] == "application/x-ndjson"
    assert len(lines) >= 4
    assert not any(line["done"] for line in lines[:-1])
    assert "".join(line["message"]["content"] for line in lines) == "echo: hello there"
    assert lines[-1]["done_reason"] == "stop"
    assert (lines[-1]["prompt_eval_count"], lines[-1]["eval_count"]) == (2, 3)


def test_ollama_chat_tool_call_has_object_arguments(http: httpx.Client) -> None:
    body = {"model": "m", "messages": USER_HI, "tools": OPENAI_TOOLS, "stream": False}
    reply = http.post("/api/chat", json=body).json()

    assert reply["done"] is True
    function = reply["message"]["tool_calls"][0]["function"]
    assert function == {"name": "get_weather", "arguments": {"city": "Paris"}}


def test_ollama_generate_embed_and_tags(http: httpx.Client) -> None:
    generated = http.post("/api/generate", json={"model": "m", "prompt": "go", "stream": False})
    streamed = http.post("/api/generate", json={"model": "m", "prompt": "go"}).text.splitlines()
    embedded = http.post("/api/embed", json={"model": "m", "input": ["a", "b c"]}).json()
    tags = http.get("/api/tags").json()

    assert generated.json()["response"] == "echo: go"
    assert "".join(json.loads(line)["response"] for line in streamed) == "echo: go"
    assert [len(e) for e in embedded["embeddings"]] == [8, 8]
    assert embedded["prompt_eval_count"] == 3
    assert tags["models"][0]["name"] == "llama3.2:latest"


# --- GigaChat --------------------------------------------------------------------------------


def test_gigachat_oauth_then_chat_with_the_bearer_token(
    up: MockUpstream, http: httpx.Client
) -> None:
    token = gigachat_token(http).json()
    auth = {"authorization": f"Bearer {token['access_token']}"}
    body = {"model": "GigaChat", "messages": USER_HI}
    reply = http.post("/api/v1/chat/completions", headers=auth, json=body).json()
    streamed = http.post("/api/v1/chat/completions", headers=auth, json={**body, "stream": True})
    models = http.get("/api/v1/models", headers=auth).json()

    assert token["expires_at"] > time.time() * 1000 + 1_700_000
    assert up.oauth_calls == 1
    assert up.last_request("/api/v2/oauth").body == {"scope": "GIGACHAT_API_PERS"}
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": "echo: hello there"}
    assert reply["object"] == "chat.completion"
    events = sse_events(streamed.text)
    assert events[-1] == (None, "[DONE]")
    deltas = [json.loads(data)["choices"][0]["delta"] for _, data in events[:-1]]
    assert "".join(d["content"] for d in deltas) == "echo: hello there"
    assert models["data"][0]["owned_by"] == "salutedevices"


def test_gigachat_function_call_has_object_arguments(http: httpx.Client) -> None:
    token = gigachat_token(http).json()["access_token"]
    functions = [{"name": "get_weather", "parameters": WEATHER_SCHEMA}]
    body = {"model": "GigaChat", "messages": USER_HI, "functions": functions}
    reply = http.post(
        "/api/v1/chat/completions", headers={"authorization": f"Bearer {token}"}, json=body
    ).json()

    choice = reply["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"] == {
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }


def test_gigachat_rejects_bad_oauth_and_missing_bearer(
    up: MockUpstream, http: httpx.Client
) -> None:
    wrong = gigachat_token(http, credentials="bm9wZTpub3Bl")
    no_rquid = http.post(
        "/api/v2/oauth",
        headers={"authorization": f"Basic {GIGACHAT_CREDENTIALS}"},
        data={"scope": "GIGACHAT_API_PERS"},
    )
    bad_scope = http.post(
        "/api/v2/oauth",
        headers={"authorization": f"Basic {GIGACHAT_CREDENTIALS}", "rquid": "0" * 36},
        data={"scope": "NOPE"},
    )
    anonymous = http.post("/api/v1/chat/completions", json={"messages": USER_HI})

    assert wrong.status_code == 401
    assert no_rquid.status_code == 400
    assert bad_scope.status_code == 400
    assert anonymous.status_code == 401
    assert anonymous.json() == {"status": 401, "message": "Unauthorized"}
    assert up.oauth_calls == 3


def test_gigachat_tokens_expire(make_upstream: Callable[..., MockUpstream]) -> None:
    server = make_upstream(gigachat_token_ttl_s=0.5)
    body = {"messages": USER_HI}
    with httpx.Client(base_url=server.url) as http:
        issued = gigachat_token(http).json()
        auth = {"authorization": f"Bearer {issued['access_token']}"}
        fresh = http.post("/api/v1/chat/completions", headers=auth, json=body)
        time.sleep(max(0.0, issued["expires_at"] / 1000 - time.time()) + 0.05)
        stale = http.post("/api/v1/chat/completions", headers=auth, json=body)
        server.gigachat_token_ttl_s = 60.0
        renewed = {"authorization": f"Bearer {gigachat_token(http).json()['access_token']}"}
        before = http.post("/api/v1/chat/completions", headers=renewed, json=body)
        server.expire_tokens()
        after = http.post("/api/v1/chat/completions", headers=renewed, json=body)

    assert [r.status_code for r in (fresh, stale, before, after)] == [200, 401, 200, 401]
    assert server.oauth_calls == 2


# --- Scripted behaviours ---------------------------------------------------------------------


def test_status_is_consumed_once_then_default(up: MockUpstream, oai: openai.OpenAI) -> None:
    up.script("openai", Status(503, headers={"Retry-After": "1"}))

    with pytest.raises(openai.InternalServerError) as error:
        oai.chat.completions.create(model="m", messages=USER_HI)
    assert error.value.status_code == 503
    assert error.value.response.headers["retry-after"] == "1"
    assert error.value.body == {
        "message": "Service Unavailable",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert oai.chat.completions.create(model="m", messages=USER_HI).choices[0].message.content
    assert up.pending() == 0


def test_status_uses_the_protocol_error_shape_or_a_raw_body(
    up: MockUpstream, claude: anthropic.Anthropic, http: httpx.Client
) -> None:
    up.script("/v1/messages", Status(529), Status(429, body="slow down"))

    with pytest.raises(anthropic.APIStatusError) as overloaded:
        claude.messages.create(model="c", max_tokens=8, messages=USER_HI)
    raw = http.post(
        "/v1/messages", headers=ANTHROPIC_AUTH, json={"model": "c", "messages": USER_HI}
    )

    assert overloaded.value.status_code == 529
    assert overloaded.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert (raw.status_code, raw.text) == (429, "slow down")


def test_script_precedence_is_path_then_protocol_then_any(
    up: MockUpstream, http: httpx.Client
) -> None:
    up.script("*", Status(500))
    up.script("ollama", Status(502))
    up.script("/api/tags", Status(504))

    codes = [http.get("/api/tags").status_code for _ in range(4)]

    assert codes == [504, 502, 500, 200]


def test_script_rejects_unknown_targets_with_a_hint(up: MockUpstream) -> None:
    with pytest.raises(ValueError, match="did you mean '/v1/chat/completions'"):
        up.script("/v1/chat/completion", Status(500))


def test_refused_requests_do_not_consume_scripts(up: MockUpstream, http: httpx.Client) -> None:
    up.script("openai", Status(500))

    refused = http.get("/v1/models")
    served = http.get("/v1/models", headers=OPENAI_AUTH)

    assert (refused.status_code, served.status_code) == (401, 500)


def test_delay_before_headers_trips_a_first_byte_timeout_and_counts_a_cancel(
    up: MockUpstream, http: httpx.Client
) -> None:
    up.script("/api/tags", Delay(2.0), Delay(0.1, then=Status(500)))

    with pytest.raises(httpx.ReadTimeout):
        http.get("/api/tags", timeout=0.2)
    assert up.wait_cancelled(1, timeout=2.0)
    started = time.monotonic()
    delayed = http.get("/api/tags")

    assert delayed.status_code == 500
    assert time.monotonic() - started >= 0.1


def test_slow_body_trips_a_read_timeout_after_the_headers(
    up: MockUpstream, http: httpx.Client
) -> None:
    up.script("/api/tags", SlowBody(0.5), SlowBody(0.02, chunks=5))

    with (
        pytest.raises(httpx.ReadTimeout),
        http.stream("GET", "/api/tags", timeout=0.25) as response,
    ):
        assert response.status_code == 200
        response.read()
    assert http.get("/api/tags").json()["models"]


def test_malformed_bodies_and_events(
    up: MockUpstream, oai: openai.OpenAI, http: httpx.Client
) -> None:
    up.script("openai", Malformed(), Malformed())

    with pytest.raises(ValueError, match="Expecting value"):  # the SDK surfaces the JSON error
        oai.models.list()
    body = {"model": "m", "messages": USER_HI, "stream": True}
    events = sse_events(http.post("/v1/chat/completions", headers=OPENAI_AUTH, json=body).text)

    assert len(events) == 2
    json.loads(events[0][1])
    with pytest.raises(ValueError):
        json.loads(events[1][1])


def test_close_mid_stream_drops_the_connection_without_a_terminator(
    up: MockUpstream, http: httpx.Client, oai: openai.OpenAI
) -> None:
    up.script(
        "/v1/chat/completions", CloseMidStream(after_events=2), CloseMidStream(after_events=2)
    )
    body = {"model": "m", "messages": USER_HI, "stream": True}
    received = b""

    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", "/v1/chat/completions", headers=OPENAI_AUTH, json=body) as response,
    ):
        for chunk in response.iter_bytes():
            received += chunk
    with pytest.raises(openai.APIConnectionError):
        list(oai.chat.completions.create(model="m", messages=USER_HI, stream=True))

    assert len(sse_events(received.decode())) == 2
    assert b"[DONE]" not in received


def test_a_client_abandoning_a_slow_stream_is_counted(up: MockUpstream, http: httpx.Client) -> None:
    up.script("anthropic", SlowStream(events=100, interval_s=0.02))
    body = {"model": "c", "max_tokens": 8, "messages": USER_HI, "stream": True}

    with http.stream("POST", "/v1/messages", headers=ANTHROPIC_AUTH, json=body) as response:
        lines = response.iter_lines()
        seen = [next(lines) for _ in range(12)]

    assert "event: content_block_delta" in seen
    assert up.wait_cancelled(1, timeout=2.0)


def test_hang_ends_when_the_client_gives_up(up: MockUpstream, http: httpx.Client) -> None:
    up.script("gigachat", Hang())
    token = gigachat_token(http).json()["access_token"]

    with pytest.raises(httpx.ReadTimeout):
        http.get("/api/v1/models", headers={"authorization": f"Bearer {token}"}, timeout=0.2)

    assert up.wait_cancelled(1, timeout=2.0)


def test_stream_errors_in_each_protocol(
    up: MockUpstream, oai: openai.OpenAI, claude: anthropic.Anthropic, http: httpx.Client
) -> None:
    up.script("*", StreamError(after_events=1), StreamError(after_events=2), StreamError())

    with pytest.raises(openai.APIError, match="Overloaded"):
        list(oai.chat.completions.create(model="m", messages=USER_HI, stream=True))
    overloaded = pytest.raises(anthropic.APIStatusError, match="overloaded_error")
    with overloaded, claude.messages.stream(model="c", max_tokens=8, messages=USER_HI) as stream:
        stream.get_final_message()
    lines = http.post("/api/chat", json={"model": "m", "messages": USER_HI}).text.splitlines()

    assert json.loads(lines[-1]) == {"error": "Overloaded"}


def test_reply_overrides_the_answer(up: MockUpstream, oai: openai.OpenAI) -> None:
    up.script(
        "openai",
        Reply(text="custom words here"),
        Reply(tool="get_weather", arguments={"city": "Rome"}),
    )

    text = oai.chat.completions.create(model="m", messages=USER_HI, tools=OPENAI_TOOLS)
    tool = oai.chat.completions.create(model="m", messages=USER_HI)

    assert text.choices[0].message.content == "custom words here"
    assert json.loads(first_function(tool).arguments) == {"city": "Rome"}


def test_scripts_are_consumed_exactly_once_under_concurrency(up: MockUpstream) -> None:
    up.script("ollama", *[Status(500)] * 5)
    codes: list[int] = []

    def call() -> None:
        with httpx.Client(base_url=up.url) as client:
            codes.append(client.get("/api/tags").status_code)

    threads = [threading.Thread(target=call) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(codes) == [200] * 5 + [500] * 5
    assert len(up.wait_for_requests(10, "ollama")) == 10


# --- Recording, lifecycle, helpers -----------------------------------------------------------


def test_records_lowercased_headers_parsed_or_raw_bodies_and_resets(
    up: MockUpstream, http: httpx.Client
) -> None:
    http.post("/api/chat", headers={"X-Trace": "t1"}, json={"model": "m", "messages": USER_HI})
    not_json = http.post(
        "/api/chat", content=b"\x00not json", headers={"content-type": "text/plain"}
    )
    http.get("/api/tags?verbose=1")

    chat, raw, tags = up.requests
    assert chat.headers["x-trace"] == "t1"
    assert (chat.method, chat.path, chat.protocol) == ("POST", "/api/chat", "ollama")
    assert chat.body["model"] == "m"
    assert not_json.status_code == 400
    assert raw.body == raw.raw == b"\x00not json"
    assert (tags.query, tags.body) == ("verbose=1", None)
    assert chat.time <= raw.time <= tags.time
    up.gigachat_token_ttl_s = 1.0
    up.reset()
    assert (up.requests, up.gigachat_token_ttl_s, up.cancelled) == ([], 1800.0, 0)


def test_base_urls_per_protocol(up: MockUpstream) -> None:
    assert up.base_url("openai") == f"{up.url}/v1"
    assert up.base_url("gigachat") == f"{up.url}/api/v1"
    assert up.base_url("gigachat-oauth") == f"{up.url}/api/v2/oauth"
    assert up.url.startswith("http://127.0.0.1:")


def test_stop_interrupts_a_hanging_request_promptly(
    make_upstream: Callable[..., MockUpstream],
) -> None:
    server = make_upstream()
    server.script("/api/tags", Hang())
    outcome: list[object] = []

    def call() -> None:
        with httpx.Client(base_url=server.url, timeout=5.0) as client:
            try:
                outcome.append(client.get("/api/tags").status_code)
            except httpx.HTTPError as error:
                outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    server.wait_for_requests(1)
    started = time.monotonic()
    server.stop()
    caller.join(timeout=5.0)

    assert time.monotonic() - started < 2.0
    assert outcome and outcome[0] != 200
    assert server.cancelled == 0


def test_factory_servers_are_independent(
    upstream: MockUpstream, make_upstream: Callable[..., MockUpstream]
) -> None:
    first, second = make_upstream(), make_upstream()

    assert len({upstream.url, first.url, second.url}) == 3
    with httpx.Client() as client:
        client.get(f"{first.url}/api/tags")
    assert (len(first.requests), len(second.requests)) == (1, 0)


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        (WEATHER_SCHEMA, {"city": "Paris"}),
        (None, {}),
        ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}}}, {"n": 3}),
        (
            {"properties": {"tags": {"type": "array", "items": {"enum": ["x", "y"]}}}},
            {"tags": ["x"]},
        ),
        (
            {"properties": {"when": {"anyOf": [{"type": "boolean"}, {"type": "string"}]}}},
            {"when": True},
        ),
        ({"properties": {"loc": {"type": ["null", "object"], "properties": {}}}}, {"loc": {}}),
    ],
)
def test_example_arguments_fit_the_schema(schema: Any, expected: dict[str, Any]) -> None:
    assert example_arguments(schema) == expected
