"""How a request of one client API reaches an upstream that speaks one protocol family.

A `Bridge` names the upstream path, the request/response translation (none when client and
upstream speak the same protocol) and makes a per-request `Relay` that turns the upstream's stream
bytes into the client's stream bytes::

    bridge = bridge_for("openai.chat", "anthropic")
    bridge.path -> "/v1/messages";  bridge.request(openai_body) -> anthropic_body
    relay = bridge.relay(model="claude", include_usage=True, steps=(), api="openai.chat")
    relay.feed(b"event: message_start\\ndata: {...}\\n\\n") -> b'data: {"id": ...}\\n\\n'
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from compiler.transforms import Step, apply_stream_steps
from runtime.errors import GatewayError, is_anthropic
from runtime.metering import RawTap, Trace, UsageFields
from runtime.redaction import Redactor, is_error_payload, redact_error_events, reports_error
from runtime.sse import NDJSONDecoder, SSEDecoder, lf_framing
from runtime.translate import TranslationError
from runtime.translate import anthropic as tr_anthropic
from runtime.translate import gigachat as tr_gigachat
from runtime.translate import ollama as tr_ollama
from runtime.translate import responses as tr_responses
from runtime.translate.anthropic import count_request_chars, estimate_tokens
from runtime.translate.anthropic_stream import (
    AnthropicToCompletionsStream,
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
)
from runtime.translate.common import new_id, now
from runtime.translate.errors import to_anthropic_error, to_openai_error
from runtime.translate.responses_stream import ChatToResponsesStream
from runtime.translate.unsupported import (
    CHAT_TO_ANTHROPIC,
    CHAT_TO_GIGACHAT,
    CHAT_TO_OLLAMA,
    COMPLETIONS_TO_ANTHROPIC,
    COMPLETIONS_TO_OLLAMA,
    EMBEDDINGS_TO_GIGACHAT,
    MESSAGES_TO_CHAT,
    RESPONSES_TO_CHAT,
    refuse_unsupported,
)
from runtime.upstream import DEFAULT_MAX_BODY, UpstreamFailure

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

Body = dict[str, Any]
Event = tuple[str | None, Any]  # (SSE event name, decoded data)


class Translator(Protocol):
    """A streaming protocol translator: upstream events in, client events out."""

    def feed(self, event: str | None, data: Any) -> list[Event]: ...
    def finish(self) -> list[Event]: ...


# (model, include_usage, prompt_tokens) -> the translator of one stream; `prompt_tokens` is an
# estimate of the client's prompt, for a first event that must report usage before the upstream did
TranslatorFactory = Callable[[str, bool, int], Translator]


@dataclass(frozen=True, slots=True)
class Bridge:
    path: str
    framing: str  # upstream stream framing: sse | ndjson
    request: Callable[[Body], Body] | None = None  # None: same protocol, forward as is
    response: Callable[[Body], Body] | None = None
    translator: TranslatorFactory | None = None
    terminator: bytes = b"[DONE]"  # how a same-protocol upstream stream ends
    stream_usage: bool = False  # a translated stream asks for usage with OpenAI's stream_options

    @property
    def same_protocol(self) -> bool:
        return self.request is None

    def relay(
        self,
        *,
        model: str,
        include_usage: bool,
        steps: Sequence[Step],
        api: str,
        trace: Trace | None = None,
        request: Mapping[str, Any] | None = None,
        redactor: Redactor | None = None,
        max_event: int = DEFAULT_MAX_BODY,
    ) -> Relay:
        """The relay for one stream. With a `trace` (the request is metered) the upstream is
        always asked for usage, the meter sees every event, and a usage chunk the client did
        not ask for is dropped. `request` (the client's decoded body) gives a translated
        Anthropic stream the prompt estimate its ``message_start`` reports. `redactor` masks
        secrets in the upstream's error events (the snapshot's; without one, credential
        shapes only). `max_event` bounds one upstream event (``server.max_upstream_body_bytes``):
        a larger one fails the stream with ``response_too_large``."""
        metered = trace is not None
        redactor = redactor if redactor is not None else Redactor(())
        if self.translator is None and not steps and (include_usage or not metered):
            if api == "openai.responses":
                return ResponsesRawRelay(api, self.terminator, trace, redactor, max_event)
            return RawRelay(api, self.terminator, trace, redactor, max_event)
        if self.translator is None and not steps and trace is not None and api in _CHUNK_APIS:
            return RawRelay(api, self.terminator, trace, redactor, max_event, strip_usage=True)
        translator = None
        if self.translator is not None:
            prompt_tokens = 0
            if request is not None and is_anthropic(api):
                prompt_tokens = estimate_tokens(count_request_chars(request))
            translator = self.translator(model, include_usage or metered, prompt_tokens)
        return EventRelay(
            api,
            self.framing,
            translator,
            tuple(steps),
            self.terminator,
            trace,
            include_usage,
            redactor=redactor,
            max_event=max_event,
        )

    def error_body(
        self, api: str, status: int, body: bytes, redactor: Redactor | None = None
    ) -> bytes:
        """An upstream error body rewritten in the client's API shape, secrets redacted: the
        credential shapes always, and with `redactor` every value it knows."""
        if is_anthropic(api):
            shaped = to_anthropic_error(body, status=status)
        else:
            shaped = to_openai_error(body, status=status)
        return _encode(redactor.value(shaped) if redactor is not None else shaped)


# --- relays -----------------------------------------------------------------------------------


class Relay(Protocol):
    def feed(self, chunk: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


_DONE_EVENT = b"\n\ndata: [DONE]\n\n"  # a closing [DONE] after another event
_TAIL_BYTES = 4096  # enough for the last event when it is an upstream's error event


def _event_too_large(limit: int) -> UpstreamFailure:
    return UpstreamFailure(
        "bad_response",
        f"an upstream stream event is larger than {limit} bytes (server.max_upstream_body_bytes)",
        code="response_too_large",
    )


_CHUNK_APIS = frozenset({"openai.chat", "openai.completions"})


class _UsageChunk(msgspec.Struct):
    """What a usage marker's event is read as: usage-only when ``choices`` is ``[]``."""

    choices: list[Any] | None = None
    usage: UsageFields | None = None


_decode_usage_chunk = msgspec.json.Decoder(_UsageChunk).decode


def _decode_or_none(payload: bytes) -> Any:
    try:
        return _decode(payload)
    except msgspec.DecodeError:
        return None


class RawRelay:
    """Same protocol, no stream transforms: events go through untouched, whole (an event is
    passed on once its blank line came), except an upstream error event, whose strings are
    redacted. At the end it checks that the upstream stream ended properly: with ``[DONE]`` /
    ``message_stop``, or with an error event (then the stream's last event).

    `strip_usage` (an OpenAI stream whose client did not ask for usage; the gateway did, for the
    ledger): the usage-only chunk, which comes last before ``[DONE]``, is read into the trace's
    meter and dropped. PERF: only that event is looked at, and decoded into the usage counters
    alone."""

    __slots__ = (
        "_held",
        "_max_event",
        "_meter",
        "_redactor",
        "_tail",
        "_tap",
        "api",
        "terminator",
    )

    def __init__(
        self,
        api: str,
        terminator: bytes,
        trace: Trace | None = None,
        redactor: Redactor | None = None,
        max_event: int = DEFAULT_MAX_BODY,
        *,
        strip_usage: bool = False,
    ) -> None:
        self.api = api
        self.terminator = terminator
        self._max_event = max_event
        self._tail = b""
        self._held = bytearray()  # the start of an event whose end has not come yet
        self._redactor = redactor if redactor is not None else Redactor(())
        self._tap = None
        self._meter = trace.meter if strip_usage and trace is not None else None
        if trace is not None:
            self._tap = trace.raw_chunks = RawTap()

    def feed(self, chunk: bytes) -> bytes:
        self._tail = (self._tail + chunk)[-_TAIL_BYTES:]
        if self._tap is not None:
            self._tap.add(chunk)
        # SECURITY: an event is passed on whole, so an error event is seen (and redacted)
        # before any of its bytes leave; SSE clients act on whole events anyway.
        held = self._held
        if b"\r" in chunk or held.endswith(b"\r"):
            if held.endswith(b"\r"):  # NOTE: the CR of a CRLF split between two chunks
                del held[-1]
                chunk = b"\r" + chunk
            chunk = lf_framing(chunk)
        if not held:  # PERF: the usual case, a chunk of whole events: no copy
            end = chunk.rfind(b"\n\n")
            if end < 0:
                held += chunk
                self._check_held()
                return b""
            held += chunk[end + 2 :]
            self._check_held()
            return self._pass(chunk if end + 2 == len(chunk) else chunk[: end + 2])
        # PERF: a long event in many chunks is appended, and only its new bytes are searched
        start = len(held) - 1
        held += chunk
        end = held.rfind(b"\n\n", start)
        if end < 0:
            self._check_held()
            return b""
        ready = bytes(held[: end + 2])
        del held[: end + 2]
        return self._pass(ready)

    def _pass(self, events: bytes) -> bytes:
        """Whole events on their way to the client."""
        if self._meter is not None:
            events = self._strip_usage(events)
        return redact_error_events(events, self._redactor)

    def _strip_usage(self, events: bytes) -> bytes:
        """`events` without the usage-only chunk. OpenAI sends it last, right before
        ``[DONE]``, so only the last event of `events` is looked at, or the one before a
        closing ``[DONE]``. PERF: a search of one event, not of the whole stream, in as few
        calls as it takes (each costs ~1,000 instructions)."""
        end = len(events) - 2  # NOTE: `events` ends with a blank line
        done = events.endswith(_DONE_EVENT)
        if done:
            end -= len(_DONE_EVENT) - 2
        at = events.rfind(b"\n\n", 0, end)
        begin = at + 2 if at >= 0 else 0
        payload = events[begin + 6 : end] if events.startswith(b"data: ", begin) else b""
        # NOTE: with include_usage every OpenAI chunk says "usage":null; only an object is read
        if b'"usage":{' not in payload and b'"usage": {' not in payload:
            return events
        try:
            chunk = _decode_usage_chunk(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            chunk = None
        assert self._meter is not None
        if (
            chunk is not None
            and chunk.usage is not None
            and chunk.choices is not None
            and not chunk.choices
        ):
            self._meter.observe_usage(chunk.usage, final=True)
        elif not self._meter.observe_event(self.api, None, _decode_or_none(payload)):
            return events
        return events[:begin] + _DONE_EVENT[2:] if done else events[:begin]

    def _check_held(self) -> None:
        if len(self._held) > self._max_event:
            self._held.clear()
            raise _event_too_large(self._max_event)

    def finish(self) -> bytes:
        rest = bytes(self._held).rstrip(b"\r\n")
        self._held.clear()
        if not self._ended_properly():
            raise UpstreamFailure("bad_response", "upstream stream ended before it was complete")
        return self._pass(rest + b"\n\n") if rest else b""

    def _ended_properly(self) -> bool:
        return self.terminator in self._tail[-64:] or self._ended_with_error()

    def _ended_with_error(self) -> bool:
        events = SSEDecoder().feed(self._tail + b"\n\n")  # NOTE: only the last one matters
        if not events:
            return False
        last = events[-1]
        if last.event == "error":
            return True
        try:
            return is_error_payload(_decode(last.data))
        except msgspec.DecodeError:
            return False

    @property
    def at_boundary(self) -> bool:
        """Whether what went to the client ends between events: always, as only whole events
        are passed on (a partial one is dropped when the stream breaks)."""
        return True

    @property
    def failed(self) -> bool:
        """Whether the upstream ended the stream with an error event (read once it ended)."""
        return self.terminator not in self._tail[-64:] and self._ended_with_error()


_RESPONSES_END = frozenset({"response.completed", "response.incomplete", "response.failed"})
# NOTE: JSON escapes newlines inside strings, so a line start is the start of an event field.
_RESPONSES_END_LINE = re.compile(
    rb"\n(?:event: ?(?:response\.(?:completed|incomplete|failed)|error)\r?\n"
    rb'|data: ?\{"type": ?"(?:response\.(?:completed|incomplete|failed)|error)")'
)
_SEQUENCE = re.compile(rb'(?<!\\)"sequence_number": ?(\d+)')


class ResponsesRawRelay(RawRelay):
    """`RawRelay` for a Responses stream, which has no ``[DONE]``: it ends with
    ``response.completed`` / ``incomplete`` / ``failed`` (or ``error``), whose data is the
    whole response, so the end is found by its event line as the bytes pass. `sequence` is the
    number the next event would get (for an error event Interlock adds)."""

    __slots__ = ("_ended", "sequence")

    def __init__(
        self,
        api: str,
        terminator: bytes,
        trace: Trace | None = None,
        redactor: Redactor | None = None,
        max_event: int = DEFAULT_MAX_BODY,
    ) -> None:
        super().__init__(api, terminator, trace, redactor, max_event)
        self._ended = False
        self.sequence = 0

    def feed(self, chunk: bytes) -> bytes:
        window = (self._tail[-64:] if self._tail else b"\n") + chunk
        if not self._ended and _RESPONSES_END_LINE.search(window) is not None:
            self._ended = True
        numbers = _SEQUENCE.findall(window)
        if numbers:
            self.sequence = int(numbers[-1]) + 1
        return super().feed(chunk)

    def _ended_properly(self) -> bool:
        return self._ended


class EventRelay:
    """Decode upstream events, translate them, run stream-safe transforms, encode for the client.

    The upstream stream must end properly (``[DONE]``, ``message_stop`` or Ollama's ``done``
    line) even when a translator could close the client's stream by itself: a stream that
    stops short is an error, never a complete answer. An upstream error event ends the stream:
    it is passed on (redacted, translated) and nothing follows it."""

    __slots__ = (
        "_done",
        "_failed",
        "_max_event",
        "_meter",
        "_ndjson",
        "_redactor",
        "_responses",
        "_sse",
        "api",
        "include_usage",
        "sequence",
        "steps",
        "terminator",
        "translator",
    )

    def __init__(
        self,
        api: str,
        framing: str,
        translator: Translator | None,
        steps: tuple[Step, ...],
        terminator: bytes,
        trace: Trace | None = None,
        include_usage: bool = True,
        *,
        redactor: Redactor | None = None,
        max_event: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.api = api
        self.translator = translator
        self._max_event = max_event
        self._redactor = redactor if redactor is not None else Redactor(())
        self.steps = steps
        self.terminator = terminator
        self._meter = trace.meter if trace is not None else None
        self.include_usage = include_usage
        self._sse = SSEDecoder() if framing == "sse" else None
        self._ndjson = NDJSONDecoder() if framing == "ndjson" else None
        self._done = False
        self._failed = False
        self._responses = api == "openai.responses"
        self.sequence = 0  # Responses streams: the sequence number of the next event

    def feed(self, chunk: bytes) -> bytes:
        if self._failed:
            return b""
        return self._emit(self._upstream_events(chunk))

    @property
    def failed(self) -> bool:
        """Whether the upstream ended the stream with an error event."""
        return self._failed

    def finish(self) -> bytes:
        if self._failed:
            return b""
        if not self._done:
            raise UpstreamFailure("bad_response", "upstream stream ended before it was complete")
        tail = self.translator.finish() if self.translator is not None else []
        out = self._emit(tail)
        if not is_anthropic(self.api) and not self._responses:  # NOTE: Responses has no [DONE]
            out += b"data: [DONE]\n\n"
        return out

    def _upstream_events(self, chunk: bytes) -> list[Event]:
        events: list[Event] = []
        if self._sse is not None:
            for event in self._sse.feed(chunk):
                if event.data == "[DONE]":
                    self._done = True
                    continue
                try:
                    data = _decode(event.data)
                except msgspec.DecodeError:
                    raise UpstreamFailure(
                        "bad_response", "upstream sent a malformed event"
                    ) from None
                if event.event == "message_stop" or (
                    self._responses
                    and isinstance(data, dict)
                    and data.get("type") in _RESPONSES_END
                ):
                    self._done = True
                self._failed = event.event == "error" or is_error_payload(data)
                if reports_error(event.event, data):
                    data = self._redactor.value(data)
                events.extend(self._translate(event.event, data))
                if self._failed:
                    break
            if self._sse.pending > self._max_event:
                raise _event_too_large(self._max_event)
        elif self._ndjson is not None:
            for line in self._ndjson.feed(chunk):
                try:
                    data = _decode(line)
                except msgspec.DecodeError:
                    raise UpstreamFailure(
                        "bad_response", "upstream sent a malformed line"
                    ) from None
                if isinstance(data, dict) and data.get("done") is True:
                    self._done = True
                self._failed = is_error_payload(data)
                if self._failed:
                    data = self._redactor.value(data)
                events.extend(self._translate(None, data))
                if self._failed:
                    break
            if self._ndjson.pending > self._max_event:
                raise _event_too_large(self._max_event)
        return events

    def _translate(self, name: str | None, data: Any) -> list[Event]:
        if self.translator is None:
            return [(name, data)]
        return self.translator.feed(name, data)

    def _emit(self, events: list[Event]) -> bytes:
        parts = []
        named = is_anthropic(self.api) or self._responses
        meter = self._meter
        for name, data in events:
            usage_only = meter is not None and meter.observe_event(self.api, name, data)
            if usage_only and not self.include_usage:
                continue  # NOTE: asked for the ledger, not by the client
            if self.steps and isinstance(data, dict):
                apply_stream_steps(self.steps, data, self.api)
            if self._responses and isinstance(data, dict):
                number = data.get("sequence_number")
                if isinstance(number, int):
                    self.sequence = number + 1
            body = _encode(data)
            if named:
                event = name or (data.get("type") if isinstance(data, dict) else None) or "message"
                parts.append(b"event: " + event.encode() + b"\ndata: " + body + b"\n\n")
            else:
                parts.append(b"data: " + body + b"\n\n")
        return b"".join(parts)


# --- the protocol matrix ----------------------------------------------------------------------


class _OpenAIToAnthropicEvents:
    """Adapts `OpenAIToAnthropicStream` (chunk in) to the `Translator` shape."""

    def __init__(self, model: str, include_usage: bool, prompt_tokens: int = 0) -> None:
        self.inner = OpenAIToAnthropicStream(
            model, message_id=new_id("msg_"), input_tokens=prompt_tokens
        )

    def feed(self, event: str | None, data: Any) -> list[Event]:
        return list(self.inner.feed(data))

    def finish(self) -> list[Event]:
        return list(self.inner.finish())


class _ChatToResponsesEvents:
    """Adapts `ChatToResponsesStream` (chunk in) to the `Translator` shape."""

    def __init__(self, model: str, include_usage: bool, prompt_tokens: int = 0) -> None:
        self.inner = ChatToResponsesStream(model)

    def feed(self, event: str | None, data: Any) -> list[Event]:
        return list(self.inner.feed(data)) if isinstance(data, dict) else []

    def finish(self) -> list[Event]:
        return list(self.inner.finish())


class _Chain:
    """Two translators in a row (Ollama -> OpenAI -> Anthropic)."""

    def __init__(self, first: Translator, second: Translator) -> None:
        self.first, self.second = first, second

    def feed(self, event: str | None, data: Any) -> list[Event]:
        return [
            out
            for name, item in self.first.feed(event, data)
            for out in self.second.feed(name, item)
        ]

    def finish(self) -> list[Event]:
        out = [o for name, item in self.first.finish() for o in self.second.feed(name, item)]
        return out + self.second.finish()


def _chunk_translator(factory: Callable[..., Any], *, named: bool = True) -> TranslatorFactory:
    """Wrap a translator whose `feed` returns OpenAI chunk dicts into the `Translator` shape;
    `named` translators take ``(event, data)`` (Anthropic SSE), others take ``(data)`` (NDJSON)."""

    class Wrapped:
        def __init__(self, model: str, include_usage: bool, prompt_tokens: int = 0) -> None:
            self.inner = factory(
                model,
                include_usage=include_usage,
                created=now(),
                chunk_id=new_id("chatcmpl-"),
            )

        def feed(self, event: str | None, data: Any) -> list[Event]:
            chunks = self.inner.feed(event, data) if named else self.inner.feed(data)
            return [(None, chunk) for chunk in chunks]

        def finish(self) -> list[Event]:
            return [(None, chunk) for chunk in self.inner.finish()]

    return Wrapped


def _compose(*steps: Callable[[Body], Body]) -> Callable[[Body], Body]:
    def run(body: Body) -> Body:
        for step in steps:
            body = step(body)
        return body

    return run


# chat fields an Anthropic request's translation produces -> the Anthropic fields they came from
_MESSAGES_PARAMS = {
    "stop": "stop_sequences",
    "response_format": "output_config",
    "reasoning_effort": "thinking",
    "parallel_tool_calls": "tool_choice.disable_parallel_tool_use",
}


def _naming_client_params(
    translate: Callable[[Body], Body], names: Mapping[str, str]
) -> Callable[[Body], Body]:
    """`translate`, its refusals naming the client's field (`names`: translated -> client) so
    that the 400 names what the client sent and ``drop_unsupported`` can remove it."""

    def run(body: Body) -> Body:
        try:
            return translate(body)
        except TranslationError as exc:
            if exc.param is None or exc.param not in names:
                raise
            param = names[exc.param]
            # NOTE: the last mention is the parameter ("no stop sequences: remove stop, ...")
            head, _, tail = exc.message.rpartition(exc.param)
            message = f"{head}{param}{tail}"
            raise TranslationError(message, param=param, droppable=exc.droppable) from None

    return run


def _naming_responses_params(translate: Callable[[Body], Body]) -> Callable[[Body], Body]:
    """`translate` (Responses -> chat -> upstream), its refusals naming the Responses field the
    refused chat parameter came from (`tr_responses.responses_param`)."""

    def run(body: Body) -> Body:
        try:
            return translate(body)
        except TranslationError as exc:
            param = tr_responses.responses_param(body, exc.param) if exc.param else None
            if param is None or param == exc.param:
                raise
            message = exc.message.replace(str(exc.param), param)
            raise TranslationError(message, param=param, droppable=exc.droppable) from None

    return run


def _anthropic_over(chat: Bridge, *, keep_top_k: bool = False) -> Bridge:
    """The ``anthropic.messages`` bridge over `chat`, an ``openai.chat`` bridge that translates:
    requests go Anthropic -> OpenAI -> upstream, responses and streams come back the same way.
    `keep_top_k`: the upstream samples with ``top_k`` (else a request with it is refused)."""
    to_upstream, from_upstream, to_openai = chat.request, chat.response, chat.translator
    if to_upstream is None or from_upstream is None or to_openai is None:
        raise ValueError("only a translating openai.chat bridge can carry anthropic.messages")

    def translator(model: str, include_usage: bool, prompt_tokens: int) -> Translator:
        # NOTE: the Anthropic stream always reports usage, so always ask the upstream for it.
        return _Chain(
            to_openai(model, True, prompt_tokens),
            _OpenAIToAnthropicEvents(model, True, prompt_tokens),
        )

    return Bridge(
        chat.path,
        chat.framing,
        request=refuse_unsupported(
            MESSAGES_TO_CHAT,
            _compose(
                functools.partial(tr_anthropic.anthropic_to_openai_chat, keep_top_k=keep_top_k),
                _naming_client_params(to_upstream, _MESSAGES_PARAMS),
            ),
        ),
        response=_compose(from_upstream, tr_anthropic.openai_response_to_anthropic),
        translator=translator,
    )


def _responses_over(chat: Bridge) -> Bridge:
    """The ``openai.responses`` bridge over `chat`, any ``openai.chat`` bridge (translating or
    not): requests go Responses -> chat -> upstream, answers and streams come back the same way.
    """
    to_upstream, from_upstream, to_openai = chat.request, chat.response, chat.translator

    def translator(model: str, include_usage: bool, prompt_tokens: int) -> Translator:
        # NOTE: response.completed always reports usage, so always ask the upstream for it.
        events = _ChatToResponsesEvents(model, True)
        return events if to_openai is None else _Chain(to_openai(model, True, 0), events)

    request = refuse_unsupported(RESPONSES_TO_CHAT, tr_responses.responses_to_chat)
    response = tr_responses.chat_to_response
    if to_upstream is not None:
        request = _naming_responses_params(_compose(request, to_upstream))
    return Bridge(
        chat.path,
        chat.framing,
        request=request,
        response=response if from_upstream is None else _compose(from_upstream, response),
        translator=translator,
    )


_SAME_OPENAI = {
    "openai.chat": "/chat/completions",
    "openai.completions": "/completions",
    "openai.embeddings": "/embeddings",
}

_OLLAMA_CHAT = Bridge(
    "/api/chat",
    "ndjson",
    request=refuse_unsupported(CHAT_TO_OLLAMA, tr_ollama.openai_chat_to_ollama),
    response=tr_ollama.ollama_chat_to_openai,
    translator=_chunk_translator(tr_ollama.OllamaToOpenAIStream, named=False),
)
_GIGACHAT_CHAT = Bridge(
    "/chat/completions",
    "sse",
    request=refuse_unsupported(CHAT_TO_GIGACHAT, tr_gigachat.openai_chat_to_gigachat),
    response=tr_gigachat.gigachat_to_openai_chat,
    translator=_chunk_translator(tr_gigachat.GigaChatToOpenAIStream, named=False),
)

_ANTHROPIC_CHAT = Bridge(
    "/v1/messages",
    "sse",
    request=refuse_unsupported(CHAT_TO_ANTHROPIC, tr_anthropic.openai_chat_to_anthropic),
    response=tr_anthropic.anthropic_response_to_openai,
    translator=_chunk_translator(AnthropicToOpenAIStream),
)
# NOTE: only OpenAI itself is sure to serve /responses; other kind-openai-compatible servers get
# chat completions
_RESPONSES_OVER_CHAT = _responses_over(Bridge("/chat/completions", "sse"))

_BRIDGES: Mapping[tuple[str, str], Bridge] = {
    **{(api, "openai"): Bridge(path, "sse") for api, path in _SAME_OPENAI.items()},
    ("anthropic.messages", "anthropic"): Bridge("/v1/messages", "sse", terminator=b"message_stop"),
    ("anthropic.count_tokens", "anthropic"): Bridge("/v1/messages/count_tokens", "sse"),
    ("openai.chat", "anthropic"): _ANTHROPIC_CHAT,
    ("openai.responses", "openai"): Bridge("/responses", "sse", terminator=b"response.completed"),
    ("openai.responses", "anthropic"): _responses_over(_ANTHROPIC_CHAT),
    ("openai.responses", "ollama"): _responses_over(_OLLAMA_CHAT),
    ("openai.responses", "gigachat"): _responses_over(_GIGACHAT_CHAT),
    ("openai.completions", "anthropic"): Bridge(
        "/v1/messages",
        "sse",
        request=refuse_unsupported(COMPLETIONS_TO_ANTHROPIC, tr_anthropic.completions_to_anthropic),
        response=tr_anthropic.anthropic_response_to_completions,
        translator=_chunk_translator(AnthropicToCompletionsStream),
    ),
    ("anthropic.messages", "openai"): Bridge(
        "/chat/completions",
        "sse",
        request=refuse_unsupported(MESSAGES_TO_CHAT, tr_anthropic.anthropic_to_openai_chat),
        response=tr_anthropic.openai_response_to_anthropic,
        translator=_OpenAIToAnthropicEvents,
        stream_usage=True,
    ),
    ("openai.chat", "ollama"): _OLLAMA_CHAT,
    ("openai.completions", "ollama"): Bridge(
        "/api/generate",
        "ndjson",
        request=refuse_unsupported(COMPLETIONS_TO_OLLAMA, tr_ollama.completions_to_ollama),
        response=tr_ollama.ollama_generate_to_completions,
        translator=_chunk_translator(tr_ollama.OllamaToCompletionsStream, named=False),
    ),
    ("openai.embeddings", "ollama"): Bridge(
        "/api/embed",
        "ndjson",
        request=tr_ollama.embeddings_to_ollama,
        response=tr_ollama.ollama_embed_to_openai,
    ),
    ("anthropic.messages", "ollama"): _anthropic_over(_OLLAMA_CHAT, keep_top_k=True),
    # NOTE: GigaChat has no legacy completions endpoint: openai.completions is a 400.
    ("openai.chat", "gigachat"): _GIGACHAT_CHAT,
    ("openai.embeddings", "gigachat"): Bridge(
        "/embeddings",
        "sse",
        request=refuse_unsupported(EMBEDDINGS_TO_GIGACHAT, tr_gigachat.embeddings_to_gigachat),
        response=tr_gigachat.gigachat_embed_to_openai,
    ),
    ("anthropic.messages", "gigachat"): _anthropic_over(_GIGACHAT_CHAT),
}


def bridge_for(api: str, family: str, kind: str = "openai") -> Bridge | None:
    """The bridge for `api` to a `family` upstream of `kind`; None when that upstream cannot
    serve it (``anthropic.count_tokens`` is then estimated locally by the caller). The Responses
    API goes natively only to ``kind: openai``; an ``openai-compatible`` server gets chat."""
    if api == "openai.responses" and family == "openai" and kind != "openai":
        return _RESPONSES_OVER_CHAT
    found = _BRIDGES.get((api, family))
    if found is None and api != "anthropic.count_tokens":
        raise GatewayError(
            400,
            f"this model's upstream ({family}) cannot serve {api} requests",
            code="unsupported_api",
        )
    return found
