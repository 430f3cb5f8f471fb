from __future__ import annotations

import random
from dataclasses import replace

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from compiler.table import FAILURE_CLASSES as TABLE_FAILURE_CLASSES
from compiler.table import BreakerPolicy, RetryPolicy
from runtime.resilience import (
    FAILURE_CLASSES,
    BreakerBook,
    CircuitBreaker,
    backoff_delay,
    classify_status,
    next_delay,
    retry_after_seconds,
    should_retry,
)

EXACT = RetryPolicy(attempts=5, initial_ms=200, max_ms=5000, multiplier=2.0, jitter="none")
NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_failure_classes_match_the_compiler() -> None:
    assert frozenset(TABLE_FAILURE_CLASSES) == FAILURE_CLASSES


# --- classification -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "failure"),
    [
        (200, None),
        (204, None),
        (304, None),
        (400, "client_error"),
        (401, "client_error"),
        (404, "client_error"),
        (408, "client_error"),
        (429, "rate_limited"),
        (500, "server_error"),
        (503, "server_error"),
        (529, "server_error"),
    ],
)
def test_classify_status(status: int, failure: str | None) -> None:
    assert classify_status(status) == failure


@pytest.mark.parametrize(
    ("on_errors", "failure", "status", "expected"),
    [
        ({"connect", "timeout"}, "server_error", 503, True),
        ({"connect", "timeout"}, "rate_limited", 429, True),
        ({"connect", "timeout"}, "server_error", 501, False),
        ({"connect", "timeout"}, "client_error", 400, False),
        ({"connect", "timeout"}, "timeout", None, True),
        ({"connect", "timeout"}, "connect", None, True),
        ({"connect", "timeout"}, "bad_response", None, False),
        ({"connect", "timeout"}, "bad_response", 200, False),
        ({"read"}, "bad_response", None, True),
        ({"protocol"}, "bad_response", 200, True),
        ({"read"}, "timeout", None, False),
        (set(), "connect", None, False),
        ({"connect", "timeout", "read", "protocol"}, "circuit_open", None, False),
    ],
)
def test_should_retry(
    on_errors: set[str], failure: str, status: int | None, expected: bool
) -> None:
    policy = RetryPolicy(attempts=3, on_errors=frozenset(on_errors))
    assert should_retry(policy, failure, status) is expected


def test_should_retry_any_listed_status() -> None:
    policy = RetryPolicy(attempts=3, on_status=frozenset({409}), on_errors=frozenset())
    assert should_retry(policy, "client_error", 409)
    assert not should_retry(policy, "server_error", 500)


# --- backoff ------------------------------------------------------------------------------------


def test_backoff_exact_doubles_then_caps() -> None:
    rng = random.Random(0)
    delays = [backoff_delay(EXACT, n, rng) for n in range(1, 8)]
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def test_backoff_full_jitter_is_seeded_and_bounded() -> None:
    policy = replace(EXACT, jitter="full")
    first = [backoff_delay(policy, n, random.Random(7)) for n in range(1, 6)]
    again = [backoff_delay(policy, n, random.Random(7)) for n in range(1, 6)]
    assert first == again
    for n, delay in enumerate(first, start=1):
        assert 0.0 <= delay <= backoff_delay(EXACT, n, random.Random(0))


def test_backoff_survives_huge_retry_numbers() -> None:
    assert backoff_delay(EXACT, 100_000, random.Random(0)) == 5.0


def test_backoff_rejects_retry_zero() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        backoff_delay(EXACT, 0, random.Random(0))


retry_policies = st.builds(
    RetryPolicy,
    initial_ms=st.floats(0, 10_000),
    max_ms=st.floats(0, 60_000),
    multiplier=st.floats(1.0, 10.0),
    jitter=st.sampled_from(["full", "none"]),
)


@given(policy=retry_policies, retry_number=st.integers(1, 2_000), seed=st.integers(0, 2**32))
def test_backoff_within_zero_and_max(policy: RetryPolicy, retry_number: int, seed: int) -> None:
    delay = backoff_delay(policy, retry_number, random.Random(seed))
    assert 0.0 <= delay <= policy.max_ms / 1000.0


@given(policy=retry_policies, retry_number=st.integers(1, 2_000))
def test_backoff_caps_never_decrease(policy: RetryPolicy, retry_number: int) -> None:
    exact = replace(policy, jitter="none")
    rng = random.Random(0)
    assert backoff_delay(exact, retry_number, rng) <= backoff_delay(exact, retry_number + 1, rng)


# --- Retry-After --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": " 0 "}, 0.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "1"}, 0.25),
        ({"retry-after-ms": "bogus", "retry-after": "2"}, 2.0),
        ({"retry-after-ms": "-5"}, None),
        ({"retry-after": "Tue, 14 Nov 2023 22:13:50 GMT"}, 30.0),
        ({"retry-after": "Tue, 14 Nov 2023 22:00:00 GMT"}, 0.0),
        ({"retry-after": "Tue, 14 Nov 2023 22:13:50"}, None),  # no zone: not an HTTP-date
        ({"retry-after": "Tue, 99 Nov 2023 99:99:99 GMT"}, None),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers, now=NOW) == expected


def test_retry_after_reads_httpx_headers() -> None:
    headers = httpx.Headers({"Retry-After-Ms": "1500"})
    assert retry_after_seconds(headers) == 1.5


def test_retry_after_date_defaults_to_wall_clock() -> None:
    assert retry_after_seconds({"retry-after": "Thu, 01 Jan 1970 00:00:00 GMT"}) == 0.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (None, 0.4),
        ({}, 0.4),
        ({"retry-after": "0.1"}, 0.4),  # backoff is longer
        ({"retry-after": "3"}, 3.0),  # the upstream asks for more
        ({"retry-after": "30"}, 30.0),  # at the limit: still waited for
        ({"retry-after": "31"}, None),  # beyond it: fail over
        ({"retry-after": "junk"}, 0.4),
    ],
)
def test_next_delay(headers: dict[str, str] | None, expected: float | None) -> None:
    assert next_delay(EXACT, 2, headers, random.Random(0)) == expected


def test_next_delay_ignores_retry_after_when_told() -> None:
    policy = replace(EXACT, respect_retry_after=False)
    assert next_delay(policy, 1, {"retry-after": "120"}, random.Random(0)) == 0.2


# --- circuit breaker ----------------------------------------------------------------------------


def state(breaker: CircuitBreaker) -> str:
    return breaker.state  # NOTE: a call, so mypy does not narrow the property between checks


POLICY = BreakerPolicy(failure_threshold=3, cooldown_s=10.0, half_open_probes=2)


def open_breaker(clock: FakeClock, policy: BreakerPolicy = POLICY) -> CircuitBreaker:
    breaker = CircuitBreaker(policy, clock)
    for _ in range(policy.failure_threshold):
        breaker.record_failure()
    assert state(breaker) == "open"
    return breaker


def test_breaker_opens_after_consecutive_failures() -> None:
    breaker = CircuitBreaker(POLICY, FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the streak
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) == "closed"
    assert breaker.consecutive_failures == 2
    assert breaker.allow()
    breaker.record_failure()
    assert state(breaker) == "open"
    assert not breaker.allow()


def test_breaker_open_refuses_until_cooldown_then_probes() -> None:
    clock = FakeClock(100.0)
    breaker = open_breaker(clock)
    clock.now = 109.999
    assert not breaker.allow()
    assert state(breaker) == "open"
    clock.now = 110.0
    assert state(breaker) == "half_open"
    assert [breaker.allow() for _ in range(4)] == [True, True, False, False]


def test_half_open_success_closes() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now = 10.0
    assert breaker.allow()
    breaker.record_success()
    assert state(breaker) == "closed"
    assert breaker.consecutive_failures == 0
    assert all(breaker.allow() for _ in range(10))


def test_half_open_failure_reopens_with_fresh_cooldown() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now = 15.0
    assert breaker.allow()
    breaker.record_failure()
    assert state(breaker) == "open"
    clock.now = 24.9
    assert not breaker.allow()
    clock.now = 25.0
    assert breaker.allow()


def test_release_returns_a_probe_slot() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock, replace(POLICY, half_open_probes=1))
    clock.now = 10.0
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()
    assert state(breaker) == "half_open"
    assert breaker.allow()


def test_lost_probes_are_reclaimed_after_a_cooldown() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock, replace(POLICY, half_open_probes=1))
    clock.now = 10.0
    assert breaker.allow()  # this probe never reports back
    clock.now = 19.9
    assert not breaker.allow()
    clock.now = 20.0
    assert breaker.allow()
    assert not breaker.allow()


def test_each_lost_probe_is_reclaimed_a_cooldown_after_its_admission() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)  # two probes
    clock.now = 10.0
    assert breaker.allow()
    clock.now = 15.0
    assert breaker.allow()
    assert not breaker.allow()
    clock.now = 20.0  # the first probe is presumed lost, the second is not yet
    assert breaker.allow()
    assert not breaker.allow()


def test_outcomes_while_open_are_ignored() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now = 5.0
    breaker.record_success()
    breaker.record_failure()
    assert state(breaker) == "open"
    clock.now = 10.0  # the cooldown still counts from 0, not from 5
    assert breaker.allow()


@pytest.mark.parametrize(
    ("failure", "expected"),
    [(None, "closed"), ("server_error", "open"), ("client_error", "half_open")],
)
def test_record_by_failure_class(failure: str | None, expected: str) -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now = 10.0
    assert breaker.allow()
    breaker.record(failure)
    assert state(breaker) == expected


def test_client_errors_do_not_trip() -> None:
    breaker = CircuitBreaker(replace(POLICY, failure_threshold=1), FakeClock())
    breaker.record("client_error")
    assert state(breaker) == "closed"
    breaker.record("rate_limited")
    assert state(breaker) == "open"


ops = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.floats(0.0, 12.0)),
        st.tuples(st.sampled_from(["allow", "success", "failure", "release"]), st.just(0.0)),
    ),
    max_size=80,
)


@given(
    threshold=st.integers(1, 4),
    probes=st.integers(1, 3),
    cooldown=st.floats(0.5, 20.0),
    script=ops,
)
def test_breaker_invariants(
    threshold: int, probes: int, cooldown: float, script: list[tuple[str, float]]
) -> None:
    policy = BreakerPolicy(
        failure_threshold=threshold, cooldown_s=cooldown, half_open_probes=probes
    )
    clock = FakeClock()
    breaker = CircuitBreaker(policy, clock)
    opened_at: float | None = None
    outstanding: list[float] = []  # admission times of unreported half-open probes
    for op, dt in script:
        before = state(breaker)
        if op == "tick":
            clock.now += dt
        elif op == "allow":
            admitted = breaker.allow()
            if opened_at is not None and clock.now < opened_at + cooldown:
                assert not admitted, "admitted while open, before the cooldown"
            if before == "half_open":
                live = [t for t in outstanding if clock.now - t < cooldown]  # others: lost
                assert admitted is (len(live) < probes), "probe limit not honoured"
                outstanding = [*live, clock.now] if admitted else live
                assert len(outstanding) <= probes, "more concurrent probes than allowed"
            elif before == "closed":
                assert admitted
        elif op == "release":
            breaker.release()
            outstanding = outstanding[1:] if state(breaker) == "half_open" else outstanding
        else:
            (breaker.record_success if op == "success" else breaker.record_failure)()
            if state(breaker) != "half_open":
                outstanding = []
        after = state(breaker)
        if after == "open" and before != "open":
            opened_at = clock.now
        if after == "closed":
            opened_at = None
        assert after in ("closed", "open", "half_open")


# --- breaker book -------------------------------------------------------------------------------


def test_book_keeps_state_for_same_id_and_policy() -> None:
    clock = FakeClock()
    book = BreakerBook(clock)
    breaker = book.get("t1", POLICY)
    for _ in range(3):
        breaker.record_failure()
    again = book.get("t1", BreakerPolicy(failure_threshold=3, cooldown_s=10.0, half_open_probes=2))
    assert again is breaker
    assert state(again) == "open"
    assert book.get("t2", POLICY) is not breaker
    assert len(book) == 2
    assert "t1" in book
    assert sorted(book) == ["t1", "t2"]


def test_book_resets_on_policy_change() -> None:
    book = BreakerBook(FakeClock())
    breaker = book.get("t1", POLICY)
    for _ in range(3):
        breaker.record_failure()
    fresh = book.get("t1", replace(POLICY, cooldown_s=60.0))
    assert fresh is not breaker
    assert state(fresh) == "closed"
    assert book.peek("t1") is fresh


def test_book_prune_drops_dead_targets() -> None:
    book = BreakerBook(FakeClock())
    for state_id in ("a", "b", "c"):
        book.get(state_id, POLICY)
    assert book.prune(["b", "zzz"]) == 2
    assert list(book) == ["b"]
    assert book.peek("a") is None
