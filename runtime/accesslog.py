"""The access log: one JSON (or text) line per request, buffered and written off the hot path.

`record` only appends to a list; a background task writes the buffer every 200 ms (and on
shutdown), so no request waits on log I/O. Lines never contain keys, bodies or header values::

    {"ts": 1732345678.123, "request_id": "…", "api": "openai.chat", "status": 200,
     "route": "plan-stage", "upstream": "openai", "model": "gpt-4o", "ms": 12.3, "version": "…"}
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from runtime.pipeline import Outcome
    from runtime.snapshot import Snapshot

_encode = msgspec.json.Encoder().encode
_FLUSH_EVERY_S = 0.2


class AccessLog:
    def __init__(self) -> None:
        self._lines: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._destination = "stderr"  # stderr | stdout | a file path (appended to)

    def record(
        self,
        snap: Snapshot,
        api: str,
        request_id: str,
        status: int,
        outcome: Outcome | None,
        started: float,
    ) -> None:
        settings = snap.table.observability
        if not settings.access_log:
            return
        if settings.log_destination != self._destination:
            self.flush()  # NOTE: lines go where the table they were logged under says
            self._destination = settings.log_destination
        elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
        if settings.log_format == "json":
            line = _encode(
                {
                    "ts": round(time.time(), 3),
                    "request_id": request_id,
                    "api": api,
                    "status": status,
                    "route": outcome.route if outcome else None,
                    "upstream": outcome.upstream if outcome else None,
                    "model": outcome.model if outcome else None,
                    "ms": elapsed_ms,
                    "version": snap.version,
                }
            )
        else:
            where = f"{outcome.route}->{outcome.upstream}/{outcome.model}" if outcome else "-"
            line = f"{request_id} {api} {status} {where} {elapsed_ms}ms v{snap.version}".encode()
        self._lines.append(line)
        if self._task is None:
            with contextlib.suppress(RuntimeError):  # no running loop (tests calling directly)
                self._task = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(_FLUSH_EVERY_S)
        self._task = None
        self.flush()

    def close(self) -> None:
        """Write what is buffered and stop the pending flush (at shutdown)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        data = b"\n".join(self._lines) + b"\n"
        self._lines.clear()
        with contextlib.suppress(OSError):
            if self._destination in ("stderr", "stdout"):
                stream = sys.stderr if self._destination == "stderr" else sys.stdout
                os.write(stream.fileno(), data)
            else:
                with open(self._destination, "ab") as file:
                    file.write(data)
