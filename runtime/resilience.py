"""Retry timing, failure classes and circuit breakers: pure building blocks the pipeline calls.

Nothing here performs I/O or sleeps; every function returns a value the caller acts on, and every
clock and random source is injected, so all of it is table-testable.

Failure classes (``FAILURE_CLASSES``, the names ``fallback.on`` uses)::

    server_error   5xx                          rate_limited   429
    client_error   any other 4xx                timeout        no answer in time
    connect        no connection was made       circuit_open   the breaker refused the attempt
    bad_response   the reply broke or made no sense (reset mid-read, HTTP protocol error,
                   undecodable body, malformed JSON)

``retry.on_errors`` speaks in transport terms; they map onto classes as follows:

    connect  -> connect        timeout  -> timeout
    read     -> bad_response   protocol -> bad_response

``read`` and ``protocol`` both enable retrying ``bad_response``: once an error is classified they
can no longer be told apart, and a reply that broke while being read is as worth another try as
one that broke the protocol. A connect *timeout* is ``connect``, not ``timeout``: nothing was sent,
so retrying it is always safe. ``circuit_open`` is never retried on the same target (its breaker
would refuse again); the caller moves on to the next target.

Example::

    >>> classify_status(503), classify_status(429), classify_status(404), classify_status(200)
    ('server_error', 'rate_limited', 'client_error', None)
    >>> should_retry(RetryPolicy(), "timeout", None)
    True
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final, Literal

import httpx

from compiler.table import BreakerPolicy, RetryPolicy

__all__ = [
    "BAD_RESPONSE",
    "BREAKER_FAILURES",
    "CIRCUIT_OPEN",
    "CLIENT_ERROR",
    "CONNECT",
    "FAILURE_CLASSES",
    "RATE_LIMITED",
    "SERVER_ERROR",
    "TIMEOUT",
    "BreakerBook",
    "BreakerState",
    "CircuitBreaker",
    "Clock",
    "UpstreamStats",
    "UpstreamStatsBook",
    "backoff_delay",
    "classify_status",
    "next_delay",
    "retry_after_seconds",
    "should_retry",
]

SERVER_ERROR: Final = "server_error"
RATE_LIMITED: Final = "rate_limited"
TIMEOUT: Final = "timeout"
CONNECT: Final = "connect"
CIRCUIT_OPEN: Final = "circuit_open"
BAD_RESPONSE: Final = "bad_response"
CLIENT_ERROR: Final = "client_error"
FAILURE_CLASSES: Final = frozenset(
    {SERVER_ERROR, RATE_LIMITED, TIMEOUT, CONNECT, CIRCUIT_OPEN, BAD_RESPONSE, CLIENT_ERROR}
)

# NOTE: what counts against a breaker. A client_error is the request's fault and says the upstream
# is alive; circuit_open was never attempted. A 429 does count: an upstream that keeps throttling
# is better left alone for a cooldown while the other targets serve.
BREAKER_FAILURES: Final = frozenset({SERVER_ERROR, RATE_LIMITED, TIMEOUT, CONNECT, BAD_RESPONSE})

_ERROR_CLASSES: Final[Mapping[str, str]] = {
    "connect": CONNECT,
    "timeout": TIMEOUT,
    "read": BAD_RESPONSE,
    "protocol": BAD_RESPONSE,
}

Clock = Callable[[], float]
BreakerState = Literal["closed", "open", "half_open"]


# --- classification -----------------------------------------------------------------------------


def classify_status(status: int) -> str | None:
    """The failure class of an upstream HTTP status, None for a success (1xx-3xx).

    Example: ``classify_status(502)`` -> ``"server_error"``.
    """
    if status < 400:
        return None
    if status == 429:
        return RATE_LIMITED
    if status >= 500:
        return SERVER_ERROR
    return CLIENT_ERROR


def should_retry(policy: RetryPolicy, failure: str, status: int | None) -> bool:
    """Whether `policy` retries an attempt that failed with class `failure` (and `status`, if an
    HTTP answer came back): the status is in ``on_status``, or an ``on_errors`` name maps to the
    class (see the module docstring). Whether attempts remain is the caller's count.

    Example: ``should_retry(RetryPolicy(), "client_error", 404)`` -> ``False``.
    """
    if failure == CIRCUIT_OPEN:
        return False
    if status is not None and status in policy.on_status:
        return True
    return any(_ERROR_CLASSES.get(name) == failure for name in policy.on_errors)


# --- timing -------------------------------------------------------------------------------------


def backoff_delay(policy: RetryPolicy, retry_number: int, rng: random.Random) -> float:
    """Seconds to wait before retry `retry_number` (1 = the first retry, i.e. the second attempt).

    The cap is ``initial_ms * multiplier ** (retry_number - 1)`` bounded by ``max_ms``; with
    ``jitter: full`` the delay is uniform in ``[0, cap]``, otherwise exactly the cap.
    Example: initial 200, multiplier 2, max 5000, no jitter: retries 1, 2, 6 -> 0.2, 0.4, 5.0.
    """
    cap = _backoff_cap_ms(policy, retry_number) / 1000.0
    if policy.jitter == "full":
        return rng.uniform(0.0, cap)
    return cap


def _backoff_cap_ms(policy: RetryPolicy, retry_number: int) -> float:
    if retry_number < 1:
        raise ValueError(f"retry_number starts at 1, got {retry_number}")
    ceiling = max(policy.max_ms, 0.0)
    try:
        grown = policy.initial_ms * policy.multiplier ** (retry_number - 1)
    except OverflowError:
        return ceiling
    if math.isnan(grown):
        return ceiling
    return min(max(grown, 0.0), ceiling)


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait an upstream asked for, in seconds, or None when it asked for none we can read.

    ``retry-after-ms`` (OpenAI's, more precise) wins over ``retry-after``, which may be delta
    seconds or an HTTP-date (a date in the past means 0). `now` is the epoch time the date is
    measured from (default: the wall clock). Negative, non-finite or unparsable values are None.
    Example: ``{"retry-after": "7"}`` -> ``7.0``; ``{"retry-after-ms": "250"}`` -> ``0.25``.
    """
    millis = _header(headers, "retry-after-ms")
    if millis is not None:
        seconds = _parse_delta(millis)
        if seconds is not None:
            return seconds / 1000.0
    value = _header(headers, "retry-after")
    if value is None:
        return None
    seconds = _parse_delta(value)
    if seconds is not None:
        return seconds
    return _parse_http_date(value, time.time() if now is None else now)


def next_delay(
    policy: RetryPolicy,
    retry_number: int,
    headers: Mapping[str, str] | None,
    rng: random.Random,
) -> float | None:
    """Seconds to wait before retry `retry_number`, or None: do not wait, fail over instead.

    With ``respect_retry_after``, an upstream's Retry-After stretches the backoff (the larger of
    the two is used) unless it exceeds ``max_retry_after_s``, which yields None. `headers` is None
    when no HTTP answer came back. Example: backoff 0.2 s, ``retry-after: 3`` -> ``3.0``;
    ``retry-after: 120`` with the default ``max_retry_after_s: 30`` -> ``None``.
    """
    delay = backoff_delay(policy, retry_number, rng)
    if not policy.respect_retry_after or headers is None:
        return delay
    asked = retry_after_seconds(headers)
    if asked is None:
        return delay
    if asked > policy.max_retry_after_s:
        return None
    return max(delay, asked)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None or isinstance(headers, httpx.Headers):
        return value
    # NOTE: a plain dict may carry any casing; this runs only on failed attempts.
    for key, found in headers.items():
        if key.lower() == name:
            return found
    return None


def _parse_delta(value: str) -> float | None:
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _parse_http_date(value: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - now, 0.0)


# --- circuit breaker ----------------------------------------------------------------------------


class CircuitBreaker:
    """Consecutive-failure circuit breaker for one target: closed -> open -> half-open -> closed.

    Closed admits everything and opens after ``failure_threshold`` consecutive failures. Open
    refuses everything for ``cooldown_s``, then turns half-open, which admits at most
    ``half_open_probes`` attempts at a time: the first success closes the breaker, the first failure
    re-opens it with a fresh cooldown. After ``allow()`` returned True, the caller reports exactly
    one outcome: ``record_success()``, ``record_failure()`` or, for an attempt that says nothing
    about the upstream (cancelled, or a client_error), ``release()``; ``record(failure)`` picks one.
    A probe that reports nothing within ``cooldown_s`` is presumed lost and its slot is reclaimed,
    so a leaked probe can never wedge the breaker half-open.

    Outcomes reported while open (attempts admitted before it opened) are ignored.

    Example (threshold 2, cooldown 10 s, fake clock at 0)::

        b.record_failure(); b.record_failure()   # b.state == "open", b.allow() is False
        clock = 10.0                             # b.state == "half_open"
        b.allow(), b.allow()                     # (True, False): one probe
        b.record_success()                       # b.state == "closed"
    """

    __slots__ = ("_clock", "_failures", "_opened_at", "_probes", "_state", "policy")

    def __init__(self, policy: BreakerPolicy, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probes: list[float] = []  # admission times of the outstanding half-open probes

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose cooldown has elapsed reads ``half_open``."""
        self._refresh(self._clock())
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def reopens_in_s(self) -> float | None:
        """Seconds until an open breaker turns half-open; None unless it is open."""
        if self.state != "open":
            return None
        return max(self.policy.cooldown_s - (self._clock() - self._opened_at), 0.0)

    def allow(self) -> bool:
        """Whether an attempt may go to this target now (a True in half-open takes a probe slot)."""
        if self._state == "closed":
            return True
        now = self._clock()
        self._refresh(now)
        if self._state != "half_open":
            return False
        probes = self._probes
        while probes and now - probes[0] >= self.policy.cooldown_s:
            del probes[0]  # presumed lost
        if len(probes) >= self.policy.half_open_probes:
            return False
        probes.append(now)
        return True

    def record_success(self) -> None:
        if self._state == "closed":
            self._failures = 0
            return
        self._refresh(self._clock())
        if self._state == "half_open":
            self._close()

    def record_failure(self) -> None:
        now = self._clock()
        if self._state == "closed":
            self._failures += 1
            if self._failures >= self.policy.failure_threshold:
                self._open(now)
            return
        self._refresh(now)
        if self._state == "half_open":
            self._open(now)

    def release(self) -> None:
        """Give back an admission without a verdict (the attempt was cancelled or inconclusive)."""
        if self._state == "half_open" and self._probes:
            del self._probes[0]

    def record(self, failure: str | None) -> None:
        """Report an attempt's outcome by failure class (None: success); ``BREAKER_FAILURES``
        count as failures, any other class releases the admission without a verdict."""
        if failure is None:
            self.record_success()
        elif failure in BREAKER_FAILURES:
            self.record_failure()
        else:
            self.release()

    def _refresh(self, now: float) -> None:
        if self._state == "open" and now - self._opened_at >= self.policy.cooldown_s:
            self._state = "half_open"
            self._probes.clear()

    def _open(self, now: float) -> None:
        self._state = "open"
        self._opened_at = now
        self._probes.clear()

    def _close(self) -> None:
        self._state = "closed"
        self._failures = 0
        self._probes.clear()

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.state}, failures={self._failures}, policy={self.policy})"


class BreakerBook:
    """The gateway's breakers, keyed by target ``state_id``; lives across config reloads.

    ``get`` creates a breaker on first use and returns the same one for the same id and policy, so
    a reload that keeps a target keeps its breaker state; a changed policy gets a fresh breaker.
    ``prune`` drops the breakers of targets the new table no longer has.

    Example: ``book.get(t.state_id, t.upstream.breaker)`` is ``book.get(t.state_id, same_policy)``.
    """

    __slots__ = ("_breakers", "_clock")

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, state_id: str, policy: BreakerPolicy) -> CircuitBreaker:
        breaker = self._breakers.get(state_id)
        if breaker is None or breaker.policy != policy:
            breaker = CircuitBreaker(policy, self._clock)
            self._breakers[state_id] = breaker
        return breaker

    def peek(self, state_id: str) -> CircuitBreaker | None:
        """The breaker for `state_id` if one exists, without creating it."""
        return self._breakers.get(state_id)

    def prune(self, live_ids: Iterable[str]) -> int:
        """Drop every breaker whose id is not in `live_ids`; returns how many were dropped."""
        live = set(live_ids)
        dead = [state_id for state_id in self._breakers if state_id not in live]
        for state_id in dead:
            del self._breakers[state_id]
        return len(dead)

    def __contains__(self, state_id: object) -> bool:
        return state_id in self._breakers

    def __iter__(self) -> Iterator[str]:
        return iter(self._breakers)

    def __len__(self) -> int:
        return len(self._breakers)


# --- upstream status ----------------------------------------------------------------------------


class UpstreamStats:
    """What one upstream's recent attempts say about it, for ``/health`` and the metrics.

    ``error_rate`` is an exponentially weighted average of attempt outcomes (1 a failure, 0 a
    success) with weight `alpha`, so it follows roughly the last ``2 / alpha`` attempts;
    ``latency_s`` is the same kind of average of successful attempts' latencies (to the response
    headers). The last failure's class and message are kept as given (redact before showing).
    PERF: one object per upstream; an attempt costs a few float updates and no allocation.

    Example (alpha 0.5): success in 0.2 s, then a ``timeout`` -> ``error_rate == 0.5``,
    ``latency_s == 0.2``, ``last_error == ("timeout", message)``.
    """

    __slots__ = (
        "alpha",
        "attempts",
        "error_rate",
        "failures",
        "last_error_at",
        "last_error_class",
        "last_error_message",
        "last_success_at",
        "latency_s",
    )

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha = alpha
        self.attempts = 0
        self.failures = 0
        self.error_rate = 0.0
        self.latency_s: float | None = None
        self.last_success_at: float | None = None  # epoch seconds
        self.last_error_at: float | None = None
        self.last_error_class: str | None = None
        self.last_error_message: str | None = None

    @property
    def last_failed(self) -> bool:
        """Whether the most recent attempt failed."""
        return self.last_error_at is not None and (
            self.last_success_at is None or self.last_error_at >= self.last_success_at
        )

    def success(self, seconds: float, now: float) -> None:
        self.attempts += 1
        self.error_rate -= self.alpha * self.error_rate
        if seconds >= 0.0:
            latency = self.latency_s
            self.latency_s = (
                seconds if latency is None else latency + self.alpha * (seconds - latency)
            )
        self.last_success_at = now

    def failure(self, failure: str, message: str, now: float) -> None:
        self.attempts += 1
        self.failures += 1
        self.error_rate += self.alpha * (1.0 - self.error_rate)
        self.last_error_class = failure
        self.last_error_message = message
        self.last_error_at = now


class UpstreamStatsBook:
    """`UpstreamStats` by upstream ``state_id``; lives across reloads like `BreakerBook`."""

    __slots__ = ("_alpha", "_stats")

    def __init__(self, alpha: float = 0.1) -> None:
        self._alpha = alpha
        self._stats: dict[str, UpstreamStats] = {}

    def get(self, state_id: str) -> UpstreamStats:
        stats = self._stats.get(state_id)
        if stats is None:
            stats = self._stats[state_id] = UpstreamStats(self._alpha)
        return stats

    def peek(self, state_id: str) -> UpstreamStats | None:
        return self._stats.get(state_id)

    def prune(self, live_ids: Iterable[str]) -> int:
        """Forget upstreams not in `live_ids`; returns how many were forgotten."""
        live = set(live_ids)
        dead = [state_id for state_id in self._stats if state_id not in live]
        for state_id in dead:
            del self._stats[state_id]
        return len(dead)
