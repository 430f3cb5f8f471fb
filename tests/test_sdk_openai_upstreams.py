"""The official `openai` SDK (sync and async) against a served Interlock, in front of every
upstream kind on the loopback mock upstreams: chat, completions and embeddings, streamed or not,
with tools, system prompts, stop sequences and usage; and what Interlock forwards upstream
(credentials, request ids, model names, route params, transforms, header policies, exact bytes).

    client ──openai SDK──▶ Interlock (served) ──▶ MockUpstream: OpenAI /v1, Anthropic, Ollama,
                                                  GigaChat /api/v1 (+ OAuth); or the in-process mock
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.served import ServedGateway
from tests.upstreams import GIGACHAT_CREDENTIALS, MockUpstream, Reply, Status, stream_stopping_short

CLIENT_KEY = "sk-client-key-that-must-stay-at-the-gateway"
UPSTREAM_KEYS = {
    "IL_TEST_OPENAI_KEY": "sk-upstream-openai",
    "IL_TEST_COMPAT_KEY": "sk-upstream-compat",
    "IL_TEST_ANTHROPIC_KEY": "sk-ant-upstream",
    "IL_TEST_GIGACHAT_CREDENTIALS": GIGACHAT_CREDENTIALS,
}
KINDS = ("openai", "compat", "anthropic", "ollama", "gigachat", "mock")
HTTP_KINDS = ("openai", "compat", "anthropic", "ollama", "gigachat")
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
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER},
    }
]


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
  pass-openai: {{targets: [{{upstream: openai}}]}}
{extra}
"""


@pytest.fixture
def up(upstream_reset: MockUpstream) -> MockUpstream:
    return upstream_reset


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in UPSTREAM_KEYS.items():
        monkeypatch.setenv(name, value)


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
    served: Callable[[str], ServedGateway], up: MockUpstream, env: None
) -> Callable[[str], ServedGateway]:
    """`serve(extra_yaml)` -> a gateway over the mock upstreams, with `extra_yaml` appended."""
    return lambda extra="": served(gateway_config(up, extra))


def sdk(gw: ServedGateway) -> openai.OpenAI:
    # PERF: the gateway is plain HTTP; a default httpx client would load CA certificates (~60 ms)
    return openai.OpenAI(
        base_url=gw.url + "/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        http_client=httpx.Client(verify=False),
    )


def async_sdk(gw: ServedGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=gw.url + "/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        http_client=httpx.AsyncClient(verify=False),
    )


@pytest.fixture
def client(gw: ServedGateway, up: MockUpstream) -> Iterator[openai.OpenAI]:
    with sdk(gw) as c:
        yield c


def call(gw: ServedGateway, mode: str, make: Callable[[Any], Any]) -> Any:
    """`make(client)` with a sync or async SDK client; a stream comes back as a list."""
    if mode == "sync":
        with sdk(gw) as c:
            result = make(c)
            return list(result) if isinstance(result, openai.Stream) else result

    async def run() -> Any:
        async with async_sdk(gw) as c:
            result = await make(c)
            if isinstance(result, openai.AsyncStream):
                return [item async for item in result]
            return result

    return asyncio.run(run())


def echo(kind: str, text: str) -> str:
    """What the upstream answers: the mock upstreams echo in lower case, Interlock's mock not."""
    return f"Echo: {text}" if kind == "mock" else f"echo: {text}"


def model(kind: str) -> str:
    return f"to-{kind}"


def upstream_model(kind: str) -> str:
    return f"up-{kind}"


def chat_requests(up: MockUpstream, kind: str) -> list[Any]:
    return up.requests_to(PATHS[kind])


def system_and_options(kind: str, body: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(system prompt, stop sequences, max tokens) where each upstream protocol puts them."""
    if kind == "anthropic":
        return body["system"], body["stop_sequences"], body["max_tokens"]
    first = body["messages"][0]
    assert first["role"] == "system"
    if kind == "ollama":
        options = body["options"]
        return first["content"], options["stop"], options["num_predict"]
    if kind == "gigachat":  # GigaChat has no stop sequences: Interlock drops them
        return first["content"], body.get("stop"), body["max_tokens"]
    return first["content"], body["stop"], body["max_tokens"]


def tool_arguments(chunks: list[ChatCompletionChunk]) -> dict[int, dict[str, str]]:
    """Streamed tool-call deltas accumulated by index: {index: {id, name, arguments}}."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                call_ = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call_["id"] += delta.id or ""
                if delta.function is not None:
                    call_["name"] += delta.function.name or ""
                    call_["arguments"] += delta.function.arguments or ""
    return calls


def finish_reasons(chunks: list[ChatCompletionChunk] | list[Completion]) -> list[str]:
    return [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]


# --- chat: every upstream kind ---------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_chat_with_system_prompt_stop_and_usage(
    gw: ServedGateway, up: MockUpstream, kind: str, mode: str
) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "what is up"}]
    reply = call(
        gw,
        mode,
        lambda c: c.chat.completions.create(
            model=model(kind),
            messages=messages,
            stop=[] if kind == "gigachat" else ["STOP"],  # NOTE: GigaChat refuses stop sequences
            max_tokens=50,
        ),
    )

    assert isinstance(reply, ChatCompletion)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == echo(kind, "what is up")
    assert choice.finish_reason == "stop"
    assert reply.model == upstream_model(kind)
    assert reply.usage is not None
    usage = reply.usage
    assert usage.prompt_tokens + usage.completion_tokens == usage.total_tokens
    if kind == "mock":
        assert usage.completion_tokens == 4
        assert up.requests == []
        return
    assert (usage.prompt_tokens, usage.completion_tokens) == (5, 4)  # words, system included
    (sent,) = chat_requests(up, kind)
    assert sent.body["model"] == upstream_model(kind)
    stop = None if kind == "gigachat" else ["STOP"]
    assert system_and_options(kind, sent.body) == (SYSTEM, stop, 50)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_chat_stream_with_include_usage_ends_with_a_usage_chunk(
    gw: ServedGateway, up: MockUpstream, kind: str, mode: str
) -> None:
    chunks = call(
        gw,
        mode,
        lambda c: c.chat.completions.create(
            model=model(kind),
            messages=[{"role": "user", "content": "stream this please"}],
            stream=True,
            stream_options={"include_usage": True},
        ),
    )

    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == echo(kind, "stream this please")
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2
    assert finish_reasons(chunks) == ["stop"]
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens + last.usage.completion_tokens == last.usage.total_tokens
    assert last.usage.completion_tokens == 4
    assert all(c.usage is None for c in body)
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id
    if kind != "mock":
        (sent,) = chat_requests(up, kind)
        assert sent.body["stream"] is True


@pytest.mark.parametrize("kind", KINDS)
def test_chat_stream_without_include_usage_has_no_usage(
    gw: ServedGateway, client: openai.OpenAI, kind: str
) -> None:
    with client.chat.completions.with_streaming_response.create(
        model=model(kind), messages=[{"role": "user", "content": "no usage"}], stream=True
    ) as raw:
        content_type = raw.headers["content-type"]
        chunks = list(raw.parse())

    assert content_type.startswith("text/event-stream")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == echo(
        kind, "no usage"
    )
    assert all(c.usage is None for c in chunks)
    assert finish_reasons(chunks) == ["stop"]


# --- tools ----------------------------------------------------------------------------------


QUESTION: list[Any] = [{"role": "user", "content": "weather in Paris?"}]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_tool_call_round_trip(gw: ServedGateway, up: MockUpstream, kind: str, mode: str) -> None:
    messages = QUESTION
    reply = call(
        gw,
        mode,
        lambda c: c.chat.completions.create(model=model(kind), messages=messages, tools=TOOLS),
    )

    assert reply.choices[0].finish_reason == "tool_calls"
    calls = reply.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].type == "function" and calls[0].id
    assert calls[0].function.name == "get_weather"
    arguments = json.loads(calls[0].function.arguments)
    assert arguments == ({} if kind == "mock" else {"city": "Paris"})

    history = [
        *messages,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": calls[0].id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": calls[0].function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
    ]
    final = call(
        gw,
        mode,
        lambda c: c.chat.completions.create(model=model(kind), messages=history, tools=TOOLS),
    )

    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.tool_calls in (None, [])
    # Anthropic puts the tool result in a user turn, which its echo picks up.
    said = "sunny" if kind == "anthropic" else "weather in Paris?"
    assert final.choices[0].message.content == echo(kind, said)
    if kind != "mock":
        assert_tool_protocol(kind, chat_requests(up, kind), calls[0].id)


def assert_tool_protocol(kind: str, sent: list[Any], call_id: str) -> None:
    """The tool definition, the call and its result, each in the upstream's own protocol."""
    offered, answered = sent[0].body, sent[1].body
    if kind == "gigachat":
        assert_gigachat_function_protocol(offered, answered, call_id)
        return
    if kind == "anthropic":
        assert offered["tools"] == [
            {"name": "get_weather", "description": "Weather", "input_schema": WEATHER}
        ]
        assistant, result = answered["messages"][-2:]
        assert assistant["role"] == "assistant"
        assert assistant["content"][-1] == {
            "type": "tool_use",
            "id": call_id,
            "name": "get_weather",
            "input": {"city": "Paris"},
        }
        assert result["role"] == "user"
        block = result["content"][0]
        assert (block["type"], block["tool_use_id"]) == ("tool_result", call_id)
        return
    assert offered["tools"][0]["function"]["name"] == "get_weather"
    assert offered["tools"][0]["function"]["parameters"] == WEATHER
    assistant, result = answered["messages"][-2:]
    assert assistant["role"] == "assistant" and result["role"] == "tool"
    assert result["content"] == "sunny"
    function = assistant["tool_calls"][0]["function"]
    if kind == "ollama":  # Ollama takes arguments as an object and names the tool in the result
        assert function == {"name": "get_weather", "arguments": {"city": "Paris"}}
        assert result["tool_name"] == "get_weather"
    else:
        assert result["tool_call_id"] == call_id
        assert json.loads(function["arguments"]) == {"city": "Paris"}


def assert_gigachat_function_protocol(offered: Any, answered: Any, call_id: str) -> None:
    """GigaChat's functions: the call's arguments an object, its functions_state_id (carried in
    the tool call id) sent back, the result a JSON object naming the function."""
    assert "tools" not in offered and offered["function_call"] == "auto"
    assert offered["functions"] == [
        {"name": "get_weather", "description": "Weather", "parameters": WEATHER}
    ]
    assistant, result = answered["messages"][-2:]
    assert assistant == {
        "role": "assistant",
        "content": "",
        "function_call": {"name": "get_weather", "arguments": {"city": "Paris"}},
        "functions_state_id": call_id.removeprefix("call_"),
    }
    assert result == {"role": "function", "name": "get_weather", "content": '{"result": "sunny"}'}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_streamed_tool_call_accumulates_to_valid_json(
    gw: ServedGateway, kind: str, mode: str
) -> None:
    chunks = call(
        gw,
        mode,
        lambda c: c.chat.completions.create(
            model=model(kind), messages=QUESTION, tools=TOOLS, stream=True
        ),
    )

    calls = tool_arguments(chunks)
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"]
    assert json.loads(calls[0]["arguments"]) == ({} if kind == "mock" else {"city": "Paris"})
    assert finish_reasons(chunks) == ["tool_calls"]


# --- completions and embeddings ---------------------------------------------------------------

COMPLETION_KINDS = ("openai", "compat", "anthropic", "ollama", "mock")
COMPLETION_PATHS = {
    "openai": "/v1/completions",
    "compat": "/v1/completions",
    "anthropic": "/v1/messages",
    "ollama": "/api/generate",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", COMPLETION_KINDS)
def test_completions_stream_and_not(
    gw: ServedGateway, up: MockUpstream, kind: str, mode: str
) -> None:
    whole = call(
        gw,
        mode,
        lambda c: c.completions.create(
            model=model(kind), prompt="say something", max_tokens=30, stop=["STOP"]
        ),
    )
    chunks = call(
        gw,
        mode,
        lambda c: c.completions.create(
            model=model(kind),
            prompt="say something",
            stream=True,
            stream_options={"include_usage": True},
        ),
    )

    assert isinstance(whole, Completion)
    assert whole.choices[0].text == echo(kind, "say something")
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens == 3
    assert all(isinstance(c, Completion) for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens
    if kind == "mock":
        return
    first, streamed = up.requests_to(COMPLETION_PATHS[kind])
    assert first.body["model"] == upstream_model(kind)
    assert streamed.body["stream"] is True
    if kind == "anthropic":
        assert first.body["messages"] == [{"role": "user", "content": "say something"}]
        assert (first.body["max_tokens"], first.body["stop_sequences"]) == (30, ["STOP"])
    elif kind == "ollama":
        assert first.body["prompt"] == "say something" and first.body["stream"] is False
        assert first.body["options"] == {"num_predict": 30, "stop": ["STOP"]}
    else:
        assert (first.body["prompt"], first.body["max_tokens"]) == ("say something", 30)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["openai", "compat", "ollama", "mock"])
def test_embeddings(gw: ServedGateway, up: MockUpstream, kind: str, mode: str) -> None:
    reply = call(
        gw, mode, lambda c: c.embeddings.create(model=model(kind), input=["alpha", "beta gamma"])
    )
    again = call(gw, mode, lambda c: c.embeddings.create(model=model(kind), input="alpha"))

    assert isinstance(reply, CreateEmbeddingResponse)
    assert [d.index for d in reply.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in reply.data)
    assert all(isinstance(x, float) for x in reply.data[0].embedding)
    assert reply.data[0].embedding != reply.data[1].embedding
    assert again.data[0].embedding == reply.data[0].embedding  # deterministic per input
    assert reply.usage.prompt_tokens > 0
    if kind == "mock":
        return
    path = "/api/embed" if kind == "ollama" else "/v1/embeddings"
    sent = up.requests_to(path)[0]
    assert sent.body["input"] == ["alpha", "beta gamma"]
    assert sent.body["model"] == upstream_model(kind)


def test_embeddings_to_an_anthropic_upstream_is_a_400_in_openai_shape(
    client: openai.OpenAI, up: MockUpstream
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="to-anthropic", input="x")

    error = caught.value
    assert error.status_code == 400
    body = error.response.json()["error"]
    assert body["type"] == "invalid_request_error"
    assert body["code"] == "unsupported_api"
    assert "anthropic" in body["message"]
    assert up.requests == []


@pytest.mark.parametrize("api", ["completions", "embeddings"])
def test_gigachat_refusing_an_api_reaches_the_client_in_openai_shape(
    client: openai.OpenAI, up: MockUpstream, api: str
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        if api == "completions":
            client.completions.create(model="to-gigachat", prompt="x")
        else:
            # NOTE: the mock serves GigaChat embeddings; this one upstream refuses them
            up.script("/api/v1/embeddings", Status(404, body={"status": 404, "message": "no"}))
            client.embeddings.create(model="to-gigachat", input="x")

    assert 400 <= caught.value.status_code < 500
    assert set(caught.value.response.json()["error"]) >= {"message", "type", "code"}


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (
            "openai",
            {
                "error": {
                    "message": "bad temperature",
                    "type": "invalid_request_error",
                    "param": "temperature",
                    "code": "bad_param",
                }
            },
        ),
        (
            "anthropic",
            {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "bad temperature"},
            },
        ),
        ("ollama", {"error": "bad temperature"}),
        ("gigachat", {"status": 400, "message": "bad temperature"}),
    ],
)
def test_upstream_client_errors_reach_the_client_in_openai_shape(
    client: openai.OpenAI, up: MockUpstream, kind: str, body: dict[str, Any]
) -> None:
    up.script(PATHS[kind], Status(400, body=body))

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=model(kind), messages=[{"role": "user", "content": "x"}]
        )

    error = caught.value.response.json()["error"]
    assert error["message"] == "bad temperature"
    assert error["type"] == "invalid_request_error"
    if kind == "openai":  # an OpenAI-shaped error keeps its param and code
        assert (error["param"], error["code"]) == ("temperature", "bad_param")


def test_upstream_error_messages_are_redacted(client: openai.OpenAI, up: MockUpstream) -> None:
    leaked = "invalid key sk-proj-abcdefghijklmnopqrstuvwxyz0123 for org"
    up.script(
        "/v1/chat/completions",
        Status(400, body={"error": {"message": leaked, "type": "invalid_request_error"}}),
    )

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="to-openai", messages=[{"role": "user", "content": "x"}]
        )

    message = caught.value.response.json()["error"]["message"]
    assert "sk-proj-" not in message and message.startswith("invalid key ")


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])

    assert caught.value.code == "model_not_found"
    assert caught.value.response.headers["x-interlock-config-version"]


# --- finish_reason mapping from scripted upstream answers -------------------------------------


def anthropic_message(stop_reason: str, content: list[Any]) -> dict[str, Any]:
    return {
        "id": "msg_scripted",
        "type": "message",
        "role": "assistant",
        "model": "up-anthropic",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length")],
)
def test_anthropic_stop_reason_becomes_finish_reason(
    client: openai.OpenAI, up: MockUpstream, stop_reason: str, finish_reason: str
) -> None:
    up.script(
        "/v1/messages",
        Status(200, body=anthropic_message(stop_reason, [{"type": "text", "text": "cut"}])),
    )

    reply = client.chat.completions.create(
        model="to-anthropic", messages=[{"role": "user", "content": "x"}]
    )

    assert reply.choices[0].finish_reason == finish_reason
    assert reply.choices[0].message.content == "cut"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 2)


@pytest.mark.parametrize("kind", ["openai", "anthropic", "ollama"])
def test_a_stream_that_stops_short_is_an_error_not_a_complete_answer(
    client: openai.OpenAI, up: MockUpstream, kind: str
) -> None:
    up.script(PATHS[kind], stream_stopping_short(kind))
    received: list[ChatCompletionChunk] = []

    with pytest.raises(openai.APIError, match="ended before it was complete"):
        received.extend(
            client.chat.completions.create(
                model=model(kind), messages=[{"role": "user", "content": "x"}], stream=True
            )
        )

    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices) == "half"
    assert finish_reasons(received) == []


# --- what reaches the upstream ------------------------------------------------------------------


class SentHeaders:
    """An httpx client for the SDK that remembers the headers of every request it sends."""

    def __init__(self) -> None:
        self.sent: list[httpx.Headers] = []
        self.http = httpx.Client(verify=False, event_hooks={"request": [self.record]})

    def record(self, request: httpx.Request) -> None:
        self.sent.append(request.headers)


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_client_credentials_never_reach_the_upstream_its_own_key_does(
    gw: ServedGateway, up: MockUpstream, kind: str
) -> None:
    recorder = SentHeaders()
    with (
        recorder.http,
        openai.OpenAI(
            base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0, http_client=recorder.http
        ) as c,
    ):
        c.chat.completions.create(
            model=model(kind),
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-api-key": CLIENT_KEY, "cookie": "session=1"},
        )

    sent = recorder.sent[0]
    assert sent["authorization"] == f"Bearer {CLIENT_KEY}"
    assert any(name.startswith("x-stainless-") for name in sent)
    (seen,) = chat_requests(up, kind)
    headers = dict(seen.headers)
    assert not [n for n in headers if n.startswith("x-stainless-") or n == "cookie"]
    assert all(CLIENT_KEY not in value for value in headers.values())
    if kind == "anthropic":
        assert headers["x-api-key"] == UPSTREAM_KEYS["IL_TEST_ANTHROPIC_KEY"]
        assert headers["anthropic-version"] == "2023-06-01"
        assert "authorization" not in headers
    elif kind == "ollama":
        assert "authorization" not in headers and "x-api-key" not in headers
    elif kind == "gigachat":
        scheme, token = headers["authorization"].split(" ")
        assert scheme == "Bearer" and token in up.issued_tokens
        assert "x-api-key" not in headers
    else:
        key = UPSTREAM_KEYS["IL_TEST_OPENAI_KEY" if kind == "openai" else "IL_TEST_COMPAT_KEY"]
        assert headers["authorization"] == f"Bearer {key}"
        assert "x-api-key" not in headers


def test_request_id_is_made_forwarded_and_returned(client: openai.OpenAI, up: MockUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="to-openai", messages=[{"role": "user", "content": "hi"}]
    )

    request_id = raw.headers["x-request-id"]
    assert len(request_id) >= 16
    assert up.last_request().headers["x-request-id"] == request_id
    assert "request-id" not in raw.headers  # Anthropic's spelling is for the Anthropic API only
    other = client.chat.completions.with_raw_response.create(
        model="to-openai", messages=[{"role": "user", "content": "hi"}]
    )
    assert other.headers["x-request-id"] != request_id


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_callers_request_id_is_kept_and_forwarded_once(
    client: openai.OpenAI, up: MockUpstream, kind: str
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model(kind),
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": "caller-rid-42"},
    )

    assert raw.headers["x-request-id"] == "caller-rid-42"
    assert up.last_request().headers["x-request-id"] == "caller-rid-42"


def test_untouched_body_reaches_the_upstream_byte_for_byte(
    gw: ServedGateway, up: MockUpstream
) -> None:
    # Odd spacing, key order and unicode escapes: any re-encoding would show.
    body = (
        b'{ "messages" : [ {"content": "caf\\u00e9  \\n", "role":"user"} ],'
        b'"temperature":0.50, "model": "pass-openai", "x_vendor": {"k": [1, 2.0]} }'
    )
    response = httpx.post(
        gw.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"},
    )

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: café  \n"
    assert up.last_request().raw == body


def test_untouched_sdk_request_reaches_the_upstream_byte_for_byte(
    gw: ServedGateway, up: MockUpstream
) -> None:
    sent: list[bytes] = []
    with (
        httpx.Client(
            verify=False, event_hooks={"request": [lambda r: sent.append(r.content)]}
        ) as http,
        openai.OpenAI(
            base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0, http_client=http
        ) as c,
    ):
        chunks = list(
            c.chat.completions.create(
                model="pass-openai",
                messages=[{"role": "user", "content": "exact"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )

    assert chunks[-1].usage is not None and chunks[-1].model == "pass-openai"

    assert up.last_request().raw == sent[0]


def test_renamed_model_is_what_the_upstream_sees(client: openai.OpenAI, up: MockUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="to-openai", messages=[{"role": "user", "content": "hi"}]
    )

    assert up.last_request().body["model"] == "up-openai"
    assert raw.parse().model == "up-openai"
    assert raw.headers["x-interlock-model"] == "up-openai"
    assert raw.headers["x-interlock-upstream"] == "openai"


# --- route params and transforms -------------------------------------------------------------

PARAMS_ROUTE = """
routes:
  - name: tuned
    match: {headers: {x-tune: "yes"}}
    action:
      params:
        set: {temperature: 0}
        default: {max_tokens: 64, seed: 7}
        clamp: {max_tokens: {max: 100}, presence_penalty: {min: 0, max: 1}}
        drop: [logit_bias]
"""


@pytest.mark.parametrize("kind", ["openai", "anthropic", "ollama"])
def test_route_params_set_default_clamp_and_drop(
    serve: Callable[[str], ServedGateway], up: MockUpstream, kind: str
) -> None:
    gw = serve(PARAMS_ROUTE)
    messages = [{"role": "user", "content": "hi"}]
    with sdk(gw) as c:
        raw = c.chat.completions.with_raw_response.create(
            model=model(kind),
            messages=messages,
            temperature=0.9,
            max_tokens=5000,
            presence_penalty=-1.5,
            logit_bias={"42": 10},
            extra_headers={"x-tune": "yes"},
        )
        c.chat.completions.create(
            model=model(kind), messages=messages, extra_headers={"x-tune": "yes"}
        )
        c.chat.completions.create(model=model(kind), messages=messages, max_tokens=5000)

    assert raw.headers["x-interlock-route"] == "tuned"
    clamped, defaulted, untouched = (r.body for r in chat_requests(up, kind))
    if kind == "anthropic":
        assert (clamped["temperature"], clamped["max_tokens"]) == (0, 100)
        assert defaulted["max_tokens"] == 64
        assert untouched["max_tokens"] == 5000
    elif kind == "ollama":
        assert clamped["options"] == {
            "temperature": 0,
            "seed": 7,
            "presence_penalty": 0,
            "num_predict": 100,
        }
        assert defaulted["options"]["num_predict"] == 64
        assert untouched["options"] == {"num_predict": 5000}
    else:
        assert {
            k: clamped.get(k) for k in ("temperature", "max_tokens", "seed", "presence_penalty")
        } == {"temperature": 0, "max_tokens": 100, "seed": 7, "presence_penalty": 0}
        assert "logit_bias" not in clamped
        assert (defaulted["max_tokens"], defaulted["temperature"]) == (64, 0)
        assert untouched == {"model": "up-openai", "messages": messages, "max_tokens": 5000}


TRANSFORMS = """
routes:
  - name: scrubbed
    match: {headers: {x-scrub: "yes"}}
    action: {transforms: [scrub]}
  - name: tidy-out
    match: {headers: {x-tidy: "yes"}}
    action: {transforms: [tidy]}
policies:
  transforms:
    scrub:
      request:
        - {op: regex_replace, pattern: "sk-[A-Za-z0-9]{20,}", replacement: "[REDACTED]"}
        - {op: regex_replace, pattern: "SECRET", replacement: "[hidden]", flags: [ignorecase]}
        - {op: drop, path: "$.metadata"}
        - {op: set, path: "$.user", value: interlock}
        - {op: add, path: "$.stop", value: "<|end|>"}
    tidy:
      response:
        - {op: drop, path: "$.system_fingerprint"}
        - {op: set, path: "$.service_tier", value: scrubbed}
        - op: regex_replace
          pattern: "[a-z0-9-]+\\\\.corp\\\\.internal"
          replacement: "[host]"
          stream_safe: true
        - {op: regex_replace, pattern: "(?i)confidential", replacement: "[c]"}
"""


@pytest.mark.parametrize("kind", ["openai", "anthropic", "ollama"])
def test_request_transforms_regex_drop_set_add(
    serve: Callable[[str], ServedGateway], up: MockUpstream, kind: str
) -> None:
    gw = serve(TRANSFORMS)
    with sdk(gw) as c:
        reply = c.chat.completions.create(
            model=model(kind),
            messages=[
                {"role": "system", "content": "never say secret"},
                {"role": "user", "content": "my key is sk-abcdefghijklmnopqrstuvwx ok"},
            ],
            stop=["END"],
            metadata={"team": "x"},
            store=True,
            user="alice",
            extra_headers={"x-scrub": "yes"},
        )

    assert reply.choices[0].message.content == echo(kind, "my key is [REDACTED] ok")
    body = chat_requests(up, kind)[0].body
    if kind == "anthropic":
        assert body["system"] == "never say [hidden]"
        assert body["stop_sequences"] == ["END", "<|end|>"]
        assert body["metadata"] == {"user_id": "interlock"}
    elif kind == "ollama":
        assert body["messages"][0]["content"] == "never say [hidden]"
        assert body["options"]["stop"] == ["END", "<|end|>"]
    else:
        assert body["messages"][0]["content"] == "never say [hidden]"
        assert (body["stop"], body["user"]) == (["END", "<|end|>"], "interlock")
        assert "metadata" not in body


def chat_completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 1,
        "model": "up-openai",
        "system_fingerprint": "fp_secret",
        "service_tier": "default",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


def test_response_transforms_apply_to_a_scripted_answer(
    serve: Callable[[str], ServedGateway], up: MockUpstream
) -> None:
    gw = serve(TRANSFORMS)
    up.script("openai", Status(200, body=chat_completion("db-7.corp.internal is CONFIDENTIAL")))
    with sdk(gw) as c:
        reply = c.chat.completions.create(
            model="to-openai",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-tidy": "yes"},
        )

    assert reply.choices[0].message.content == "[host] is [c]"
    assert reply.system_fingerprint is None
    assert reply.service_tier == "scrubbed"


@pytest.mark.parametrize(
    "kind",
    [
        "openai",
        "anthropic",
        "ollama",
        "mock",
    ],
)
def test_response_transforms_apply_to_whole_responses(
    serve: Callable[[str], ServedGateway], kind: str
) -> None:
    gw = serve(TRANSFORMS)
    with sdk(gw) as c:
        reply = c.chat.completions.create(
            model=model(kind),
            messages=[{"role": "user", "content": "db-7.corp.internal is CONFIDENTIAL"}],
            extra_headers={"x-tidy": "yes"},
        )

    assert reply.choices[0].message.content == echo(kind, "[host] is [c]")
    assert reply.system_fingerprint is None
    assert reply.service_tier == "scrubbed"


@pytest.mark.parametrize("kind", ["openai", "anthropic", "ollama"])
def test_only_stream_safe_response_transforms_apply_to_streams(
    serve: Callable[[str], ServedGateway], up: MockUpstream, kind: str
) -> None:
    gw = serve(TRANSFORMS)
    said = "ask db-7.corp.internal about confidential things"
    with sdk(gw) as c:
        chunks = list(
            c.chat.completions.create(
                model=model(kind),
                messages=[{"role": "user", "content": said}],
                stream=True,
                extra_headers={"x-tidy": "yes"},
            )
        )

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == echo(kind, "ask [host] about confidential things")
    assert all(c.system_fingerprint is None for c in chunks)  # drop is stream-safe


# --- header policies ------------------------------------------------------------------------

HEADER_POLICIES = """
routes:
  - name: allow
    match: {headers: {x-policy: allow}}
    action: {headers: [only-trace]}
  - name: deny
    match: {headers: {x-policy: deny}}
    action: {headers: [no-internal]}
  - name: pass
    match: {headers: {x-policy: pass}}
    action: {headers: [pass-edit]}
policies:
  headers:
    only-trace:
      request: {mode: allowlist, allow: [content-type, accept, "x-trace-*"]}
      response: {mode: allowlist, allow: [x-keep], force: {x-served-by: interlock}}
    no-internal:
      request: {mode: denylist, deny: ["x-internal-*", x-real-ip]}
      response: {mode: denylist, deny: ["x-upstream-*"]}
    pass-edit:
      request:
        mode: passthrough
        drop: [x-debug]
        add: {x-source: interlock, x-given: default}
        force: {x-team: ml-platform}
      response: {mode: passthrough, drop: [x-upstream-internal, openai-organization]}
"""
CLIENT_HEADERS = {
    "x-trace-id": "t-1",
    "x-internal-user": "bob",
    "x-real-ip": "10.0.0.1",
    "x-other": "o",
    "x-debug": "1",
    "x-given": "mine",
    "x-team": "client-team",
}
UPSTREAM_HEADERS = {
    "x-keep": "k",
    "x-upstream-internal": "secret-host",
    "openai-organization": "org-123",
    "x-ratelimit-remaining-requests": "99",
    "retry-after": "1",
}


def policy_call(gw: ServedGateway, up: MockUpstream, policy: str | None) -> httpx.Headers:
    up.script("openai", Status(200, headers=UPSTREAM_HEADERS, body=chat_completion("hi")))
    extra = {**CLIENT_HEADERS, **({"x-policy": policy} if policy else {})}
    with sdk(gw) as c:
        raw = c.chat.completions.with_raw_response.create(
            model="to-openai", messages=[{"role": "user", "content": "hi"}], extra_headers=extra
        )
    return raw.headers


def forwarded(up: MockUpstream) -> dict[str, str]:
    headers = dict(up.last_request().headers)
    assert headers["authorization"] == "Bearer sk-upstream-openai"
    assert not [n for n in headers if n.startswith("x-stainless-")]
    return {n: v for n, v in headers.items() if n.startswith("x-") and n != "x-request-id"}


def test_without_policies_only_the_default_headers_go_either_way(
    serve: Callable[[str], ServedGateway], up: MockUpstream
) -> None:
    headers = policy_call(serve(HEADER_POLICIES), up, None)

    assert forwarded(up) == {}
    assert up.last_request().headers["user-agent"].startswith("OpenAI/Python")
    assert headers["x-ratelimit-remaining-requests"] == "99"
    assert headers["retry-after"] == "1"
    assert "x-keep" not in headers and "x-upstream-internal" not in headers


def test_allowlist_policy(serve: Callable[[str], ServedGateway], up: MockUpstream) -> None:
    headers = policy_call(serve(HEADER_POLICIES), up, "allow")

    assert forwarded(up) == {"x-trace-id": "t-1"}
    assert "user-agent" not in up.last_request().headers  # no client library's default either
    assert (headers["x-keep"], headers["x-served-by"]) == ("k", "interlock")
    assert "x-ratelimit-remaining-requests" not in headers
    assert headers["x-interlock-route"] == "allow"


def test_denylist_policy(serve: Callable[[str], ServedGateway], up: MockUpstream) -> None:
    headers = policy_call(serve(HEADER_POLICIES), up, "deny")

    assert forwarded(up) == {
        "x-trace-id": "t-1",
        "x-other": "o",
        "x-debug": "1",
        "x-given": "mine",
        "x-team": "client-team",
        "x-policy": "deny",
    }
    assert headers["x-keep"] == "k" and headers["openai-organization"] == "org-123"
    assert "x-upstream-internal" not in headers


def test_passthrough_policy_with_add_force_drop(
    serve: Callable[[str], ServedGateway], up: MockUpstream
) -> None:
    headers = policy_call(serve(HEADER_POLICIES), up, "pass")

    assert forwarded(up) == {
        "x-trace-id": "t-1",
        "x-internal-user": "bob",
        "x-real-ip": "10.0.0.1",
        "x-other": "o",
        "x-given": "mine",  # add: only when absent
        "x-source": "interlock",  # add
        "x-team": "ml-platform",  # force
        "x-policy": "pass",
    }
    assert headers["x-keep"] == "k" and headers["x-ratelimit-remaining-requests"] == "99"
    assert "x-upstream-internal" not in headers and "openai-organization" not in headers


def test_passthrough_response_policy_keeps_gateway_headers_single(
    serve: Callable[[str], ServedGateway], up: MockUpstream
) -> None:
    headers = policy_call(serve(HEADER_POLICIES), up, "pass")

    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"] == up.last_request().headers["x-request-id"]


def test_a_policy_may_force_an_upstream_authorization(
    served: Callable[[str], ServedGateway], up: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IL_TEST_FORCED", "Bearer forced-upstream-token")
    gw = served(f"""
version: 1
upstreams:
  keyless:
    kind: openai-compatible
    base_url: "{up.base_url("openai")}"
    headers: [forced]
models:
  to-keyless: {{targets: [{{upstream: keyless}}]}}
policies:
  headers:
    forced:
      request: {{mode: passthrough, force: {{authorization: {{env: IL_TEST_FORCED}}}}}}
""")
    with sdk(gw) as c:
        c.chat.completions.create(model="to-keyless", messages=[{"role": "user", "content": "x"}])

    assert up.last_request().headers["authorization"] == "Bearer forced-upstream-token"


# --- identifying response headers -------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_identity_headers_on_responses(serve: Callable[[str], ServedGateway], stream: bool) -> None:
    gw = serve(PARAMS_ROUTE)
    with (
        sdk(gw) as c,
        c.chat.completions.with_streaming_response.create(
            model="to-anthropic",
            messages=[{"role": "user", "content": "hi"}],
            stream=stream,
            extra_headers={"x-tune": "yes"},
        ) as raw,
    ):
        raw.read()

    assert raw.headers["x-interlock-route"] == "tuned"
    assert raw.headers["x-interlock-upstream"] == "anthropic"
    assert raw.headers["x-interlock-model"] == "up-anthropic"
    assert raw.headers["x-interlock-config-version"] == gw.version
    assert raw.headers["content-type"].startswith(
        "text/event-stream" if stream else "application/json"
    )


def test_identity_header_names_are_configurable_and_can_be_turned_off(
    serve: Callable[[str], ServedGateway],
) -> None:
    gw = serve("""
server:
  response_headers: {route: x-gw-route, upstream: x-gw-upstream, model: null, version: null}
routes:
  - {name: everything, match: {}, action: {}}
""")
    with sdk(gw) as c:
        raw = c.chat.completions.with_raw_response.create(
            model="to-mock", messages=[{"role": "user", "content": "hi"}]
        )

    assert (raw.headers["x-gw-route"], raw.headers["x-gw-upstream"]) == ("everything", "mock")
    assert not [n for n in raw.headers if n.startswith("x-interlock-")]
    assert "x-gw-model" not in raw.headers


def test_a_scripted_reply_reaches_the_async_client(gw: ServedGateway, up: MockUpstream) -> None:
    up.script("/v1/chat/completions", Reply(text="scripted answer"))

    reply = call(
        gw,
        "async",
        lambda c: c.chat.completions.create(
            model="to-openai", messages=[{"role": "user", "content": "x"}]
        ),
    )

    assert reply.choices[0].message.content == "scripted answer"
