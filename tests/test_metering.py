"""Token metering (runtime/metering.py) and the ledger's queue and writer (runtime/state/ledger.py),
in process: usage read from bodies and stream events of both APIs, raw streams cut at any byte,
estimates, and a writer that survives a failing store without losing or doubling a record."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.metering import Meter, RawTap, Spend, Trace, build_record
from runtime.request import RequestContext
from runtime.state.ledger import Ledger, UsageRecord


def sse(events: list[tuple[str | None, Any]]) -> bytes:
    out = b""
    for name, data in events:
        if name is not None:
            out += f"event: {name}\n".encode()
        out += (
            b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n"
        )
    return out


OPENAI_STREAM = sse(
    [
        (None, {"choices": [{"index": 0, "delta": {"content": "Hello "}}], "usage": None}),
        (None, {"choices": [{"index": 0, "delta": {"content": "world"}}], "usage": None}),
        (None, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None}),
        (
            None,
            {
                "choices": [],
                "usage": {
                    "prompt_tokens": 12,
                    "completion_tokens": 2,
                    "prompt_tokens_details": {"cached_tokens": 4},
                },
            },
        ),
        (None, b"[DONE]"),
    ]
)
ANTHROPIC_STREAM = sse(
    [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "content": [],
                    "usage": {"input_tokens": 7, "cache_read_input_tokens": 3, "output_tokens": 1},
                },
            },
        ),
        ("content_block_start", {"type": "content_block_start", "index": 0}),
        (
            "content_block_delta",
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi there"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 5}}),
        ("message_stop", {"type": "message_stop"}),
    ]
)


def test_openai_body_usage_with_cached_tokens() -> None:
    meter = Meter()
    meter.observe_body(
        "openai.chat",
        {
            "choices": [{"message": {"content": "abcd"}}],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 6},
            },
        },
    )
    assert (meter.input_tokens, meter.output_tokens, meter.cached_tokens) == (10, 3, 6)
    assert meter.reported and meter.text_chars == 4


def test_anthropic_body_counts_cache_reads_and_writes_as_input() -> None:
    meter = Meter()
    usage = {
        "input_tokens": 5,
        "output_tokens": 2,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
    }
    meter.observe_body("anthropic.messages", {"content": [], "usage": usage})
    assert (meter.input_tokens, meter.output_tokens, meter.cached_tokens) == (125, 2, 100)
    assert meter.reported


def test_embeddings_usage_has_no_output_side() -> None:
    meter = Meter()
    meter.observe_body("openai.embeddings", {"usage": {"prompt_tokens": 8, "total_tokens": 8}})
    assert meter.reported and (meter.input_tokens, meter.output_tokens) == (8, 0)


def test_openai_usage_only_chunk_is_recognised_and_content_chunks_are_not() -> None:
    meter = Meter()
    content = {"choices": [{"delta": {"content": "x"}}], "usage": None}
    assert meter.observe_event("openai.chat", None, content) is False
    usage = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    assert meter.observe_event("openai.chat", None, usage) is True
    assert meter.reported


def test_anthropic_stream_input_from_start_output_from_delta() -> None:
    meter = Meter()
    meter.observe_sse("anthropic.messages", [ANTHROPIC_STREAM])
    assert (meter.input_tokens, meter.output_tokens, meter.cached_tokens) == (10, 5, 3)
    assert meter.reported and meter.text_chars == len("Hi there")


def test_anthropic_stream_cut_before_message_delta_is_not_fully_reported() -> None:
    meter = Meter()
    cut = ANTHROPIC_STREAM[: ANTHROPIC_STREAM.index(b"event: message_delta")]
    meter.observe_sse("anthropic.messages", [cut])
    assert meter.input_reported and not meter.output_reported
    assert meter.text_chars == len("Hi there")


def test_non_integer_usage_is_ignored_not_raised() -> None:
    meter = Meter()
    meter.observe_body("openai.chat", {"choices": [], "usage": {"prompt_tokens": "many"}})
    assert not meter.reported


def chunked(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@settings(max_examples=200, deadline=None)
@given(
    stream=st.sampled_from(
        [("openai.chat", OPENAI_STREAM), ("anthropic.messages", ANTHROPIC_STREAM)]
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=4096), max_size=12),
)
def test_raw_tap_reads_the_same_usage_however_the_stream_is_chunked(
    stream: tuple[str, bytes], cuts: list[int]
) -> None:
    api, data = stream
    tap = RawTap()
    for chunk in chunked(data, cuts):
        tap.add(chunk)
    meter = Meter()
    tap.settle(api, meter)
    expected = Meter()
    expected.observe_sse(api, [data])
    assert meter.reported
    assert (meter.input_tokens, meter.output_tokens, meter.cached_tokens) == (
        expected.input_tokens,
        expected.output_tokens,
        expected.cached_tokens,
    )


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(min_value=1, max_value=len(OPENAI_STREAM) - 1))
def test_raw_tap_of_an_abandoned_stream_counts_the_text_relayed(cut: int) -> None:
    tap = RawTap()
    tap.add(OPENAI_STREAM[:cut])
    meter = Meter()
    tap.settle("openai.chat", meter)
    relayed = Meter()
    relayed.observe_sse("openai.chat", [OPENAI_STREAM[:cut]])
    assert meter.text_chars == relayed.text_chars
    assert meter.reported == relayed.reported


def test_raw_tap_keeps_the_tail_of_a_huge_stream() -> None:
    tap = RawTap()
    filler = sse([(None, {"choices": [{"delta": {"content": "x" * 1000}}]})])
    for _ in range(1200):  # ~1.2 MB, past what the tap keeps whole
        tap.add(filler)
    tap.add(OPENAI_STREAM)
    assert tap.overflow
    meter = Meter()
    tap.settle("openai.chat", meter)
    assert meter.reported and (meter.input_tokens, meter.output_tokens) == (12, 2)


def test_build_record_puts_every_value_in_its_own_field() -> None:
    raw = b'{"model": "alias", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    ctx = RequestContext.parse("openai.chat", raw, {}, "req-1")
    ctx.api_key = SimpleNamespace(id="k1", org="acme", project="web")  # type: ignore[assignment]
    ctx.route_name, ctx.requested, ctx.attempts = "r1", "alias", 3
    ctx.upstream, ctx.upstream_model, ctx.stream_error = "up1", "gpt-x", "stream_cut"
    trace = Trace(Meter(text=[]))
    trace.model = SimpleNamespace(name="m1")  # type: ignore[assignment]
    trace.cache_hit = True
    trace.meter.text = ["an", "swer"]
    trace.first_byte = 10.5
    spend = Spend(11, 7, 5, 0.25, 0.5, "EUR", True)
    record = build_record(
        ctx, trace, spend, status=502, error=None, started=10.0, version="v9", log_prompts=True
    )
    assert msgspec.structs.asdict(record) | {"id": "", "ts": 0.0, "latency_ms": 0.0} == {
        "id": "",
        "ts": 0.0,
        "request_id": "req-1",
        "api": "openai.chat",
        "status": 502,
        "key_id": "k1",
        "org": "acme",
        "project": "web",
        "route": "r1",
        "requested_model": "alias",
        "model": "m1",
        "upstream": "up1",
        "upstream_model": "gpt-x",
        "stream": True,
        "error": "stream_cut",
        "input_tokens": 11,
        "output_tokens": 7,
        "cached_tokens": 5,
        "cost": 0.25,
        "currency": "EUR",
        "estimated": True,
        "latency_ms": 0.0,
        "ttfb_ms": 500.0,
        "attempts": 3,
        "cache_hit": True,
        "cost_saved": 0.5,
        "config_version": "v9",
        "prompt": raw.decode(),
        "completion": "answer",
    }
    assert record.latency_ms > 0 and len(record.id) == 34


# --- the ledger's queue and writer ------------------------------------------------------------


def record(n: int) -> UsageRecord:
    return UsageRecord(
        id=f"r{n:06d}", ts=1_700_000_000.0 + n, request_id=f"q{n}", api="openai.chat", status=200
    )


class FlakyStore:
    """A store that fails its first `fail` writes; with `commit_then_fail` a failing write
    stores the batch first (a commit whose acknowledgement was lost). Idempotent by id."""

    def __init__(self, fail: int = 0, commit_then_fail: bool = False) -> None:
        self.fail = fail
        self.commit_then_fail = commit_then_fail
        self.rows: dict[str, UsageRecord] = {}
        self.calls = 0
        self.closed = False

    async def open(self) -> None:
        return None

    async def write(self, records: Sequence[UsageRecord]) -> None:
        self.calls += 1
        if self.fail > 0:
            self.fail -= 1
            if self.commit_then_fail:
                self.rows.update((r.id, r) for r in records)
            raise ConnectionError("store is down")
        self.rows.update((r.id, r) for r in records)

    async def report(self, **_: Any) -> list[dict[str, Any]]:
        return []

    async def prune(self, before_day: str) -> int:
        return 0

    async def records(self) -> list[UsageRecord]:
        return list(self.rows.values())

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self.closed = True


def run_ledger(store: FlakyStore, count: int, **options: Any) -> Ledger:
    async def main() -> Ledger:
        ledger = Ledger(store, flush_s=0.01, **options)  # type: ignore[arg-type]
        ledger.start()
        for n in range(count):
            ledger.record(record(n))
            if n % 50 == 0:
                await asyncio.sleep(0)
        await ledger.close(timeout_s=30)
        return ledger

    return asyncio.run(main())


def test_writer_batches_and_close_drains_everything() -> None:
    store = FlakyStore()
    ledger = run_ledger(store, 2500, batch=1000)
    assert sorted(store.rows) == [f"r{n:06d}" for n in range(2500)]
    assert ledger.written == 2500 and ledger.depth == 0 and store.closed
    assert store.calls >= 3  # batches, not one write per record


@pytest.mark.parametrize("commit_then_fail", [False, True])
def test_a_failing_store_is_retried_and_nothing_is_lost_or_doubled(commit_then_fail: bool) -> None:
    store = FlakyStore(fail=3, commit_then_fail=commit_then_fail)
    ledger = run_ledger(store, 300, batch=100)
    assert sorted(store.rows) == [f"r{n:06d}" for n in range(300)]
    assert ledger.written == 300 and ledger.write_errors == 3 and ledger.last_error is None


def test_a_full_queue_counts_what_it_drops() -> None:
    async def main() -> Ledger:
        ledger = Ledger(FlakyStore(), capacity=10)  # type: ignore[arg-type]
        for n in range(25):  # NOTE: not started: nothing drains the queue
            ledger.record(record(n))
        return ledger

    ledger = asyncio.run(main())
    assert ledger.depth == 10 and ledger.dropped == 15


# --- the raw relay that strips usage ------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=4096), max_size=12),
    crlf=st.booleans(),
)
def test_usage_strip_relay_passes_everything_but_the_usage_chunk(
    cuts: list[int], crlf: bool
) -> None:
    from runtime.bridge import RawRelay
    from runtime.metering import Trace

    upstream = OPENAI_STREAM.replace(b"\n", b"\r\n") if crlf else OPENAI_STREAM
    trace = Trace()
    relay = RawRelay("openai.chat", b"[DONE]", trace, strip_usage=True)
    out = b"".join(relay.feed(chunk) for chunk in chunked(upstream, cuts)) + relay.finish()
    usage_event = OPENAI_STREAM.split(b"\n\n")[3] + b"\n\n"
    assert out == OPENAI_STREAM.replace(usage_event, b"")
    assert trace.meter.reported
    assert (trace.meter.input_tokens, trace.meter.output_tokens) == (12, 2)
