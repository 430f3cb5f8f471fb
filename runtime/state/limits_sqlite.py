"""`Limiter` in a SQLite file: counters that the worker processes of one host share.

    limiter = SqliteLimiter("limits.db")       # opens (and migrates) the file on first use
    verdict = await limiter.admit("req-1", [Check("rate", "p:rpm:team-a", 20, 1, 60)], now)
    verdict.admitted, verdict.states[0].remaining -> True, 19.0

Tables (component ``limits`` of `migrate_sqlite`): ``limit_rates`` (one row per admitted entry:
key, request id, time, amount), ``limit_rate_sums`` (per rate key: the sum of its entries, so
`used` costs no scan, and when its newest entry leaves the window), ``limit_budgets`` (key, value,
expires_at) and ``limit_slots`` (key, request id, expires_at). Each `admit` and `settle` is
one ``BEGIN IMMEDIATE`` transaction: it takes the file's write lock before reading, so what it
reads cannot change before it writes, in this process or another, and admission is as atomic as
`MemoryLimiter`'s. So is the arithmetic, in its order (with fractional rate amounts the last bits
of `used` may differ: entries leaving the window are subtracted as one sum).

The connection lives on one thread of its own (as the ledger's does), so the event loop never
waits on the file; requests of one process queue on that thread, and processes on the lock (up
to the 10 s busy timeout, then the call raises). Expired rows of the keys a request reads are
deleted in its transaction; once a minute (by `now`) an admission also sweeps the keys no one
reads any more. Time is the callers' `now`: processes sharing the file share the host's clock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from runtime.state.limits import Check, CheckState, Settlement, Verdict
from runtime.state.stores import connect_sqlite, migrate_sqlite, sqlite_transaction

_T = TypeVar("_T")
COMPONENT = "limits"
SWEEP_EVERY_S = 60.0
# NOTE: an expired budget is kept this long, so that a late settlement lands in it (as in
# MemoryLimiter, which drops a counter only when it next reads it) rather than recreating it
LATE_SETTLEMENT_S = 3600.0

_STEPS = (
    """
    CREATE TABLE limit_rates (
        id INTEGER PRIMARY KEY, key TEXT NOT NULL, request_id TEXT NOT NULL, ts REAL NOT NULL,
        amount REAL NOT NULL
    );
    CREATE INDEX limit_rates_key_ts ON limit_rates (key, ts);
    CREATE INDEX limit_rates_key_request ON limit_rates (key, request_id);
    CREATE TABLE limit_rate_sums (
        key TEXT PRIMARY KEY, total REAL NOT NULL, expires_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX limit_rate_sums_expires ON limit_rate_sums (expires_at);
    CREATE TABLE limit_budgets (
        key TEXT PRIMARY KEY, value REAL NOT NULL, expires_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX limit_budgets_expires ON limit_budgets (expires_at);
    CREATE TABLE limit_slots (
        key TEXT NOT NULL, request_id TEXT NOT NULL, expires_at REAL NOT NULL,
        PRIMARY KEY (key, request_id)
    ) WITHOUT ROWID;
    CREATE INDEX limit_slots_expires ON limit_slots (expires_at);
    """,
)


class SqliteLimiter:
    """`Limiter` on the SQLite file at `path` (WAL, several processes may share it). Opens the
    file on first use; `close` closes it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            1, thread_name_prefix="interlock-limits-sqlite"
        )
        self._swept_at = float("-inf")

    async def admit(self, request_id: str, checks: Sequence[Check], now: float) -> Verdict:
        return await self._run(lambda conn: self._admit(conn, request_id, checks, now))

    async def settle(self, request_id: str, settlements: Sequence[Settlement], now: float) -> None:
        await self._run(lambda conn: _settle(conn, request_id, settlements, now))

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        finally:
            executor.shutdown(wait=False)  # NOTE: its one thread is idle by now

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        executor = self._executor
        if executor is None:
            raise RuntimeError("the sqlite limiter is closed")
        return await asyncio.get_running_loop().run_in_executor(
            executor, lambda: work(self._connection())
        )

    def _connection(self) -> sqlite3.Connection:
        # NOTE: only ever called on the executor's one thread, so it needs no lock
        if self._conn is None:
            conn = connect_sqlite(self.path)
            try:
                migrate_sqlite(conn, COMPONENT, _STEPS)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _admit(
        self, conn: sqlite3.Connection, request_id: str, checks: Sequence[Check], now: float
    ) -> Verdict:
        with sqlite_transaction(conn):
            if now - self._swept_at >= SWEEP_EVERY_S:
                _sweep(conn, now)
                self._swept_at = now
            states = tuple(_state(conn, check, now) for check in checks)
            for i, (check, state) in enumerate(zip(checks, states, strict=True)):
                if state.used + check.amount > check.limit:
                    return Verdict(False, states, i)
            for check in checks:
                _take(conn, request_id, check, now)
            return Verdict(True, tuple(_state(conn, check, now) for check in checks))


def _state(conn: sqlite3.Connection, check: Check, now: float) -> CheckState:
    """The check's state as `MemoryLimiter._state` sees it, deleting the key's expired rows."""
    key = check.key
    if check.kind == "rate":
        used = _rate_used(conn, check, now)
        return CheckState(check.limit, used, _rate_reset(conn, check, now, used))
    if check.kind == "budget":
        conn.execute("DELETE FROM limit_budgets WHERE key = ? AND expires_at <= ?", (key, now))
        value = _scalar(conn, "SELECT value FROM limit_budgets WHERE key = ?", key)
        return CheckState(check.limit, 0.0 if value is None else value, 0.0)
    conn.execute("DELETE FROM limit_slots WHERE key = ? AND expires_at <= ?", (key, now))
    count = _scalar(conn, "SELECT count(*) FROM limit_slots WHERE key = ?", key)
    return CheckState(check.limit, float(count), 0.0)


def _rate_used(conn: sqlite3.Connection, check: Check, now: float) -> float:
    """The key's sum after dropping the entries that left the window (0 once none is left)."""
    key, bound = check.key, now - check.window_s
    gone, count = conn.execute(
        "SELECT total(amount), count(*) FROM limit_rates WHERE key = ? AND ts <= ?", (key, bound)
    ).fetchone()
    if count:
        conn.execute("DELETE FROM limit_rates WHERE key = ? AND ts <= ?", (key, bound))
    if _scalar(conn, "SELECT 1 FROM limit_rates WHERE key = ? LIMIT 1", key) is None:
        conn.execute("DELETE FROM limit_rate_sums WHERE key = ?", (key,))
        return 0.0
    total: float = _scalar(conn, "SELECT total FROM limit_rate_sums WHERE key = ?", key)
    if count:
        total -= gone
        conn.execute("UPDATE limit_rate_sums SET total = ? WHERE key = ?", (total, key))
    return total


def _rate_reset(conn: sqlite3.Connection, check: Check, now: float, used: float) -> float:
    """Seconds until the oldest entries have freed room for `check.amount` (0: there is room)."""
    if used + check.amount <= check.limit:
        return 0.0
    rows = conn.execute(
        "SELECT ts, amount FROM limit_rates WHERE key = ? ORDER BY ts, id", (check.key,)
    )
    for ts, amount in rows:
        used -= amount
        if used + check.amount <= check.limit:
            return float(max(ts + check.window_s - now, 0.0))
    return check.window_s


def _take(conn: sqlite3.Connection, request_id: str, check: Check, now: float) -> None:
    if check.kind == "rate":
        conn.execute(
            "INSERT INTO limit_rates (key, request_id, ts, amount) VALUES (?, ?, ?, ?)",
            (check.key, request_id, now, check.amount),
        )
        conn.execute(
            "INSERT INTO limit_rate_sums (key, total, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET total = total + excluded.total,"
            " expires_at = max(expires_at, excluded.expires_at)",
            (check.key, check.amount, now + check.window_s),
        )
    elif check.kind == "budget":
        _add_to_budget(conn, check, now, check.amount, 0.0)
    else:
        conn.execute(
            "INSERT OR REPLACE INTO limit_slots (key, request_id, expires_at) VALUES (?, ?, ?)",
            (check.key, request_id, now + check.window_s),
        )


def _settle(
    conn: sqlite3.Connection, request_id: str, settlements: Sequence[Settlement], now: float
) -> None:
    with sqlite_transaction(conn):
        for settlement in settlements:
            check = settlement.check
            if check.kind == "rate":
                _settle_rate(conn, request_id, settlement)
            elif check.kind == "budget":
                _add_to_budget(conn, check, now, settlement.actual, check.amount)
            else:
                conn.execute(
                    "DELETE FROM limit_slots WHERE key = ? AND request_id = ?",
                    (check.key, request_id),
                )


def _settle_rate(conn: sqlite3.Connection, request_id: str, settlement: Settlement) -> None:
    """The request's first entry under the key (as MemoryLimiter finds it) takes the actual."""
    key = settlement.check.key
    row = conn.execute(
        "SELECT id, amount FROM limit_rates WHERE key = ? AND request_id = ? ORDER BY id LIMIT 1",
        (key, request_id),
    ).fetchone()
    if row is None:
        return
    entry, reserved = row
    conn.execute("UPDATE limit_rates SET amount = ? WHERE id = ?", (settlement.actual, entry))
    conn.execute(
        "UPDATE limit_rate_sums SET total = total + ? WHERE key = ?",
        (settlement.actual - reserved, key),
    )


def _add_to_budget(
    conn: sqlite3.Connection, check: Check, now: float, plus: float, minus: float
) -> None:
    """value + plus - minus; a missing counter starts at 0 and expires a window from now."""
    row = conn.execute(
        "SELECT value, expires_at FROM limit_budgets WHERE key = ?", (check.key,)
    ).fetchone()
    value, expires_at = (0.0, now + check.window_s) if row is None else row
    conn.execute(
        "INSERT OR REPLACE INTO limit_budgets (key, value, expires_at) VALUES (?, ?, ?)",
        (check.key, value + plus - minus, expires_at),
    )


def _scalar(conn: sqlite3.Connection, sql: str, *args: object) -> Any:
    """The first column of the first row, None when there is no row."""
    row = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


def _sweep(conn: sqlite3.Connection, now: float) -> None:
    """Delete what expired under keys no request reads any more (yesterday's budgets, a client
    address never seen again): the rate keys whose newest entry left the window over a second
    ago (the exact bound is the key's), budgets `LATE_SETTLEMENT_S` after they expired."""
    expired = (now - 1.0,)
    conn.execute(
        "DELETE FROM limit_rates WHERE key IN"
        " (SELECT key FROM limit_rate_sums WHERE expires_at < ?)",
        expired,
    )
    conn.execute("DELETE FROM limit_rate_sums WHERE expires_at < ?", expired)
    conn.execute("DELETE FROM limit_budgets WHERE expires_at <= ?", (now - LATE_SETTLEMENT_S,))
    conn.execute("DELETE FROM limit_slots WHERE expires_at <= ?", (now,))
