"""Token accounting for one request: what the upstream reported, else an estimate.

A `Meter` reads usage in the *client's* protocol (every bridge answers in OpenAI chat, Anthropic
or Responses shape), from a whole response body or from stream events as they go to the client::

    meter = Meter()
    meter.observe_event("openai.chat", None, {"choices": [], "usage": {"prompt_tokens": 9,
                        "completion_tokens": 3}})      -> True (a usage-only chunk)
    meter.input_tokens, meter.output_tokens, meter.reported -> 9, 3, True

`input_tokens` counts every prompt token (cached ones too, as OpenAI's ``prompt_tokens`` does;
Anthropic's ``input_tokens`` + cache reads + cache writes); `cached_tokens` is the cached part.
A `Trace` carries what the ledger records about a request as the pipeline learns it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from runtime.ids import ordered_id
from runtime.sse import SSEDecoder, lf_framing
from runtime.state.ledger import UsageRecord
from runtime.translate.anthropic import estimate_tokens

if TYPE_CHECKING:
    from compiler.table import CompiledModel
    from runtime.caching import CacheFill
    from runtime.limiting import Admission
    from runtime.request import RequestContext

_decode = msgspec.json.decode


class _Details(msgspec.Struct):
    cached_tokens: int | None = None


class UsageFields(msgspec.Struct):
    """The usage object of either API (only the counters the ledger reads)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _Details | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    input_tokens_details: _Details | None = None  # the Responses API's


class _WithUsage(msgspec.Struct):
    usage: UsageFields | None = None


class _Object(msgspec.Struct):
    """Decoding into this validates a JSON object without building anything."""


# PERF: decoding into this validates the whole JSON body and builds only the usage object.
decode_usage_body = msgspec.json.Decoder(_WithUsage).decode
_validate_object = msgspec.json.Decoder(_Object).decode
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode


class Meter(msgspec.Struct, gc=False):  # PERF: built in C (a class with __init__: ~2x the cost)
    """Counts one request's tokens; `reported` once the upstream said both halves. `text`: a
    list to keep the answer in (for log_prompts), or None."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    input_reported: bool = False
    output_reported: bool = False
    text_chars: int = 0  # answer text seen, for estimates
    text: list[str] | None = None

    @property
    def reported(self) -> bool:
        return self.input_reported and self.output_reported

    def observe_usage(
        self, usage: UsageFields | dict[str, Any] | None, *, final: bool = False
    ) -> None:
        """Take a usage object of either API (Struct or dict); absent counters keep their value
        (Anthropic's `message_delta` usage is cumulative and may omit the input side). `final`:
        the answer's last word on usage, so an output counter in it is the reported output
        (``message_start``'s is not)."""
        if usage is None:
            return
        if isinstance(usage, dict):
            usage = msgspec.convert(usage, UsageFields, strict=False)
        prompt_tokens = usage.prompt_tokens
        if prompt_tokens is not None:  # OpenAI shape
            self.input_tokens = prompt_tokens
            details = usage.prompt_tokens_details
            self.cached_tokens = (details.cached_tokens or 0) if details is not None else 0
            self.input_reported = True
            completion_tokens = usage.completion_tokens
            if completion_tokens is not None:
                self.output_tokens = completion_tokens
                self.output_reported = True
            # NOTE: embeddings have no completion side
            elif usage.input_tokens is None or (final and usage.output_tokens is not None):
                self.output_reported = True
            return
        if final and (usage.completion_tokens is not None or usage.output_tokens is not None):
            self.output_reported = True
        if usage.input_tokens_details is not None and usage.input_tokens is not None:
            # NOTE: the Responses API's shape: input_tokens already counts the cached ones
            self.input_tokens = usage.input_tokens
            self.cached_tokens = usage.input_tokens_details.cached_tokens or 0
            self.input_reported = True
            if usage.output_tokens is not None:
                self.output_tokens = usage.output_tokens
            return
        if usage.input_tokens is not None:
            cached = usage.cache_read_input_tokens or 0
            self.input_tokens = (
                usage.input_tokens + cached + (usage.cache_creation_input_tokens or 0)
            )
            self.cached_tokens = cached
            self.input_reported = True
        if usage.output_tokens is not None:
            self.output_tokens = usage.output_tokens

    def observe_body(self, api: str, data: Any) -> None:
        """A whole (non-streamed) response in the client's shape."""
        if not isinstance(data, dict):
            return
        usage = data.get("usage")
        if isinstance(usage, dict):
            self._observe_final(usage)
        self._count_text(_body_texts(api, data))

    def observe_event(self, api: str, name: str | None, data: Any) -> bool:
        """One stream event in the client's shape; True when it is OpenAI's usage-only chunk
        (``choices: []`` with usage), which a client that did not ask for usage must not see."""
        if not isinstance(data, dict):
            return False
        if api == "openai.responses":
            self._observe_responses_event(data)
            return False
        if api.startswith("anthropic."):
            kind = data.get("type")
            if kind == "content_block_delta":
                delta = data.get("delta")
                if isinstance(delta, dict):
                    self._count_text(
                        v for k in ("text", "partial_json", "thinking") if (v := delta.get(k))
                    )
            elif kind == "message_start":
                message = data.get("message")
                if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                    with contextlib.suppress(msgspec.ValidationError):
                        self.observe_usage(message["usage"])
            elif kind == "message_delta" and isinstance(data.get("usage"), dict):
                self._observe_final(data["usage"])
            return False
        choices = data.get("choices")
        if isinstance(choices, list) and choices:
            self._count_text(_choice_texts(choices, "delta"))
        usage = data.get("usage")
        if isinstance(usage, dict):
            self._observe_final(usage)
            return choices == []
        return False

    def observe_sse(self, api: str, chunks: Iterable[bytes], *, first_only: bool = False) -> None:
        """Stream bytes in the client's protocol (a raw relay's record of what it passed on)."""
        decoder = SSEDecoder()
        for chunk in chunks:
            events = decoder.feed(chunk)
            for event in events:
                if event.data == "[DONE]":
                    continue
                try:
                    self.observe_event(api, event.event, _decode(event.data))
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue  # NOTE: a tail may start inside an event
                if first_only:
                    return
        for event in decoder.flush():
            if event.data != "[DONE]":
                try:
                    self.observe_event(api, event.event, _decode(event.data))
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue

    def _observe_responses_event(self, data: dict[str, Any]) -> None:
        """A Responses stream event: text from the deltas, usage from the final response (the
        ``.done`` events and the final response repeat the text: not counted again)."""
        kind = data.get("type")
        if kind in _RESPONSES_DELTAS:
            self._count_text((data.get("delta"),))
        elif kind in _RESPONSES_ENDS:
            response = data.get("response")
            if isinstance(response, dict) and isinstance(response.get("usage"), dict):
                self._observe_final(response["usage"])

    def reset_text(self) -> None:
        self.text_chars = 0
        if self.text is not None:
            self.text.clear()

    def observe_json(self, api: str, body: bytes) -> None:
        """A whole untouched JSON reply (bytes): validated, and its usage taken without building
        the rest; the text is read only when the reply has no usage (to estimate) or the answer
        is kept (`log_prompts`). Raises msgspec errors for a reply that is not a JSON object."""
        try:
            usage = decode_usage_body(body).usage
        except msgspec.ValidationError:  # NOTE: usage of an unexpected shape: still an object?
            _validate_object(body)
            usage = None
        self.observe_usage(usage, final=True)
        if not self.reported or self.text is not None:
            self.reset_text()
            self.observe_body(api, _decode_object(body))

    def _observe_final(self, usage: dict[str, Any]) -> None:
        with contextlib.suppress(msgspec.ValidationError):  # NOTE: not integers: estimate
            self.observe_usage(usage, final=True)

    def _count_text(self, texts: Iterable[Any]) -> None:
        for text in texts:
            if isinstance(text, str):
                self.text_chars += len(text)
                if self.text is not None:
                    self.text.append(text)


def _choice_texts(choices: list[Any], key: str) -> Iterable[Any]:
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        yield choice.get("text")  # legacy completions
        part = choice.get(key)
        if isinstance(part, dict):
            yield part.get("content")
            for call in part.get("tool_calls") or ():
                if isinstance(call, dict) and isinstance(call.get("function"), dict):
                    yield call["function"].get("arguments")


_RESPONSES_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
    }
)
_RESPONSES_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _responses_texts(data: dict[str, Any]) -> Iterable[Any]:
    """The answer text of a whole Responses body: message text and refusals, call arguments."""
    for item in data.get("output") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            yield item.get("arguments")
        for part in item.get("content") or ():
            if isinstance(part, dict):
                yield part.get("text") if part.get("type") == "output_text" else part.get("refusal")


def _body_texts(api: str, data: dict[str, Any]) -> Iterable[Any]:
    if api == "openai.responses":
        yield from _responses_texts(data)
        return
    if api.startswith("anthropic."):
        for block in data.get("content") or ():
            if isinstance(block, dict):
                yield block.get("text") or block.get("thinking")
                if block.get("type") == "tool_use":
                    yield msgspec.json.encode(block.get("input")).decode()
        return
    choices = data.get("choices")
    if isinstance(choices, list):
        yield from _choice_texts(choices, "message")


class Trace(msgspec.Struct, gc=False):  # PERF: one per metered request, built in C
    """What the pipeline learned about one metered request, for its ledger record (who served
    it is on the `RequestContext`, which every request has). No field refers back to it, so it
    needs no cyclic GC."""

    meter: Meter = msgspec.field(default_factory=Meter)
    model: CompiledModel | None = None  # the model that served (fallbacks included)
    cache_hit: bool = False
    cache_fill: CacheFill | None = None  # a miss's answer, stored in the cache at settle
    admission: Admission | None = None  # limit reservations to settle
    first_byte: float | None = None  # perf_counter when the first body byte went out
    raw_chunks: RawTap | None = None  # a raw relay's record, read when settling


_KEEP_BYTES = 1 << 20


class RawTap(msgspec.Struct, gc=False):  # PERF: built in C; holds bytes only
    """What a raw (untouched) stream relay passed on: its chunks up to 1 MiB, then only the
    last 4 KiB. Read once at the end: the first event and the tail carry the usage; the whole
    record is parsed only when they do not (a client that left, an upstream that reports
    nothing)."""

    chunks: list[bytes] = msgspec.field(default_factory=list)
    kept: int = 0
    overflow: bool = False
    tail: bytes = b""

    def add(self, chunk: bytes) -> None:
        if self.overflow:
            self.tail = (self.tail + chunk)[-4096:]
            return
        self.chunks.append(chunk)
        self.kept += len(chunk)
        if self.kept > _KEEP_BYTES:
            self.overflow = True

    def settle(self, api: str, meter: Meter) -> None:
        """Read the usage (and text) of what was relayed into `meter`; `measure_spend` skips
        this when a relay that strips the usage chunk has read it already."""
        if not self.chunks:
            return
        if api.startswith("anthropic."):
            meter.observe_sse(api, self.chunks[:1], first_only=True)  # message_start
        tail = self.tail if self.overflow else b"".join(self.chunks[-8:])[-4096:]
        # PERF: only the tail's events that carry usage are decoded
        meter.observe_sse(api, (_usage_events(tail),))
        if meter.reported and meter.text is None:
            return
        meter.reset_text()
        meter.observe_sse(api, (*self.chunks, self.tail) if self.overflow else self.chunks)


def _usage_events(stream: bytes) -> bytes:
    """The events of a piece of an SSE stream that mention usage, still framed as events."""
    events = lf_framing(stream).split(b"\n\n")
    return b"".join(e + b"\n\n" for e in events if b'"usage"' in e)


_TEXT_LIMIT = 65536


class Spend(msgspec.Struct, gc=False):  # PERF: built in C, ~3,000 instructions less
    """What a finished request spent (see `measure_spend`); `cost` is in `currency` (None: the
    model has no pricing)."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost: float
    cost_saved: float
    currency: str | None
    estimated: bool


def measure_spend(ctx: RequestContext, trace: Trace, *, answered: bool) -> Spend:
    """The tokens and cost of a finished request. `answered`: a 2xx answer (or stream) began,
    so tokens were spent: counters the upstream did not report are estimated (chars / 4) and
    the spend is marked `estimated`."""
    meter = trace.meter
    # NOTE: a relay that strips the usage chunk has read it already (PERF: no property call)
    reported = meter.input_reported and meter.output_reported
    if trace.raw_chunks is not None and not (reported and meter.text is None):
        trace.raw_chunks.settle(ctx.api, meter)
    estimated = False
    if answered and ctx.api != "anthropic.count_tokens":
        if not meter.input_reported:
            meter.input_tokens = estimate_tokens(ctx.prompt_chars())
            estimated = True
        if not meter.output_reported and ctx.api != "openai.embeddings":
            meter.output_tokens = max(meter.output_tokens, (meter.text_chars + 3) // 4)
            estimated = True
    elif not answered:
        meter.input_tokens = meter.output_tokens = meter.cached_tokens = 0
    model = trace.model
    pricing = model.pricing if model is not None else None
    cost = 0.0
    if pricing is not None:
        cached, tokens = meter.cached_tokens, meter.input_tokens
        cached = cached if cached < tokens else tokens  # PERF: min() costs a call
        cached_price = pricing.cached_input_per_mtok
        cost = (
            (tokens - cached) * pricing.input_per_mtok
            + cached * (pricing.input_per_mtok if cached_price is None else cached_price)
            + meter.output_tokens * pricing.output_per_mtok
        ) / 1_000_000
    cost_saved = 0.0
    if trace.cache_hit:  # NOTE: a cache hit spends nothing; it saves what its answer cost
        cost, cost_saved = 0.0, cost
    currency = pricing.currency if pricing is not None else None
    return Spend(
        meter.input_tokens,
        meter.output_tokens,
        meter.cached_tokens,
        cost,
        cost_saved,
        currency,
        estimated,
    )


def build_record(
    ctx: RequestContext,
    trace: Trace,
    spend: Spend,
    *,
    status: int,
    error: str | None,
    started: float,
    version: str,
    log_prompts: bool,
) -> UsageRecord:
    """The ledger record of a finished request that spent `spend` (`measure_spend`). `started`
    is the request's `time.perf_counter()`."""
    key, model, text = ctx.api_key, trace.model, trace.meter.text
    now_ns, now = time.time_ns(), time.perf_counter()
    first_byte = trace.first_byte
    # PERF: positional, in field order: keywords cost UsageRecord ~16,000 instructions more
    return UsageRecord(
        ordered_id(now_ns),  # id; PERF: time-ordered, so the index appends
        now_ns / 1e9,  # ts
        ctx.request_id,
        ctx.api,
        status,
        key.id if key is not None else None,  # key_id
        key.org if key is not None else None,
        key.project if key is not None else None,
        ctx.route_name,  # route
        ctx.requested,  # requested_model
        model.name if model is not None else None,  # model
        ctx.upstream,
        ctx.upstream_model,
        ctx.stream,
        error or ctx.stream_error,  # error
        spend.input_tokens,
        spend.output_tokens,
        spend.cached_tokens,
        spend.cost,
        spend.currency,
        spend.estimated,
        # PERF: not rounded: round(x, 3) costs ~3,500 instructions
        (now - started) * 1000,  # latency_ms
        (first_byte - started) * 1000 if first_byte else None,  # ttfb_ms
        ctx.attempts,
        trace.cache_hit,
        spend.cost_saved,
        version,  # config_version
        ctx.raw[:_TEXT_LIMIT].decode("utf-8", "replace") if log_prompts else None,  # prompt
        "".join(text)[:_TEXT_LIMIT] if log_prompts and text else None,  # completion
    )
