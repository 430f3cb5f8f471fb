"""The `KeyStore` backends: SQLite (a file the processes of one host share) and PostgreSQL (any
number of processes and hosts). Both run the same statements (`keystore.SqlKeyStore`) on the
same tables; only connections, transactions and placeholders differ.

    store = open_key_store("sqlite", path="interlock.db")   # or ("postgres", url=...)
    await store.open()
    await store.changes(0)      # -> (version, [StoredKey, ...])
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from runtime.state.keystore import (
    COMPONENT,
    POSTGRES_STEPS,
    SQLITE_STEPS,
    KeyStore,
    SqlKeyStore,
    Tx,
)
from runtime.state.stores import PostgresPool, connect_sqlite, migrate_sqlite

_T = TypeVar("_T")


def open_key_store(kind: str, *, path: str | None = None, url: str | None = None) -> KeyStore:
    """The store of `kind` (``sqlite`` with a `path`, ``postgres`` with a `url`), not opened yet.

    ``open_key_store("sqlite", path="keys.db")`` -> ``SqliteKeyStore("keys.db")``"""
    if kind == "sqlite":
        if not path:
            raise ValueError("a sqlite key store needs a path")
        return SqliteKeyStore(path)
    if kind in ("postgres", "postgresql"):
        if not url:
            raise ValueError("a postgres key store needs a url")
        return PostgresKeyStore(url)
    raise ValueError(f"unknown key store kind {kind!r} (expected sqlite or postgres)")


class SqliteKeyStore(SqlKeyStore):
    """Keys in a SQLite file (WAL). The connection lives on one thread of its own, so no call
    blocks the event loop; an asyncio lock gives each transaction the connection to itself."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self._conn is not None:
            return
        executor = ThreadPoolExecutor(1, thread_name_prefix="interlock-keys-sqlite")
        try:
            loop = asyncio.get_running_loop()
            self._conn = await loop.run_in_executor(executor, self._connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    async def close(self) -> None:
        conn, executor = self._conn, self._executor
        self._conn = self._executor = None
        if conn is not None and executor is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
            finally:
                executor.shutdown(wait=False)

    def _connect(self) -> sqlite3.Connection:
        conn = connect_sqlite(self.path)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            migrate_sqlite(conn, COMPONENT, SQLITE_STEPS)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _call(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        conn, executor = self._conn, self._executor
        if conn is None or executor is None:
            raise RuntimeError("the sqlite key store is not open")
        return await asyncio.get_running_loop().run_in_executor(executor, work, conn)

    @contextlib.asynccontextmanager
    async def _transaction(self, begin: str) -> AsyncIterator[Tx]:
        async with self._lock:
            await self._call(lambda conn: conn.execute(begin))
            try:
                yield _SqliteTx(self._call)
            except BaseException:
                await self._call(_rollback)
                raise
            await self._call(lambda conn: conn.execute("COMMIT"))

    def _write(self) -> contextlib.AbstractAsyncContextManager[Tx]:
        return self._transaction("BEGIN IMMEDIATE")  # NOTE: the write lock up front

    def _read(self, snapshot: bool = True) -> contextlib.AbstractAsyncContextManager[Tx]:
        return self._transaction("BEGIN")  # NOTE: WAL: a reader sees one committed state


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class _SqliteTx:
    __slots__ = ("_call",)

    def __init__(self, call: Callable[[Callable[[sqlite3.Connection], Any]], Any]) -> None:
        self._call = call

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = await self._call(lambda c: c.execute(sql, args).fetchall())
        return rows

    async def execute(self, sql: str, *args: Any) -> int:
        count: int = await self._call(lambda c: c.execute(sql, args).rowcount)
        return count

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._call(lambda c: c.executemany(sql, rows))


class PostgresKeyStore(SqlKeyStore):
    """Keys in PostgreSQL through an asyncpg pool (1-4 connections); the url may name a schema
    as ``?search_path=NAME``. Connecting gives up after `connect_timeout_s`, a statement after
    `command_timeout_s`, so an unreachable server makes calls raise, never hang."""

    def __init__(
        self, url: str, *, connect_timeout_s: float = 10.0, command_timeout_s: float = 30.0
    ) -> None:
        self._pg = PostgresPool(
            url,
            COMPONENT,
            POSTGRES_STEPS,
            connect_timeout_s=connect_timeout_s,
            command_timeout_s=command_timeout_s,
        )
        self._acquire = self._pg.acquire

    async def open(self) -> None:
        await self._pg.open()

    async def close(self) -> None:
        await self._pg.close()

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[Tx]:
        async with self._acquire() as conn, conn.transaction():
            yield _PgTx(conn)

    @contextlib.asynccontextmanager
    async def _read(self, snapshot: bool = True) -> AsyncIterator[Tx]:
        async with self._acquire() as conn:
            if not snapshot:
                yield _PgTx(conn)
                return
            # NOTE: one snapshot for the version and the rows read with it
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                yield _PgTx(conn)


_MARK = re.compile(r"\?")


@functools.lru_cache(maxsize=256)
def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$n``: ``numbered("a = ? AND b = ?")`` ->
    ``"a = $1 AND b = $2"`` (the statements hold no other question mark)."""
    counter = iter(range(1, sql.count("?") + 1))
    return _MARK.sub(lambda _: f"${next(counter)}", sql)


class _PgTx:
    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = await self._conn.fetch(numbered(sql), *args)
        return rows

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self._conn.execute(numbered(sql), *args)
        tail = status.rsplit(" ", 1)[-1]  # "UPDATE 3"
        return int(tail) if tail.isdigit() else 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(numbered(sql), rows)
