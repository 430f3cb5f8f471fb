"""The usage ledger: one `UsageRecord` per request, queued on the hot path and written in batches
by a background task to a `LedgerStore` (SQLite or PostgreSQL).

    ledger = Ledger(store)             # store: a LedgerStore from `open_ledger_store`
    await ledger.start()
    ledger.record(record)              # never blocks, never raises
    await ledger.close()               # drains the queue (at shutdown)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec

_LOG = logging.getLogger("interlock")

# The dimensions a report may group by, and the columns each row carries besides them.
GROUP_FIELDS = ("key", "project", "org", "model", "upstream", "day", "month")
TOTAL_FIELDS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost",
    "cache_hits",
    "cost_saved",
)


class UsageRecord(msgspec.Struct, frozen=True, gc=False):  # PERF: scalars only: no GC tracking
    """What the ledger keeps of one request. Never a key, never a prompt unless `log_prompts`.

    `id` is unique per record (made by the gateway), so a batch written twice after a store
    failure is stored once. `ts` is the end of the request (unix seconds, UTC); the record's
    calendar day is `day_of(ts)`. `input_tokens` counts every prompt token, cached ones
    included; `cached_tokens` is the part read from the provider's prompt cache. `cost` is in
    `currency` (None: the model has no pricing, cost 0). `error` is the failure class or error
    code of a request that did not succeed (None on success). A response cache hit costs 0 and
    carries the cost of the answer it replayed in `cost_saved`."""

    id: str
    ts: float
    request_id: str
    api: str
    status: int
    key_id: str | None = None
    org: str | None = None
    project: str | None = None
    route: str | None = None
    requested_model: str | None = None
    model: str | None = None
    upstream: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    currency: str | None = None
    estimated: bool = False
    latency_ms: float = 0.0
    ttfb_ms: float | None = None
    attempts: int = 0
    cache_hit: bool = False
    cost_saved: float = 0.0
    config_version: str = ""
    prompt: str | None = None
    completion: str | None = None


_EPOCH = dt.date(1970, 1, 1)


def day_of(ts: float) -> str:
    """The UTC calendar day of a unix time (a Unix day is exactly 86,400 s):
    ``day_of(0.0)`` -> ``"1970-01-01"``, ``day_of(-0.5)`` -> ``"1969-12-31"``."""
    return (_EPOCH + dt.timedelta(days=ts // 86400)).isoformat()


class LedgerStore(Protocol):
    """A place records are kept. Every backend passes `tests/test_ledger_stores.py`.

    - `open` connects and applies the schema migrations (idempotent; several processes may
      open the same store at once).
    - `write` stores a batch in one transaction, together with the daily aggregates (one row
      per day, key, project, org, model, upstream and currency). A record whose `id` is
      already stored is skipped, and counted in no aggregate, so writing a batch again after a
      failure (even one whose commit did succeed) never duplicates anything.
    - `report` answers from the daily aggregates, so it still answers after raw rows are
      pruned: one dict per group with the `group_by` fields (``key`` is the key id, ``day``
      ``YYYY-MM-DD``, ``month`` ``YYYY-MM``), ``currency``, and `TOTAL_FIELDS`; `since` and
      `until` are inclusive ``YYYY-MM-DD`` days. Rows are sorted by the group fields.
    - `prune` deletes raw records of days before `before_day` and returns how many.
    - `records` reads raw records back (for tests and audits), oldest first.
    """

    async def open(self) -> None: ...
    async def write(self, records: Sequence[UsageRecord]) -> None: ...
    async def report(
        self, *, since: str | None, until: str | None, group_by: Sequence[str]
    ) -> list[dict[str, Any]]: ...
    async def prune(self, before_day: str) -> int: ...
    async def records(self) -> list[UsageRecord]: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class Ledger:
    """A bounded queue of records and the background task that writes them in batches.

    `record` is all the hot path does: an append (or, when the queue is full, a count in
    `dropped` and a log line at most every 10 s). The writer wakes every `flush_s` or once a
    batch is ready (so under load it writes at most one partial batch per `flush_s`), writes up
    to `batch` records in one transaction, and on a store error keeps the batch and retries
    with backoff (0.2 s doubling to 30 s) while the queue holds the rest;
    the store skips ids it already has, so a retried batch is never counted twice. `close`
    drains everything, retrying for up to `close_timeout_s`, then closes the store. A second
    task prunes raw rows older than `retention_days` every hour.
    """

    def __init__(
        self,
        store: LedgerStore,
        *,
        retention_days: int = 90,
        capacity: int = 100_000,
        batch: int = 1000,
        flush_s: float = 0.2,
        on_write: Callable[[int, float], None] | None = None,
    ) -> None:
        self.store = store
        self.retention_days = retention_days
        self.capacity = capacity
        self.batch = batch
        self.flush_s = flush_s
        self.on_write = on_write  # (records, seconds) after each successful write
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self._queue: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._opened = False
        self._open_lock = asyncio.Lock()
        self._last_drop_log = 0.0

    @property
    def depth(self) -> int:
        return len(self._queue)

    def record(self, record: UsageRecord) -> None:
        queue = self._queue
        if len(queue) >= self.capacity:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log > 10:
                self._last_drop_log = now
                _LOG.error(
                    "usage ledger queue is full (%d records; store: %s); %d record(s) dropped",
                    self.capacity,
                    self.last_error or "slow",
                    self.dropped,
                )
            return
        queue.append(record)
        if len(queue) >= self.batch:
            self._wake.set()

    def start(self) -> None:
        """Start the writer and the retention task on the running loop."""
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._write_loop()), loop.create_task(self._prune())]

    async def close(self, timeout_s: float = 15.0) -> None:
        """Write what is queued (retrying a failing store until `timeout_s`), then close."""
        self._closing = True
        self._wake.set()
        for task in self._tasks[1:]:
            task.cancel()
        if self._tasks:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._tasks[0], timeout_s)
        elif self._queue:  # never started (no loop ran it): write in place
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain_once(), timeout_s)
        if self._queue:
            _LOG.error(
                "usage ledger: %d record(s) not written at shutdown (store: %s)",
                len(self._queue),
                self.last_error,
            )
        with contextlib.suppress(Exception):
            await self.store.close()

    async def report(
        self, *, since: str | None, until: str | None, group_by: Sequence[str]
    ) -> list[dict[str, Any]]:
        """The store's report (records still queued are not in it yet)."""
        await self._ensure_open()
        return await self.store.report(since=since, until=until, group_by=group_by)

    async def prune_now(self) -> int:
        """Delete raw rows older than the retention window; aggregates stay."""
        cutoff = time.time() - self.retention_days * 86400
        return await self.store.prune(day_of(cutoff))

    async def _drain_once(self) -> None:
        await self._ensure_open()
        while self._queue:
            await self._write_batch()

    async def _write_loop(self) -> None:
        delay = 0.2
        while True:
            if len(self._queue) < self.batch and not self._closing:
                # PERF: one write per `flush_s` under load, not one per write's duration: each
                # write is a hop to the store's thread, paid for by the event loop. A timer
                # sets the event: wait_for would build a task and two futures per flush.
                self._wake.clear()
                timer = asyncio.get_running_loop().call_later(self.flush_s, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()
            if not self._queue:
                if self._closing:
                    return
                continue
            try:
                await self._ensure_open()
                await self._write_batch()
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NOTE: any store failure: keep the records, retry
                self.write_errors += 1
                if self.last_error != _describe(exc):
                    _LOG.warning("usage ledger: store failed, retrying: %s", _describe(exc))
                self.last_error = _describe(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _ensure_open(self) -> None:
        async with self._open_lock:
            if not self._opened:
                await self.store.open()
                self._opened = True

    async def _write_batch(self) -> None:
        batch = [self._queue[i] for i in range(min(self.batch, len(self._queue)))]
        started = time.perf_counter()
        await self.store.write(batch)
        for _ in batch:  # NOTE: only now: a failed write leaves the batch queued
            self._queue.popleft()
        self.written += len(batch)
        if self.last_error is not None:
            _LOG.warning("usage ledger: store is back; %d record(s) queued", len(self._queue))
            self.last_error = None
        if self.on_write is not None:
            self.on_write(len(batch), time.perf_counter() - started)

    async def _prune(self) -> None:
        while True:
            try:
                await self._ensure_open()
                pruned = await self.prune_now()
                if pruned:
                    _LOG.info("usage ledger: pruned %d record(s) past retention", pruned)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _LOG.warning("usage ledger: retention failed: %s", _describe(exc))
            await asyncio.sleep(3600)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
