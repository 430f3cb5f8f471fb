"""The response cache end to end, over loopback: the official SDKs call a served Interlock in front
of the counting mock upstreams (tests/upstreams.py).

A deterministic request reaches the upstream once; a sampled one every time; a streaming client
gets a cached answer replayed as a stream its SDK accumulates; a completed stream is stored;
scopes keep tenants apart; TTL (injected clock), LRU, reloads, the client's bypass, entry size,
the ledger's record of a hit and the limits' count of one; a Redis that is away is a miss.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from runtime.caching import CacheStats
from runtime.state.ledger import UsageRecord
from tests.process import free_port
from tests.served import ServedGateway
from tests.test_ledger import stored
from tests.upstreams import MockUpstream

WEB, WEB_2, API = "il-cache-web-key-1", "il-cache-web-key-2", "il-cache-api-key-1"
PRICE_IN, PRICE_OUT = 2.0, 8.0


def key_hash(key: str) -> str:
    salt = "00112233aabbccdd"
    return f"sha256:{salt}:{hashlib.sha256((salt + key).encode()).hexdigest()}"


def config(up: MockUpstream, policy: str = "{}", extra: str = "", backend: str = "") -> str:
    pricing = f"{{input_per_mtok: {PRICE_IN}, output_per_mtok: {PRICE_OUT}}}"
    return f"""
version: 1
upstreams:
  openai: {{kind: openai, base_url: "{up.base_url("openai")}", api_key: sk-test}}
  anthropic: {{kind: anthropic, base_url: "{up.url}", api_key: sk-test}}
models:
  gpt: {{targets: [{{upstream: openai, model: up-gpt}}], pricing: {pricing}}}
  claude: {{targets: [{{upstream: anthropic, model: up-claude}}], pricing: {pricing}}}
auth:
  required: true
  keys:
    - {{id: web-1, hash: "{key_hash(WEB)}", org: acme, project: web}}
    - {{id: web-2, hash: "{key_hash(WEB_2)}", org: acme, project: web}}
    - {{id: api-1, hash: "{key_hash(API)}", org: acme, project: api}}
routes:
  - {{name: sampled-direct, match: {{headers: {{x-no-cache-route: "1"}}}}, action: {{}}}}
  - name: greedy
    match: {{headers: {{x-greedy: "1"}}}}
    action: {{cache: answers, params: {{default: {{temperature: 0}}}}}}
  - {{name: cached, match: {{}}, action: {{cache: answers}}}}
cache:
  {backend}
  policies:
    answers: {policy}
{extra}
"""


@pytest.fixture
def serve(
    served: Callable[[str], ServedGateway], upstream_reset: MockUpstream
) -> Callable[..., ServedGateway]:
    def start(policy: str = "{}", extra: str = "", backend: str = "") -> ServedGateway:
        return served(config(upstream_reset, policy, extra, backend))

    return start


def oai(gw: ServedGateway, key: str = WEB) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def ant(gw: ServedGateway, key: str = WEB) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def stats(gw: ServedGateway) -> CacheStats:
    found: CacheStats = gw.call(lambda: gw.gateway.state.cache_stats)
    return found


def settled(gw: ServedGateway, stores: int) -> None:
    """Wait until `stores` answers are stored (stores happen after the response, at settle)."""
    deadline = time.monotonic() + 5
    while stats(gw).stores < stores:
        assert time.monotonic() < deadline, f"expected {stores} stores, have {stats(gw)}"
        time.sleep(0.005)


def sent(up: MockUpstream, protocol: str = "openai") -> int:
    return len(up.requests_to(protocol))


HELLO: list[Any] = [{"role": "user", "content": "hello there"}]
GREEDY = {"temperature": 0}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def ask(client: openai.OpenAI, content: str = "hello there", **params: Any) -> Any:
    params.setdefault("temperature", 0)
    messages = [{"role": "user", "content": content}]
    return client.chat.completions.with_raw_response.create(
        model="gpt", messages=messages, **params
    )


# --- hits and misses --------------------------------------------------------------------------


def test_a_deterministic_openai_request_reaches_the_upstream_once(
    serve: Callable[..., ServedGateway], upstream_reset: MockUpstream
) -> None:
    gw = serve()
    with oai(gw) as client:
        first = ask(client)
        settled(gw, 1)
        again = ask(client)
    assert sent(upstream_reset) == 1
    assert first.headers["x-interlock-cache"] == "miss"
    assert again.headers["x-interlock-cache"] == "hit"
    assert int(again.headers["age"]) >= 0
    assert again.headers["x-interlock-upstream"] == "openai"
    assert again.headers["x-interlock-model"] == "up-gpt"
    assert again.parse().model_dump() == first.parse().model_dump()  # the same id, too
    assert again.parse().choices[0].message.content == "echo: hello there"


def test_a_deterministic_anthropic_request_reaches_the_upstream_once(
    serve: Callable[..., ServedGateway], upstream_reset: MockUpstream
) -> None:
    gw = serve()
    with ant(gw) as client:
        params: dict[str, Any] = {"model": "claude", "max_tokens": 64, "messages": HELLO}
        # NOTE: this SDK has no `temperature` argument any more; the API still takes one
        first = client.messages.with_raw_response.create(**params, extra_body={"temperature": 0})
        settled(gw, 1)
        again = client.messages.with_raw_response.create(**params, extra_body={"temperature": 0.0})
    assert sent(upstream_reset, "anthropic") == 1
    assert (first.headers["x-interlock-cache"], again.headers["x-interlock-cache"]) == (
        "miss",
        "hit",
    )
    assert again.parse().model_dump() == first.parse().model_dump()


def test_a_route_can_make_requests_deterministic(
    serve: Callable[..., ServedGateway], upstream_reset: MockUpstream
) -> None:
    gw = serve()
    params: dict[str, Any] = {"model": "claude", "max_tokens": 64, "messages": HELLO}
    with ant(gw) as client:
        first = client.messages.with_raw_response.create(**params, extra_headers={"x-greedy": "1"})
        settled(gw, 1)
        again = client.messages.with_raw_response.create(**params, extra_headers={"x-greedy": "1"})
        plain = client.messages.with_raw_response.create(**params)
    assert [r.headers.get("x-interlock-cache") for r in (first, again, plain)] == [
        "miss",
        "hit",
        None,
    ]
    assert upstream_reset.requests_to("anthropic")[0].body["temperature"] == 0
    assert sent(upstream_reset, "anthropic") == 2


def test_a_sampled_request_reaches_the_upstream_every_time(
    serve: Callable[..., ServedGateway], upstream_reset: MockUpstream
) -> None:
    gw = serve()
    with oai(gw) as client:
        replies = [ask(client, temperature=0.7) for _ in range(2)]
        replies += [client.chat.completions.with_raw_response.create(model="gpt", messages=HELLO)]
        replies += [ask(client, n=2)]
    assert sent(upstream_reset) == 4
    assert all("x-interlock-cache" not in r.headers for r in replies)
    assert stats(gw).stores == 0


def test_only_deterministic_false_caches_sampled_requests_too(
    serve: Callable[..., ServedGateway], upstream_reset: MockUpstream
) -> None:
    gw = serve("{only_deterministic: false}")
    with oai(gw) as client:
        ask(client, temperature=0.9)
        settled(gw, 1)
        assert ask(client, temperature=0.9).headers["x-interlock-cache"] == "hit"
    assert sent(upstream_reset) == 1


def test_embeddings_are_deterministic_and_cached(
    serve: Callable[..., ServedGateway], upstream_reset: MockUpstream
) -> None:
    gw = serve()
    with oai(gw) as client:
        first = client.embeddings.with_raw_response.create(model="gpt", input=["a", "b"])
        settled(gw, 1)
        again = client.embeddings.with_raw_response.create(model="gpt", input=["a", "b"])
    assert again.headers["x-interlock-cache"] == "hit"
    assert again.parse().model_dump() == first.parse().model_dump()
    assert len(upstream_reset.requests_to("/v1/embeddings")) == 1


def test_a_route_without_a_cache_policy_is_never_cached(
    serve: Callable[..., ServedGateway], upstream_reset: MockUpstream
) -> None:
    gw = serve()
    with oai(gw) as client:
        for _ in range(2):
            reply = ask(client, extra_headers={"x-no-cache-route": "1"})
            assert "x-interlock-cache" not in reply.headers
    assert sent(upstream_reset) == 2


# --- streams ----------------------------------------------------------------------------------


def accumulate(stream: Any) -> tuple[str, dict[int, list[str]], Any]:
    """The text, tool call (name, arguments) and usage an OpenAI SDK stream amounts to."""
    text, calls, usage = "", {}, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or ():
                entry = calls.setdefault(call.index, ["", ""])
                entry[0] += call.function.name or ""
                entry[1] += call.function.arguments or ""
    return text, calls, usage


def test_a_streaming_client_after_a_non_streamed_miss_gets_a_replayed_stream(
    serve: Callable[..., ServedGateway], upstream_reset: MockUpstream
) -> None:
    gw = serve()
    with oai(gw) as client:
        whole = ask(client).parse()
        with_tools = ask(client, "weather in Paris?", tools=TOOLS).parse()
        settled(gw, 2)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt", messages=HELLO, temperature=0, stream=True
        )
        assert raw.headers["x-interlock-cache"] == "hit"
        assert raw.headers["content-type"].startswith("text/event-stream")
        text, _, usage = accumulate(raw.parse())
        assert (text, usage) == ("echo: hello there", None)  # NOTE: no usage unless asked
        text, _, usage = accumulate(
            client.chat.completions.create(
                model="gpt",
                messages=HELLO,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert text == whole.choices[0].message.content
        assert usage.model_dump() == whole.usage.model_dump()  # type: ignore[union-attr]
        _, calls, _ = accumulate(
            client.chat.completions.create(
                model="gpt",
                messages=[{"role": "user", "content": "weather in Paris?"}],
                temperature=0,
                tools=TOOLS,  # type: ignore[arg-type]
                stream=True,
            )
        )
    [call] = with_tools.choices[0].message.tool_calls or []
    assert calls == {0: [call.function.name, call.function.arguments]}  # type: ignore[union-attr]
    assert sent(upstream_reset) == 2


def test_an_anthropic_streaming_client_gets_the_cached_message(
    serve: Callable[..., ServedGateway], upstream_reset: MockUpstream
) -> None:
    gw = serve()
    params: dict[str, Any] = {"model": "claude", "max_tokens": 64, "extra_body": GREEDY}
    with ant(gw) as client:
        whole = client.messages.create(**params, messages=HELLO)
        tools = [{"name": "weather", "input_schema": TOOLS[0]["function"]["parameters"]}]
        asked = [{"role": "user", "content": "weather?"}]
        with_tool = client.messages.create(**params, messages=asked, tools=tools)
        settled(gw, 2)
        with client.messages.stream(**params, messages=HELLO) as stream:
            replayed = stream.get_final_message()
        with client.messages.stream(**params, messages=asked, tools=tools) as stream:
            replayed_tool = stream.get_final_message()
    assert replayed.model_dump() == whole.model_dump()
    assert replayed_tool.model_dump() == with_tool.model_dump()
    assert any(block.type == "tool_use" for block in replayed_tool.content)
    assert sent(upstream_reset, "anthropic") == 2


def test_a_completed_stream_is_stored_for_later_requests_streamed_or_not(
    serve: Callable[..., ServedGateway], upstream_reset: MockUpstream
) -> None:
    gw = serve()
    with oai(gw) as client:
        text, _, _ = accumulate(
            client.chat.completions.create(model="gpt", messages=HELLO, temperature=0, stream=True)
        )
        settled(gw, 1)
        later = ask(client)
        assert later.headers["x-interlock-cache"] == "hit"
        answer = later.parse()
        assert answer.choices[0].message.content == text == "echo: hello there"
        # NOTE: the streaming client never asked for usage; the stored answer still has it
        assert answer.usage is not None and answer.usage.completion_tokens == 3
    with ant(gw) as client:
        params: dict[str, Any] = {"model": "claude", "max_tokens": 64, "extra_body": GREEDY}
        with client.messages.stream(**params, messages=HELLO) as stream:
            streamed = stream.get_final_message()
        settled(gw, 2)
        cached = client.messages.with_raw_response.create(**params, messages=HELLO)
    assert cached.headers["x-interlock-cache"] == "hit"
    assert cached.parse().model_dump() == streamed.model_dump()
    assert (sent(upstream_reset), sent(upstream_reset, "anthropic")) == (1, 1)


def test_a_stream_cut_short_is_not_stored(
    serve: Callable[..., ServedGateway], upstream_reset: MockUpstream
) -> None:
    from tests.upstreams import CloseMidStream

    gw = serve()
    upstream_reset.script("openai", CloseMidStream(after_events=2))
    body = {"model": "gpt", "messages": HELLO, "temperature": 0, "stream": True}
    with httpx.Client(timeout=10) as client:
        cut = client.post(gw.url + "/v1/chat/completions", json=body, headers=bearer(WEB))
        assert '"error"' in cut.text
        time.sleep(0.1)
        again = client.post(gw.url + "/v1/chat/completions", json=body, headers=bearer(WEB))
    assert again.headers["x-interlock-cache"] == "miss"  # NOTE: the cut stream was not stored
    assert again.text.endswith("data: [DONE]\n\n")
    assert sent(upstream_reset) == 2


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# --- scope, TTL, LRU, reloads, bypass, size ---------------------------------------------------


def cache_states(gw: ServedGateway, *keys: str, content: str = "hello there") -> list[str]:
    out = []
    for key in keys:
        with oai(gw, key) as client:
            out.append(ask(client, content).headers["x-interlock-cache"])
        settled(gw, out.count("miss"))
    return out


def test_keys_of_different_projects_never_share_an_entry_under_the_default_scope(
    serve: Callable[..., ServedGateway],
) -> None:
    gw = serve()
    assert cache_states(gw, WEB, WEB_2, API, API) == ["miss", "hit", "miss", "hit"]


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("key", ["miss", "miss", "miss", "hit"]),
        ("project", ["miss", "hit", "miss", "hit"]),
        ("org", ["miss", "hit", "hit", "hit"]),
        ("global", ["miss", "hit", "hit", "hit"]),
    ],
)
def test_scopes(serve: Callable[..., ServedGateway], scope: str, expected: list[str]) -> None:
    gw = serve(f"{{scope: {scope}}}")
    assert cache_states(gw, WEB, WEB_2, API, API) == expected


def test_entries_expire_after_ttl_on_the_injected_clock(
    serve: Callable[..., ServedGateway],
) -> None:
    gw = serve("{ttl_s: 60}")
    now = [1_000_000.0]
    gw.call(lambda: setattr(gw.gateway.state, "clock", lambda: now[0]))
    assert cache_states(gw, WEB, WEB) == ["miss", "hit"]
    now[0] += 59
    assert cache_states(gw, WEB) == ["hit"]
    now[0] += 2
    assert cache_states(gw, WEB) == ["miss"]


def test_the_least_recently_used_entry_goes_first(serve: Callable[..., ServedGateway]) -> None:
    gw = serve("{max_entries: 2}")
    states = [cache_states(gw, WEB, content=text)[0] for text in ("a", "b", "a", "c", "a", "b")]
    assert states == ["miss", "miss", "hit", "miss", "hit", "miss"]


def test_a_reload_that_keeps_the_policy_keeps_its_entries(
    serve: Callable[..., ServedGateway], upstream_reset: MockUpstream
) -> None:
    gw = serve("{ttl_s: 600}")
    assert cache_states(gw, WEB) == ["miss"]
    other_model = "  other: {targets: [{upstream: openai}]}\n"
    kept = config(upstream_reset, "{ttl_s: 600}").replace("models:\n", "models:\n" + other_model)
    gw.swap(kept)
    assert cache_states(gw, WEB) == ["hit"]
    gw.swap(config(upstream_reset, "{ttl_s: 601}"))  # NOTE: a changed policy starts empty
    assert cache_states(gw, WEB) == ["miss"]
    gw.swap(config(upstream_reset, "{ttl_s: 600}"))  # NOTE: the first policy's entries are gone
    assert cache_states(gw, WEB) == ["miss"]


def test_a_client_can_bypass_the_lookup_or_the_store(
    serve: Callable[..., ServedGateway], upstream_reset: MockUpstream
) -> None:
    gw = serve()
    with oai(gw) as client:
        first = ask(client)
        settled(gw, 1)
        fresh = ask(client, extra_headers={"cache-control": "no-cache"})
        assert fresh.headers["x-interlock-cache"] == "bypass"
        settled(gw, 2)
        later = ask(client)  # NOTE: the fresh answer replaced the entry
        assert later.headers["x-interlock-cache"] == "hit"
        assert later.parse().id == fresh.parse().id != first.parse().id
        unstored = ask(client, "new", extra_headers={"cache-control": "max-age=0, no-store"})
        assert unstored.headers["x-interlock-cache"] == "bypass"
        time.sleep(0.1)
        assert ask(client, "new").headers["x-interlock-cache"] == "miss"
    assert sent(upstream_reset) == 4
    assert stats(gw).bypasses == 2


def test_an_answer_larger_than_max_entry_bytes_is_not_stored(
    serve: Callable[..., ServedGateway],
) -> None:
    gw = serve("{max_entry_bytes: 600}")  # NOTE: a short answer is ~300 bytes
    assert cache_states(gw, WEB, content="short")[0] == "miss"
    long = " ".join(["word"] * 100)
    with oai(gw) as client:
        assert ask(client, long).headers["x-interlock-cache"] == "miss"
        time.sleep(0.1)
        assert ask(client, long).headers["x-interlock-cache"] == "miss"
    assert (stats(gw).stores, stats(gw).skipped) == (1, 2)


def test_a_header_name_is_configurable(serve: Callable[..., ServedGateway]) -> None:
    gw = serve(extra="server: {response_headers: {cache: x-cache-status}}")
    with oai(gw) as client:
        reply = ask(client)
    assert reply.headers["x-cache-status"] == "miss" and "x-interlock-cache" not in reply.headers


# --- accounting -------------------------------------------------------------------------------


def test_the_ledger_records_a_hit_with_the_tokens_it_replayed_and_the_cost_it_saved(
    serve: Callable[..., ServedGateway], tmp_path: Path
) -> None:
    db = tmp_path / "usage.db"
    gw = serve(extra=f'usage: {{store: {{kind: sqlite, path: "{db}"}}}}')
    with oai(gw) as client:
        for name in ("miss", "hit"):
            ask(client, extra_headers={"x-request-id": name})
            settled(gw, 1)
        chunks = client.chat.completions.create(
            model="gpt",
            messages=HELLO,
            temperature=0,
            stream=True,
            extra_headers={"x-request-id": "stream-hit"},
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: hello there"
    gw.stop()
    records = stored(db)
    miss, hit, stream_hit = records["miss"], records["hit"], records["stream-hit"]
    expected_cost = (miss.input_tokens * PRICE_IN + miss.output_tokens * PRICE_OUT) / 1e6
    assert (miss.cache_hit, miss.cost, miss.cost_saved) == (False, expected_cost, 0.0)
    for record in (hit, stream_hit):
        assert isinstance(record, UsageRecord)
        assert record.cache_hit and record.attempts == 0 and not record.estimated
        assert (record.input_tokens, record.output_tokens) == (
            miss.input_tokens,
            miss.output_tokens,
        )
        assert (record.cost, record.cost_saved) == (0.0, expected_cost)
        assert (record.model, record.upstream, record.upstream_model) == ("gpt", "openai", "up-gpt")
    assert stream_hit.stream


def test_limits_count_a_hit_as_a_request_but_not_its_tokens(
    serve: Callable[..., ServedGateway], upstream_reset: MockUpstream
) -> None:
    policy = "{scope: key, rpm: 8, budget: {tokens_per_day: 40}}"  # each reserves ~21
    gw = serve(extra=f"limits: {{default: [p], policies: {{p: {policy}}}}}")
    states = []
    with oai(gw) as client:
        for _ in range(8):  # NOTE: 8 uncached answers (~6 tokens each) would pass the budget
            states.append(ask(client).headers["x-interlock-cache"])
            settled(gw, 1)
            time.sleep(0.02)  # NOTE: the previous reservation is settled
        with pytest.raises(openai.RateLimitError) as refused:
            ask(client)
    assert states == ["miss"] + ["hit"] * 7
    assert "rpm limit of 8 reached" in refused.value.message
    assert sent(upstream_reset) == 1


# --- a Redis that is away ---------------------------------------------------------------------


def test_an_unreachable_redis_is_a_miss_counted_and_never_a_failure(
    serve: Callable[..., ServedGateway], upstream_reset: MockUpstream
) -> None:
    gw = serve(backend=f'backend: {{kind: redis, url: "redis://127.0.0.1:{free_port()}/0"}}')
    with oai(gw) as client:
        replies = [ask(client) for _ in range(3)]
        time.sleep(0.1)
    assert [r.headers["x-interlock-cache"] for r in replies] == ["miss"] * 3
    assert all(r.parse().choices[0].message.content == "echo: hello there" for r in replies)
    counted = stats(gw)
    assert counted.errors >= 3 and counted.stores == 0 and counted.misses == 3
    assert sent(upstream_reset) == 3
