"""A cached answer replayed as a stream and a streamed answer assembled for the cache
(runtime/replay.py), and the cache key and deterministic test (runtime/caching.py): pure
functions, no sockets.

Property: for OpenAI chat, legacy completions and Anthropic answers (text, tool calls, thinking,
logprobs), ``assemble_stream(replay_frames(body)) == body``.
"""

from __future__ import annotations

import string
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.table import ApiKey
from runtime.caching import cache_key, is_deterministic, scope_value
from runtime.replay import assemble_stream, replay_frames
from runtime.sse import SSEDecoder

# --- strategies -------------------------------------------------------------------------------

IDENT = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)
TEXT = st.text(max_size=40)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
OBJECT = st.dictionaries(TEXT, JSON, max_size=4)
COUNT = st.integers(0, 10**6)


def arguments(value: dict[str, Any]) -> str:
    return msgspec.json.encode(value).decode()


TOOL_CALL = st.builds(
    lambda ident, name, args: {
        "id": f"call_{ident}",
        "type": "function",
        "function": {"name": name, "arguments": arguments(args)},
    },
    IDENT,
    IDENT,
    OBJECT,
)
TOKEN_LOGPROB = st.fixed_dictionaries(
    {"token": TEXT, "logprob": st.floats(-50, 0), "bytes": st.lists(st.integers(0, 255))}
).map(lambda d: {**d, "top_logprobs": []})


@st.composite
def openai_chat(draw: st.DrawFn) -> dict[str, Any]:
    choices = []
    for index in range(draw(st.integers(1, 2))):
        calls = draw(st.lists(TOOL_CALL, max_size=2))
        message: dict[str, Any] = {"role": "assistant"}
        message["content"] = draw(st.none() | TEXT) if calls else draw(TEXT)
        if calls:
            message["tool_calls"] = calls
        if draw(st.booleans()):
            message["refusal"] = None
        logprobs = None
        if draw(st.booleans()):
            logprobs = {"content": draw(st.lists(TOKEN_LOGPROB, max_size=3)), "refusal": None}
        finish = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))
        choices.append(
            {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}
        )
    body: dict[str, Any] = {
        "id": f"chatcmpl-{draw(IDENT)}",
        "object": "chat.completion",
        "created": draw(COUNT),
        "model": draw(IDENT),
        "choices": choices,
        "usage": usage_openai(draw),
    }
    if draw(st.booleans()):
        body["system_fingerprint"] = draw(IDENT)
    return body


def usage_openai(draw: st.DrawFn) -> dict[str, Any]:
    prompt, completion = draw(COUNT), draw(COUNT)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if draw(st.booleans()):
        usage["prompt_tokens_details"] = {"cached_tokens": draw(COUNT)}
    return usage


@st.composite
def openai_completion(draw: st.DrawFn) -> dict[str, Any]:
    choices = []
    for index in range(draw(st.integers(1, 2))):
        logprobs = None
        if draw(st.booleans()):
            tokens = draw(st.lists(TEXT, max_size=3))
            logprobs = {
                "tokens": tokens,
                "token_logprobs": [draw(st.floats(-50, 0)) for _ in tokens],
                "top_logprobs": [{t: -0.5} for t in tokens],
                "text_offset": list(range(len(tokens))),
            }
        choices.append(
            {
                "text": draw(TEXT),
                "index": index,
                "logprobs": logprobs,
                "finish_reason": draw(st.sampled_from(["stop", "length"])),
            }
        )
    return {
        "id": f"cmpl-{draw(IDENT)}",
        "object": "text_completion",
        "created": draw(COUNT),
        "model": draw(IDENT),
        "choices": choices,
        "usage": usage_openai(draw),
    }


BLOCK = st.one_of(
    st.builds(lambda text: {"type": "text", "text": text}, TEXT),
    st.builds(
        lambda ident, name, value: {
            "type": "tool_use",
            "id": f"toolu_{ident}",
            "name": name,
            "input": value,
        },
        IDENT,
        IDENT,
        OBJECT,
    ),
    st.builds(
        lambda thought, signature: {
            "type": "thinking",
            "thinking": thought,
            "signature": signature,
        },
        TEXT,
        IDENT,
    ),
    st.builds(lambda data: {"type": "redacted_thinking", "data": data}, IDENT),
)


@st.composite
def anthropic_message(draw: st.DrawFn) -> dict[str, Any]:
    usage: dict[str, Any] = {"input_tokens": draw(COUNT), "output_tokens": draw(COUNT)}
    if draw(st.booleans()):
        usage["cache_read_input_tokens"] = draw(COUNT)
        usage["cache_creation_input_tokens"] = draw(COUNT)
    return {
        "id": f"msg_{draw(IDENT)}",
        "type": "message",
        "role": "assistant",
        "model": draw(IDENT),
        "content": draw(st.lists(BLOCK, max_size=4)),
        "stop_reason": draw(st.sampled_from(["end_turn", "max_tokens", "tool_use", None])),
        "stop_sequence": draw(st.none() | TEXT),
        "usage": usage,
    }


def replayed(api: str, body: dict[str, Any], *, include_usage: bool = True) -> bytes:
    return b"".join(replay_frames(api, body, include_usage=include_usage))


# --- the property -----------------------------------------------------------------------------


@settings(max_examples=300)
@given(openai_chat())
def test_openai_chat_answer_survives_replay_and_assembly(body: dict[str, Any]) -> None:
    assert assemble_stream("openai.chat", replayed("openai.chat", body)) == body


@settings(max_examples=200)
@given(openai_completion())
def test_completion_answer_survives_replay_and_assembly(body: dict[str, Any]) -> None:
    assert assemble_stream("openai.completions", replayed("openai.completions", body)) == body


@settings(max_examples=300)
@given(anthropic_message())
def test_anthropic_answer_survives_replay_and_assembly(body: dict[str, Any]) -> None:
    assert assemble_stream("anthropic.messages", replayed("anthropic.messages", body)) == body


@given(openai_chat())
def test_the_usage_chunk_is_sent_only_when_asked(body: dict[str, Any]) -> None:
    frames = replay_frames("openai.chat", body, include_usage=False)
    assert not any(b'"usage"' in frame for frame in frames)
    assert frames[-1] == b"data: [DONE]\n\n"
    assembled = assemble_stream("openai.chat", b"".join(frames))
    assert assembled == {k: v for k, v in body.items() if k != "usage"}


def events(data: bytes) -> list[tuple[str | None, Any]]:
    decoder = SSEDecoder()
    out = [(e.event, e.data) for e in decoder.feed(data) + decoder.flush()]
    return [(name, msgspec.json.decode(d) if d != "[DONE]" else d) for name, d in out]


def test_an_anthropic_replay_is_the_event_sequence_the_api_sends() -> None:
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 9},
    }
    seen = events(replayed("anthropic.messages", body))
    assert [name for name, _ in seen] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in seen)
    start = seen[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"] == {"input_tokens": 12, "output_tokens": 0}
    assert seen[5][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Paris"}'}
    assert seen[7][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 9},
    }


# --- assembling what upstreams really send ----------------------------------------------------


def sse(*chunks: Any, done: bool = True) -> bytes:
    out = b"".join(b"data: " + msgspec.json.encode(c) + b"\n\n" for c in chunks)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "gpt"}
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {**base, "choices": [choice], **extra}


def test_an_openai_stream_in_pieces_assembles_into_its_answer() -> None:
    call = {"index": 0, "id": "call_1", "type": "function"}
    stream = sse(
        chunk({"role": "assistant", "content": "", "refusal": None}, usage=None),
        chunk({"content": "Hel"}, usage=None),
        chunk({"content": "lo"}, usage=None),
        chunk({"tool_calls": [{**call, "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        chunk({}, "tool_calls"),
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 7,
            "model": "gpt",
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        },
    )
    assert assemble_stream("openai.chat", stream) == {
        "id": "c1",
        "object": "chat.completion",
        "created": 7,
        "model": "gpt",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a":1}'},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


def named(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"


def anthropic_stream(*, stop: bool = True, error: bool = False) -> bytes:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 4, "output_tokens": 1},
    }
    parts = [
        named("message_start", {"type": "message_start", "message": message}),
        named("ping", {"type": "ping"}),
        named(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        *(
            named(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": t},
                },
            )
            for t in ("Hi ", "there")
        ),
        named("content_block_stop", {"type": "content_block_stop", "index": 0}),
        named(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
            },
        ),
        *(
            named(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                },
            )
            for piece in ("", '{"city": ', '"Paris"}')
        ),
        named("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ]
    if error:
        parts.append(named("error", {"type": "error", "error": {"type": "overloaded_error"}}))
    parts.append(
        named(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 7},
            },
        )
    )
    if stop:
        parts.append(named("message_stop", {"type": "message_stop"}))
    return b"".join(parts)


def test_an_anthropic_stream_in_pieces_assembles_into_its_message() -> None:
    assert assemble_stream("anthropic.messages", anthropic_stream()) == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [
            {"type": "text", "text": "Hi there"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 4, "output_tokens": 7},
    }


@pytest.mark.parametrize(
    ("api", "stream"),
    [
        ("openai.chat", sse(chunk({"content": "cut"}), done=False)),
        ("openai.chat", sse(chunk({"content": "x"}), {"error": {"message": "boom"}})),
        ("openai.chat", sse(chunk({"content": "x"})) + sse(chunk({"content": "late"}))),
        ("openai.chat", b"data: {not json\n\n" + sse()),
        ("openai.completions", b""),
        ("anthropic.messages", anthropic_stream(stop=False)),
        ("anthropic.messages", anthropic_stream(error=True)),
        ("anthropic.messages", named("message_stop", {"type": "message_stop"})),
        ("openai.embeddings", sse()),
    ],
    ids=[
        "no-done",
        "error-chunk",
        "after-done",
        "malformed",
        "empty",
        "no-message-stop",
        "error-event",
        "no-message-start",
        "not-streamed-api",
    ],
)
def test_a_stream_that_is_not_a_complete_answer_assembles_into_nothing(
    api: str, stream: bytes
) -> None:
    assert assemble_stream(api, stream) is None


# --- the key and the deterministic test -------------------------------------------------------


def key_of(body: dict[str, Any], **overrides: Any) -> str:
    args: dict[str, Any] = {
        "model": "gpt",
        "sent_as": None,
        "scope": "project:web",
        "transforms": None,
        "headers": [None, None],
    }
    return cache_key(overrides.pop("api", "openai.chat"), body, **(args | overrides))


MESSAGES = [{"role": "user", "content": "hi"}]


def test_the_key_ignores_streaming_identity_and_spelling() -> None:
    base = key_of({"messages": MESSAGES, "temperature": 0, "max_tokens": 10})
    same = [
        {"max_tokens": 10.0, "temperature": 0.0, "messages": MESSAGES},
        {"messages": MESSAGES, "temperature": 0, "max_tokens": 10, "stream": True},
        {
            "messages": MESSAGES,
            "temperature": 0,
            "max_tokens": 10,
            "stream_options": {"include_usage": True},
            "user": "u-1",
            "metadata": {"user_id": "u-2"},
            "safety_identifier": "s",
            "prompt_cache_key": "p",
            "model": "an-alias",
        },
    ]
    assert all(key_of(body) == base for body in same)


@pytest.mark.parametrize(
    ("body", "overrides"),
    [
        (
            {"messages": [{"role": "user", "content": "hi!"}], "temperature": 0, "max_tokens": 10},
            {},
        ),
        ({"messages": MESSAGES, "temperature": 0, "max_tokens": 11}, {}),
        ({"messages": MESSAGES, "temperature": 0, "max_tokens": 10, "tools": []}, {}),
        ({"messages": MESSAGES, "temperature": 0, "max_tokens": 10}, {"model": "other"}),
        ({"messages": MESSAGES, "temperature": 0, "max_tokens": 10}, {"sent_as": "gpt-x"}),
        ({"messages": MESSAGES, "temperature": 0, "max_tokens": 10}, {"scope": "project:api"}),
        ({"messages": MESSAGES, "temperature": 0, "max_tokens": 10}, {"api": "anthropic.messages"}),
        ({"messages": MESSAGES, "temperature": 0, "max_tokens": 10}, {"transforms": "ab"}),
        (
            {"messages": MESSAGES, "temperature": 0, "max_tokens": 10},
            {"headers": [None, "tools-2024"]},
        ),
    ],
)
def test_the_key_changes_with_what_changes_the_answer(
    body: dict[str, Any], overrides: dict[str, Any]
) -> None:
    base = key_of({"messages": MESSAGES, "temperature": 0, "max_tokens": 10})
    assert key_of(body, **overrides) != base


@pytest.mark.parametrize(
    ("api", "body", "expected"),
    [
        ("openai.chat", {"temperature": 0}, True),
        ("openai.chat", {"temperature": 0.0, "n": 1, "top_p": 0.9}, True),
        ("openai.chat", {"temperature": -1}, True),
        ("openai.chat", {}, False),
        ("openai.chat", {"temperature": 0.2}, False),
        ("openai.chat", {"temperature": 0, "n": 2}, False),
        ("openai.chat", {"top_p": 0}, True),
        ("openai.chat", {"top_p": 0.1}, False),
        ("openai.chat", {"temperature": "0"}, False),
        ("openai.chat", {"temperature": False}, False),
        ("openai.completions", {"temperature": 0, "best_of": 3}, False),
        ("anthropic.messages", {"temperature": 0, "max_tokens": 5}, True),
        ("anthropic.messages", {"max_tokens": 5}, False),
        ("openai.embeddings", {"input": "x"}, True),
    ],
)
def test_deterministic_requests(api: str, body: dict[str, Any], expected: bool) -> None:
    assert is_deterministic(api, body) is expected


def test_scope_values() -> None:
    key = ApiKey(id="ci", hash="h", org="acme", project="web")
    bare = ApiKey(id="solo", hash="h")
    assert [scope_value(s, key) for s in ("key", "project", "org", "global")] == [
        "key:ci",
        "project:web",
        "org:acme",
        "global",
    ]
    assert [scope_value(s, bare) for s in ("project", "org")] == ["key:solo", "key:solo"]
    assert scope_value("project", None) == "anonymous"
    assert scope_value("global", None) == "global"


# --- the compiled policy ----------------------------------------------------------------------

POLICY_CONFIG = """
version: 1
upstreams: {u: {kind: mock}}
models: {m: {targets: [{upstream: u}]}}
routes: [{name: r, match: {}, action: {cache: p}}]
cache: {policies: {p: {ttl_s: 60%s}}}
"""


def test_a_policy_compiles_with_its_scope_and_is_enforced() -> None:
    from compiler import compile_texts

    default = compile_texts([("c.yaml", POLICY_CONFIG % "")])
    assert default.table is not None
    assert default.table.cache.policies["p"].scope == "project"
    assert not [w for w in default.warnings if w.code == "config.not_enforced"]
    org = compile_texts([("c.yaml", POLICY_CONFIG % ", scope: org")])
    assert org.table is not None and org.table.cache.policies["p"].scope == "org"
    assert org.table.cache.policies["p"].state_id != default.table.cache.policies["p"].state_id
    bad = compile_texts([("c.yaml", POLICY_CONFIG % ", scope: tenant")])
    assert [e.code for e in bad.errors] == ["schema.enum"]
