"""What the listener logs about a connection it had to cancel at the drain deadline is redacted
with the live snapshot's redactor: an exception's text can quote a secret."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest
from hypercorn.config import Config as HypercornConfig

from compiler.table import ServerSettings
from runtime.listener import Listener
from runtime.redaction import Redactor

SECRET = "corp-upstream-key-0042"


async def _stubborn() -> None:
    """A connection that, cancelled, fails with an error quoting a secret."""
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        raise RuntimeError(f"write failed for key {SECRET}") from None


def test_a_connection_error_at_the_drain_deadline_is_logged_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listener = Listener(
        cast("Any", None),
        HypercornConfig(),
        [],
        settings=ServerSettings,
        end_requests=lambda: None,
        redactor=lambda: Redactor([SECRET]),
    )

    async def drain() -> None:
        task = asyncio.create_task(_stubborn())
        listener.connections.add(task)
        await asyncio.sleep(0)
        await listener._drain(asyncio.get_running_loop().time())

    with caplog.at_level(logging.WARNING, logger="interlock.server"):
        asyncio.run(drain())
    logged = [r.getMessage() for r in caplog.records if "connection ended" in r.getMessage()]
    assert len(logged) == 1, caplog.records
    assert "write failed for key ***" in logged[0]
    assert SECRET not in caplog.text
