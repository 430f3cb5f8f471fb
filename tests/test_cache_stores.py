"""The `ResponseCache` contract (runtime/state/cache.py), one suite run against every backend
(memory, Redis), and the cache shared through Redis by real `interlock serve` processes, the
purge endpoint, and a Redis outage in the middle of a run.

Redis tests use tests/redis_fixture.py: skipped when Redis is not reachable, failed under CI=true.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.state.cache import (
    COMPRESS_MIN_BYTES,
    CacheSpace,
    CacheUnavailable,
    MemoryCache,
    RedisCache,
    ResponseCache,
    pack_value,
    unpack_value,
)
from tests.process import ADMIN, ADMIN_HASH, Interlock, free_port, metric
from tests.redis_fixture import REDIS_URL, delete_prefixed, require_redis
from tests.served import ServedGateway, compile_yaml
from tests.tcp_proxy import TcpProxy
from tests.upstreams import MockUpstream

# --- the contract -----------------------------------------------------------------------------


@dataclass
class Backend:
    kind: str
    cache: ResponseCache
    advance: Callable[[float], Awaitable[None]]  # let this many seconds pass for the TTL


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        now = [1000.0]

        async def advance(seconds: float) -> None:
            now[0] += seconds

        return Backend("memory", MemoryCache(clock=lambda: now[0]), advance)
    prefix = request.getfixturevalue("redis_prefix")
    return Backend("redis", RedisCache(REDIS_URL, prefix=prefix + "cache:"), asyncio.sleep)


def run(backend: Backend, script: Callable[[ResponseCache], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        try:
            return await script(backend.cache)
        finally:
            await backend.cache.close()

    return asyncio.run(main())


SPACE = CacheSpace("space-a", ttl_s=60, max_entries=100)
OTHER = CacheSpace("space-b", ttl_s=60, max_entries=100)


def test_stores_and_answers_per_namespace(backend: Backend) -> None:
    async def script(cache: ResponseCache) -> list[Any]:
        await cache.put(SPACE, "k1", b"one")
        await cache.put(OTHER, "k1", b"other")
        await cache.put(SPACE, "k2", b"two")
        await cache.put(SPACE, "k2", b"two again")
        keys = ("k1", "k2", "k3")
        return [await cache.get(space, k) for space in (SPACE, OTHER) for k in keys]

    assert run(backend, script) == [b"one", b"two again", None, b"other", None, None]


def test_the_least_recently_used_entry_goes_first(backend: Backend) -> None:
    space = CacheSpace("lru", ttl_s=60, max_entries=2)

    async def script(cache: ResponseCache) -> list[Any]:
        await cache.put(space, "a", b"A")
        await cache.put(space, "b", b"B")
        assert await cache.get(space, "a") == b"A"  # NOTE: a is now the most recently used
        await cache.put(space, "c", b"C")
        return [await cache.get(space, k) for k in ("a", "b", "c")]

    assert run(backend, script) == [b"A", None, b"C"]


def test_an_entry_lives_ttl_seconds_from_when_it_was_stored(backend: Backend) -> None:
    space = CacheSpace("ttl", ttl_s=0.4, max_entries=10)

    async def script(cache: ResponseCache) -> list[Any]:
        await cache.put(space, "k", b"v")
        await backend.advance(0.2)
        fresh = await cache.get(space, "k")
        await backend.advance(0.3)
        return [fresh, await cache.get(space, "k")]

    assert run(backend, script) == [b"v", None]


def test_purge_empties_the_namespaces_it_names(backend: Backend) -> None:
    async def script(cache: ResponseCache) -> list[Any]:
        for n in range(3):
            await cache.put(SPACE, f"k{n}", b"x")
        await cache.put(OTHER, "k0", b"y")
        purged = [await cache.purge(["space-a"]), await cache.purge(["nothing-here"])]
        return [*purged, await cache.get(SPACE, "k0"), await cache.get(OTHER, "k0")]

    assert run(backend, script) == [3, 0, None, b"y"]


def test_large_values_round_trip(backend: Backend) -> None:
    big = b"".join(b"token %d, " % n for n in range(20000))

    async def script(cache: ResponseCache) -> Any:
        await cache.put(SPACE, "big", big)
        return await cache.get(SPACE, "big")

    assert run(backend, script) == big


def test_values_are_compressed_only_when_large_and_worth_it() -> None:
    small, large = b"x" * (COMPRESS_MIN_BYTES - 1), b"abc" * COMPRESS_MIN_BYTES
    noise = secrets.token_bytes(4 * COMPRESS_MIN_BYTES)
    assert pack_value(small) == b"\x00" + small
    assert pack_value(large)[:1] == b"\x01" and len(pack_value(large)) < len(large) // 10
    assert pack_value(noise) == b"\x00" + noise
    assert [unpack_value(pack_value(v)) for v in (small, large, noise)] == [small, large, noise]
    with pytest.raises(ValueError):
        unpack_value(b"\x07junk")


def test_memory_frees_namespaces_no_live_policy_uses() -> None:
    cache = MemoryCache()

    async def script() -> list[Any]:
        await cache.put(SPACE, "k", b"v")
        await cache.put(OTHER, "k", b"w")
        cache.retain(["space-b"])
        return [await cache.get(SPACE, "k"), await cache.get(OTHER, "k")]

    assert asyncio.run(script()) == [None, b"w"]


def test_redis_keys_all_expire_and_foreign_values_are_misses(redis_prefix: str) -> None:
    import redis

    cache = RedisCache(REDIS_URL, prefix=redis_prefix)

    async def script() -> Any:
        try:
            await cache.put(SPACE, "k", b"v" * 5000)
            await cache.put(SPACE, "j", b"v")
            return await cache.get(SPACE, "j")
        finally:
            await cache.close()

    assert asyncio.run(script()) == b"v"
    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=f"{redis_prefix}*"))
        assert sorted(k.decode().removeprefix(redis_prefix) for k in keys) == [
            "{space-a}:j",
            "{space-a}:k",
            "{space-a}:lru",
        ]
        assert all(0 < client.pttl(k) <= 60_000 for k in keys)
        assert client.strlen(f"{redis_prefix}{{space-a}}:k") < 100  # NOTE: compressed
        client.set(f"{redis_prefix}{{space-a}}:j", b"not ours")

    async def foreign() -> Any:
        try:
            return await cache.get(SPACE, "j")
        finally:
            await cache.close()

    assert asyncio.run(foreign()) is None


def test_an_unreachable_redis_fails_fast_then_backs_off() -> None:
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", backoff_s=30)

    async def script() -> float:
        with pytest.raises(CacheUnavailable):
            await cache.get(SPACE, "k")
        started = time.perf_counter()
        with pytest.raises(CacheUnavailable, match="failed recently"):
            await cache.put(SPACE, "k", b"v")
        await cache.close()
        return time.perf_counter() - started

    assert asyncio.run(script()) < 0.01


# --- served: purge, processes sharing Redis, an outage ----------------------------------------

KEY = "il-cache-stores-client-key"
_SALT = "a0a1a2a3a4a5a6a7"
KEY_HASH = f"sha256:{_SALT}:{hashlib.sha256((_SALT + KEY).encode()).hexdigest()}"


def gateway_config(up: MockUpstream, policies: dict[str, str], backend: str) -> str:
    listed = "".join(f"    {name}: {spec}\n" for name, spec in policies.items())
    first = next(iter(policies))
    return f"""
version: 1
upstreams:
  openai: {{kind: openai, base_url: "{up.base_url("openai")}", api_key: sk-test}}
models:
  gpt: {{targets: [{{upstream: openai, model: up-gpt}}]}}
auth:
  required: true
  keys: [{{id: team, hash: "{KEY_HASH}", project: web}}]
admin: {{enabled: true, key_hash: "{ADMIN_HASH}"}}
routes:
  - {{name: cached, match: {{}}, action: {{cache: {first}}}}}
cache:
  backend: {backend}
  policies:
{listed}"""


def chat(url: str, content: str = "hello") -> httpx.Response:
    body = {"model": "gpt", "messages": [{"role": "user", "content": content}], "temperature": 0}
    response = httpx.post(
        url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response


def cache_state(url: str, content: str = "hello") -> str:
    return chat(url, content).headers["x-interlock-cache"]


def eventually(url: str, expected: str, content: str = "hello", timeout: float = 5.0) -> None:
    """Ask until the answer is `expected` (a store lands just after the response)."""
    deadline = time.monotonic() + timeout
    while (state := cache_state(url, content)) != expected:
        assert time.monotonic() < deadline, f"still {state!r}, expected {expected!r}"
        time.sleep(0.02)


def purge(url: str, body: Any = None, headers: dict[str, str] = ADMIN) -> httpx.Response:
    content = b"" if body is None else body if isinstance(body, bytes) else httpx_json(body)
    return httpx.post(url + "/admin/cache/purge", content=content, headers=headers, timeout=10)


def httpx_json(data: Any) -> bytes:
    import json

    return json.dumps(data).encode()


def test_purge_empties_one_policy_or_all(
    interlock: Callable[..., Interlock], upstream_reset: MockUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.yaml"
    policies = {"answers": "{ttl_s: 600}", "spare": "{ttl_s: 60}"}
    path.write_text(gateway_config(upstream_reset, policies, "{kind: memory}"), "utf-8")
    server = interlock(path)
    assert cache_state(server.url) == "miss"
    eventually(server.url, "hit")
    assert purge(server.url, headers={}).status_code == 401
    assert purge(server.url, b"{not json").status_code == 400
    assert purge(server.url, {"policy": 3}).status_code == 400
    assert purge(server.url, {"policy": "answer"}).status_code == 404
    only = purge(server.url, {"policy": "answers"})
    assert only.status_code == 200 and only.json() == {"purged": {"answers": 1}}
    assert cache_state(server.url) == "miss"
    eventually(server.url, "hit")
    every = purge(server.url)
    assert every.json() == {"purged": {"answers": 1, "spare": 0}}
    assert cache_state(server.url) == "miss"
    text = httpx.get(server.url + "/metrics", timeout=5).text
    assert metric(text, 'interlock_cache_lookups_total{result="miss"}') == 3
    assert metric(text, 'interlock_cache_lookups_total{result="hit"}') >= 2


@pytest.fixture
def shared_redis(redis_server: str | None) -> Iterator[str]:
    """A cache policy name of this test's own (its entries: a namespace of their own), whose
    keys are deleted afterwards."""
    if redis_server is not None:
        require_redis(redis_server)
    name = f"shared-{secrets.token_hex(4)}"
    yield name
    table = compile_yaml(gateway_config_for_cleanup(name))
    delete_prefixed(f"interlock:cache:{{{table.cache.policies[name].state_id}}}:")


def gateway_config_for_cleanup(name: str) -> str:
    return f"""
version: 1
upstreams: {{u: {{kind: mock}}}}
models: {{m: {{targets: [{{upstream: u}}]}}}}
cache: {{backend: {{kind: memory}}, policies: {{{name}: {{ttl_s: 600}}}}}}
"""


def test_two_serve_processes_share_entries_through_redis(
    interlock: Callable[..., Interlock],
    upstream_reset: MockUpstream,
    tmp_path: Path,
    shared_redis: str,
) -> None:
    path = tmp_path / "gateway.yaml"
    backend = "{kind: redis, url: {env: IL_CACHE_REDIS}}"
    text = gateway_config(upstream_reset, {shared_redis: "{ttl_s: 600}"}, backend)
    path.write_text(text, "utf-8")
    env = {"IL_CACHE_REDIS": REDIS_URL}
    one, two = interlock(path, env=env), interlock(path, env=env)
    assert cache_state(one.url) == "miss"
    eventually(two.url, "hit")  # NOTE: stored by one, answered by two
    first, second = chat(one.url).json(), chat(two.url).json()
    assert first == second
    assert len(upstream_reset.requests_to("openai")) == 1
    assert purge(two.url).json() == {"purged": {shared_redis: 1}}
    assert cache_state(one.url) == "miss"  # NOTE: purged for every process
    assert len(upstream_reset.requests_to("openai")) == 2


def test_a_redis_outage_is_served_as_misses_and_the_cache_comes_back(
    served: Callable[[str], ServedGateway],
    upstream_reset: MockUpstream,
    shared_redis: str,
) -> None:
    port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    with TcpProxy(port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        backend = f'{{kind: redis, url: "{url}"}}'
        gw = served(gateway_config(upstream_reset, {shared_redis: "{ttl_s: 600}"}, backend))
        gw.gateway.state.cache.backoff_s = 0.2  # type: ignore[union-attr]
        assert cache_state(gw.url) == "miss"
        eventually(gw.url, "hit")
        proxy.down()
        assert [cache_state(gw.url) for _ in range(3)] == ["miss"] * 3
        assert gw.call(lambda: gw.gateway.state.cache_stats.errors) >= 1
        proxy.up()
        eventually(gw.url, "hit", timeout=10)  # NOTE: the entry outlived the outage
