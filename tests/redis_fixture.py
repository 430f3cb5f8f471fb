"""Redis for tests: each test gets a key prefix of its own, whose keys are deleted afterwards.

    def test_something(redis_prefix: str) -> None:   # "interlock-test:3f9a0c1b:"
        limiter = RedisLimiter(REDIS_URL, redis_prefix)

The server is `INTERLOCK_TEST_REDIS_URL` (default ``redis://127.0.0.1:6379/0``). When it cannot
be reached the test is skipped, and fails under ``CI=true``, where a missing Redis must not pass
for a green run. Registered in `tests/conftest.py`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

REDIS_URL = os.environ.get("INTERLOCK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_redis(reason: str | None = None) -> None:
    """Skip the running test unless Redis answers (or fail it under CI). `reason`: why it does
    not, when already known; else Redis is asked now."""
    if reason is None:
        reason = redis_unreachable()
        if reason is None:
            return
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"Redis is required under CI and is not reachable: {reason}")
    pytest.skip(f"Redis not reachable at {REDIS_URL}: {reason}")


def redis_unreachable() -> str | None:
    """None when Redis answers a PING within a second, else why not."""
    try:
        import redis

        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1) as client:
            client.ping()
    except Exception as exc:  # NOTE: any failure to reach it: missing driver, refused, auth
        return f"{type(exc).__name__}: {exc}"
    return None


def delete_prefixed(prefix: str) -> int:
    """Delete every key starting with `prefix` (no glob characters in it); return how many."""
    import redis

    with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=5) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        return int(client.delete(*keys)) if keys else 0


@pytest.fixture(scope="session")
def redis_server() -> str | None:
    """None when Redis answers, else why not (probed once per session)."""
    return redis_unreachable()


@pytest.fixture
def redis_prefix(redis_server: str | None) -> Iterator[str]:
    """A fresh key prefix ``interlock-test:<random>:``; its keys are deleted after the test."""
    if redis_server is not None:
        require_redis(redis_server)
    prefix = f"interlock-test:{secrets.token_hex(4)}:"
    try:
        yield prefix
    finally:
        delete_prefixed(prefix)
