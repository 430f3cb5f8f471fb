"""Connections and schema migrations shared by every persistent concern (ledger, limits, keys).

A concern names itself (`component`) and lists its schema as ordered SQL steps; step ``n`` (from
1) is applied once per database and recorded in ``schema_migrations``::

    STEPS = ("CREATE TABLE t (a TEXT)", "CREATE INDEX t_a ON t (a)")
    conn = connect_sqlite("interlock.db")
    migrate_sqlite(conn, "ledger", STEPS)        # -> [1, 2]; run again -> []

Steps are append-only: a change to the schema is a new step, never an edit of an old one. Each
step runs in its own transaction, under a lock, so two processes starting at once apply it once.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any

SQLITE_BUSY_TIMEOUT_MS = 10_000

_CREATE_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (component, version)
)"""

# NOTE: one lock for every component and schema: migrations are rare and short, and one key also
# covers the CREATE TABLE of schema_migrations itself, which PostgreSQL does not make safe for
# concurrent sessions even with IF NOT EXISTS.
_PG_MIGRATION_LOCK = 0x1E7E_10C4


def connect_sqlite(path: str, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit: ``BEGIN IMMEDIATE``), with
    WAL, a 10 s busy timeout and ``synchronous=NORMAL``, so several processes can share the file.
    """
    conn = sqlite3.connect(
        path,
        timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=check_same_thread,
    )
    try:
        _enable_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection) -> None:
    # NOTE: SQLite answers SQLITE_BUSY at once, without its busy handler, when another
    # connection is switching the same new file to WAL: wait here as the busy timeout would.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def migrate_sqlite(conn: sqlite3.Connection, component: str, steps: Sequence[str]) -> list[int]:
    """Apply the steps of `component` not yet recorded; return the versions applied now.

    `conn` must be in autocommit mode (as `connect_sqlite` opens it). A step may hold several
    statements."""
    conn.execute(_CREATE_MIGRATIONS)
    applied: list[int] = []
    for version, step in enumerate(steps, start=1):
        with sqlite_transaction(conn):
            if _sqlite_has(conn, component, version):
                continue
            for statement in split_sqlite_script(step):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (component, version) VALUES (?, ?)",
                (component, version),
            )
        applied.append(version)
    return applied


async def migrate_postgres(conn: Any, component: str, steps: Sequence[str]) -> list[int]:
    """Apply the steps of `component` not yet recorded on the asyncpg connection `conn` (in the
    first schema of its ``search_path``); return the versions applied now."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _PG_MIGRATION_LOCK)
        await conn.execute(_CREATE_MIGRATIONS)
    applied: list[int] = []
    for version, step in enumerate(steps, start=1):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PG_MIGRATION_LOCK)
            done = await conn.fetchval(
                "SELECT 1 FROM schema_migrations WHERE component = $1 AND version = $2",
                component,
                version,
            )
            if done:
                continue
            await conn.execute(step)  # NOTE: no arguments: the simple protocol, several statements
            await conn.execute(
                "INSERT INTO schema_migrations (component, version) VALUES ($1, $2)",
                component,
                version,
            )
        applied.append(version)
    return applied


@contextlib.contextmanager
def sqlite_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` (the write lock up front, waiting up to the busy timeout) ... COMMIT,
    or ROLLBACK when the block raises. For connections in autocommit mode."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def split_sqlite_script(script: str) -> Iterator[str]:
    """The statements of `script`, one at a time (``executescript`` would commit first).

    ``split_sqlite_script("CREATE TABLE t (a); INSERT INTO t VALUES (';')")``
    -> ``"CREATE TABLE t (a);"``, ``"INSERT INTO t VALUES (';');"``"""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                yield pending.strip()
            pending = ""
    if pending.strip(" \t\r\n;"):
        yield pending.strip()  # incomplete (an open quote): let SQLite say what is wrong


def _sqlite_has(conn: sqlite3.Connection, component: str, version: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM schema_migrations WHERE component = ? AND version = ?",
        (component, version),
    ).fetchone()
    return row is not None


class PostgresPool:
    """An asyncpg pool (1-4 connections) with `component`'s migrations applied when it opens.
    The url may carry server settings as query parameters (``?search_path=NAME``). Connecting,
    or waiting for a pooled connection, gives up after `connect_timeout_s` and a statement after
    `command_timeout_s`, so an unreachable server makes calls raise, never hang."""

    def __init__(
        self,
        url: str,
        component: str,
        steps: Sequence[str],
        *,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float = 60.0,
    ) -> None:
        self.url = url
        self.component = component
        self.steps = steps
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self._pool: Any = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        import asyncpg  # NOTE: the driver only for those who use it (start-up time)

        pool = await asyncpg.create_pool(
            self.url,
            min_size=1,
            max_size=4,
            timeout=self.connect_timeout_s,
            command_timeout=self.command_timeout_s,
        )
        try:
            async with pool.acquire(timeout=self.connect_timeout_s) as conn:
                await migrate_postgres(conn, self.component, self.steps)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def acquire(self) -> Any:
        """``async with pool.acquire() as conn`` (raises when the pool is not open)."""
        if self._pool is None:
            raise RuntimeError(f"the postgres {self.component} store is not open")
        return self._pool.acquire(timeout=self.connect_timeout_s)
