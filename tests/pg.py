"""PostgreSQL for tests: each test gets a schema of its own, dropped afterwards.

    def test_something(pg_url: str) -> None:   # "postgresql://...?search_path=t_3f9a0c1b"
        ...

The server is `INTERLOCK_TEST_PG_URL` (default ``postgresql://postgres@127.0.0.1:5432/test``).
When it cannot be reached the test is skipped, and fails under ``CI=true``, where a missing
database must not pass for a green run. Registered in `tests/conftest.py`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator

import pytest

PG_URL = os.environ.get("INTERLOCK_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def with_search_path(url: str, schema: str) -> str:
    """`url` with ``search_path=schema`` (asyncpg sends unknown query parameters as server
    settings): ``with_search_path("postgresql://h/db", "s")`` -> ``"postgresql://h/db?search_path=s"``.
    """
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


def require_postgres(reason: str) -> None:
    """Skip the running test for want of PostgreSQL, or fail it under CI."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"PostgreSQL is required under CI and is not reachable: {reason}")
    pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {reason}")


async def _execute(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_server() -> str | None:
    """None when PostgreSQL answers, else why not (probed once per session)."""
    try:
        asyncio.run(_execute(PG_URL, "SELECT 1"))
    except Exception as exc:  # NOTE: any failure to reach it: missing driver, refused, auth
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture
def pg_url(pg_server: str | None) -> Iterator[str]:
    """A URL whose search_path is a fresh schema ``t_<random>``, dropped after the test."""
    if pg_server is not None:
        require_postgres(pg_server)
    schema = f"t_{secrets.token_hex(4)}"
    asyncio.run(_execute(PG_URL, f"CREATE SCHEMA {schema}"))
    try:
        yield with_search_path(PG_URL, schema)
    finally:
        asyncio.run(_execute(PG_URL, f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
