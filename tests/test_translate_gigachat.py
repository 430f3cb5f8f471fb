"""OpenAI chat/embeddings <-> GigaChat's API, by example; and a round-trip property for tools:
OpenAI -> GigaChat -> OpenAI keeps tool definitions, calls and results."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from runtime.bridge import bridge_for
from runtime.errors import GatewayError
from runtime.sse import SSEDecoder
from runtime.translate import TranslationError
from runtime.translate.gigachat import (
    GigaChatToOpenAIStream,
    embeddings_to_gigachat,
    gigachat_embed_to_openai,
    gigachat_to_openai_chat,
    openai_chat_to_gigachat,
)

Json = dict[str, Any]
STATE = "77d3fb14-457a-46ba-937e-8d856156d003"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def call(call_id: str, name: str, arguments: str) -> Json:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# --- requests ----------------------------------------------------------------------------------


def test_chat_request_with_everything() -> None:
    body = openai_chat_to_gigachat(
        {
            "model": "GigaChat-Pro",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
                {"role": "user", "content": "Weather and time in Paris?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        call("call_a", "weather", '{"city": "Paris"}'),
                        call(f"call_{STATE}", "clock", '{"tz": "CET"}'),
                    ],
                },
                # NOTE: results in another order than the calls: each follows its own call
                {"role": "tool", "tool_call_id": f"call_{STATE}", "content": "12:00"},
                {"role": "tool", "tool_call_id": "call_a", "content": '{"celsius": 18}'},
                {"role": "system", "content": "Answer in French."},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "weather",
                        "description": "Weather now",
                        "parameters": WEATHER,
                        "strict": True,
                        "few_shot_examples": [{"request": "Rome?", "params": {"city": "Rome"}}],
                    },
                },
                {"type": "function", "function": {"name": "clock"}},
                {"type": "custom", "custom": {"name": "grammar"}},
            ],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "temperature": 0.3,
            "top_p": 0.9,
            "max_completion_tokens": 64,
            "max_tokens": 10,
            "repetition_penalty": 1.1,
            "reasoning_effort": "low",
            "stop": ["STOP"],
            "n": 1,
            "seed": 7,
            "user": "u-1",
            "parallel_tool_calls": False,
            "frequency_penalty": 0.5,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )

    assert body == {
        "model": "GigaChat-Pro",
        "messages": [
            {"role": "system", "content": "Be brief.\n\nUse metric."},
            {"role": "user", "content": "Weather and time in Paris?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "function_call": {"name": "weather", "arguments": {"city": "Paris"}},
            },
            {"role": "function", "name": "weather", "content": '{"celsius": 18}'},
            {
                "role": "assistant",
                "content": "",
                "function_call": {"name": "clock", "arguments": {"tz": "CET"}},
                "functions_state_id": STATE,
            },
            {"role": "function", "name": "clock", "content": '{"result": "12:00"}'},
            {"role": "user", "content": "Answer in French."},
        ],
        "stream": True,
        "functions": [
            {
                "name": "weather",
                "description": "Weather now",
                "parameters": WEATHER,
                "few_shot_examples": [{"request": "Rome?", "params": {"city": "Rome"}}],
            },
            {"name": "clock", "parameters": {"type": "object", "properties": {}}},
        ],
        "function_call": {"name": "weather"},
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 64,
        "repetition_penalty": 1.1,
        "reasoning_effort": "low",
    }


@pytest.mark.parametrize(
    ("tool_choice", "tools", "expected"),
    [
        (None, ["a", "b"], "auto"),
        ("auto", ["a"], "auto"),
        ("none", ["a"], "none"),
        ("required", ["a"], {"name": "a"}),
        ({"type": "function", "function": {"name": "b"}}, ["a", "b"], {"name": "b"}),
        ({"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}, ["a"], "auto"),
    ],
)
def test_tool_choice_becomes_function_call(
    tool_choice: Any, tools: list[str], expected: Any
) -> None:
    request: Json = {
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": name}} for name in tools],
    }
    if tool_choice is not None:
        request["tool_choice"] = tool_choice
    assert openai_chat_to_gigachat(request)["function_call"] == expected


def test_without_tools_no_functions_and_no_function_call() -> None:
    body = openai_chat_to_gigachat(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "none"}
    )
    assert body == {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": False}


@pytest.mark.parametrize(
    ("content", "sent"),
    [
        ("sunny", '{"result": "sunny"}'),
        ('{"t": 1}', '{"t": 1}'),
        ("[1, 2]", '{"result": [1, 2]}'),
        ("42", '{"result": 42}'),
        ("", '{"result": ""}'),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], '{"result": "ab"}'),
    ],
)
def test_tool_results_become_json_objects(content: Any, sent: str) -> None:
    body = openai_chat_to_gigachat(
        {
            "messages": [
                {"role": "assistant", "content": None, "tool_calls": [call("c1", "f", "{}")]},
                {"role": "tool", "tool_call_id": "c1", "content": content},
            ]
        }
    )
    assert body["messages"][-1] == {"role": "function", "name": "f", "content": sent}


def test_tool_result_names_and_bad_arguments() -> None:
    body = openai_chat_to_gigachat(
        {
            "messages": [
                {"role": "assistant", "content": None, "tool_calls": [call("c1", "f", "{oops")]},
                {"role": "user", "content": "meanwhile"},
                {"role": "tool", "tool_call_id": "c1", "content": "{}"},
                {"role": "function", "name": "legacy", "content": "{}"},
                {"role": "tool", "tool_call_id": "c9", "name": "explicit", "content": "{}"},
            ]
        }
    )
    assert body["messages"] == [
        {"role": "assistant", "content": "", "function_call": {"name": "f", "arguments": {}}},
        {"role": "function", "name": "f", "content": "{}"},
        {"role": "user", "content": "meanwhile"},
        {"role": "function", "name": "legacy", "content": "{}"},
        {"role": "function", "name": "explicit", "content": "{}"},
    ]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "tool", "tool_call_id": "nobody", "content": "x"}], "messages[0].tool_call_id"),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                    ],
                }
            ],
            "messages[0].content[1]",
        ),
        ([{"role": "critic", "content": "x"}], "messages[0].role"),
        ("not a list", "messages"),
    ],
)
def test_requests_gigachat_cannot_express_are_rejected(messages: Any, param: str) -> None:
    with pytest.raises(TranslationError) as caught:
        openai_chat_to_gigachat({"messages": messages})
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("sampling", "sent"),
    [
        ({"temperature": 0}, {"top_p": 0}),  # NOTE: GigaChat wants temperature > 0
        ({"temperature": 0.0, "top_p": 0.5}, {"top_p": 0.5}),
        ({"temperature": 1.5}, {"temperature": 1.5}),
        ({"max_tokens": 9}, {"max_tokens": 9}),
        ({"reasoning_effort": "minimal"}, {}),
        (
            {"update_interval": 0.5, "profanity_check": False},
            {"update_interval": 0.5, "profanity_check": False},
        ),
    ],
)
def test_sampling_parameters(sampling: Json, sent: Json) -> None:
    body = openai_chat_to_gigachat({"messages": [], **sampling})
    assert body == {"messages": [], "stream": False, **sent}


def test_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    json_schema = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": schema, "strict": True},
    }
    assert openai_chat_to_gigachat({"messages": [], "response_format": json_schema})[
        "response_format"
    ] == {"type": "json_schema", "schema": schema, "strict": True}
    json_object = {"messages": [], "response_format": {"type": "json_object"}}
    assert openai_chat_to_gigachat(json_object)["response_format"] == {
        "type": "json_schema",
        "schema": {"type": "object"},
    }
    for dropped in ({"type": "text"}, {"type": "json_schema"}):
        assert "response_format" not in openai_chat_to_gigachat(
            {"messages": [], "response_format": dropped}
        )


def test_embeddings_request_and_response() -> None:
    assert embeddings_to_gigachat(
        {"model": "Embeddings", "input": ["a", "b"], "encoding_format": "base64", "user": "u"}
    ) == {"model": "Embeddings", "input": ["a", "b"]}
    assert embeddings_to_gigachat({"input": "a"}) == {"input": "a"}
    for tokens in ([1, 2], [[1], [2]], None):
        with pytest.raises(TranslationError):
            embeddings_to_gigachat({"input": tokens})

    resp = {
        "object": "list",
        "model": "Embeddings",
        "data": [
            {"object": "embedding", "embedding": [0.5], "index": 0, "usage": {"prompt_tokens": 2}},
            {"object": "embedding", "embedding": [0.25], "index": 1, "usage": {"prompt_tokens": 3}},
        ],
    }
    assert gigachat_embed_to_openai(resp) == {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": [0.5], "index": 0},
            {"object": "embedding", "embedding": [0.25], "index": 1},
        ],
        "model": "Embeddings",
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }


# --- responses ---------------------------------------------------------------------------------


def gigachat_reply(message: Json, finish: str, usage: Json | None = None) -> Json:
    return {
        "choices": [{"message": message, "index": 0, "finish_reason": finish}],
        "created": 1700000000,
        "model": "GigaChat-Pro:1.0",
        "object": "chat.completion",
        "usage": usage or {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }


def test_chat_response_text() -> None:
    out = gigachat_to_openai_chat(
        gigachat_reply({"role": "assistant", "content": "Hi"}, "stop"), completion_id="chatcmpl-1"
    )
    assert out == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "GigaChat-Pro:1.0",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }


def test_chat_response_function_call_keeps_the_state_in_the_id() -> None:
    message = {
        "role": "assistant",
        "content": "",
        "function_call": {"name": "weather", "arguments": {"city": "Paris"}},
        "functions_state_id": STATE,
    }
    out = gigachat_to_openai_chat(gigachat_reply(message, "function_call"), created=5)
    choice = out["choices"][0]
    assert out["created"] == 5 and out["id"].startswith("chatcmpl-")
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {
            "id": f"call_{STATE}",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    # The client replays the call: the state goes back to GigaChat with it.
    replayed = openai_chat_to_gigachat({"messages": [choice["message"]]})
    assert replayed["messages"][0]["functions_state_id"] == STATE


def test_a_call_without_a_state_gets_a_random_id_that_sends_no_state() -> None:
    message = {"role": "assistant", "content": "", "function_call": {"name": "f"}}
    out = gigachat_to_openai_chat(gigachat_reply(message, "function_call"))
    (tool_call,) = out["choices"][0]["message"]["tool_calls"]
    assert tool_call["id"].startswith("call_") and tool_call["function"]["arguments"] == "{}"
    replayed = openai_chat_to_gigachat({"messages": [out["choices"][0]["message"]]})
    assert "functions_state_id" not in replayed["messages"][0]


@pytest.mark.parametrize(
    ("finish", "expected"),
    [("stop", "stop"), ("length", "length"), ("blacklist", "content_filter"), ("error", "stop")],
)
def test_finish_reasons(finish: str, expected: str) -> None:
    out = gigachat_to_openai_chat(gigachat_reply({"role": "assistant", "content": "x"}, finish))
    assert out["choices"][0]["finish_reason"] == expected


def test_precached_tokens_count_as_cached_prompt_tokens() -> None:
    usage = {
        "prompt_tokens": 14,
        "completion_tokens": 2,
        "total_tokens": 16,
        "precached_prompt_tokens": 2430,
    }
    out = gigachat_to_openai_chat(gigachat_reply({"content": "x"}, "stop", usage))
    assert out["usage"] == {
        "prompt_tokens": 2444,
        "completion_tokens": 2,
        "total_tokens": 2446,
        "prompt_tokens_details": {"cached_tokens": 2430},
    }


# --- streams -----------------------------------------------------------------------------------

HEAD = {"created": 1700000000, "model": "GigaChat-Pro", "object": "chat.completion"}
USAGE = {
    "prompt_tokens": 3,
    "completion_tokens": 2,
    "total_tokens": 5,
    "precached_prompt_tokens": 0,
}


def sse(*chunks: Json) -> bytes:
    return (
        b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    )


def text_stream() -> bytes:
    return sse(
        {"choices": [{"delta": {"content": "Hel", "role": "assistant"}, "index": 0}], **HEAD},
        {"choices": [{"delta": {"content": "lo"}, "index": 0}], **HEAD},
        {
            "choices": [{"delta": {"content": ""}, "index": 0, "finish_reason": "stop"}],
            **HEAD,
            "usage": USAGE,
        },
    )


def run_stream(raw: bytes, *, include_usage: bool, step: int = 7) -> list[Json]:
    decoder = SSEDecoder()
    stream = GigaChatToOpenAIStream(
        "GigaChat-Pro", include_usage=include_usage, created=1, chunk_id="chatcmpl-g"
    )
    chunks: list[Json] = []
    for i in range(0, len(raw), step):
        for event in decoder.feed(raw[i : i + step]):
            if event.data != "[DONE]":
                chunks.extend(stream.feed(json.loads(event.data)))
    return chunks + stream.finish()


def snapshot(chunks: list[Json]) -> Any:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.current_completion_snapshot


def test_stream_moves_usage_to_a_final_chunk_when_asked() -> None:
    chunks = run_stream(text_stream(), include_usage=True)

    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, None, "stop"]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1] == {
        "id": "chatcmpl-g",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "GigaChat-Pro",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    assert snapshot(chunks).choices[0].message.content == "Hello"


def test_stream_strips_usage_when_not_asked() -> None:
    chunks = run_stream(text_stream(), include_usage=False, step=3)
    assert all(c["choices"] and "usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello"


def test_stream_function_call_becomes_one_tool_call_delta() -> None:
    final_delta = {
        "role": "assistant",
        "content": "",
        "function_call": {"name": "weather", "arguments": {"city": "Paris"}},
        "functions_state_id": STATE,
    }
    raw = sse(
        {"choices": [{"delta": {"content": "", "role": "assistant"}, "index": 0}], **HEAD},
        {
            "choices": [{"delta": final_delta, "index": 0, "finish_reason": "function_call"}],
            **HEAD,
            "usage": USAGE,
        },
    )
    chunks = run_stream(raw, include_usage=True)

    calls = [
        c["choices"][0]["delta"]["tool_calls"]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert calls == [
        [
            {
                "index": 0,
                "id": f"call_{STATE}",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
            }
        ]
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    message = snapshot(chunks).choices[0].message
    assert [(t.id, t.function.name) for t in message.tool_calls] == [(f"call_{STATE}", "weather")]


def test_stream_error_chunk_and_truncation() -> None:
    failing = GigaChatToOpenAIStream("m", include_usage=True, created=1, chunk_id="c")
    error = {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}
    assert failing.feed(error) == [error]
    assert failing.feed({"choices": [{"delta": {"content": "late"}, "index": 0}]}) == []
    assert failing.finish() == []

    cut = GigaChatToOpenAIStream("m", include_usage=True, created=1, chunk_id="c")
    chunks = cut.feed({"choices": [{"delta": {"content": "x"}, "index": 0}], "usage": USAGE})
    chunks += cut.finish()
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)  # nothing invented


# --- the bridges -------------------------------------------------------------------------------


def test_bridges_relay_a_gigachat_stream_to_each_client() -> None:
    openai_bridge = bridge_for("openai.chat", "gigachat")
    anthropic_bridge = bridge_for("anthropic.messages", "gigachat")
    assert openai_bridge is not None and anthropic_bridge is not None
    assert not openai_bridge.stream_usage and not anthropic_bridge.stream_usage

    relay = openai_bridge.relay(model="m", include_usage=True, steps=(), api="openai.chat")
    text = (relay.feed(text_stream()) + relay.finish()).decode()
    blocks = [b for b in text.split("\n\n") if b]
    assert blocks[-1] == "data: [DONE]"
    assert json.loads(blocks[-2][6:])["usage"]["total_tokens"] == 5

    relay = anthropic_bridge.relay(
        model="m", include_usage=False, steps=(), api="anthropic.messages"
    )
    text = (relay.feed(text_stream()) + relay.finish()).decode()
    events = [b.split("\n")[0].removeprefix("event: ") for b in text.split("\n\n") if b]
    assert events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"]
    delta = json.loads(text.split("event: message_delta\ndata: ")[1].split("\n")[0])
    assert delta["usage"]["output_tokens"] == 2


def test_completions_have_no_gigachat_endpoint() -> None:
    with pytest.raises(GatewayError) as caught:
        bridge_for("openai.completions", "gigachat")
    assert caught.value.status == 400


# --- property: OpenAI -> GigaChat -> OpenAI ----------------------------------------------------

_WORD = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12).filter(
    lambda t: t.strip() not in ("NaN", "Infinity", "-Infinity")
)
_NAME = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,15}", fullmatch=True)
_PLAIN_ID = st.from_regex(r"call_[a-zA-Z0-9]{1,8}", fullmatch=True)
_STATE_ID = st.uuids().map(lambda u: f"call_{u}")
_JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | _WORD,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_NAME, inner, max_size=3),
    max_leaves=6,
)
_ARGS = st.dictionaries(_NAME, _JSON_VALUE, max_size=3)


@st.composite
def text_content(draw: st.DrawFn) -> str | list[Json]:
    if draw(st.booleans()):
        return draw(_WORD)
    return [{"type": "text", "text": t} for t in draw(st.lists(_WORD, min_size=1, max_size=3))]


@st.composite
def openai_requests(draw: st.DrawFn) -> Json:
    tool_names = draw(st.lists(_NAME, min_size=1, max_size=3, unique=True))
    messages: list[Json] = []
    used: set[str] = set()
    for _ in range(draw(st.integers(1, 4))):
        messages.append({"role": "user", "content": draw(text_content())})
        calls: list[Json] = []
        for _ in range(draw(st.integers(0, 3))):
            call_id = draw(st.one_of(_PLAIN_ID, _STATE_ID).filter(lambda i: i not in used))
            used.add(call_id)
            arguments = json.dumps(draw(_ARGS), ensure_ascii=draw(st.booleans()))
            calls.append(call(call_id, draw(st.sampled_from(tool_names)), arguments))
        assistant: Json = {"role": "assistant", "content": draw(text_content())}
        if calls:
            assistant["tool_calls"] = calls
        messages.append(assistant)
        results = [
            {"role": "tool", "tool_call_id": c["id"], "content": draw(text_content())}
            for c in calls
        ]
        messages.extend(draw(st.permutations(results)))
    tools = [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": draw(_WORD),
                "parameters": {
                    "type": "object",
                    "properties": {
                        k: {"type": "string"} for k in draw(st.lists(_NAME, max_size=2))
                    },
                },
            },
        }
        for name in tool_names
    ]
    return {"model": draw(_NAME), "messages": messages, "tools": tools}


def text(content: Any) -> str:
    return content if isinstance(content, str) else "".join(p["text"] for p in content)


def as_json(text_value: str) -> Any:
    try:
        return json.loads(text_value)
    except ValueError:
        return text_value


def calls_and_results(body: Json) -> tuple[list[Any], list[Any]]:
    """The calls in order, each (name, arguments, id); the results in call order (name, text)."""
    calls = [c for m in body["messages"] for c in m.get("tool_calls") or ()]
    answers = {
        m["tool_call_id"]: text(m["content"]) for m in body["messages"] if m["role"] == "tool"
    }
    return (
        [(c["function"]["name"], json.loads(c["function"]["arguments"]), c["id"]) for c in calls],
        [(c["function"]["name"], answers[c["id"]]) for c in calls],
    )


@settings(max_examples=150, deadline=None)
@given(openai_requests())
def test_tools_calls_and_results_survive_openai_to_gigachat_and_back(body: Json) -> None:
    giga = openai_chat_to_gigachat(body)
    calls, results = calls_and_results(body)

    # Tool definitions: functions are the tools' function objects (back: wrap them again).
    assert [{"type": "function", "function": f} for f in giga["functions"]] == body["tools"]

    # Calls: one per assistant message; GigaChat's answer carrying one comes back to an OpenAI
    # client as the same call, with an id that replays the same functions_state_id.
    giga_calls = [m for m in giga["messages"] if "function_call" in m]
    assert len(giga_calls) == len(calls)
    for message, (name, arguments, call_id) in zip(giga_calls, calls, strict=True):
        is_state = call_id.removeprefix("call_") == message.get("functions_state_id")
        assert is_state == (len(call_id) == 41), call_id  # "call_" + a dashed UUID
        back = gigachat_to_openai_chat(gigachat_reply(message, "function_call"))
        (tool_call,) = back["choices"][0]["message"]["tool_calls"]
        assert tool_call["function"]["name"] == name
        assert json.loads(tool_call["function"]["arguments"]) == arguments
        assert (tool_call["id"] == call_id) == is_state

    # Results: each right after its call, naming its function, its text as a JSON object.
    giga_results = [m for m in giga["messages"] if m["role"] == "function"]
    assert [m["name"] for m in giga_results] == [name for name, _ in results]
    for message, (_, sent_text) in zip(giga_results, results, strict=True):
        value = json.loads(message["content"])
        assert isinstance(value, dict)
        original = as_json(sent_text)
        assert value == original if isinstance(original, dict) else value == {"result": original}
    for i, message in enumerate(giga["messages"]):
        if message["role"] == "function":
            assert giga["messages"][i - 1]["function_call"]["name"] == message["name"]

    # Everything else keeps its order: users' and assistants' text.
    said = [(m["role"], text(m["content"])) for m in body["messages"] if m["role"] == "user"]
    assert [(m["role"], m["content"]) for m in giga["messages"] if m["role"] == "user"] == said
    replies = [text(m["content"]) for m in body["messages"] if m["role"] == "assistant"]
    first_parts = [
        m["content"]
        for i, m in enumerate(giga["messages"])
        if m["role"] == "assistant" and giga["messages"][i - 1]["role"] == "user"
    ]
    assert first_parts == replies
