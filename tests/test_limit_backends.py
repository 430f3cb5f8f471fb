"""The `Limiter` contract (runtime/state/limits.py), one suite run against every backend:
`MemoryLimiter` (the spec), `SqliteLimiter` on a file in tmp_path and `RedisLimiter` under a key
prefix of its own (tests/redis_fixture.py). A backend that passes is interchangeable.

Time is injected: every call gets a `now` chosen here, from T0 on."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from runtime.state.limits import Check, CheckState, Limiter, MemoryLimiter, Settlement, Verdict
from runtime.state.limits_backends import open_limiter
from tests.redis_fixture import REDIS_URL

T0 = 1_795_910_400.0
_T = TypeVar("_T")

RPM = Check("rate", "p:rpm:team-a", 20, 1, 60)


@dataclasses.dataclass(frozen=True)
class Backend:
    """One store of one kind: `limiter()` makes a new limiter object on it at each call."""

    kind: str
    path: str | None = None
    url: str | None = None
    prefix: str = "interlock:"

    def limiter(self) -> Limiter:
        return open_limiter(self.kind, path=self.path, url=self.url, prefix=self.prefix)


def make_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if kind == "sqlite":
        return Backend("sqlite", path=str(tmp_path / "limits.db"))
    if kind == "redis":
        return Backend("redis", url=REDIS_URL, prefix=request.getfixturevalue("redis_prefix"))
    return Backend("memory")


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", "redis"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The backends several limiter objects (processes) share."""
    return make_backend(request.param, request, tmp_path)


def run(backend: Backend, script: Callable[[Limiter], Awaitable[_T]]) -> _T:
    """`script` on a fresh limiter of `backend`, in an event loop of its own, closed after."""

    async def main() -> _T:
        limiter = backend.limiter()
        try:
            return await script(limiter)
        finally:
            await limiter.close()

    return asyncio.run(main())


def state(limit: float, used: float, reset_s: float = 0.0) -> CheckState:
    return CheckState(float(limit), float(used), float(reset_s))


# --- rate ------------------------------------------------------------------------------------


def test_rate_admits_exactly_the_limit_then_says_when_room_returns(backend: Backend) -> None:
    async def script(limiter: Limiter) -> list[Verdict]:
        return [await limiter.admit(f"r{i}", [RPM], T0) for i in range(200)]

    verdicts = run(backend, script)
    assert [v.admitted for v in verdicts] == [True] * 20 + [False] * 180
    assert [v.states[0].remaining for v in verdicts[:20]] == [float(19 - i) for i in range(20)]
    assert verdicts[18].states[0] == state(20, 19, 0)
    assert verdicts[19].states[0] == state(20, 20, 60)  # full: the next one waits a window
    assert {v.refused for v in verdicts[20:]} == {0}
    assert [v.states[0] for v in verdicts[20:]] == [state(20, 20, 60)] * 180


def test_200_concurrent_admissions_admit_exactly_the_limit(backend: Backend) -> None:
    async def script(limiter: Limiter) -> list[Verdict]:
        return await asyncio.gather(*(limiter.admit(f"r{i}", [RPM], T0) for i in range(200)))

    admitted = [v for v in run(backend, script) if v.admitted]
    # NOTE: every admission saw a state of its own: none read a count another had not written
    assert sorted(v.states[0].remaining for v in admitted) == [float(i) for i in range(20)]


def test_limiters_sharing_one_store_admit_exactly_the_limit_together(shared: Backend) -> None:
    async def script(first: Limiter) -> tuple[int, int]:
        second = shared.limiter()
        try:
            pair = (first, second)
            one_by_one = [await pair[i % 2].admit(f"a{i}", [RPM], T0) for i in range(200)]
            at_once = await asyncio.gather(
                *(pair[i % 2].admit(f"b{i}", [RPM], T0 + 60) for i in range(200))
            )
        finally:
            await second.close()
        return sum(v.admitted for v in one_by_one), sum(v.admitted for v in at_once)

    assert run(shared, script) == (20, 20)


def test_the_window_slides_and_reset_says_when(backend: Backend) -> None:
    rate = Check("rate", "p:rpm:slide", 3, 1, 60)

    async def script(limiter: Limiter) -> list[Verdict]:
        times = (0, 10, 20, 30, 59.5, 60, 69.5, 70, 130)
        return [await limiter.admit(f"r{i}", [rate], T0 + t) for i, t in enumerate(times)]

    assert [(v.admitted, v.states[0]) for v in run(backend, script)] == [
        (True, state(3, 1)),
        (True, state(3, 2)),
        (True, state(3, 3, 40)),  # the entry of T0 leaves at T0 + 60
        (False, state(3, 3, 30)),
        (False, state(3, 3, 0.5)),
        (True, state(3, 3, 10)),  # T0's entry is out (ts <= now - window); T0 + 10 is next
        (False, state(3, 3, 0.5)),
        (True, state(3, 3, 10)),
        (True, state(3, 1)),  # everything older than a window is gone
    ]


def test_tpm_reserves_then_settles_on_the_real_amount(backend: Backend) -> None:
    tpm = Check("rate", "p:tpm:team-a", 100, 60, 60)

    async def script(limiter: Limiter) -> list[CheckState]:
        seen = []
        seen.append((await limiter.admit("a", [tpm], T0)).states[0])
        seen.append((await limiter.admit("b", [tpm], T0 + 1)).states[0])  # 120 > 100: refused
        await limiter.settle("a", [Settlement(tpm, 30)], T0 + 2)  # smaller: frees 30
        seen.append((await limiter.admit("b", [tpm], T0 + 3)).states[0])
        await limiter.settle("b", [Settlement(tpm, 80)], T0 + 4)  # larger: consumes 20 more
        one = replace(tpm, amount=1)
        seen.append((await limiter.admit("c", [one], T0 + 5)).states[0])
        seen.append((await limiter.admit("c", [one], T0 + 60)).states[0])  # "a" has left
        return seen

    assert run(backend, script) == [
        state(100, 60, 60),
        state(100, 60, 59),
        state(100, 90, 60),
        state(100, 110, 55),  # refused: room again when "a" (30) leaves; 80 + 1 fits then
        state(100, 81),
    ]


def test_a_request_admitted_twice_on_a_key_holds_two_entries_and_settles_the_first(
    backend: Backend,
) -> None:
    tpm = Check("rate", "p:tpm:twice", 100, 10, 60)
    probe = replace(tpm, amount=0)

    async def script(limiter: Limiter) -> list[float]:
        await limiter.admit("a", [tpm], T0)
        await limiter.admit("a", [tpm], T0 + 1)
        await limiter.settle("a", [Settlement(tpm, 4)], T0 + 2)
        seen = [(await limiter.admit("p", [probe], T0 + 3)).states[0].used]
        seen.append((await limiter.admit("p", [probe], T0 + 60)).states[0].used)  # 4 left
        return seen

    assert run(backend, script) == [14.0, 10.0]


def test_settling_a_request_never_admitted_changes_nothing(backend: Backend) -> None:
    slots = Check("slots", "p:streams:team-a", 2, 1, 3600)

    async def script(limiter: Limiter) -> Verdict:
        await limiter.admit("a", [RPM, slots], T0)
        await limiter.settle("ghost", [Settlement(RPM, 7), Settlement(slots, 0)], T0 + 1)
        return await limiter.admit("b", [RPM, slots], T0 + 2)

    assert run(backend, script).states == (state(20, 2), state(2, 2))


# --- budget and slots ------------------------------------------------------------------------


def test_budget_reserves_settles_and_expires(backend: Backend) -> None:
    budget = Check("budget", "p:tokens_per_day:team-a:2026-11-29", 1000, 600, 86400)

    async def script(limiter: Limiter) -> list[Verdict]:
        small = replace(budget, amount=500)
        seen = [await limiter.admit("a", [budget], T0)]
        seen.append(await limiter.admit("b", [small], T0 + 1))  # 600 + 500 > 1000
        await limiter.settle("a", [Settlement(budget, 200)], T0 + 2)
        seen.append(await limiter.admit("b", [small], T0 + 3))  # 200 + 500
        await limiter.settle("b", [Settlement(small, 900)], T0 + 4)  # 200 + 900: over
        seen.append(await limiter.admit("c", [replace(budget, amount=0)], T0 + 5))
        seen.append(await limiter.admit("d", [small], T0 + 86399.5))
        seen.append(await limiter.admit("e", [small], T0 + 86400))  # its window is over
        return seen

    assert [(v.admitted, v.states[0]) for v in run(backend, script)] == [
        (True, state(1000, 600)),
        (False, state(1000, 600)),
        (True, state(1000, 700)),
        (False, state(1000, 1100)),  # 1100 + 0 > 1000: a budget used up refuses even 0
        (False, state(1000, 1100)),
        (True, state(1000, 500)),
    ]


def test_redis_calls_take_one_round_trip_and_survive_a_script_flush(
    redis_prefix: str,
) -> None:
    import redis.asyncio

    from runtime.state.limits_redis import RedisLimiter

    budget = Check("budget", "p:tokens_per_day:team-a:2026-11-29", 1000, 300, 86400)

    async def script_exists_calls(client: redis.asyncio.Redis) -> int:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_script|exists", {}).get("calls", 0))

    async def main() -> tuple[int, CheckState, CheckState]:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        limiter = RedisLimiter(REDIS_URL, prefix=redis_prefix)
        try:
            exists_before = await script_exists_calls(client)
            for rid in "ab":
                await limiter.admit(rid, [budget], T0)
            await asyncio.gather(*(limiter.settle(r, [Settlement(budget, 100)], T0) for r in "ab"))
            settled = (await limiter.admit("c", [replace(budget, amount=0)], T0)).states
            exists = await script_exists_calls(client) - exists_before
            # Redis forgets its scripts (a restart, SCRIPT FLUSH) between admission and settling
            for rid in "de":
                await limiter.admit(rid, [budget], T0)
            await client.script_flush()
            await asyncio.gather(*(limiter.settle(r, [Settlement(budget, 50)], T0) for r in "de"))
            after = (await limiter.admit("f", [replace(budget, amount=0)], T0)).states
            await client.script_flush()  # and between two admissions, several at once
            again = await asyncio.gather(*(limiter.admit(r, [budget], T0) for r in "gh"))
            assert [v.states[0] for v in again] == [state(1000, 600), state(1000, 900)]
            return exists, settled[0], after[0]
        finally:
            await limiter.close()
            await client.aclose()

    exists, settled, after = asyncio.run(main())
    assert exists == 0  # settling sends EVALSHA only, never SCRIPT EXISTS first
    assert settled == state(1000, 200)  # 2 x 300 reserved, settled on 2 x 100
    assert after == state(1000, 300)  # each lost settlement applied exactly once after reload


def test_redis_sends_what_queued_together_and_an_operation_fails_alone(
    redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """64 admissions at once are one EVALSHA (or two: the first may go alone); one whose key
    holds another type fails with Redis's message while the rest of its batch is admitted; a
    settlement queued without waiting (`settle_now`) logs its failure."""
    import redis.asyncio

    from runtime.state.limits_redis import RedisLimiter, RedisLimiterError

    rpm = Check("rate", "p:rpm:team-a", 64, 1, 60)
    broken = Check("budget", "p:tokens_per_day:broken", 1000, 10, 86400)

    async def evalsha_calls(client: redis.asyncio.Redis) -> int:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    async def main() -> tuple[int, list[Verdict | BaseException]]:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        limiter = RedisLimiter(REDIS_URL, prefix=redis_prefix)
        try:
            await client.set(f"{redis_prefix}budget:{broken.key}", "not a hash")
            before = await evalsha_calls(client)
            checks = [[rpm, broken] if n == 7 else [rpm] for n in range(64)]
            verdicts = await asyncio.gather(
                *(limiter.admit(f"r{n}", c, T0) for n, c in enumerate(checks)),
                return_exceptions=True,
            )
            calls = await evalsha_calls(client) - before
            limiter.settle_now("r7", [Settlement(broken, 5)], T0)
            await limiter.close()  # NOTE: sends what is queued first
            return calls, verdicts
        finally:
            await client.aclose()

    with caplog.at_level("WARNING", logger="interlock"):
        calls, verdicts = asyncio.run(main())
    assert calls <= 2
    failed = verdicts[7]
    assert isinstance(failed, RedisLimiterError) and "WRONGTYPE" in str(failed)
    admitted = [v for n, v in enumerate(verdicts) if n != 7]
    assert all(isinstance(v, Verdict) and v.admitted for v in admitted)
    # NOTE: 63 admitted, each counted once, in the order they were queued
    assert sorted(v.states[0].used for v in admitted if isinstance(v, Verdict)) == list(
        range(1, 64)
    )
    assert any("limit settlement failed" in r.getMessage() for r in caplog.records)


def test_redis_splits_a_long_queue_into_evalshas_of_at_most_256(redis_prefix: str) -> None:
    from runtime.state.limits_redis import RedisLimiter

    rpm = Check("rate", "p:rpm:team-a", 600, 1, 60)

    async def main() -> list[Verdict]:
        limiter = RedisLimiter(REDIS_URL, prefix=redis_prefix)
        try:
            return await asyncio.gather(*(limiter.admit(f"r{n}", [rpm], T0) for n in range(601)))
        finally:
            await limiter.close()

    verdicts = asyncio.run(main())
    admitted = sorted(v.states[0].used for v in verdicts if v.admitted)
    assert admitted == list(range(1, 601))  # NOTE: the 601st is refused, whichever it was
    assert sum(not v.admitted for v in verdicts) == 1


def test_cost_budgets_add_up_as_memory_does(backend: Backend) -> None:
    cost = Check("budget", "p:cost_per_day:team-a:2026-11-29", 1.0, 0.1, 172800)

    async def script(limiter: Limiter) -> list[float]:
        used = []
        for i in range(12):
            verdict = await limiter.admit(f"r{i}", [cost], T0 + i)
            await limiter.settle(f"r{i}", [Settlement(cost, 0.07 + i / 1000)], T0 + i + 0.5)
            used.append(verdict.states[0].used)
        return used

    # NOTE: exact doubles: 0.1 + 0.07 - 0.1 ... as Python adds them, not as long doubles
    assert run(backend, script) == run(Backend("memory"), script)


def test_slots_are_taken_freed_and_expire(backend: Backend) -> None:
    slots = Check("slots", "p:streams:team-a", 2, 1, 3600)

    async def script(limiter: Limiter) -> list[tuple[bool, float]]:
        seen = []
        for rid, at in (("a", 0), ("b", 1), ("c", 2)):
            seen.append(await limiter.admit(rid, [slots], T0 + at))
        await limiter.settle("a", [Settlement(slots, 0)], T0 + 3)
        await limiter.settle("a", [Settlement(slots, 0)], T0 + 3)  # twice: still one slot
        seen.append(await limiter.admit("c", [slots], T0 + 4))
        seen.append(await limiter.admit("d", [slots], T0 + 3601))  # "b" (T0 + 1) expired
        seen.append(await limiter.admit("e", [slots], T0 + 3604))  # so did "c" (T0 + 4)
        return [(v.admitted, v.states[0].used) for v in seen]

    assert run(backend, script) == [
        (True, 1),
        (True, 2),
        (False, 2),
        (True, 2),
        (True, 2),
        (True, 2),
    ]


# --- several checks --------------------------------------------------------------------------


def test_a_refusal_by_a_later_check_leaves_the_earlier_ones_unchanged(backend: Backend) -> None:
    rpm = Check("rate", "p:rpm:x", 5, 1, 60)
    tpm = Check("rate", "p:tpm:x", 100, 40, 60)
    slots = Check("slots", "p:streams:x", 3, 1, 3600)
    budget = Check("budget", "p:tokens_per_day:x:2026-11-29", 50, 40, 86400)

    async def script(limiter: Limiter) -> list[Verdict]:
        seen = [await limiter.admit("a", [rpm, tpm, slots, budget], T0)]
        seen.append(await limiter.admit("b", [rpm, tpm, slots, budget], T0 + 1))  # budget: 80
        seen.append(await limiter.admit("c", [rpm, tpm, slots], T0 + 2))
        return seen

    first, refused, after = run(backend, script)
    assert first.admitted
    assert (refused.admitted, refused.refused) == (False, 3)
    assert refused.states == (state(5, 1), state(100, 40), state(3, 1), state(50, 40))
    assert after.states == (state(5, 2), state(100, 80, 58), state(3, 2))


@pytest.mark.parametrize(
    ("fits", "refused"),
    [((True, False, False), 1), ((False, True, False), 0), ((True, True, False), 2)],
)
def test_refused_is_the_index_of_the_first_check_that_fails(
    backend: Backend, fits: tuple[bool, ...], refused: int
) -> None:
    checks = [Check("rate", f"p:rpm:{i}", 1, 1 if ok else 2, 60) for i, ok in enumerate(fits, 1)]

    async def script(limiter: Limiter) -> tuple[Verdict, Verdict]:
        verdict = await limiter.admit("a", checks, T0)
        probe = await limiter.admit("b", [replace(c, amount=0) for c in checks], T0)
        return verdict, probe

    verdict, probe = run(backend, script)
    assert (verdict.admitted, verdict.refused) == (False, refused)
    assert [s.used for s in probe.states] == [0.0, 0.0, 0.0]  # nothing was taken


def test_no_checks_admit_at_once(backend: Backend) -> None:
    async def script(limiter: Limiter) -> Verdict:
        await limiter.settle("a", [], T0)
        return await limiter.admit("a", [], T0)

    assert run(backend, script) == Verdict(True, ())


# --- the same as MemoryLimiter ---------------------------------------------------------------


Step = tuple[str, str, tuple[Check, ...], tuple[float, ...], float]  # op, rid, checks, actual, now


def mixed_steps(count: int, seed: int = 7) -> list[Step]:
    """Admissions and settlements on every kind, float costs, windows short enough to expire."""
    rng = random.Random(seed)
    now = T0
    steps: list[Step] = []
    pending: list[tuple[str, tuple[Check, ...]]] = []
    for n in range(count):
        now += rng.choice((0.0, 0.25, 1.0, 3.5, 8.0))
        if pending and rng.random() < 0.4:
            rid, checks = pending.pop(rng.randrange(len(pending)))
            actual = tuple(settled_amount(rng, check) for check in checks)
            steps.append(("settle", rid, checks, actual, now))
            continue
        tokens = float(rng.randint(1, 40))
        cost = round(rng.random() / 10, rng.randint(1, 6))
        team = rng.choice(("a", "b"))
        checks = tuple(
            check
            for check in (
                Check("rate", f"p:rpm:{team}", 6, 1, 30),
                Check("rate", f"p:tpm:{team}", 120, tokens, 30),
                Check("slots", f"p:streams:{team}", 3, 1, 40),
                Check("budget", f"p:tokens_per_day:{team}", 400, tokens, 50),
                Check("budget", f"p:cost_per_day:{team}", 0.5, cost, 50),
            )
            if rng.random() < 0.8
        )
        rid = f"r{n}"
        steps.append(("admit", rid, checks, (), now))
        pending.append((rid, checks))
    return steps


def settled_amount(rng: random.Random, check: Check) -> float:
    """Tokens are whole (as the pipeline settles them), costs are not."""
    if "cost" in check.key:
        return rng.choice((0.0, check.amount, rng.random() / 10))
    return float(rng.choice((0, check.amount, check.amount * 2, rng.randint(0, 50))))


async def play(limiter: Limiter, steps: list[Step]) -> list[Verdict | None]:
    seen: list[Verdict | None] = []
    for op, rid, checks, actual, now in steps:
        if op == "admit":
            seen.append(await limiter.admit(rid, checks, now))
        else:
            settlements = [Settlement(c, a) for c, a in zip(checks, actual, strict=True)]
            await limiter.settle(rid, settlements, now)
            seen.append(None)
    return seen


def test_every_verdict_equals_memory_limiters(backend: Backend) -> None:
    steps = mixed_steps(300)
    expected = asyncio.run(play(MemoryLimiter(), steps))
    assert sum(v is not None and v.admitted for v in expected) > 40  # the sequence has both
    assert sum(v is not None and not v.admitted for v in expected) > 40
    assert run(backend, lambda limiter: play(limiter, steps)) == expected


# --- property --------------------------------------------------------------------------------

WINDOW = 30.0
RATE_LIMITS = (4.0, 50.0)  # a request count and a token count, both per WINDOW

# One arrival: half-seconds since the last, tokens reserved, and (or None) what the oldest
# request not yet settled really used, settled just before this arrival.
Arrival = tuple[int, int, int | None]
arrivals = st.lists(
    st.tuples(st.integers(0, 30), st.integers(1, 30), st.none() | st.integers(0, 60)),
    min_size=1,
    max_size=40,
)


@dataclasses.dataclass
class Admitted:
    rid: str
    ts: float
    amounts: list[float]  # per check: reserved, then what settled


async def check_arrivals(limiter: Limiter, sequence: list[Arrival]) -> list[Verdict]:
    """Admit each arrival against a request count and a token count; assert that every verdict
    is what a naive scan of the admitted requests says: at each admission the amounts (as settled
    so far) admitted inside (now - WINDOW, now], this one's included, never exceed the limit,
    and nothing that fits is refused.

    That covers every window, not only those ending at an admission: a window's sum grows only
    when a request is admitted into it or settles above its reservation (which is the point:
    tpm counts what was really used), so between admissions it can only have shrunk."""
    tag = uuid.uuid4().hex
    checks = [Check("rate", f"{tag}:rpm", RATE_LIMITS[0], 1, WINDOW)]
    now = T0
    admitted: list[Admitted] = []
    unsettled: list[Admitted] = []
    verdicts: list[Verdict] = []
    for n, (step, tokens, actual) in enumerate(sequence):
        now += step / 2
        if actual is not None and unsettled:
            oldest = unsettled.pop(0)
            await limiter.settle(
                oldest.rid, [Settlement(tpm_check(tag, oldest), float(actual))], now
            )
            oldest.amounts[1] = float(actual)
        amounts = [1.0, float(tokens)]
        request = [*checks, Check("rate", f"{tag}:tpm", RATE_LIMITS[1], amounts[1], WINDOW)]
        verdict = await limiter.admit(f"r{n}", request, now)
        inside = [a for a in admitted if a.ts > now - WINDOW]
        totals = [sum(a.amounts[i] for a in inside) + amounts[i] for i in range(2)]
        fits = [total <= limit for total, limit in zip(totals, RATE_LIMITS, strict=True)]
        assert verdict.admitted == all(fits), (n, totals)
        if verdict.admitted:
            entry = Admitted(f"r{n}", now, amounts)
            admitted.append(entry)
            unsettled.append(entry)
        else:
            assert verdict.refused == fits.index(False)
        verdicts.append(verdict)
    return verdicts


def tpm_check(tag: str, request: Admitted) -> Check:
    return Check("rate", f"{tag}:tpm", RATE_LIMITS[1], request.amounts[1], WINDOW)


def test_never_admits_more_than_the_limit_in_any_window(backend: Backend) -> None:
    @settings(
        max_examples=300 if backend.kind == "memory" else 40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(sequence=arrivals)
    def holds(sequence: list[Arrival]) -> None:
        verdicts = run(backend, lambda limiter: check_arrivals(limiter, sequence))
        if backend.kind != "memory":
            assert verdicts == asyncio.run(check_arrivals(MemoryLimiter(), sequence))

    holds()


# --- backends --------------------------------------------------------------------------------


def test_open_limiter_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match="needs a path"):
        open_limiter("sqlite")
    with pytest.raises(ValueError, match="needs a url"):
        open_limiter("redis")
    with pytest.raises(ValueError, match="unknown limits backend 'etcd'"):
        open_limiter("etcd")


def test_sqlite_sweeps_expired_rows_of_keys_no_one_reads(tmp_path: Path) -> None:
    from runtime.state.limits_sqlite import LATE_SETTLEMENT_S

    backend = Backend("sqlite", path=str(tmp_path / "limits.db"))
    old = [
        Check("rate", "old:rpm", 5, 1, 60),
        Check("budget", "old:day", 5, 1, 60),
        Check("slots", "old:streams", 5, 1, 60),
    ]

    def rows() -> list[int]:
        with contextlib.closing(sqlite3.connect(backend.path or "")) as conn:
            return [
                conn.execute(f"SELECT count(*) FROM {table} WHERE key LIKE 'old:%'").fetchone()[0]
                for table in ("limit_rates", "limit_budgets", "limit_slots")
            ]

    async def script(limiter: Limiter) -> list[list[int]]:
        await limiter.admit("a", old, T0)
        seen = [rows()]
        await limiter.admit("b", [RPM], T0 + 120)
        seen.append(rows())  # the budget waits for a late settlement
        await limiter.admit("c", [RPM], T0 + 120 + LATE_SETTLEMENT_S)
        seen.append(rows())
        return seen

    assert run(backend, script) == [[1, 1, 1], [0, 1, 0], [0, 0, 0]]


def test_memory_windows_drop_what_left_and_still_settle_what_stays() -> None:
    """The memory limiter keeps a window as arrays it trims from the front once most entries
    have left; a request admitted before a trim settles on its own entry after it."""
    tpm = Check("rate", "p:tpm:trim", 1e9, 10, 60)
    limiter = MemoryLimiter()
    for i in range(3000):  # NOTE: 10 a second: the first 2,400 have left by the end
        limiter.admit_now(f"r{i}", [tpm], T0 + i / 10)
    window = limiter._windows[tpm.key]
    assert len(window.times) < 3000 and window.dropped > 1024  # trimmed
    limiter.settle_now("r2999", [Settlement(tpm, 4)], T0 + 300)  # in the window: counts
    limiter.settle_now("r0", [Settlement(tpm, 4)], T0 + 300)  # long gone: nothing to change
    probe = replace(tpm, amount=0)
    assert limiter.admit_now("p", [probe], T0 + 300).states[0].used == 598 * 10 + 4
    assert "r2999" not in limiter._held and "r0" not in limiter._held


def test_memory_holds_of_requests_that_never_settle_are_forgotten_after_the_window() -> None:
    rpm = Check("rate", "p:rpm:holds", 1e9, 1, 60)
    limiter = MemoryLimiter()
    for i in range(12_000):  # NOTE: within 12 s: the sweep at 10,001 holds keeps them all
        limiter.admit_now(f"old{i}", [rpm], T0 + i / 1000)
    assert len(limiter._held) == 12_000
    for i in range(8_003):  # NOTE: the next sweep, at 20,003, finds the old ones gone
        limiter.admit_now(f"new{i}", [rpm], T0 + 80 + i / 1000)
    assert len(limiter._held) == 8_003
    assert all(request_id.startswith("new") for request_id in limiter._held)


def test_redis_keys_all_expire(redis_prefix: str) -> None:
    import redis

    tpm = Check("rate", "p:tpm:a", 100, 10, 60)
    budget = Check("budget", "p:cost_per_day:a:2026-11-29", 1, 0.1, 172800)
    slots = Check("slots", "p:streams:a", 2, 1, 3600)

    async def script(limiter: Limiter) -> None:
        await limiter.admit("a", [tpm, budget, slots], T0)
        # NOTE: "a" is the only member of the log: replacing it must keep the key's TTL
        await limiter.settle("a", [Settlement(tpm, 7), Settlement(budget, 0.2)], T0 + 1)
        await limiter.admit("b", [slots], T0 + 2)

    run(Backend("redis", url=REDIS_URL, prefix=redis_prefix), script)
    with redis.Redis.from_url(REDIS_URL) as client:
        ttls = {
            key.decode().removeprefix(redis_prefix): client.pttl(key)
            for key in client.scan_iter(match=f"{redis_prefix}*")
        }
    assert set(ttls) == {
        "rate:p:tpm:a",
        "rate-sum:p:tpm:a",
        "budget:p:cost_per_day:a:2026-11-29",
        "slots:p:streams:a",
    }
    assert 55_000 < ttls["rate:p:tpm:a"] <= 60_000
    assert 55_000 < ttls["rate-sum:p:tpm:a"] <= 60_000
    assert 176_395_000 < ttls["budget:p:cost_per_day:a:2026-11-29"] <= 176_400_000  # + 1 h
    assert 3_595_000 < ttls["slots:p:streams:a"] <= 3_600_000


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel does) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_redis_down_raises_at_once(closed_port: int) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from runtime.state.limits_redis import RedisLimiter

    async def script() -> None:
        limiter = RedisLimiter(f"redis://127.0.0.1:{closed_port}/0")
        try:
            await limiter.admit("a", [RPM], T0)
        finally:
            await limiter.close()

    started = time.monotonic()
    with pytest.raises(RedisConnectionError):
        asyncio.run(script())
    assert time.monotonic() - started < 1.0


def test_a_redis_that_never_answers_raises_within_the_timeout(silent_port: int) -> None:
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from runtime.state.limits_redis import RedisLimiter

    async def script() -> None:
        limiter = RedisLimiter(f"redis://127.0.0.1:{silent_port}/0", timeout_s=0.2)
        try:
            await limiter.admit("a", [RPM], T0)
        finally:
            await limiter.close()

    started = time.monotonic()
    with pytest.raises(RedisTimeoutError):
        asyncio.run(script())
    assert time.monotonic() - started < 1.0
