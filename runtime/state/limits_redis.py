"""`Limiter` on Redis: counters that every gateway process talking to one Redis shares.

    limiter = RedisLimiter("redis://127.0.0.1:6379/0")
    verdict = await limiter.admit("req-1", [Check("rate", "p:rpm:team-a", 20, 1, 60)], now)
    verdict.admitted, verdict.states[0].remaining -> True, 19.0

Every admission and settlement is one operation of one Lua script, and one EVALSHA carries all
the operations this process queued while its previous EVALSHA was on its way (`_Batches`): an
idle gateway sends each at once, a loaded one serves tens of requests with one round trip, and
redis-py's work per command (packing, parsing, a timeout per reply) is paid once per batch.
Redis runs one script at a time and the script runs the operations one after another, in the
order they were queued, each exactly as it would run alone; so admission is atomic across
processes as `MemoryLimiter`'s is within one. An operation that fails (a key of the wrong type)
fails alone. A Redis that lost its script cache costs one SCRIPT LOAD more, once.

An admission reads every check first, returns the states untouched when one refuses, and only
then applies them all. Keys, with the default prefix:

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
the caller decides whether to admit. A batch is never retried (a retried admission could count
twice), except after NOSCRIPT, when Redis ran none of it. Needs Redis 6.0 or later (``SET ...
KEEPTTL``) and one instance, not a cluster (a batch's keys would live on different nodes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from runtime.state.limits import Check, CheckState, Settlement, Verdict

_LOG = logging.getLogger("interlock")

# One script runs a batch. ARGV holds two entries per operation: its request id, then its spec, in
# words: admit "a <now> (<kind> <key> [<sum key>] <limit> <amount> <window>)...", settle "s <now>
# (<kind> <key> [<sum key>] <reserved> <actual> <window>)..."; keys are indexes into KEYS (each
# key of the batch once), numbers ``repr`` text. A rate check has a sum key, the others none.
# Returns one line per operation, joined by "\n": admit "<admitted> <refused index or -1>
# <used_1> <reset_1> <used_2> <reset_2> ...", settle "0", a failed operation "E <message>".
_LUA = r"""
-- the operation being run: its request id, its clock, and what it read of each key
local rid, now, used
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

-- the checks of a spec's words: a (limit, amount, window) for admit, (amount, actual, window)
-- for settle; the words' text is kept where it becomes part of a member
local function parse(words)
  local checks = {}
  local i = 3
  while i <= #words do
    local c = {kind = words[i], key = KEYS[tonumber(words[i + 1])]}
    i = i + 2
    if c.kind == 'rate' then
      c.sum = KEYS[tonumber(words[i])]
      i = i + 1
    end
    c.first_s, c.second_s = words[i], words[i + 1]
    c.first, c.second = tonumber(words[i]), tonumber(words[i + 1])
    c.window = tonumber(words[i + 2])
    i = i + 3
    checks[#checks + 1] = c
  end
  return checks
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

-- what a key holds: read once per operation (dropping what expired), then kept current by take()
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
local function states(checks, out, judge)
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
local function admit(checks)
  for _, c in ipairs(checks) do
    c.limit, c.amount_s, c.amount = c.first, c.second_s, c.second
  end
  local before = states(checks, {0, -1}, true)
  if before[2] < 0 then
    for _, c in ipairs(checks) do
      take(c)
    end
    before = states(checks, {1, -1}, false)
  end
  return table.concat(before, ' ')
end

local function settle(checks)
  for _, c in ipairs(checks) do
    c.amount_s, c.amount, c.actual_s, c.actual = c.first_s, c.first, c.second_s, c.second
    if c.kind == 'rate' then
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
  return '0'
end

local function run(spec)
  local words = {}
  for word in string.gmatch(spec, '%S+') do
    words[#words + 1] = word
  end
  now, used = tonumber(words[2]), {}
  if words[1] == 'a' then
    return admit(parse(words))
  end
  return settle(parse(words))
end

local out = {}
for i = 1, #ARGV, 2 do
  rid = ARGV[i]
  local ok, result = pcall(run, ARGV[i + 1])
  if not ok then
    -- NOTE: a failed redis.call raises a table with its message in `err`
    local message = type(result) == 'table' and result.err or tostring(result)
    result = 'E ' .. string.gsub(message, '\n', ' ')
  end
  out[#out + 1] = result
end
return table.concat(out, '\n')
"""


def _number(value: float) -> str:
    """The exact double as text Lua's ``tonumber`` reads back: ``_number(1) -> "1.0"``."""
    return repr(float(value))


_MAX_BATCH = 256  # operations in one EVALSHA (Redis serves nobody else while it runs); more go
# as several EVALSHAs at once


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
        self._batches = _Batches(self._client)

    async def admit(self, request_id: str, checks: Sequence[Check], now: float) -> Verdict:
        if not checks:
            return Verdict(True, ())
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        numbers = [f"{_number(c.limit)} {_number(c.amount)} {_number(c.window_s)}" for c in checks]
        self._batches.add(request_id, self._operation("a", now, checks, numbers), done)
        words = (await done).split()
        states = tuple(
            CheckState(check.limit, float(words[2 + 2 * i]), float(words[3 + 2 * i]))
            for i, check in enumerate(checks)
        )
        if words[0] == b"1":
            return Verdict(True, states)
        return Verdict(False, states, int(words[1]))

    async def settle(self, request_id: str, settlements: Sequence[Settlement], now: float) -> None:
        if not settlements:
            return
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.settle_now(request_id, settlements, now, done)
        await done

    def settle_now(
        self,
        request_id: str,
        settlements: Sequence[Settlement],
        now: float,
        done: asyncio.Future[bytes] | None = None,
    ) -> None:
        """`settle` without waiting (PERF: no task per request): queued for the next batch; a
        failure goes to `done` or, without one, to the log."""
        if settlements:
            checks = [s.check for s in settlements]
            numbers = [
                f"{_number(s.check.amount)} {_number(s.actual)} {_number(s.check.window_s)}"
                for s in settlements
            ]
            self._batches.add(request_id, self._operation("s", now, checks, numbers), done)

    async def close(self) -> None:
        await self._batches.drain()
        await self._client.aclose()

    def _operation(
        self, op: str, now: float, checks: Sequence[Check], numbers: Sequence[str]
    ) -> _Operation:
        """An operation's words before its keys are numbered: ``("<op> <now>", [(kind, keys,
        numbers), ...])``; `numbers` holds each check's three numbers as text."""
        parts = []
        prefix = self.prefix
        for check, text in zip(checks, numbers, strict=True):
            kind, key = check.kind, check.key
            if kind == "rate":
                keys: tuple[str, ...] = (f"{prefix}rate:{key}", f"{prefix}rate-sum:{key}")
            else:
                keys = (f"{prefix}{kind}:{key}",)
            parts.append((kind, keys, text))
        return f"{op} {_number(now)}", parts


# ("<op> <now>", [(kind, keys, "<number> <number> <number>"), ...])
_Operation = tuple[str, list[tuple[str, tuple[str, ...], str]]]
_Queued = tuple[str, _Operation, "asyncio.Future[bytes] | None"]  # request id, operation, caller


class _Batches:
    """The operations of one `RedisLimiter` on their way to Redis: queued, then sent as one
    EVALSHA when none is on its way (no timer: an idle gateway sends each at once; under load
    what queued during one round trip goes with the next). Each caller gets its own line of the
    reply or exception; a settlement queued without a future has its failure logged. Plain
    EVALSHA: a redis-py `Script` would send SCRIPT EXISTS first. After NOSCRIPT (a restart,
    SCRIPT FLUSH) Redis ran nothing of the batch: the script is loaded and the batch sent again,
    so nothing is applied twice."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._sha = client.register_script(_LUA).sha  # NOTE: no I/O; redis-py's SHA-1 of it
        self._queue: list[_Queued] = []
        self._sender: asyncio.Task[None] | None = None

    def add(
        self, request_id: str, operation: _Operation, done: asyncio.Future[bytes] | None
    ) -> None:
        self._queue.append((request_id, operation, done))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def drain(self) -> None:
        if self._sender is not None:
            await self._sender

    async def _send(self) -> None:
        try:
            while self._queue:
                queue, self._queue = self._queue, []
                if len(queue) <= _MAX_BATCH:
                    await self._run(queue)
                else:  # NOTE: at once, so a Redis that hangs delays nobody by more than 2 waits
                    chunks = range(0, len(queue), _MAX_BATCH)
                    await asyncio.gather(*(self._run(queue[i : i + _MAX_BATCH]) for i in chunks))
        finally:
            self._sender = None

    async def _run(self, batch: list[_Queued]) -> None:
        try:
            lines = await self._call(batch)
            if len(lines) != len(batch):
                raise RedisLimiterError(f"{len(lines)} replies to {len(batch)} operations")
        except Exception as exc:
            for _, _, done in batch:
                _fail(done, exc)
            return
        for (_, _, done), line in zip(batch, lines, strict=True):
            if line.startswith(b"E "):
                _fail(done, RedisLimiterError(line[2:].decode(errors="replace")))
            elif done is not None and not done.done():  # NOTE: done: its caller was cancelled
                done.set_result(line)

    async def _call(self, batch: list[_Queued]) -> list[bytes]:
        """One EVALSHA of `batch`: its reply lines."""
        numbered: dict[str, str] = {}  # key -> its index in KEYS, from 1
        args: list[str] = []
        for request_id, (head, parts), _ in batch:
            words = [head]
            for kind, names, numbers in parts:
                words.append(kind)
                for key in names:
                    index = numbered.get(key)
                    if index is None:
                        index = numbered[key] = str(len(numbered) + 1)
                    words.append(index)
                words.append(numbers)
            args += (request_id, " ".join(words))
        keys = list(numbered)
        try:
            reply = await self._client.evalsha(self._sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._client.script_load(_LUA)
            reply = await self._client.evalsha(self._sha, len(keys), *keys, *args)
        lines: list[bytes] = reply.split(b"\n")
        return lines


class RedisLimiterError(Exception):
    """Redis refused one operation of a batch (a key of another type under the prefix, ...)."""


def _fail(done: asyncio.Future[bytes] | None, exc: Exception) -> None:
    if done is None:
        _LOG.warning("limit settlement failed: %s: %s", type(exc).__name__, exc)
    elif not done.done():
        done.set_exception(exc)
