"""Limits shared by several real `interlock serve` processes through Redis (and SQLite on one
host): the limit is the limit, whatever the number of processes; and a Redis that goes away is
handled as `limits.on_backend_error` says, then recovered from without a restart."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.process import Interlock
from tests.served import ServedGateway
from tests.tcp_proxy import TcpProxy
from tests.test_limits import CHAT, HEADERS, KEY, key_hash, statuses

REDIS_PORT = 6379


def shared_config(backend: str, policy: str, *, chunk_delay_ms: int = 0, extra: str = "") -> str:
    # NOTE: a fresh policy name per test gives fresh counters (keys are the policy's state id)
    name = f"p_{secrets.token_hex(4)}"
    return f"""
version: 1
upstreams:
  demo: {{kind: mock, mock: {{stream_chunks: 4, chunk_delay_ms: {chunk_delay_ms}}}}}
models:
  demo-chat: {{aliases: [gpt-4o-mini], targets: [{{upstream: demo, model: demo-1}}]}}
auth:
  required: true
  keys: [{{id: team-a, hash: "{key_hash(KEY)}"}}]
limits:
  backend: {backend}
  default: [{name}]
  policies:
    {name}: {policy}
{extra}
"""


@pytest.fixture
def redis_up() -> None:
    from tests.redis_fixture import require_redis  # the shared reachability check

    require_redis()


async def fire(urls: list[str], each: int, body: dict[str, Any]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=each * len(urls))
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        calls = [
            client.post(url + "/v1/chat/completions", json=body, headers=HEADERS)
            for _ in range(each)
            for url in urls
        ]
        return await asyncio.gather(*calls)


@pytest.mark.parametrize("backend", ["redis", "sqlite"])
def test_two_processes_admit_exactly_the_limit_together(
    backend: str,
    interlock: Callable[..., Interlock],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if backend == "redis":
        request.getfixturevalue("redis_up")
        spec = f'{{kind: redis, url: "redis://127.0.0.1:{REDIS_PORT}/0"}}'
    else:
        spec = f'{{kind: sqlite, path: "{tmp_path / "limits.db"}"}}'
    path = tmp_path / "gateway.yaml"
    path.write_text(shared_config(spec, "{scope: key, rpm: 20}"), encoding="utf-8")
    servers = [interlock(path), interlock(path)]
    responses = asyncio.run(fire([s.url for s in servers], 100, CHAT))
    assert statuses(responses) == {200: 20, 429: 180}


def test_concurrent_streams_are_shared_between_processes(
    redis_up: None, interlock: Callable[..., Interlock], tmp_path: Path
) -> None:
    path = tmp_path / "gateway.yaml"
    spec = f'{{kind: redis, url: "redis://127.0.0.1:{REDIS_PORT}/0"}}'
    path.write_text(
        shared_config(spec, "{scope: key, concurrent_streams: 2}", chunk_delay_ms=200),
        encoding="utf-8",
    )
    servers = [interlock(path), interlock(path)]
    responses = asyncio.run(fire([s.url for s in servers], 3, {**CHAT, "stream": True}))
    assert statuses(responses) == {200: 2, 429: 4}
    # NOTE: both streams finished and released their slots on whichever process held them
    assert statuses(asyncio.run(fire([s.url for s in servers], 1, {**CHAT, "stream": True}))) == {
        200: 2
    }


@pytest.mark.parametrize("on_error", ["allow", "deny"])
def test_redis_going_away_is_handled_as_configured_and_recovered_from(
    on_error: str, redis_up: None, served: Callable[[str], ServedGateway]
) -> None:
    with TcpProxy(REDIS_PORT) as proxy:
        spec = f'{{kind: redis, url: "redis://127.0.0.1:{proxy.port}/0"}}'
        gw = served(
            shared_config(spec, "{scope: key, rpm: 1000}", extra=f"  on_backend_error: {on_error}")
        )

        def ask() -> httpx.Response:
            return httpx.post(
                gw.url + "/v1/chat/completions", json=CHAT, headers=HEADERS, timeout=10
            )

        ok = ask()
        assert ok.status_code == 200 and ok.headers["x-ratelimit-limit-requests"] == "1000"
        proxy.down()
        during = [ask() for _ in range(3)]
        if on_error == "allow":
            assert [r.status_code for r in during] == [200, 200, 200]
            assert all("x-ratelimit-limit-requests" not in r.headers for r in during)
        else:
            assert [r.status_code for r in during] == [503, 503, 503]
            error = during[0].json()["error"]
            assert error["code"] == "limits_unavailable" and "on_backend_error" in error["message"]
        assert gw.call(lambda: gw.gateway.state.limit_backend_errors) == 3
        proxy.up()
        for _ in range(50):  # NOTE: the client reconnects by itself
            after = ask()
            if after.status_code == 200 and "x-ratelimit-limit-requests" in after.headers:
                break
            asyncio.run(asyncio.sleep(0.1))
        assert after.status_code == 200
        assert int(after.headers["x-ratelimit-remaining-requests"]) < 1000
