"""Pytest fixtures for the loopback mock upstreams (plugin `tests.fixtures_upstreams`).

upstream        session-scoped MockUpstream, started once (state persists between tests)
upstream_reset  the same server, reset before the test (make it autouse where wanted)
make_upstream   factory for fresh, independently configured servers, stopped after the test

def test_retry(upstream_reset: MockUpstream) -> None:
    upstream_reset.script("openai", Status(503, headers={"retry-after": "1"}))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.upstreams import MockUpstream


@pytest.fixture(scope="session")
def upstream() -> Iterator[MockUpstream]:
    """One server for the whole session; use `upstream_reset` for a clean slate per test."""
    with MockUpstream() as server:
        yield server


@pytest.fixture
def upstream_reset(upstream: MockUpstream) -> MockUpstream:
    """The session server with requests, scripts, counters and settings reset."""
    upstream.reset()
    return upstream


@pytest.fixture
def make_upstream() -> Iterator[Callable[..., MockUpstream]]:
    """`make_upstream(required_key="k", gigachat_token_ttl_s=2.0)` -> a started server."""
    started: list[MockUpstream] = []

    def make(**settings: Any) -> MockUpstream:
        server = MockUpstream(**settings).start()
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        server.stop()
