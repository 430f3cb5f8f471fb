"""The official `anthropic` SDK (sync and async) against a served Interlock, in front of every
upstream kind on the loopback mock upstreams: messages (streamed or not, with tools, system
prompts, stop sequences, usage and stop_reason mapping) and count_tokens; and what Interlock
forwards to an Anthropic upstream (x-api-key, anthropic-version, request ids, exact bytes).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import httpx2  # the transport the anthropic SDK is built on
import pytest
from anthropic.types import Message, MessageTokensCount, TextBlock, ToolUseBlock

from tests.served import ServedGateway
from tests.upstreams import GIGACHAT_CREDENTIALS, MockUpstream, Status, stream_stopping_short

CLIENT_KEY = "sk-ant-client-key-that-must-stay-at-the-gateway"
UPSTREAM_KEYS = {
    "IL_TEST_OPENAI_KEY": "sk-upstream-openai",
    "IL_TEST_COMPAT_KEY": "sk-upstream-compat",
    "IL_TEST_ANTHROPIC_KEY": "sk-ant-upstream",
    "IL_TEST_GIGACHAT_CREDENTIALS": GIGACHAT_CREDENTIALS,
}
KINDS = ("openai", "compat", "anthropic", "ollama", "gigachat", "mock")
MODES = ("sync", "async")
PATHS = {
    "openai": "/v1/chat/completions",
    "compat": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "ollama": "/api/chat",
    "gigachat": "/api/v1/chat/completions",
}
SYSTEM = "Answer briefly."
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
TOOLS: list[Any] = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER}]
# message_start, then blocks (start, deltas, stop), then message_delta and message_stop
EVENT_GRAMMAR = re.compile(
    r"message_start (content_block_start (content_block_delta )*content_block_stop )+"
    r"message_delta message_stop"
)


def gateway_config(up: MockUpstream, extra: str = "") -> str:
    """One upstream of every kind; model `to-<kind>` serves target model `up-<kind>`."""
    return f"""
version: 1
upstreams:
  openai:
    kind: openai
    base_url: "{up.base_url("openai")}"
    api_key: {{env: IL_TEST_OPENAI_KEY}}
  compat:
    kind: openai-compatible
    base_url: "{up.base_url("openai")}"
    api_key: {{env: IL_TEST_COMPAT_KEY}}
  anthropic: {{kind: anthropic, base_url: "{up.url}", api_key: {{env: IL_TEST_ANTHROPIC_KEY}}}}
  ollama: {{kind: ollama, base_url: "{up.url}"}}
  gigachat:
    kind: gigachat
    base_url: "{up.base_url("gigachat")}"
    oauth:
      token_url: "{up.base_url("gigachat-oauth")}"
      credentials: {{env: IL_TEST_GIGACHAT_CREDENTIALS}}
      scope: GIGACHAT_API_PERS
  mock: {{kind: mock, mock: {{stream_chunks: 4}}}}
models:
  to-openai: {{targets: [{{upstream: openai, model: up-openai}}]}}
  to-compat: {{targets: [{{upstream: compat, model: up-compat}}]}}
  to-anthropic: {{targets: [{{upstream: anthropic, model: up-anthropic}}]}}
  to-ollama: {{targets: [{{upstream: ollama, model: up-ollama}}]}}
  to-gigachat: {{targets: [{{upstream: gigachat, model: up-gigachat}}]}}
  to-mock: {{targets: [{{upstream: mock, model: up-mock}}]}}
  pass-anthropic: {{targets: [{{upstream: anthropic}}]}}
{extra}
"""


@pytest.fixture
def up(upstream_reset: MockUpstream) -> MockUpstream:
    return upstream_reset


@pytest.fixture(scope="module")
def gw(upstream: MockUpstream) -> Iterator[ServedGateway]:
    """One gateway with the plain config for the module (tests reset the upstream)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in UPSTREAM_KEYS.items():
            patch.setenv(name, value)
        with ServedGateway(gateway_config(upstream)) as gateway:
            yield gateway


@pytest.fixture
def serve(
    served: Callable[[str], ServedGateway], up: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], ServedGateway]:
    """`serve(extra_yaml)` -> a gateway over the mock upstreams, with `extra_yaml` appended."""
    for name, value in UPSTREAM_KEYS.items():
        monkeypatch.setenv(name, value)
    return lambda extra="": served(gateway_config(up, extra))


def sdk(gw: ServedGateway, http: httpx2.Client | None = None) -> anthropic.Anthropic:
    # PERF: the gateway is plain HTTP; a default httpx client would load CA certificates (~60 ms)
    return anthropic.Anthropic(
        base_url=gw.url,
        api_key=CLIENT_KEY,
        max_retries=0,
        http_client=http or httpx2.Client(verify=False),
    )


@pytest.fixture
def client(gw: ServedGateway, up: MockUpstream) -> Iterator[anthropic.Anthropic]:
    with sdk(gw) as c:
        yield c


def call(gw: ServedGateway, mode: str, make: Callable[[Any], Any]) -> Any:
    """`make(client)` with a sync or async SDK client; a raw stream comes back as a list."""
    if mode == "sync":
        with sdk(gw) as c:
            result = make(c)
            return list(result) if isinstance(result, anthropic.Stream) else result

    async def run() -> Any:
        async with anthropic.AsyncAnthropic(
            base_url=gw.url,
            api_key=CLIENT_KEY,
            max_retries=0,
            http_client=httpx2.AsyncClient(verify=False),
        ) as c:
            result = await make(c)
            if isinstance(result, anthropic.AsyncStream):
                return [event async for event in result]
            return result

    return asyncio.run(run())


def stream_final(gw: ServedGateway, mode: str, **params: Any) -> tuple[list[Any], Message]:
    """`client.messages.stream(**params)`: every event it yields, and the final message."""
    if mode == "sync":
        with sdk(gw) as c, c.messages.stream(**params) as stream:
            events = list(stream)
            return events, stream.get_final_message()

    async def run() -> tuple[list[Any], Message]:
        async with (
            anthropic.AsyncAnthropic(
                base_url=gw.url,
                api_key=CLIENT_KEY,
                max_retries=0,
                http_client=httpx2.AsyncClient(verify=False),
            ) as c,
            c.messages.stream(**params) as stream,
        ):
            events = [event async for event in stream]
            return events, await stream.get_final_message()

    return asyncio.run(run())


def echo(kind: str, text: str) -> str:
    return f"Echo: {text}" if kind == "mock" else f"echo: {text}"


def model(kind: str) -> str:
    return f"to-{kind}"


def raw_event_types(events: list[Any]) -> str:
    """The wire event names in order (the SDK's own derived events and pings left out)."""
    derived = {"text", "input_json", "citation", "thinking", "signature", "ping"}
    return " ".join(e.type for e in events if e.type not in derived)


def assert_block_indexes(events: list[Any]) -> None:
    starts = [e.index for e in events if e.type == "content_block_start"]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert starts == stops == list(range(len(starts)))


# --- messages: every upstream kind ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_message_with_system_prompt_stop_sequences_and_usage(
    gw: ServedGateway, up: MockUpstream, kind: str, mode: str
) -> None:
    message = call(
        gw,
        mode,
        lambda c: c.messages.create(
            model=model(kind),
            max_tokens=50,
            system=SYSTEM,
            stop_sequences=[] if kind == "gigachat" else ["STOP"],
            messages=[{"role": "user", "content": "what is up"}],
        ),
    )

    assert isinstance(message, Message)
    assert message.role == "assistant" and message.type == "message"
    assert message.id.startswith("msg_")
    assert len(message.content) == 1 and isinstance(message.content[0], TextBlock)
    assert message.content[0].text == echo(kind, "what is up")
    assert message.stop_reason == "end_turn"
    assert message.model == f"up-{kind}"
    if kind == "mock":
        assert message.usage.output_tokens == 4 and message.usage.input_tokens > 0
        assert up.requests == []
        return
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 4)
    (sent,) = up.requests_to(PATHS[kind])
    body = sent.body
    assert body["model"] == f"up-{kind}"
    if kind == "anthropic":
        assert (body["system"], body["stop_sequences"], body["max_tokens"]) == (
            SYSTEM,
            ["STOP"],
            50,
        )
        return
    assert body["messages"][0] == {"role": "system", "content": SYSTEM}
    assert body["messages"][1] == {"role": "user", "content": "what is up"}
    if kind == "ollama":
        assert body["options"] == {"stop": ["STOP"], "num_predict": 50}
        assert body["stream"] is False
    elif kind == "gigachat":  # GigaChat has no stop sequences: some are a 400 (test_drop_table)
        assert "stop" not in body and body["max_tokens"] == 50
    else:
        assert (body["stop"], body["max_tokens"]) == (["STOP"], 50)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_message_stream_event_order_and_final_message(
    gw: ServedGateway, up: MockUpstream, kind: str, mode: str
) -> None:
    params: dict[str, Any] = {
        "model": model(kind),
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "stream this please"}],
    }
    events, final = stream_final(gw, mode, **params)

    assert EVENT_GRAMMAR.fullmatch(raw_event_types(events)), raw_event_types(events)
    assert_block_indexes(events)
    texts = [e.delta.text for e in events if e.type == "content_block_delta"]
    assert len(texts) >= 2
    assert "".join(texts) == echo(kind, "stream this please")
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [
        ("text", echo(kind, "stream this please"))
    ]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 4 and final.usage.input_tokens > 0
    assert final.model == f"up-{kind}"
    if kind != "mock":
        (sent,) = up.requests_to(PATHS[kind])
        assert sent.body["stream"] is True
        if kind in ("openai", "compat"):  # Anthropic clients need the usage
            assert sent.body["stream_options"] == {"include_usage": True}
        elif kind == "gigachat":  # GigaChat sends usage unasked and takes no stream_options
            assert "stream_options" not in sent.body


@pytest.mark.parametrize("kind", KINDS)
def test_raw_stream_with_create_stream_true(client: anthropic.Anthropic, kind: str) -> None:
    with client.messages.with_streaming_response.create(
        model=model(kind),
        max_tokens=20,
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
    ) as raw:
        content_type = raw.headers["content-type"]
        events = list(raw.parse())

    assert content_type.startswith("text/event-stream")
    assert events[0].type == "message_start"
    assert events[-2].type == "message_delta" and events[-2].delta.stop_reason == "end_turn"
    assert events[-2].usage.output_tokens == 2
    # An OpenAI-style upstream reports usage only at the end: message_start carries an estimate
    # of the prompt and message_delta the exact count.
    assert (events[-2].usage.input_tokens or events[0].message.usage.input_tokens) == 1
    assert events[0].message.usage.input_tokens > 0
    assert events[-1].type == "message_stop"


# --- tools ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_tool_use_round_trip(gw: ServedGateway, up: MockUpstream, kind: str, mode: str) -> None:
    question: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = call(
        gw,
        mode,
        lambda c: c.messages.create(
            model=model(kind), max_tokens=100, tools=TOOLS, messages=question
        ),
    )

    assert first.stop_reason == "tool_use"
    use = first.content[-1]
    assert isinstance(use, ToolUseBlock)
    assert use.name == "get_weather" and use.id
    assert use.input == ({} if kind == "mock" else {"city": "Paris"})

    history = [
        *question,
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
        },
    ]
    final = call(
        gw,
        mode,
        lambda c: c.messages.create(
            model=model(kind), max_tokens=100, tools=TOOLS, messages=history
        ),
    )

    assert final.stop_reason == "end_turn"
    assert [block.type for block in final.content] == ["text"]
    expected = {
        "anthropic": "echo: sunny",  # the tool result is the last user turn
        "mock": "Hello from Interlock's mock provider.",
    }.get(kind, "echo: weather in Paris?")
    assert final.content[0].text == expected
    if kind != "mock":
        assert_tool_protocol(kind, up.requests_to(PATHS[kind]), use.id)


def assert_tool_protocol(kind: str, sent: list[Any], use_id: str) -> None:
    offered, answered = sent[0].body, sent[1].body
    if kind == "anthropic":
        assert offered["tools"] == TOOLS
        assert answered["messages"][-1]["content"][0]["tool_use_id"] == use_id
        return
    if kind == "gigachat":  # functions; one call per message; the result names the function
        assert offered["functions"] == [
            {"name": "get_weather", "description": "Weather", "parameters": WEATHER}
        ]
        assistant, result = answered["messages"][-2:]
        assert assistant["function_call"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
        assert assistant["functions_state_id"] == use_id.removeprefix("call_")
        assert result == {
            "role": "function",
            "name": "get_weather",
            "content": '{"result": "sunny"}',
        }
        return
    function = offered["tools"][0]["function"]
    assert (function["name"], function["parameters"]) == ("get_weather", WEATHER)
    assistant, result = answered["messages"][-2:]
    assert (assistant["role"], result["role"]) == ("assistant", "tool")
    assert result["content"] == "sunny"
    called = assistant["tool_calls"][0]["function"]
    if kind == "ollama":
        assert called == {"name": "get_weather", "arguments": {"city": "Paris"}}
        assert result["tool_name"] == "get_weather"
    else:
        assert json.loads(called["arguments"]) == {"city": "Paris"}
        assert result["tool_call_id"] == assistant["tool_calls"][0]["id"] == use_id


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_streamed_tool_use_accumulates_input_json_delta(
    gw: ServedGateway, kind: str, mode: str
) -> None:
    events, final = stream_final(
        gw,
        mode,
        model=model(kind),
        max_tokens=100,
        tools=TOOLS,
        messages=[{"role": "user", "content": "weather in Paris?"}],
    )

    assert EVENT_GRAMMAR.fullmatch(raw_event_types(events)), raw_event_types(events)
    assert_block_indexes(events)
    partial = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert partial
    expected = {} if kind == "mock" else {"city": "Paris"}
    assert json.loads("".join(partial)) == expected
    assert final.stop_reason == "tool_use"
    use = final.content[-1]
    assert isinstance(use, ToolUseBlock)
    assert (use.name, use.input) == ("get_weather", expected)


# --- count_tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_count_tokens(gw: ServedGateway, up: MockUpstream, kind: str, mode: str) -> None:
    def count(text: str) -> MessageTokensCount:
        return call(
            gw,
            mode,
            lambda c: c.messages.count_tokens(
                model=model(kind), system="Count me", messages=[{"role": "user", "content": text}]
            ),
        )

    short, long = count("one two three"), count("one two three " * 50)

    assert isinstance(short, MessageTokensCount)
    assert 0 < short.input_tokens < long.input_tokens
    if kind == "anthropic":  # forwarded: the upstream counts (words, system included)
        assert (short.input_tokens, long.input_tokens) == (5, 152)
        sent = up.requests_to("/v1/messages/count_tokens")
        assert [r.body["model"] for r in sent] == ["up-anthropic"] * 2
        assert sent[0].headers["x-api-key"] == "sk-ant-upstream"
    else:  # estimated by Interlock (or answered by the mock): nothing goes upstream
        assert up.requests == []


# --- stop_reason mapping from scripted upstream answers ---------------------------------------


def openai_completion(finish_reason: str, message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 1,
        "model": "up-openai",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **message},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")],
)
def test_openai_finish_reason_becomes_stop_reason(
    client: anthropic.Anthropic, up: MockUpstream, finish_reason: str, stop_reason: str
) -> None:
    up.script("openai", Status(200, body=openai_completion(finish_reason, {"content": "cut"})))

    message = client.messages.create(
        model="to-openai", max_tokens=5, messages=[{"role": "user", "content": "x"}]
    )

    assert message.stop_reason == stop_reason
    assert message.content == [TextBlock(type="text", text="cut")]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 3)


def test_openai_stream_cut_by_length_ends_with_max_tokens(
    client: anthropic.Anthropic, up: MockUpstream
) -> None:
    def chunk(delta: dict[str, Any], finish: str | None) -> str:
        data = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "up-openai",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(data)}\n\n"

    usage = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up-openai",
        "choices": [],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }
    body = (
        chunk({"role": "assistant", "content": ""}, None)
        + chunk({"content": "half an"}, None)
        + chunk({}, "length")
        + f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n"
    )
    up.script("openai", Status(200, headers={"content-type": "text/event-stream"}, body=body))

    with client.messages.stream(
        model="to-openai", max_tokens=2, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == "half an"
    assert final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (4, 2)


def test_anthropic_stop_sequence_passes_through(
    client: anthropic.Anthropic, up: MockUpstream
) -> None:
    up.script(
        "/v1/messages",
        Status(
            200,
            body={
                "id": "msg_s",
                "type": "message",
                "role": "assistant",
                "model": "up-anthropic",
                "content": [{"type": "text", "text": "one two"}],
                "stop_reason": "stop_sequence",
                "stop_sequence": "STOP",
                "usage": {"input_tokens": 2, "output_tokens": 2},
            },
        ),
    )

    message = client.messages.create(
        model="to-anthropic",
        max_tokens=50,
        stop_sequences=["STOP"],
        messages=[{"role": "user", "content": "count"}],
    )

    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "STOP")


@pytest.mark.parametrize("kind", ["openai", "anthropic", "ollama"])
def test_a_stream_that_stops_short_is_an_error_not_a_complete_answer(
    client: anthropic.Anthropic, up: MockUpstream, kind: str
) -> None:
    up.script(PATHS[kind], stream_stopping_short(kind))
    received: list[Any] = []

    with (
        pytest.raises(anthropic.APIError, match="ended before it was complete"),
        client.messages.stream(
            model=model(kind), max_tokens=20, messages=[{"role": "user", "content": "x"}]
        ) as stream,
    ):
        received.extend(stream)

    assert "".join(e.delta.text for e in received if e.type == "content_block_delta") == "half"
    assert not [e for e in received if e.type in ("message_delta", "message_stop")]


# --- errors in the Anthropic shape ------------------------------------------------------------


def test_unknown_model_is_a_not_found_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(
            model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )

    body = caught.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert "nope" in body["error"]["message"]
    assert caught.value.request_id == caught.value.response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
    ],
)
def test_openai_upstream_errors_reach_anthropic_clients_in_their_shape(
    client: anthropic.Anthropic,
    up: MockUpstream,
    status: int,
    error: type[anthropic.APIStatusError],
    kind: str,
) -> None:
    up.script("openai", Status(status))

    with pytest.raises(error) as caught:
        client.messages.create(
            model="to-openai", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )

    assert caught.value.status_code == status
    body = caught.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind


# --- what reaches an Anthropic upstream ---------------------------------------------------------


class SentRequests:
    """An httpx client for the SDK that remembers every request it sends."""

    def __init__(self) -> None:
        self.sent: list[httpx2.Request] = []
        self.http = httpx2.Client(verify=False, event_hooks={"request": [self.sent.append]})


def test_anthropic_upstream_gets_its_own_key_and_the_clients_version(
    gw: ServedGateway, up: MockUpstream
) -> None:
    recorder = SentRequests()
    with sdk(gw, recorder.http) as c:
        raw = c.messages.with_raw_response.create(
            model="to-anthropic",
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-api-key": CLIENT_KEY, "anthropic-beta": "tools-2024-04-04"},
        )

    sent = recorder.sent[0].headers
    assert sent["authorization"] == f"Bearer {CLIENT_KEY}" and sent["x-api-key"] == CLIENT_KEY
    assert any(name.startswith("x-stainless-") for name in sent)
    seen = dict(up.last_request("/v1/messages").headers)
    assert seen["x-api-key"] == "sk-ant-upstream"
    assert "authorization" not in seen
    assert seen["anthropic-version"] == sent["anthropic-version"]
    assert seen["anthropic-beta"] == "tools-2024-04-04"
    assert not [n for n in seen if n.startswith("x-stainless-")]
    assert all(CLIENT_KEY not in v for v in seen.values())
    request_id = raw.headers["request-id"]
    assert raw.headers["x-request-id"] == request_id == seen["x-request-id"]
    assert raw.parse()._request_id == request_id


@pytest.mark.parametrize("kind", ["openai", "ollama", "gigachat"])
def test_other_upstreams_get_no_anthropic_headers(
    client: anthropic.Anthropic, up: MockUpstream, kind: str
) -> None:
    client.messages.create(
        model=model(kind), max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )

    seen = dict(up.last_request(PATHS[kind]).headers)
    assert not [n for n in seen if n.startswith(("anthropic-", "x-stainless-"))]
    assert "x-api-key" not in seen
    assert all(CLIENT_KEY not in v for v in seen.values())
    if kind == "openai":
        assert seen["authorization"] == "Bearer sk-upstream-openai"


def test_openai_client_on_anthropic_upstream_gets_a_default_version(
    gw: ServedGateway, up: MockUpstream
) -> None:
    httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "to-anthropic", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
    ).raise_for_status()

    seen = up.last_request("/v1/messages").headers
    assert seen["anthropic-version"] == "2023-06-01"
    assert seen["x-api-key"] == "sk-ant-upstream"


def test_a_callers_request_id_is_kept(client: anthropic.Anthropic, up: MockUpstream) -> None:
    raw = client.messages.with_raw_response.create(
        model="to-anthropic",
        max_tokens=5,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": "caller-rid-7"},
    )

    assert raw.headers["request-id"] == raw.headers["x-request-id"] == "caller-rid-7"
    assert up.last_request().headers["x-request-id"] == "caller-rid-7"


@pytest.mark.parametrize("stream", [False, True])
def test_untouched_sdk_request_reaches_the_upstream_byte_for_byte(
    gw: ServedGateway, up: MockUpstream, stream: bool
) -> None:
    recorder = SentRequests()
    with sdk(gw, recorder.http) as c:
        raw = c.messages.with_raw_response.create(
            model="pass-anthropic",
            max_tokens=5,
            system=[{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": "exact café"}],
            metadata={"user_id": "u-1"},
            stream=stream,
        )
        raw.read()

    assert up.last_request().raw == recorder.sent[0].content
    assert raw.headers["x-interlock-model"] == "pass-anthropic"


def test_a_hand_written_body_is_forwarded_byte_for_byte(
    gw: ServedGateway, up: MockUpstream
) -> None:
    body = (
        b'{"model":"pass-anthropic" , "max_tokens": 7,\n'
        b' "messages":[{"role":"user","content":"\\u00e9t\\u00e9"}]}'
    )
    response = httpx.post(
        gw.url + "/v1/messages",
        content=body,
        headers={
            "content-type": "application/json",
            "x-api-key": CLIENT_KEY,
            "anthropic-version": "2023-06-01",
        },
    )

    assert response.status_code == 200
    assert response.json()["content"][0]["text"] == "echo: été"
    assert up.last_request().raw == body


# --- routes, transforms -----------------------------------------------------------------------

ROUTES = """
routes:
  - name: tuned
    match: {api: [anthropic.messages], headers: {x-tune: "yes"}}
    action:
      params:
        set: {temperature: 0.25}
        clamp: {max_tokens: {max: 64}}
      transforms: [scrub]
policies:
  transforms:
    scrub:
      request:
        - {op: regex_replace, pattern: "sk-[A-Za-z0-9]{20,}", replacement: "[KEY]"}
        - {op: drop, path: "$.metadata"}
      response:
        - {op: regex_replace, pattern: "[a-z0-9-]+\\\\.corp\\\\.internal", replacement: "[host]",
           stream_safe: true}
        - {op: regex_replace, pattern: "(?i)confidential", replacement: "[c]"}
"""


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_route_params_and_request_transforms(
    serve: Callable[[str], ServedGateway], up: MockUpstream, kind: str
) -> None:
    gw = serve(ROUTES)
    with sdk(gw) as c:
        raw = c.messages.with_raw_response.create(
            model=model(kind),
            max_tokens=4000,
            extra_body={"temperature": 1.0},  # NOTE: this SDK version has no typed temperature
            system="key sk-abcdefghijklmnopqrstuvwxyz",
            metadata={"user_id": "alice"},
            messages=[{"role": "user", "content": "use sk-ABCDEFGHIJKLMNOPQRSTUVWX"}],
            extra_headers={"x-tune": "yes"},
        )

    assert raw.headers["x-interlock-route"] == "tuned"
    assert raw.parse().content[0].text == "echo: use [KEY]"
    body = up.last_request(PATHS[kind]).body
    assert (body["temperature"], body["max_tokens"]) == (0.25, 64)
    if kind == "anthropic":
        assert body["system"] == "key [KEY]" and "metadata" not in body
    else:
        assert body["messages"][0] == {"role": "system", "content": "key [KEY]"}
        assert "user" not in body


@pytest.mark.parametrize("kind", ["anthropic", "openai", "ollama"])
def test_response_transforms_whole_and_stream_safe(
    serve: Callable[[str], ServedGateway], kind: str
) -> None:
    gw = serve(ROUTES)
    said = "ask db-7.corp.internal about confidential things"
    params: dict[str, Any] = {
        "model": model(kind),
        "max_tokens": 50,
        "messages": [{"role": "user", "content": said}],
        "extra_headers": {"x-tune": "yes"},
    }
    with sdk(gw) as c:
        whole = c.messages.create(**params)
        with c.messages.stream(**params) as stream:
            streamed = "".join(stream.text_stream)

    assert whole.content[0].text == "echo: ask [host] about [c] things"
    assert streamed == "echo: ask [host] about confidential things"
