"""SSE and NDJSON framing: spec cases, byte-boundary independence, encode/decode round trip."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.sse import (
    OPENAI_DONE,
    NDJSONDecoder,
    SSEDecoder,
    SSEEvent,
    encode_comment,
    encode_event,
)


def decode_all(*chunks: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.flush())
    return events


def feed_bytewise(stream: bytes) -> list[SSEEvent]:
    return decode_all(*(stream[i : i + 1] for i in range(len(stream))))


# --- decoder: spec cases ---------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_dispatches(eol: bytes) -> None:
    stream = b"event: ping" + eol + b"data: {}" + eol + eol + b"data: x" + eol + eol
    expected = [SSEEvent("ping", "{}"), SSEEvent(None, "x")]
    assert decode_all(stream) == expected
    assert feed_bytewise(stream) == expected


def test_mixed_line_endings_in_one_stream() -> None:
    stream = b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"
    assert [e.data for e in decode_all(stream)] == ["a", "b", "c"]


def test_cr_and_lf_split_across_chunks_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r") == [SSEEvent(None, "a")]
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"data: b\n\n") == [SSEEvent(None, "b")]


def test_lone_cr_then_other_byte_is_a_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\rdata: b\r\r") == [SSEEvent(None, "a"), SSEEvent(None, "b")]


def test_multibyte_utf8_split_inside_a_character() -> None:
    payload = "data: привет 👋 世界\n\n".encode()
    cut = payload.index("👋".encode()) + 2
    assert decode_all(payload[:cut], payload[cut:]) == [SSEEvent(None, "привет 👋 世界")]
    assert feed_bytewise(payload) == [SSEEvent(None, "привет 👋 世界")]


def test_comments_are_ignored() -> None:
    assert decode_all(b": keep-alive\n\n:\ndata: x\n: between\n\n") == [SSEEvent(None, "x")]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert decode_all(b"data: a\ndata:\ndata: b\n\n") == [SSEEvent(None, "a\n\nb")]


def test_only_one_space_after_colon_is_removed() -> None:
    assert decode_all(b"data:x\n\ndata:  y\n\n") == [SSEEvent(None, "x"), SSEEvent(None, " y")]


def test_field_without_colon_has_empty_value() -> None:
    assert decode_all(b"data\n\n") == [SSEEvent(None, "")]


def test_event_without_data_is_not_dispatched() -> None:
    assert decode_all(b"event: ping\n\ndata: x\n\n") == [SSEEvent(None, "x")]


def test_event_name_resets_after_dispatch() -> None:
    assert decode_all(b"event: a\ndata: 1\n\ndata: 2\n\n") == [
        SSEEvent("a", "1"),
        SSEEvent(None, "2"),
    ]


def test_id_persists_and_retry_and_unknown_fields_are_ignored() -> None:
    stream = b"id: 7\nretry: 10\nfoo: bar\ndata: a\n\ndata: b\n\nid\ndata: c\n\n"
    assert decode_all(stream) == [
        SSEEvent(None, "a", "7"),
        SSEEvent(None, "b", "7"),
        SSEEvent(None, "c"),
    ]


def test_id_with_nul_is_ignored() -> None:
    assert decode_all(b"id: a\x00b\ndata: x\n\n") == [SSEEvent(None, "x", None)]


def test_leading_bom_is_stripped_only_at_stream_start() -> None:
    assert decode_all(b"\xef\xbb\xbf", b"data: x\n\n") == [SSEEvent(None, "x")]
    assert decode_all(b"data: x\n\n\xef\xbb\xbfdata: y\n\n") == [SSEEvent(None, "x")]


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert decode_all(b"data: \xff\n\n") == [SSEEvent(None, "\ufffd")]


def test_flush_delivers_an_unterminated_last_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'event: e\ndata: {"a": 1}') == []
    assert decoder.flush() == [SSEEvent("e", '{"a": 1}')]
    assert decoder.flush() == []


def test_flush_delivers_event_missing_final_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n") == []
    assert decoder.flush() == [SSEEvent(None, "x")]


def test_empty_chunks_are_harmless() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(b"data: x\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n\n") == [SSEEvent(None, "x")]


def test_long_line_in_many_chunks() -> None:
    text = "x" * 100_000
    stream = f"data: {text}\n\n".encode()
    chunks = [stream[i : i + 7] for i in range(0, len(stream), 7)]
    assert decode_all(*chunks) == [SSEEvent(None, text)]


# --- encoder ---------------------------------------------------------------------------------


def test_encode_event_with_name() -> None:
    assert encode_event('{"type":"ping"}', "ping") == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_encode_event_without_name_and_bytes_payload() -> None:
    assert encode_event(b"[DONE]") == OPENAI_DONE


def test_encode_event_splits_lines_and_keeps_trailing_newline() -> None:
    encoded = encode_event("a\r\nb\rc\n")
    assert encoded == b"data: a\ndata: b\ndata: c\ndata: \n\n"
    assert decode_all(encoded) == [SSEEvent(None, "a\nb\nc\n")]


def test_encode_event_rejects_multi_line_name() -> None:
    with pytest.raises(ValueError):
        encode_event("x", "a\nb")


def test_encode_comment() -> None:
    assert encode_comment("ka") == b": ka\n\n"
    assert encode_comment() == b":\n\n"
    assert decode_all(encode_comment("ka") + encode_event("x")) == [SSEEvent(None, "x")]
    with pytest.raises(ValueError):
        encode_comment("a\nb")


# --- NDJSON ----------------------------------------------------------------------------------


def test_ndjson_splits_lines_across_chunks() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert decoder.feed(b":2}\r\n\n  \n") == [b'{"b":2}']
    assert decoder.feed(b'{"c":3}') == []
    assert decoder.flush() == [b'{"c":3}']
    assert decoder.flush() == []


def test_ndjson_multibyte_split() -> None:
    line = json.dumps({"t": "é👋"}, ensure_ascii=False).encode() + b"\n"
    decoder = NDJSONDecoder()
    out = [piece for i in range(len(line)) for piece in decoder.feed(line[i : i + 1])]
    assert [json.loads(x) for x in out] == [{"t": "é👋"}]


# --- properties ------------------------------------------------------------------------------

_EVENT_NAMES = st.sampled_from(
    [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    ]
)
_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)


@st.composite
def anthropic_sse_streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent]]:
    """Anthropic-style events with unicode text, framed with per-event line endings and comments."""
    events: list[SSEEvent] = []
    stream = b""
    for index in range(draw(st.integers(0, 8))):
        name = draw(_EVENT_NAMES)
        if draw(st.booleans()):
            data = json.dumps(
                {
                    "type": name,
                    "index": index,
                    "delta": {"type": "text_delta", "text": draw(_TEXT)},
                },
                ensure_ascii=False,
            )
        else:
            # NOTE: raw multi-line payloads exercise multi-line data fields too.
            data = draw(_TEXT).replace("\r", "")
        eol = draw(st.sampled_from(["\n", "\r\n", "\r"]))
        lines = [f"event: {name}"] + [f"data: {line}" for line in data.split("\n")]
        if draw(st.booleans()):
            lines.insert(draw(st.integers(0, len(lines))), ": comment")
        stream += (eol.join(lines) + eol + eol).encode()
        events.append(SSEEvent(name, data))
    return stream, events


@settings(max_examples=150, deadline=None)
@given(anthropic_sse_streams(), st.lists(st.integers(0, 10_000), max_size=20))
def test_split_at_any_byte_boundaries_gives_same_events(
    sample: tuple[bytes, list[SSEEvent]], cuts: list[int]
) -> None:
    stream, expected = sample
    positions = sorted({c % (len(stream) + 1) for c in cuts})
    bounds = [0, *positions, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    whole = decode_all(stream)
    assert whole == expected
    assert decode_all(*chunks) == whole


@settings(max_examples=100, deadline=None)
@given(_TEXT, st.one_of(st.none(), st.sampled_from(["message_delta", "x"])))
def test_encode_then_decode_round_trips(data: str, event: str | None) -> None:
    normalized = data.replace("\r\n", "\n").replace("\r", "\n")
    assert feed_bytewise(encode_event(data, event)) == [SSEEvent(event, normalized)]
