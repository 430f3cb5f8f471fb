"""Response cache stores: entries (opaque bytes) by key, in namespaces that each carry a TTL and an
entry bound, in process memory or in Redis.

A namespace is a cache policy's state id, so a reload that leaves a policy unchanged keeps its
entries and a changed policy starts empty. Every backend passes `tests/test_cache.py`'s contract
suite::

    cache = MemoryCache()
    space = CacheSpace("3f9a0c1b", ttl_s=60, max_entries=1000)
    await cache.put(space, "ab12", b"answer")
    await cache.get(space, "ab12")            -> b"answer"
    await cache.purge(["3f9a0c1b"])           -> 1

A backend that cannot be reached raises `CacheUnavailable`; the caller serves a miss.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from cachetools import TTLCache

_LOG = logging.getLogger("interlock")


class CacheUnavailable(Exception):
    """The cache backend cannot be used right now (Redis away, or backing off after a failure)."""


@dataclass(frozen=True, slots=True)
class CacheSpace:
    """One policy's entries: `id` is the policy's state id; an entry lives `ttl_s` seconds from
    when it was stored; past `max_entries`, the least recently used entries go first."""

    id: str
    ttl_s: float
    max_entries: int


class ResponseCache(Protocol):
    """Where cached answers live.

    - `get` answers the value stored under `key` in `space` and still fresh, else None; a hit
      makes the entry the most recently used.
    - `put` stores (or replaces) it for `space.ttl_s`, evicting the least recently used entries
      beyond `space.max_entries`.
    - `purge` removes every entry of the given namespaces and says how many it removed.
    - `retain` lets a backend free namespaces no live policy uses (memory); entries of other
      namespaces elsewhere simply expire.
    """

    async def get(self, space: CacheSpace, key: str) -> bytes | None: ...
    async def put(self, space: CacheSpace, key: str, value: bytes) -> None: ...
    async def purge(self, space_ids: Sequence[str]) -> int: ...
    def retain(self, space_ids: Collection[str]) -> None: ...
    async def close(self) -> None: ...


# --- memory ----------------------------------------------------------------------------------


class MemoryCache:
    """Per-process entries: one `cachetools.TTLCache` (LRU order, per-entry expiry) per
    namespace. `clock` is the TTL clock in seconds (tests inject one)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._spaces: dict[str, TTLCache[str, bytes]] = {}

    def _space(self, space: CacheSpace) -> TTLCache[str, bytes]:
        found = self._spaces.get(space.id)
        if found is None:
            found = self._spaces[space.id] = TTLCache(
                maxsize=space.max_entries, ttl=space.ttl_s, timer=self.clock
            )
        return found

    async def get(self, space: CacheSpace, key: str) -> bytes | None:
        return self._space(space).get(key)

    async def put(self, space: CacheSpace, key: str, value: bytes) -> None:
        self._space(space)[key] = value

    async def purge(self, space_ids: Sequence[str]) -> int:
        removed = 0
        for space_id in space_ids:
            entries = self._spaces.pop(space_id, None)
            if entries is not None:
                entries.expire()
                removed += len(entries)
        return removed

    def retain(self, space_ids: Collection[str]) -> None:
        for stale in set(self._spaces) - set(space_ids):
            del self._spaces[stale]

    async def close(self) -> None:
        self._spaces.clear()


# --- redis -----------------------------------------------------------------------------------

# The LRU index scores entries by their last use: Redis's clock in microseconds, made strictly
# increasing per namespace (two uses in one microsecond still keep their order).
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local top = redis.call('ZREVRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if top[2] and tonumber(top[2]) >= now then now = tonumber(top[2]) + 1 end
"""

# One round trip per lookup: the value, and the entry made the most recently used (an entry
# that expired leaves the LRU index).
_GET = (
    _NOW
    + """
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('ZADD', KEYS[2], string.format('%.0f', now), ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return value
"""
)

# One round trip per store: the value with its TTL, its place in the LRU index (members unused
# for a whole TTL are expired entries: dropped), the least recently used entries past
# max_entries evicted. The index lives as long as the newest entry.
_PUT = (
    _NOW
    + """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], string.format('%.0f', now), ARGV[3])
local stale = now - tonumber(ARGV[2]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%.0f', stale))
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  local old = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #old, 2 do
    redis.call('UNLINK', ARGV[5] .. old[i])
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return over
"""
)

_RAW = b"\x00"
_ZLIB = b"\x01"
COMPRESS_MIN_BYTES = 1024


def pack_value(value: bytes) -> bytes:
    """A value as stored in Redis: a one-byte tag, then the bytes, zlib-compressed when they are
    at least `COMPRESS_MIN_BYTES` long and compression saves something."""
    if len(value) >= COMPRESS_MIN_BYTES:
        packed = zlib.compress(value, 1)
        if len(packed) < len(value):
            return _ZLIB + packed
    return _RAW + value


def unpack_value(stored: bytes) -> bytes:
    """The inverse of `pack_value`; ValueError for bytes it did not make."""
    tag, body = stored[:1], stored[1:]
    if tag == _RAW:
        return body
    if tag == _ZLIB:
        try:
            return zlib.decompress(body)
        except zlib.error as exc:
            raise ValueError(f"corrupt cache value: {exc}") from None
    raise ValueError("not a cache value")


class RedisCache:
    """Entries shared by every process that uses the same Redis: ``{prefix}{<space>}:<key>``
    holds a value, ``{prefix}{<space>}:lru`` the namespace's LRU index (a sorted set of keys by
    last use; the braces keep a namespace in one Redis Cluster slot).

    Calls give up after `timeout_s`, with no retry, and raise `CacheUnavailable`; after a
    failure the backend is not tried again for `backoff_s` (doubling up to 30 s while it keeps
    failing), so a Redis that is away costs requests nothing but a miss.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "interlock:cache:",
        timeout_s: float = 0.5,
        backoff_s: float = 1.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._client: Any = None
        self._get: Any = None
        self._put: Any = None
        self._retry_at = 0.0
        self._delay = backoff_s

    def _connect(self) -> Any:
        if self._client is None:
            # NOTE: the driver only for those who use it, and the client on the serving loop
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self._client = Redis.from_url(
                self.url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
            self._get = self._client.register_script(_GET)
            self._put = self._client.register_script(_PUT)
        return self._client

    def _keys(self, space_id: str, key: str) -> tuple[str, str]:
        base = f"{self.prefix}{{{space_id}}}:"
        return base + key, base + "lru"

    async def get(self, space: CacheSpace, key: str) -> bytes | None:
        entry, lru = self._keys(space.id, key)
        found = await self._call(lambda: self._get(keys=[entry, lru], args=[key]))
        if found is None:
            return None
        try:
            return unpack_value(found)
        except ValueError:
            return None  # NOTE: a foreign or damaged value is a miss; the next store replaces it

    async def put(self, space: CacheSpace, key: str, value: bytes) -> None:
        entry, lru = self._keys(space.id, key)
        ttl_ms = max(int(space.ttl_s * 1000), 1)
        args = [pack_value(value), ttl_ms, key, space.max_entries, entry[: -len(key)]]
        await self._call(lambda: self._put(keys=[entry, lru], args=args))

    async def purge(self, space_ids: Sequence[str]) -> int:
        removed = 0
        for space_id in space_ids:
            pattern = f"{self.prefix}{{{space_id}}}:*"
            removed += await self._call(partial(self._purge, pattern))
        return removed

    async def _purge(self, pattern: str) -> int:
        client = self._client
        removed = 0
        batch: list[bytes] = []
        async for name in client.scan_iter(match=pattern, count=1000):
            batch.append(name)
            if len(batch) >= 1000:
                removed += await _unlink_entries(client, batch)
                batch.clear()
        if batch:
            removed += await _unlink_entries(client, batch)
        return removed

    def retain(self, space_ids: Collection[str]) -> None:
        """Nothing to free here: entries of a policy no longer live expire with their TTL."""

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _call(self, work: Callable[[], Any]) -> Any:
        if time.monotonic() < self._retry_at:
            raise CacheUnavailable("the cache's Redis failed recently; not tried until it retries")
        from redis.exceptions import RedisError

        try:
            self._connect()
            result = await work()
        except (RedisError, OSError, TimeoutError) as exc:
            self._retry_at = time.monotonic() + self._delay
            self._delay = min(self._delay * 2, 30.0)
            raise CacheUnavailable(f"{type(exc).__name__}: {exc}"[:300]) from None
        self._delay = self.backoff_s
        return result


async def _unlink_entries(client: Any, names: list[bytes]) -> int:
    """Unlink `names`; how many of them were entries (not the LRU index)."""
    entries = [name for name in names if not name.endswith(b":lru")]
    await client.unlink(*names)
    return len(entries)


def open_cache(
    kind: str, *, url: str | None = None, clock: Callable[[], float] | None = None
) -> ResponseCache:
    """The cache backend of `kind`: ``memory`` (with an optional TTL `clock`) or ``redis``
    (with a `url`)."""
    if kind == "memory":
        return MemoryCache(clock) if clock is not None else MemoryCache()
    if kind == "redis":
        if not url:
            raise ValueError("a redis cache needs a url")
        return RedisCache(url)
    raise ValueError(f"unknown cache backend {kind!r} (expected memory or redis)")
