"""The access log: one JSON (or text) line per request, buffered and written off the hot path.

`record` only appends to a list; a background task writes the buffer every 200 ms (and on
shutdown), so no request waits on log I/O. Every line, success or failure, says who served the
request (route, model asked for, upstream, upstream model, attempts), its failure class and the
config version; never a key::

    {"ts": 1732345678.123, "request_id": "…", "api": "openai.chat", "status": 502,
     "route": "plan-stage", "model": "gpt-4o", "upstream": "openai", "upstream_model": "gpt-4o",
     "attempts": 3, "cache": null, "key_id": "ci", "error": "server_error", "ms": 12.3,
     "version": "…"}

With ``log_headers`` / ``log_bodies`` the line also carries the headers and bodies of the
request's `Exchange`, masked (`runtime.exchange`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from runtime.exchange import Exchange

if TYPE_CHECKING:
    from compiler.table import RouteTable
    from runtime.pipeline import Outcome
    from runtime.request import RequestContext
    from runtime.snapshot import Snapshot

_encode = msgspec.json.Encoder().encode
_FLUSH_EVERY_S = 0.2
LOG_LEVEL_ENV = "INTERLOCK_LOG_LEVEL"
LOG_LEVELS = ("debug", "info", "warning", "error")
LIFECYCLE_LOGGER = "interlock.lifecycle"


def configure_server_logging(level: str | None = None) -> None:
    """Write the server's own lines (the ``interlock`` loggers: warnings, errors, tracebacks) at
    `level` and above to stderr as ``interlock: WARNING …``; the access log is separate. The
    level comes from `LOG_LEVEL_ENV` when not given (``interlock serve --log-level`` sets it,
    so that spawned workers share it); default ``warning``."""
    name = (level or os.environ.get(LOG_LEVEL_ENV) or "warning").lower()
    logger = logging.getLogger("interlock")
    logger.setLevel(name.upper() if name in LOG_LEVELS else "WARNING")
    if not any(isinstance(h, _ServerLines) for h in logger.handlers):
        handler = _ServerLines(sys.stderr)
        handler.setFormatter(logging.Formatter("interlock: %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # NOTE: once, not again through the root logger
    # NOTE: lifecycle lines are INFO yet shown at the default `warning`; only error/critical
    # quiet them, so that existing scripts reading "reload ... ok" keep working.
    lifecycle_log().setLevel(logging.INFO if logger.level <= logging.WARNING else logger.level)


class _ServerLines(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure_server_logging` installs (found again by its type)."""


def lifecycle_log() -> logging.Logger:
    """The logger of the server's lifecycle lines (``interlock: serving …``, ``interlock: reload
    (watch) ok: …``), written as they are to the current stderr: ok and startup lines at INFO,
    a rejected reload at ERROR. They show at the default level and below ``--log-level error``;
    ``--log-level error`` keeps only the rejections."""
    logger = logging.getLogger(LIFECYCLE_LOGGER)
    if not any(isinstance(h, _LifecycleLines) for h in logger.handlers):
        handler = _LifecycleLines()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    return logger


class _LifecycleLines(logging.Handler):
    """Writes to `sys.stderr` as it is at each line (pytest's capture replaces it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # NOTE: logging must never raise into the server
            self.handleError(record)


class AccessLog:
    def __init__(self) -> None:
        self._lines: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._destination = "stderr"  # stderr | stdout | a file path (appended to)
        self._table: RouteTable | None = None  # the table `_exchanges` was computed for
        self._exchanges = False

    def open_exchange(
        self, snap: Snapshot, api: str, headers: Mapping[str, str]
    ) -> Exchange | None:
        """An `Exchange` for one request when `snap` logs headers or bodies anywhere, else None.
        PERF: one identity check per request when nothing is logged."""
        table = snap.table
        if table is not self._table:
            self._table, self._exchanges = table, _logs_exchanges(table)
        if not self._exchanges:
            return None
        settings = table.observability
        return Exchange(
            api,
            headers,
            bodies=settings.log_bodies,
            headers=settings.log_headers,
            max_bytes=settings.log_body_max_bytes,
        )

    def record(
        self,
        snap: Snapshot,
        api: str,
        request_id: str,
        status: int,
        started: float,
        *,
        ctx: RequestContext | None,
        outcome: Outcome | None,
        error: str | None,
        exchange: Exchange | None = None,
    ) -> None:
        settings = snap.table.observability
        if not settings.access_log:
            return
        if settings.log_destination != self._destination:
            self.flush()  # NOTE: lines go where the table they were logged under says
            self._destination = settings.log_destination
        fields: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "request_id": request_id,
            "api": api,
            "status": status,
            **_attribution(ctx, outcome),
            "error": error or (ctx.stream_error if ctx is not None else None),
            "ms": round((time.perf_counter() - started) * 1000, 3),
            "version": snap.version,
        }
        if exchange is not None:
            client_body = ctx.raw if ctx is not None else None
            meter = ctx.trace.meter if ctx is not None and ctx.trace is not None else None
            fields.update(exchange.fields(snap.redactor, client_body, meter))
        line = _encode(fields) if settings.log_format == "json" else _text_line(fields)
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


def _logs_exchanges(table: RouteTable) -> bool:
    settings = table.observability
    return settings.access_log and (
        settings.log_headers
        or settings.log_bodies
        or any(route.action.log_bodies for route in table.routes)
    )


def _attribution(ctx: RequestContext | None, outcome: Outcome | None) -> dict[str, Any]:
    """Who served the request, from what the pipeline learned before it ended (or failed); a
    request refused before its body was read (401, 413, 415) has only nulls here."""
    if ctx is None:
        return dict.fromkeys(_ATTRIBUTION) | {"attempts": 0}
    key = ctx.api_key
    return {
        "route": ctx.route_name,
        "model": ctx.requested,
        "upstream": ctx.upstream,
        "upstream_model": ctx.upstream_model,
        "attempts": ctx.attempts,
        "cache": outcome.cache if outcome is not None else None,
        "key_id": key.id if key is not None else None,
    }


_ATTRIBUTION = ("route", "model", "upstream", "upstream_model", "attempts", "cache", "key_id")


def _text_line(fields: dict[str, Any]) -> bytes:
    """``rid api status route->upstream/upstream_model attempts=N error=E 12.3ms vVERSION``,
    then any headers and bodies as ``name=<JSON>``."""
    where = (
        f"{fields['route'] or '-'}->{fields['upstream'] or '-'}/{fields['upstream_model'] or '-'}"
    )
    parts = [
        f"{fields['request_id']} {fields['api']} {fields['status']} {where}",
        f"model={fields['model'] or '-'} attempts={fields['attempts']}",
        f"error={fields['error'] or '-'} {fields['ms']}ms v{fields['version']}",
    ]
    parts += [f"{n}={_encode(fields[n]).decode()}" for n in _EXCHANGE_FIELDS if n in fields]
    return " ".join(parts).encode()


_EXCHANGE_FIELDS = (
    "request_headers",
    "upstream_headers",
    "response_headers",
    "request_body",
    "response_body",
)
