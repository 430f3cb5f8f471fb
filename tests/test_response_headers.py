"""Response headers on the way out (runtime/connections.py): `checked_headers` makes, accepts
and refuses exactly what Hypercorn's header pass followed by h11's own validation did, and a
served gateway still frames JSON and streamed answers correctly with it (Content-Length,
chunked, HTTP/1.0, keep-alive, close)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h11
import pytest
from h11._headers import normalize_and_validate
from hypercorn.utils import build_and_validate_headers
from hypothesis import given
from hypothesis import strategies as st

from runtime.connections import checked_headers
from tests.process import Interlock
from tests.test_connections import raw_exchange, split, start
from tests.test_reload import chat

_NAME_BYTES = st.sampled_from(list(b"aZ09-_.!~:; \t\x00\r\nxX"))
_VALUE_BYTES = st.sampled_from(list(b'aZ09 \t,;="/\x00\x01\x0b\x0c\r\n\x7f\x80\xff'))
_NAMES = st.one_of(
    st.sampled_from([b"content-length", b"Content-Length", b"transfer-encoding", b"x-id"]),
    st.lists(_NAME_BYTES, max_size=8).map(bytes),
)


def _ours(headers: list[tuple[bytes, bytes]]) -> object:
    try:
        return checked_headers(headers)._full_items
    except h11.LocalProtocolError:
        return "refused"


def _hypercorn_then_h11(headers: list[tuple[bytes, bytes]]) -> object:
    try:
        return normalize_and_validate(build_and_validate_headers(headers))._full_items
    except (h11.LocalProtocolError, ValueError, IndexError):  # NOTE: IndexError: an empty name
        return "refused"


_RAW_VALUES = st.lists(_VALUE_BYTES, max_size=10).map(bytes)  # as the app sends them


@given(st.lists(st.tuples(_NAMES, st.one_of(_RAW_VALUES, st.sampled_from([b" 12 ", b"7, 7\t"])))))
def test_checked_headers_of_the_apps_headers_agree_with_hypercorn_then_h11(
    headers: list[tuple[bytes, bytes]],
) -> None:
    """The app's headers reach `checked_headers` as sent (Hypercorn's strip and pseudo-header
    pass is skipped): the result is what Hypercorn's pass and h11's validation made of them."""
    assert _ours(headers) == _hypercorn_then_h11(headers)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-a", b"1\r\nx-injected: 1")],
        [(b"bad name", b"1")],
        [(b"", b"1")],
        [(b"content-length", b"5"), (b"content-length", b"6")],
        [(b"x-nul", b"a\x00b")],
    ],
)
def test_unsafe_headers_are_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(h11.LocalProtocolError):
        checked_headers(headers)


def test_headers_keep_their_case_on_the_wire_and_lowercase_for_lookups() -> None:
    full = checked_headers([(b"X-Request-Id", b"abc"), (b"content-length", b"2")])._full_items
    assert full == [
        (b"X-Request-Id", b"x-request-id", b"abc"),
        (b"content-length", b"content-length", b"2"),
    ]


def _post(body: dict[str, object], version: str = "1.1", close: bool = True) -> bytes:
    data = json.dumps(body).encode()
    head = f"POST /v1/chat/completions HTTP/{version}\r\nHost: t\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    head += "Connection: close\r\n" if close else ""
    return head.encode() + b"\r\n" + data


def test_served_answers_are_framed_as_http_requires(
    interlock: Callable[..., Interlock], tmp_path: Path
) -> None:
    server = start(interlock, tmp_path)
    streamed = {**chat("chat"), "stream": True}

    status, headers, body = split(raw_exchange(server.port, _post(chat("chat"))))
    assert (status, headers["content-length"], "transfer-encoding" in headers) == (
        200,
        str(len(body)),
        False,
    )
    assert json.loads(body)["choices"][0]["message"]["content"] == "pong"

    # a stream to an HTTP/1.1 keep-alive peer: chunked, then the next request on the same socket
    both = raw_exchange(server.port, _post(streamed, close=False) + _post(chat("chat")))
    first, _, rest = both.partition(b"0\r\n\r\n")
    status, headers, _ = split(first)
    assert (status, headers["transfer-encoding"], "content-length" in headers) == (
        200,
        "chunked",
        False,
    )
    assert b"data: [DONE]" in first and "close" not in headers.get("connection", "")
    status, headers, body = split(rest)
    assert status == 200 and headers["connection"] == "close"
    assert json.loads(body)["object"] == "chat.completion"

    # HTTP/1.0 knows no chunked coding: the body ends when the connection closes
    status, headers, body = split(raw_exchange(server.port, _post(streamed, version="1.0")))
    assert status == 200 and "transfer-encoding" not in headers
    assert headers["connection"] == "close" and body.rstrip().endswith(b"data: [DONE]")
