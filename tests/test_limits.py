"""Limits and budgets through a served Interlock over loopback: exact under concurrency, refusals
in each API's shape with the headers the SDKs read, stream slots held to the last byte, budgets
with reservations reconciled to real usage, and calendar windows that roll over."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.process import REPO
from tests.served import ServedGateway

KEY = "il-limits-test-key-0123456789"
OTHER = "il-limits-other-key-0123456789"


def key_hash(key: str) -> str:
    salt = "0011223344556677"
    return f"sha256:{salt}:{hashlib.sha256((salt + key).encode()).hexdigest()}"


def config(policy: str, *, chunk_delay_ms: int = 0, extra: str = "") -> str:
    return f"""
version: 1
upstreams:
  demo: {{kind: mock, mock: {{stream_chunks: 4, chunk_delay_ms: {chunk_delay_ms}}}}}
models:
  demo-chat:
    aliases: [gpt-4o-mini, claude-haiku]
    targets: [{{upstream: demo, model: demo-1}}]
    pricing: {{input_per_mtok: 1000000, output_per_mtok: 1000000}}   # 1 per token: easy sums
auth:
  required: true
  keys:
    - {{id: team-a, hash: "{key_hash(KEY)}", project: web}}
    - {{id: team-b, hash: "{key_hash(OTHER)}", project: web}}
limits:
  default: [policy]
  policies:
    policy: {policy}
{extra}
"""


HEADERS = {"authorization": f"Bearer {KEY}"}
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def burst(url: str, count: int, body: dict[str, Any] = CHAT) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(url + "/v1/chat/completions", json=body, headers=HEADERS)
                for _ in range(count)
            )
        )


def statuses(responses: list[httpx.Response]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in responses:
        out[r.status_code] = out.get(r.status_code, 0) + 1
    return out


def test_rpm_admits_exactly_the_limit_of_200_concurrent_requests(
    served: Callable[[str], ServedGateway],
) -> None:
    gw = served(config("{scope: key, rpm: 20}"))
    responses = asyncio.run(burst(gw.url, 200))
    assert statuses(responses) == {200: 20, 429: 180}
    refused = next(r for r in responses if r.status_code == 429)
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "policy 'policy'" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "20"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    # NOTE: another key has its own counter
    other = httpx.post(
        gw.url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {OTHER}"}
    )
    assert other.status_code == 200


def test_successes_carry_what_remains_and_refusals_reach_the_sdks(
    served: Callable[[str], ServedGateway],
) -> None:
    gw = served(config("{scope: key, rpm: 3, tpm: 100000}"))
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0) as client:
        seen = []
        for _ in range(2):
            raw = client.chat.completions.with_raw_response.create(**CHAT)
            seen.append(raw.headers["x-ratelimit-remaining-requests"])
            assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
            assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 100000
        assert seen == ["2", "1"]
    with anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0) as client:
        raw = client.messages.with_raw_response.create(
            model="claude-haiku", max_tokens=16, messages=CHAT["messages"]
        )
        assert raw.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert raw.headers["anthropic-ratelimit-requests-limit"] == "3"
        assert raw.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
        with pytest.raises(anthropic.RateLimitError) as refused:
            client.messages.create(model="claude-haiku", max_tokens=16, messages=CHAT["messages"])
        assert refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert int(refused.value.response.headers["retry-after"]) >= 1
    with (
        openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0) as client,
        pytest.raises(openai.RateLimitError) as limited,
    ):
        client.chat.completions.create(**CHAT)
    assert limited.value.code == "rate_limit_exceeded"
    assert "rpm limit of 3 reached" in limited.value.message


def test_concurrent_streams_are_held_to_the_last_byte(
    served: Callable[[str], ServedGateway],
) -> None:
    gw = served(config("{scope: key, concurrent_streams: 2}", chunk_delay_ms=150))
    stream = {**CHAT, "stream": True}
    responses = asyncio.run(burst(gw.url, 6, stream))
    assert statuses(responses) == {200: 2, 429: 4}
    assert all(r.text.endswith("data: [DONE]\n\n") for r in responses if r.status_code == 200)
    # NOTE: the streams ended, so their slots are free again; JSON requests never took one
    assert statuses(asyncio.run(burst(gw.url, 2, stream))) == {200: 2}
    assert statuses(asyncio.run(burst(gw.url, 5))) == {200: 5}


def test_a_stream_left_early_frees_its_slot(served: Callable[[str], ServedGateway]) -> None:
    gw = served(config("{scope: key, concurrent_streams: 1}", chunk_delay_ms=300))
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=HEADERS
        ) as r,
    ):
        assert r.status_code == 200
        next(r.iter_raw())
    for _ in range(100):  # NOTE: the gateway notices the disconnect, then settles
        again = httpx.post(
            gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=HEADERS
        )
        if again.status_code == 200:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert again.status_code == 200


def usage_of(response: httpx.Response) -> int:
    usage = response.json()["usage"]
    return int(usage["prompt_tokens"] + usage["completion_tokens"])


def test_token_budget_reserves_then_charges_real_usage_and_rolls_over(
    served: Callable[[str], ServedGateway],
) -> None:
    gw = served(config("{scope: project, budget: {tokens_per_day: 60}}"))
    clock = [dt.datetime(2026, 12, 5, 23, 0, tzinfo=dt.UTC).timestamp()]
    gw.call(lambda: setattr(gw.gateway.state, "clock", lambda: clock[0]))
    spent = last = 0
    body = json.dumps({**CHAT, "max_tokens": 10}).encode()
    reserve = (len(body) + 3) // 4 + 10  # the body's size / 4, plus max_tokens
    raw = {**HEADERS, "content-type": "application/json"}
    while True:
        r = httpx.post(gw.url + "/v1/chat/completions", content=body, headers=raw)
        if r.status_code != 200:
            break
        last = usage_of(r)
        spent += last
        settle_pending(gw)
    assert r.status_code == 429
    error = r.json()["error"]
    assert error["code"] == "insufficient_quota"
    assert "tokens_per_day budget of 60" in error["message"] and "left" in error["message"]
    # NOTE: refused exactly when what was used + this reservation exceeds the budget
    assert spent + reserve > 60 >= spent - last + reserve
    # the other key shares the project's budget
    other = httpx.post(
        gw.url + "/v1/chat/completions",
        content=body,
        headers={**raw, "authorization": f"Bearer {OTHER}"},
    )
    assert other.status_code == 429
    # streamed usage counts too, and a new UTC day starts afresh
    clock[0] += 3600
    stream = json.dumps({**CHAT, "max_tokens": 10, "stream": True}).encode()
    streamed = httpx.post(gw.url + "/v1/chat/completions", content=stream, headers=raw)
    assert streamed.status_code == 200 and "usage" not in streamed.text
    settle_pending(gw)
    used = gw.call(lambda: gw.gateway.state.limiter)._budgets
    [(_key, (value, _))] = [(k, v) for k, v in used.items() if k.endswith("2026-12-06")]
    assert 2 <= value < 11  # the real usage of the stream, not its reservation


def test_a_cost_budget_never_overshoots_by_more_than_the_requests_in_flight(
    served: Callable[[str], ServedGateway],
) -> None:
    gw = served(config("{scope: key, budget: {cost_per_month: 200}}"))
    body = {**CHAT, "max_tokens": 30}  # each reserves ~55 (tokens cost 1 each here)
    responses = asyncio.run(burst(gw.url, 80, body))
    settle_pending(gw)
    ok = [r for r in responses if r.status_code == 200]
    assert statuses(responses) == {200: len(ok), 429: 80 - len(ok)}
    spent = sum(usage_of(r) for r in ok)
    # NOTE: each reserves ~55 and uses ~4 (80 of them would spend ~320): reservations cap what
    # is in flight at 200 // 55 = 3, settled ones free the difference, and the budget is never
    # passed
    assert 3 <= len(ok) < 80 and spent <= 200
    refused = next(r for r in responses if r.status_code == 429).json()["error"]
    assert refused["code"] == "insufficient_quota" and "cost_per_month" in refused["message"]


def settle_pending(gw: ServedGateway) -> None:
    """Wait until the gateway has settled every finished request with its limiter."""

    async def pending() -> int:
        return len(gw.gateway._closing)

    for _ in range(200):
        if gw.call(lambda: len(gw.gateway._closing)) == 0:
            return
        asyncio.run(asyncio.sleep(0.01))
    raise AssertionError("settlements did not finish")


def test_workers_with_memory_counters_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(config("{scope: key, rpm: 5}"), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "serve", str(path), "--workers", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "multiply each limit" in done.stderr and "redis" in done.stderr


def test_counters_survive_a_reload_that_keeps_the_policy(
    served: Callable[[str], ServedGateway],
) -> None:
    gw = served(config("{scope: key, rpm: 3}"))
    assert statuses(asyncio.run(burst(gw.url, 2))) == {200: 2}
    gw.swap(config("{scope: key, rpm: 3}", extra="server: {max_body_bytes: 2000000}"))
    assert statuses(asyncio.run(burst(gw.url, 2))) == {200: 1, 429: 1}  # the same counter
    gw.swap(config("{scope: key, rpm: 4}"))  # a changed policy starts afresh
    assert statuses(asyncio.run(burst(gw.url, 5))) == {200: 4, 429: 1}
