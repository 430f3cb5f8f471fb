"""Streaming OpenAI chunks <-> Anthropic events, by example and as a round-trip property.

Outputs are replayed through the official SDKs' own accumulators (openai's
``ChatCompletionStreamState``, anthropic's ``accumulate_event``), so "valid" means what the SDKs
that clients use accept, not only what these tests expect.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from anthropic.lib.streaming._messages import accumulate_event
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from runtime.sse import SSEDecoder, encode_event
from runtime.translate.anthropic import (
    AnthropicToCompletionsStream,
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
)

Json = dict[str, Any]


def tool_use(tool_id: str, name: str, value: Json) -> Json:
    """An Anthropic tool_use block."""
    return {"type": "tool_use", "id": tool_id, "name": name, "input": value}


def text(value: str) -> Json:
    """A text block (Anthropic) or text part (OpenAI): both have this shape."""
    return {"type": "text", "text": value}


# --- streams: Anthropic -> OpenAI ------------------------------------------------------------

Block = tuple[str, Any]


def anthropic_events(
    blocks: list[Block], stop_reason: str | None, input_tokens: int, output_tokens: int
) -> list[tuple[str, Json]]:
    """A well-formed Anthropic event sequence: ("text", [fragments]) or
    ("tool", (id, name, [json fragments])) blocks, with pings sprinkled in."""
    events: list[tuple[str, Json]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_test",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude",
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 1},
                },
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for index, (kind, payload) in enumerate(blocks):
        if kind == "text":
            start: Json = text("")
            deltas = [{"type": "text_delta", "text": t} for t in payload]
        else:
            tool_id, name, fragments = payload
            start = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": f} for f in ["", *fragments]]
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        )
        events.extend(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def to_openai_chunks(events: list[tuple[str, Json]], *, include_usage: bool = True) -> list[Json]:
    stream = AnthropicToOpenAIStream(
        "gpt-x", include_usage=include_usage, created=7, chunk_id="chatcmpl-t"
    )
    chunks = [chunk for event, data in events for chunk in stream.feed(event, data)]
    return chunks + stream.finish()


def openai_final(chunks: list[Json]) -> Any:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    # NOTE: the snapshot, not get_final_completion(), which raises on "length" by design.
    return state.current_completion_snapshot


def test_text_and_tool_stream_to_openai() -> None:
    events = anthropic_events(
        [("text", ["Hel", "lo"]), ("tool", ("toolu_1", "weather", ['{"city"', ': "Paris"}']))],
        "tool_use",
        10,
        20,
    )
    chunks = to_openai_chunks(events)
    deltas = [c["choices"][0]["delta"] if c["choices"] else None for c in chunks]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ': "Paris"}'}}]},
        {},
        None,
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 6 + ["tool_calls"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
    assert all(c["usage"] is None for c in chunks[:-1])
    assert {c["id"] for c in chunks} == {"chatcmpl-t"}
    assert {c["model"] for c in chunks} == {"gpt-x"}

    final = openai_final(chunks)
    choice = final.choices[0]
    assert choice.message.content == "Hello"
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "weather"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Paris"}


def test_parallel_tool_calls_get_increasing_indexes() -> None:
    events = anthropic_events(
        [("tool", ("t1", "a", ['{"x": 1}'])), ("text", ["and"]), ("tool", ("t2", "b", ["{}"]))],
        "tool_use",
        1,
        1,
    )
    calls = [
        tc
        for c in to_openai_chunks(events)
        if c["choices"]
        for tc in c["choices"][0]["delta"].get("tool_calls", [])
        if "id" in tc
    ]
    assert [(tc["index"], tc["id"], tc["function"]["name"]) for tc in calls] == [
        (0, "t1", "a"),
        (1, "t2", "b"),
    ]


def test_without_include_usage_there_is_no_usage_chunk() -> None:
    chunks = to_openai_chunks(
        anthropic_events([("text", ["x"])], "end_turn", 1, 1), include_usage=False
    )
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_error_event_becomes_openai_error_chunk_and_ends_stream() -> None:
    stream = AnthropicToOpenAIStream("m", include_usage=True, created=0, chunk_id="c")
    stream.feed(
        "message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 1}}}
    )
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert stream.feed("error", error) == [
        {
            "error": {
                "message": "Overloaded",
                "type": "service_unavailable_error",
                "param": None,
                "code": "overloaded_error",
            }
        }
    ]
    assert (
        stream.feed(
            "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "x"}}
        )
        == []
    )
    assert stream.finish() == []


def test_truncated_upstream_gets_no_invented_finish() -> None:
    events = anthropic_events([("text", ["partial"])], "end_turn", 1, 1)[:-2]
    chunks = to_openai_chunks(events)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)


def test_message_delta_without_message_stop_still_sends_usage_on_finish() -> None:
    events = anthropic_events([("text", ["x"])], "max_tokens", 2, 3)[:-1]
    chunks = to_openai_chunks(events)
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["total_tokens"] == 5


def test_event_name_falls_back_to_data_type_and_unknown_events_are_ignored() -> None:
    stream = AnthropicToOpenAIStream("m", include_usage=False, created=0, chunk_id="c")
    out = stream.feed(
        None,
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}},
    )
    assert [c["choices"][0]["delta"] for c in out] == [
        {"role": "assistant", "content": ""},
        {"content": "x"},
    ]
    assert stream.feed("brand_new_event", {"type": "brand_new_event"}) == []
    assert (
        stream.feed(
            "content_block_delta",
            {"index": 0, "delta": {"type": "thinking_delta", "thinking": "t"}},
        )
        == []
    )


# --- streams: OpenAI -> Anthropic ------------------------------------------------------------


def chunk(delta: Json | None = None, finish: str | None = None, usage: Json | None = None) -> Json:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt",
        "choices": choices,
        "usage": usage,
    }


def anthropic_final(events: list[tuple[str, Json]]) -> Any:
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for _, data in events:
        snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=json_bufs)  # type: ignore[arg-type]
    return snapshot


def run_openai_stream(chunks: list[Json]) -> list[tuple[str, Json]]:
    stream = OpenAIToAnthropicStream("claude-x", message_id="msg_t")
    events = [event for c in chunks for event in stream.feed(c)]
    return events + stream.finish()


def test_openai_stream_to_anthropic_events() -> None:
    events = run_openai_stream(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hi"}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "g", "arguments": "{}"},
                        }
                    ]
                }
            ),
            chunk({}, "tool_calls"),
            chunk(None, usage={"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}),
        ]
    )
    assert [(name, data.get("index")) for name, data in events] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert all(data["type"] == name for name, data in events)
    assert events[0][1]["message"]["id"] == "msg_t"
    assert events[0][1]["message"]["model"] == "claude-x"
    assert events[4][1]["content_block"] == tool_use("call_1", "f", {})
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"input_tokens": 9, "output_tokens": 4},
    }
    final = anthropic_final(events)
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "Hi"
    assert final.content[1].input == {"a": 1}
    assert final.stop_reason == "tool_use"
    assert final.usage.input_tokens == 9
    assert final.usage.output_tokens == 4


def test_text_after_tool_call_opens_a_new_block() -> None:
    events = run_openai_stream(
        [
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}
                    ]
                }
            ),
            chunk({"content": "done"}),
            chunk({}, "stop"),
        ]
    )
    starts = [
        data["content_block"]["type"] for name, data in events if name == "content_block_start"
    ]
    assert starts == ["tool_use", "text"]
    assert [data["index"] for name, data in events if name == "content_block_start"] == [0, 1]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_stream_without_finish_reason_or_usage_is_still_valid() -> None:
    events = run_openai_stream([chunk({"content": "cut"})])
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert events[-2][1]["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert anthropic_final(events).content[0].text == "cut"


def test_empty_upstream_stream_is_still_valid() -> None:
    events = run_openai_stream([])
    assert [name for name, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert anthropic_final(events).content == []


def test_usage_in_finish_chunk_closes_immediately() -> None:
    stream = OpenAIToAnthropicStream("m", message_id="msg_1")
    stream.feed(chunk({"content": "x"}))
    out = stream.feed(chunk({}, "length", usage={"prompt_tokens": 1, "completion_tokens": 2}))
    assert [name for name, _ in out] == ["content_block_stop", "message_delta", "message_stop"]
    assert out[1][1]["delta"]["stop_reason"] == "max_tokens"
    assert stream.finish() == []
    assert stream.feed(chunk({"content": "late"})) == []


def test_tool_calls_without_index_or_id() -> None:
    events = run_openai_stream(
        [
            chunk({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"x"'}}]}),
            chunk({"tool_calls": [{"id": "a", "function": {"arguments": ": 1}"}}]}),
            chunk({"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": {"y": 2}}}]}),
            chunk({"tool_calls": [{"index": 5, "function": {"name": "h", "arguments": "{}"}}]}),
            chunk({}, "tool_calls"),
        ]
    )
    final = anthropic_final(events)
    assert [(b.name, b.input) for b in final.content] == [
        ("f", {"x": 1}),
        ("g", {"y": 2}),
        ("h", {}),
    ]
    assert final.content[2].id == "toolu_t_5"


def test_openai_error_chunk_becomes_anthropic_error_event() -> None:
    stream = OpenAIToAnthropicStream("m", message_id="msg_1")
    out = stream.feed({"error": {"message": "boom sk-secret123456", "type": "server_error"}})
    assert out == [
        ("error", {"type": "error", "error": {"type": "api_error", "message": "boom [REDACTED]"}})
    ]
    assert stream.finish() == []


def test_refusal_and_other_choices() -> None:
    events = run_openai_stream(
        [
            {"choices": [{"index": 1, "delta": {"content": "other choice"}}]},
            chunk({"refusal": "No."}),
            chunk({}, "content_filter"),
        ]
    )
    final = anthropic_final(events)
    assert [b.text for b in final.content] == ["No."]
    assert final.stop_reason == "refusal"


def test_bytes_end_to_end_through_sse() -> None:
    """Anthropic SSE bytes -> OpenAI SSE bytes -> Anthropic events, via the decoder and encoder."""
    upstream = b"".join(
        encode_event(json.dumps(data), event)
        for event, data in anthropic_events([("text", ["Bon", "jour ☀"])], "end_turn", 3, 4)
    )
    to_openai = AnthropicToOpenAIStream("gpt", include_usage=True, created=0, chunk_id="chatcmpl-e")
    decoder = SSEDecoder()
    wire = b""
    for i in range(0, len(upstream), 5):
        for sse in decoder.feed(upstream[i : i + 5]):
            for out in to_openai.feed(sse.event, json.loads(sse.data)):
                wire += encode_event(json.dumps(out))
    to_anthropic = OpenAIToAnthropicStream("claude", message_id="msg_e")
    back = [e for sse in SSEDecoder().feed(wire) for e in to_anthropic.feed(json.loads(sse.data))]
    back += to_anthropic.finish()
    final = anthropic_final(back)
    assert final.content[0].text == "Bonjour ☀"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 4)


def test_completions_stream() -> None:
    stream = AnthropicToCompletionsStream("m", include_usage=True, created=1, chunk_id="cmpl-1")
    chunks: list[Json] = []
    for event, data in anthropic_events([("text", ["Hel", "lo"])], "end_turn", 4, 2):
        chunks.extend(stream.feed(event, data))
    chunks.extend(stream.finish())
    assert [c["object"] for c in chunks] == ["text_completion"] * 4
    assert [c["choices"][0]["text"] for c in chunks[:3]] == ["Hel", "lo", ""]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:3]] == [None, None, "stop"]
    assert chunks[3]["choices"] == []
    assert chunks[3]["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


# --- properties ------------------------------------------------------------------------------

_WORD = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
_NAME = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,15}", fullmatch=True)
_JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | _WORD,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_NAME, inner, max_size=3),
    max_leaves=6,
)
_ARGS = st.dictionaries(_NAME, _JSON_VALUE, max_size=3)


_STOP_REASONS = ["end_turn", "stop_sequence", "max_tokens", "tool_use", "refusal", "pause_turn"]
_SAME_STOP = {"stop_sequence": "end_turn", "pause_turn": "end_turn"}


@st.composite
def anthropic_streams(draw: st.DrawFn) -> tuple[list[Block], str]:
    blocks: list[Block] = []
    for i in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            blocks.append(("text", draw(st.lists(_WORD, min_size=1, max_size=4))))
        else:
            args = json.dumps(draw(_ARGS), ensure_ascii=False)
            cuts = sorted(draw(st.lists(st.integers(0, len(args)), max_size=4)))
            bounds = [0, *cuts, len(args)]
            fragments = [args[a:b] for a, b in itertools.pairwise(bounds)]
            blocks.append(("tool", (f"toolu_{i}", draw(_NAME), fragments)))
    return blocks, draw(st.sampled_from(_STOP_REASONS))


def expected_segments(blocks: list[Block]) -> list[tuple[str, Any]]:
    segments: list[tuple[str, Any]] = []
    for kind, payload in blocks:
        if kind == "text":
            text = "".join(payload)
            if segments and segments[-1][0] == "text":
                # NOTE: adjacent Anthropic text blocks are one OpenAI content stream.
                segments[-1] = ("text", segments[-1][1] + text)
            else:
                segments.append(("text", text))
        else:
            tool_id, name, fragments = payload
            segments.append(("tool", (tool_id, name, json.loads("".join(fragments) or "{}"))))
    return segments


@settings(max_examples=120, deadline=None)
@given(anthropic_streams(), st.integers(0, 5000), st.integers(0, 5000))
def test_stream_round_trip_anthropic_openai_anthropic(
    sample: tuple[list[Block], str], input_tokens: int, output_tokens: int
) -> None:
    blocks, stop_reason = sample
    chunks = to_openai_chunks(anthropic_events(blocks, stop_reason, input_tokens, output_tokens))

    completion = openai_final(chunks)
    choice = completion.choices[0]
    texts = [p for k, p in expected_segments(blocks) if k == "text"]
    assert (choice.message.content or "") == "".join(texts)
    tools = [p for k, p in expected_segments(blocks) if k == "tool"]
    assert [
        (c.id, c.function.name, json.loads(c.function.arguments or "{}"))
        for c in choice.message.tool_calls or []
    ] == tools
    assert completion.usage.prompt_tokens == input_tokens

    events = run_openai_stream(chunks)
    final = anthropic_final(events)
    segments = [
        ("text", b.text) if b.type == "text" else ("tool", (b.id, b.name, b.input))
        for b in final.content
    ]
    assert segments == expected_segments(blocks)
    expected_stop = _SAME_STOP.get(stop_reason, stop_reason)
    if stop_reason != "tool_use" and tools and expected_stop == "end_turn":
        expected_stop = "tool_use"
    assert final.stop_reason == expected_stop
    assert (final.usage.input_tokens, final.usage.output_tokens) == (input_tokens, output_tokens)
    indexes = [data["index"] for name, data in events if name == "content_block_start"]
    assert indexes == list(range(len(indexes)))
