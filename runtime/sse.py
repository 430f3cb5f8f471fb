"""Incremental Server-Sent Events and NDJSON framing: bytes in, events or lines out.

`SSEDecoder` follows the WHATWG event-stream rules (``\\n``, ``\\r\\n`` and ``\\r`` line ends,
``:`` comments, one optional space after the field colon, multi-line ``data``) and accepts chunks
split at ANY byte, including inside a UTF-8 sequence or between ``\\r`` and ``\\n``::

    >>> d = SSEDecoder()
    >>> d.feed(b"event: ping\\ndata: {}\\r")
    []
    >>> d.feed(b"\\n\\r\\n")
    [SSEEvent(event='ping', data='{}', id=None)]

`encode_event` is the inverse for one event; `NDJSONDecoder` splits Ollama's newline-delimited
JSON into whole lines. Pure: no I/O, no JSON parsing.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "OPENAI_DONE",
    "NDJSONDecoder",
    "SSEDecoder",
    "SSEEvent",
    "encode_comment",
    "encode_event",
    "lf_framing",
]

OPENAI_DONE = b"data: [DONE]\n\n"

_CR = 0x0D
_LF = 0x0A
_COLON = 0x3A
_SPACE = 0x20
_BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)  # PERF: one per event; a frozen __init__ costs ~6x
class SSEEvent:
    """One dispatched event: ``event`` is None when the stream named none (the spec's "message")."""

    event: str | None
    data: str
    id: str | None = None


class SSEDecoder:
    """Feed raw bytes as they arrive; get back every event completed by them.

    Lines are split on bytes before decoding (``\\r`` and ``\\n`` never occur inside a UTF-8
    sequence), so a multi-byte character cut by a chunk boundary is decoded whole. Invalid UTF-8
    becomes U+FFFD, as the spec requires. ``id`` persists across events, as the spec's
    last-event-ID does; ``retry`` and unknown fields are ignored.

    Example: ``SSEDecoder().feed(b"data: a\\ndata: b\\n\\n")`` ->
    ``[SSEEvent(event=None, data="a\\nb", id=None)]``.
    """

    __slots__ = ("_buf", "_data", "_data_size", "_event", "_last_id", "_skip_lf", "_started")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip_lf = False
        self._started = False
        self._data: list[bytes] = []
        self._data_size = 0
        self._event: str | None = None
        self._last_id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume `chunk`; return the events it completes, in order (often none)."""
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == _LF:
                chunk = chunk[1:]
                if not chunk:
                    return []
        # PERF: most chunks end mid-line; only the new bytes are scanned for a terminator.
        if b"\n" not in chunk and b"\r" not in chunk:
            self._buf += chunk
            return []
        self._buf += chunk
        buf = self._buf
        end = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
        complete = bytes(buf[: end + 1])
        self._buf = bytearray(buf[end + 1 :])
        # NOTE: a trailing lone CR may be the first half of CRLF; its LF arrives in the next chunk.
        self._skip_lf = complete[-1] == _CR and not self._buf
        if not self._started:
            complete = self._strip_bom(complete)
        events: list[SSEEvent] = []
        for line in complete.splitlines():
            # PERF: blank and "data: " lines are most of a stream; test them first.
            if not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
            elif line.startswith(b"data: "):
                self._data.append(line[6:])
                self._data_size += len(line)
            elif line.startswith(b"event: "):
                self._event = line[7:].decode("utf-8", "replace") or None
            else:
                self._process_field(line)
        return events

    @property
    def pending(self) -> int:
        """Bytes held for the event not dispatched yet (its data lines and an unfinished line),
        so a caller can bound one event. Example: after ``feed(b"data: abc")`` -> 9."""
        return len(self._buf) + self._data_size

    def flush(self) -> list[SSEEvent]:
        """End of stream: process an unterminated last line and dispatch a pending event.

        NOTE: the spec discards an event not closed by a blank line; upstreams that drop the
        final blank line are common enough that the last event is delivered instead.
        """
        line = bytes(self._buf)
        self._buf = bytearray()
        self._skip_lf = False
        if not self._started:
            line = self._strip_bom(line)
        if line:
            self._process_field(line)
        event = self._dispatch()
        return [event] if event is not None else []

    def _strip_bom(self, head: bytes) -> bytes:
        self._started = True
        return head[3:] if head.startswith(_BOM) else head

    def _process_field(self, line: bytes) -> None:
        if line[0] == _COLON:
            return
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 1 :]
            if value and value[0] == _SPACE:
                value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._data_size += len(line)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace") or None
        elif name == b"id" and b"\0" not in value:
            self._last_id = value.decode("utf-8", "replace") or None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data = []
        self._data_size = 0
        self._event = None
        if not data:
            return None
        text = (data[0] if len(data) == 1 else b"\n".join(data)).decode("utf-8", "replace")
        return SSEEvent(event, text, self._last_id)


def encode_event(data: str | bytes, event: str | None = None) -> bytes:
    """Frame one event; every line of `data` becomes its own ``data:`` line.

    Example: ``encode_event('{"a":1}', "message_stop")`` ->
    ``b'event: message_stop\\ndata: {"a":1}\\n\\n'``.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if b"\n" in raw or b"\r" in raw:
        lines = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        body = b"".join([b"data: " + line + b"\n" for line in lines])
    else:
        body = b"data: " + raw + b"\n"
    if event is None:
        return body + b"\n"
    if "\n" in event or "\r" in event:
        raise ValueError(f"SSE event name must be one line: {event!r}")
    return b"event: " + event.encode("utf-8") + b"\n" + body + b"\n"


def encode_comment(text: str = "") -> bytes:
    """A comment frame, ignored by clients; a keep-alive.

    Example: ``encode_comment("ka")`` -> ``b": ka\\n\\n"``.
    """
    if "\n" in text or "\r" in text:
        raise ValueError(f"SSE comment must be one line: {text!r}")
    return b": " + text.encode("utf-8") + b"\n\n" if text else b":\n\n"


class NDJSONDecoder:
    """Split newline-delimited JSON (Ollama's stream format) into whole, non-blank lines.

    Lines are returned as bytes, stripped of surrounding whitespace (including a ``\\r``), ready
    for a JSON decoder. Example: ``NDJSONDecoder().feed(b'{"a":1}\\n{"b"')`` -> ``[b'{"a":1}']``.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume `chunk`; return the lines it completes."""
        self._buf += chunk
        if b"\n" not in chunk:
            return []
        parts = self._buf.split(b"\n")
        self._buf = parts.pop()
        return [stripped for part in parts if (stripped := bytes(part.strip()))]

    @property
    def pending(self) -> int:
        """Bytes of the line not completed yet. Example: after ``feed(b'{"a"')`` -> 4."""
        return len(self._buf)

    def flush(self) -> list[bytes]:
        """End of stream: the last line if it was not newline-terminated."""
        rest = bytes(self._buf.strip())
        self._buf = bytearray()
        return [rest] if rest else []


def lf_framing(data: bytes) -> bytes:
    """SSE line ends (``\\r\\n``, ``\\r``) as ``\\n``; a last ``\\r`` may be half of a
    ``\\r\\n`` split between chunks, so it stays until the next chunk comes."""
    last_cr = data.endswith(b"\r")
    body = data[:-1] if last_cr else data
    body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return body + b"\r" if last_cr else body
