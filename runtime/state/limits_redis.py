"""`Limiter` on Redis: counters that every gateway process talking to one Redis shares.

    limiter = RedisLimiter("redis://127.0.0.1:6379/0")
    verdict = await limiter.admit("req-1", [Check("rate", "p:rpm:team-a", 20, 1, 60)], now)
    verdict.admitted, verdict.states[0].remaining -> True, 19.0

One EVALSHA of a Lua script per `admit` and per `settle`, however many checks (none for no
checks). Admissions ready in the same event loop iteration share one pipelined round trip, and
settlements arriving within 2 ms another (`_Batched`); a Redis that lost its script cache costs
one SCRIPT LOAD more, once. The admit script reads every check first, returns the
states untouched when one refuses, and only then applies them all. Redis runs one script at a
time, so admission is atomic across processes as `MemoryLimiter`'s is within one. Keys, with the
default prefix:

    rate    interlock:rate:<key>      sorted set, member "<amount>|<request id>", score: the time
                                      of admission; entries older than the window go on each read
            interlock:rate-sum:<key>  the sum of those amounts, so `used` needs no scan; trusted
                                      only while the set exists (and counted again if it is lost)
    budget  interlock:budget:<key>    hash: v (the value), e (when it expires, caller's clock)
    slots   interlock:slots:<key>     sorted set, member: request id, score: when the slot expires

Rate and slot keys expire a window after the last admission, a budget an hour after its own
expiry (a late settlement still lands in it). Settling a rate entry swaps its member for one with
the real amount (same score); a budget adds ``actual - reserved``, recreating a counter that is
gone, as `MemoryLimiter` does; a slot is removed.

Time is the `now` the caller passes, never Redis's TIME, so tests inject a clock, and what is in
a window is what the callers' clocks say: the processes sharing a Redis must agree on the time
(NTP); one whose clock runs ahead sees entries leave early. Only the TTLs, which just collect
garbage, run on Redis's clock.

Numbers cross into Lua as ``repr`` strings and come back as ``%.17g`` strings (Lua numbers are
doubles, and Redis cuts a number reply to an integer), and the script does `MemoryLimiter`'s
arithmetic in its order, so `used` and `reset_s` are its doubles; with fractional rate amounts
the last bits may differ, as entries leave the sum in time order, not arrival order.

A failure (refused, no answer within `timeout_s`, no free connection within `timeout_s`) raises:
the caller decides whether to admit. A command is never retried: a retried admission could count
twice. Needs Redis 6.0 or later (``SET ... KEEPTTL``) and one instance, not a cluster (a
request's keys would live on different nodes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from runtime.state.limits import Check, CheckState, Settlement, Verdict

# Shared by both scripts: ARGV[1] is the request id, ARGV[2] `now`; each check's fields go into a
# table `c` (kind, key, sum, limit, amount, amount_s, actual, actual_s, window).
_LUA_COMMON = r"""
local rid = ARGV[1]
local now = tonumber(ARGV[2])
-- a budget outlives its expiry by this much, so that a late settlement lands in it (as in
-- MemoryLimiter, which drops a counter only when it next reads it) rather than recreating it
local LATE_SETTLEMENT_S = 3600

-- %.17g reads back as the same double; a bare Lua number would be cut to 14 digits or an integer
local function fmt(x)
  return string.format('%.17g', x)
end

local function ttl_ms(window)
  return string.format('%d', math.max(1, math.ceil(window * 1000)))
end

local function amount_of(member)
  return tonumber(string.match(member, '^[^|]+'))
end

-- adds "<amount>|<rid>" (or "<amount>|<rid>#<n>" when the request already holds that amount)
local function add_entry(c, score, amount_s)
  local member = amount_s .. '|' .. rid
  local n = 1
  while redis.call('ZADD', c.key, 'NX', score, member) == 0 do
    n = n + 1
    member = amount_s .. '|' .. rid .. '#' .. n
  end
end

-- the sum of the log's amounts, and whether its key held it (it is counted again if lost)
local function read_sum(c)
  local raw = redis.call('GET', c.sum)
  if raw then
    return tonumber(raw), true
  end
  local total = 0
  for _, member in ipairs(redis.call('ZRANGE', c.key, 0, -1)) do
    total = total + amount_of(member)
  end
  return total, false
end

-- budget value + plus - minus (MemoryLimiter's order), created expiring a window from now
local function budget_add(c, plus, minus)
  local v = redis.call('HMGET', c.key, 'v', 'e')
  local value
  if v[2] then
    value = tonumber(v[1]) + plus - minus
    redis.call('HSET', c.key, 'v', fmt(value))
  else
    value = 0 + plus - minus
    redis.call('HSET', c.key, 'v', fmt(value), 'e', fmt(now + c.window))
    redis.call('PEXPIRE', c.key, ttl_ms(c.window + LATE_SETTLEMENT_S))
  end
  return value
end
"""

# KEYS: per check its key (rate: its log, then its sum); ARGV[3..]: kind, limit, amount, window.
# Returns {admitted, refused index or -1, used_1, reset_1, used_2, reset_2, ...}.
_ADMIT_LUA = (
    _LUA_COMMON
    + r"""
local checks = {}
local k = 1
for i = 3, #ARGV, 4 do
  local c = {kind = ARGV[i], key = KEYS[k], limit = tonumber(ARGV[i + 1]),
             amount_s = ARGV[i + 2], amount = tonumber(ARGV[i + 2]),
             window = tonumber(ARGV[i + 3])}
  k = k + 1
  if c.kind == 'rate' then
    c.sum = KEYS[k]
    k = k + 1
  end
  checks[#checks + 1] = c
end

-- drops the entries that left the window; an empty log sums to 0 whatever its sum key says
local function rate_used(c)
  local bound = fmt(now - c.window)
  local gone = redis.call('ZRANGEBYSCORE', c.key, '-inf', bound)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', c.key, '-inf', bound)
  end
  if redis.call('EXISTS', c.key) == 0 then
    return 0
  end
  local total, kept = read_sum(c)
  if #gone > 0 and kept then
    for _, member in ipairs(gone) do
      total = total - amount_of(member)
    end
    redis.call('SET', c.sum, fmt(total), 'KEEPTTL')
  end
  return total
end

local function budget_used(c)
  local v = redis.call('HMGET', c.key, 'v', 'e')
  if not v[2] then
    return 0
  end
  if tonumber(v[2]) <= now then
    redis.call('DEL', c.key)
    return 0
  end
  return tonumber(v[1])
end

local function slots_used(c)
  redis.call('ZREMRANGEBYSCORE', c.key, '-inf', fmt(now))
  return redis.call('ZCARD', c.key)
end

-- what each key holds: read once (dropping what expired), then kept current by take()
local used = {}

local function read(c)
  if used[c.key] == nil then
    if c.kind == 'rate' then
      used[c.key] = rate_used(c)
    elseif c.kind == 'budget' then
      used[c.key] = budget_used(c)
    else
      used[c.key] = slots_used(c)
    end
  end
  return used[c.key]
end

-- seconds until the oldest entries have freed room for c.amount (MemoryLimiter's reset_s)
local function rate_reset(c, total)
  if total + c.amount <= c.limit then
    return 0
  end
  local start = 0
  while true do
    local batch = redis.call('ZRANGE', c.key, start, start + 63, 'WITHSCORES')
    if #batch == 0 then
      return c.window
    end
    for j = 1, #batch, 2 do
      total = total - amount_of(batch[j])
      if total + c.amount <= c.limit then
        return math.max(tonumber(batch[j + 1]) + c.window - now, 0)
      end
    end
    start = start + 64
  end
end

local function take(c)
  local ttl = ttl_ms(c.window)
  if c.kind == 'rate' then
    add_entry(c, fmt(now), c.amount_s)
    redis.call('PEXPIRE', c.key, ttl)
    used[c.key] = used[c.key] + c.amount
    redis.call('SET', c.sum, fmt(used[c.key]), 'PX', ttl)
  elseif c.kind == 'budget' then
    used[c.key] = budget_add(c, c.amount, 0)
  else
    used[c.key] = used[c.key] + redis.call('ZADD', c.key, fmt(now + c.window), rid)
    redis.call('PEXPIRE', c.key, ttl)
  end
end

-- {admitted, refused, used_1, reset_1, ...}; `judge`: note the first check that refuses
local function states(out, judge)
  for i, c in ipairs(checks) do
    local total = read(c)
    local reset = 0
    if c.kind == 'rate' then
      reset = rate_reset(c, total)
    end
    out[#out + 1] = fmt(total)
    out[#out + 1] = fmt(reset)
    if judge and out[2] == -1 and total + c.amount > c.limit then
      out[2] = i - 1
    end
  end
  return out
end

-- every check is read (as it stands) before anything changes, as in MemoryLimiter.admit
local before = states({0, -1}, true)
if before[2] >= 0 then
  return before
end
for _, c in ipairs(checks) do
  take(c)
end
return states({1, -1}, false)
"""
)

# KEYS as for admit; ARGV[3..]: kind, reserved amount, actual, window.
_SETTLE_LUA = (
    _LUA_COMMON
    + r"""
local k = 1
for i = 3, #ARGV, 4 do
  local c = {kind = ARGV[i], key = KEYS[k], amount_s = ARGV[i + 1],
             amount = tonumber(ARGV[i + 1]), actual_s = ARGV[i + 2],
             actual = tonumber(ARGV[i + 2]), window = tonumber(ARGV[i + 3])}
  k = k + 1
  if c.kind == 'rate' then
    c.sum = KEYS[k]
    k = k + 1
    local old = c.amount_s .. '|' .. rid
    local score = redis.call('ZSCORE', c.key, old)
    if score and c.actual ~= c.amount then
      local total, kept = read_sum(c)
      -- NOTE: add before removing: removing the last member first would delete the key and
      -- its TTL, and adding would then recreate it without one
      add_entry(c, score, c.actual_s)
      redis.call('ZREM', c.key, old)
      total = fmt(total + (c.actual - c.amount))
      if kept then
        redis.call('SET', c.sum, total, 'KEEPTTL')
      else
        redis.call('SET', c.sum, total, 'PX', ttl_ms(c.window))
      end
    end
  elseif c.kind == 'budget' then
    budget_add(c, c.actual, c.amount)
  else
    redis.call('ZREM', c.key, rid)
  end
end
return 0
"""
)


def _number(value: float) -> str:
    """The exact double as text Lua's ``tonumber`` reads back: ``_number(1) -> "1.0"``."""
    return repr(float(value))


_SETTLE_BATCH_S = 0.002


class RedisLimiter:
    """`Limiter` on one Redis at `url`, every key under `prefix`. Connects on first use (no I/O
    here); `close` closes the pool. A pool of at most `max_connections` connections, each
    connecting within `connect_timeout_s` and answering within `timeout_s`; a request that finds
    none free within `timeout_s` fails rather than queueing on a Redis that does not answer."""

    def __init__(
        self,
        url: str,
        prefix: str = "interlock:",
        *,
        connect_timeout_s: float = 1.0,
        timeout_s: float = 1.0,
        max_connections: int = 64,
    ) -> None:
        self.prefix = prefix
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # NOTE: a retried admission could count twice
        )
        self._client: redis.asyncio.Redis = redis.asyncio.Redis.from_pool(pool)
        # PERF: admissions ready in the same loop iteration share a round trip (no added wait);
        # settlements wait up to 2 ms for company (nobody waits on them)
        self._admit = _Batched(self._client, _ADMIT_LUA, 0.0)
        self._settle = _Batched(self._client, _SETTLE_LUA, _SETTLE_BATCH_S)

    async def admit(self, request_id: str, checks: Sequence[Check], now: float) -> Verdict:
        if not checks:
            return Verdict(True, ())
        keys: list[str] = []
        args: list[str] = [request_id, _number(now)]
        for check in checks:
            keys += self._keys(check)
            args += (
                check.kind,
                _number(check.limit),
                _number(check.amount),
                _number(check.window_s),
            )
        reply: list[Any] = await self._admit.call(keys, args)
        states = tuple(
            CheckState(check.limit, float(reply[2 + 2 * i]), float(reply[3 + 2 * i]))
            for i, check in enumerate(checks)
        )
        if reply[0] == 1:
            return Verdict(True, states)
        return Verdict(False, states, int(reply[1]))

    async def settle(self, request_id: str, settlements: Sequence[Settlement], now: float) -> None:
        if not settlements:
            return
        keys: list[str] = []
        args: list[str] = [request_id, _number(now)]
        for settlement in settlements:
            check = settlement.check
            keys += self._keys(check)
            args += (
                check.kind,
                _number(check.amount),
                _number(settlement.actual),
                _number(check.window_s),
            )
        await self._settle.call(keys, args)

    async def close(self) -> None:
        await self._admit.drain()
        await self._settle.drain()
        await self._client.aclose()

    def _keys(self, check: Check) -> list[str]:
        if check.kind == "rate":
            return [f"{self.prefix}rate:{check.key}", f"{self.prefix}rate-sum:{check.key}"]
        if check.kind == "budget":
            return [f"{self.prefix}budget:{check.key}"]
        return [f"{self.prefix}slots:{check.key}"]


class _Batched:
    """Calls of one Lua script that arrive within `delay_s` (0: in the same event loop iteration)
    share one pipelined round trip (a loopback round trip costs ~100 µs of CPU here); each
    caller gets its own reply or exception. Plain EVALSHAs: a pipeline holding a redis-py
    `Script` sends SCRIPT EXISTS first, a second round trip every time. A Redis that lost the
    script (restart, SCRIPT FLUSH) ran none of those calls: it is loaded once and only they go
    again, so nothing is applied twice."""

    def __init__(self, client: redis.asyncio.Redis, script: str, delay_s: float) -> None:
        self._client = client
        self._script = script
        self._sha = client.register_script(script).sha  # NOTE: no I/O; redis-py's SHA-1 of it
        self._delay_s = delay_s
        self._pending: list[tuple[list[str], list[str], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def call(self, keys: list[str], args: list[str]) -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._pending.append((keys, args, done))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return await done

    async def drain(self) -> None:
        if self._flusher is not None:
            await self._flusher

    async def _flush(self) -> None:
        await asyncio.sleep(self._delay_s)
        self._flusher = None
        batch, self._pending = self._pending, []
        try:
            results = await self._run([(keys, args) for keys, args, _ in batch])
        except Exception as exc:
            results = [exc] * len(batch)
        for (_, _, done), result in zip(batch, results, strict=True):
            if done.done():  # NOTE: its caller was cancelled
                continue
            if isinstance(result, Exception):
                done.set_exception(result)
            else:
                done.set_result(result)

    async def _run(self, calls: list[tuple[list[str], list[str]]]) -> list[Any]:
        results = await self._pipelined(calls)
        lost = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if lost:
            await self._client.script_load(self._script)
            again = await self._pipelined([calls[i] for i in lost])
            for i, result in zip(lost, again, strict=True):
                results[i] = result
        return results

    async def _pipelined(self, calls: list[tuple[list[str], list[str]]]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self._sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
