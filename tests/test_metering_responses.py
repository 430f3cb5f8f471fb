"""Metering of the Responses API (runtime/metering.py): usage read from a whole ``response`` body,
from ``response.completed`` in a stream, and from an untouched body or a raw stream cut at any
byte; ``input_tokens`` counts cached tokens (as the Responses API reports them), and the answer
text is counted once, from the deltas, not again from the ``.done`` events."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.metering import Meter, RawTap, decode_usage_body

API = "openai.responses"
USAGE = {
    "input_tokens": 40,
    "input_tokens_details": {"cached_tokens": 32},
    "output_tokens": 6,
    "output_tokens_details": {"reasoning_tokens": 2},
    "total_tokens": 46,
}
OUTPUT = [
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Hello world", "annotations": []}],
    },
    {
        "id": "fc_1",
        "type": "function_call",
        "call_id": "call_1",
        "name": "f",
        "arguments": '{"a": 1}',
        "status": "completed",
    },
]
BODY = {"id": "resp_1", "object": "response", "status": "completed", "output": OUTPUT}


def sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(
        f"event: {e['type']}\ndata: {json.dumps({**e, 'sequence_number': n})}\n\n".encode()
        for n, e in enumerate(events)
    )


STREAM = sse(
    [
        {"type": "response.created", "response": {**BODY, "output": [], "usage": None}},
        {"type": "response.output_item.added", "output_index": 0, "item": OUTPUT[0]},
        {"type": "response.output_text.delta", "item_id": "msg_1", "delta": "Hello "},
        {"type": "response.output_text.delta", "item_id": "msg_1", "delta": "world"},
        {"type": "response.output_text.done", "item_id": "msg_1", "text": "Hello world"},
        {"type": "response.output_item.done", "output_index": 0, "item": OUTPUT[0]},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "delta": '{"a": 1}'},
        {"type": "response.completed", "response": {**BODY, "usage": USAGE}},
    ]
)


def test_body_usage_counts_cached_tokens_inside_input() -> None:
    meter = Meter()
    meter.observe_body(API, {**BODY, "usage": USAGE})
    assert (meter.input_tokens, meter.output_tokens, meter.cached_tokens) == (40, 6, 32)
    assert meter.reported
    assert meter.text_chars == len("Hello world") + len('{"a": 1}')


def test_an_untouched_body_is_read_the_same_way() -> None:
    """The pipeline reads an untouched reply with `decode_usage_body`, never decoding it whole."""
    usage = decode_usage_body(json.dumps({**BODY, "usage": USAGE}).encode()).usage
    meter = Meter()
    meter.observe_usage(usage)
    assert (meter.input_tokens, meter.output_tokens, meter.cached_tokens) == (40, 6, 32)
    assert meter.input_reported


def test_a_body_without_usage_is_not_reported() -> None:
    meter = Meter()
    meter.observe_body(API, {**BODY, "usage": None})
    assert not meter.input_reported and not meter.output_reported
    assert meter.text_chars == len("Hello world") + len('{"a": 1}')


def test_stream_usage_comes_from_response_completed_and_text_from_deltas() -> None:
    meter = Meter(text=[])
    meter.observe_sse(API, [STREAM])
    assert (meter.input_tokens, meter.output_tokens, meter.cached_tokens) == (40, 6, 32)
    assert meter.reported
    assert meter.text == ["Hello ", "world", '{"a": 1}']  # not the .done repeats


def test_incomplete_and_failed_responses_report_their_usage() -> None:
    for kind in ("response.incomplete", "response.failed"):
        meter = Meter()
        usage = {**USAGE, "input_tokens_details": {"cached_tokens": 0}}
        event = {"type": kind, "response": {**BODY, "usage": usage}}
        assert meter.observe_event(API, kind, event) is False
        assert (meter.input_tokens, meter.output_tokens, meter.cached_tokens) == (40, 6, 0)


def test_a_stream_cut_before_the_end_is_not_reported() -> None:
    meter = Meter()
    meter.observe_sse(API, [STREAM[: STREAM.index(b"event: response.completed")]])
    assert not meter.input_reported and not meter.output_reported
    assert meter.text_chars == len("Hello world") + len('{"a": 1}')


def test_chat_and_anthropic_usage_are_unchanged() -> None:
    """The Responses branch must not catch the other shapes."""
    chat = Meter()
    chat.observe_usage({"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10})
    anthropic = Meter()
    anthropic.observe_usage({"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": 4})
    assert (chat.input_tokens, chat.cached_tokens) == (9, 0)
    assert (anthropic.input_tokens, anthropic.cached_tokens) == (9, 4)


def chunked(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_raw_tap_reads_the_same_usage_however_the_stream_is_chunked(cuts: list[int]) -> None:
    tap = RawTap()
    for chunk in chunked(STREAM, cuts):
        tap.add(chunk)
    meter = Meter()
    tap.settle(API, meter)
    assert meter.reported
    assert (meter.input_tokens, meter.output_tokens, meter.cached_tokens) == (40, 6, 32)


def test_raw_tap_of_a_stream_with_a_huge_final_event() -> None:
    """``response.completed`` repeats the whole answer: longer than the tap's 4 KiB tail."""
    long_output = [{**OUTPUT[0], "content": [{"type": "output_text", "text": "x" * 10_000}]}]
    data = sse(
        [
            {"type": "response.output_text.delta", "item_id": "msg_1", "delta": "x" * 10_000},
            {
                "type": "response.completed",
                "response": {**BODY, "output": long_output, "usage": USAGE},
            },
        ]
    )
    tap = RawTap()
    for chunk in chunked(data, range(0, len(data), 1000)):
        tap.add(chunk)
    meter = Meter()
    tap.settle(API, meter)
    assert meter.reported and (meter.input_tokens, meter.output_tokens) == (40, 6)
    assert meter.text_chars == 10_000
