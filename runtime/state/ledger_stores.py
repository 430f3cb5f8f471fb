"""The `LedgerStore` backends: SQLite (a file several processes may share) and PostgreSQL.

    store = open_ledger_store("sqlite", path="usage.db")    # or ("postgres", url=...)
    await store.open()                                      # connects, applies the migrations
    await store.write(records)
    await store.report(since="2026-12-01", until=None, group_by=["day", "model"])
    -> [{"day": "2026-12-05", "model": "gpt-4o", "currency": "USD", "requests": 12, ...}]

Both keep the same two tables: ``usage_records`` (one column per `UsageRecord` field, plus its
``day``) and ``usage_daily`` (the totals per day, key, project, org, model, upstream and currency,
with '' for a missing key column so the primary key stays unique). A write is one transaction:
the raw rows whose id is new, then one upsert per daily group of exactly those rows.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from operator import attrgetter
from typing import Any, TypeVar, cast

import msgspec

from runtime.state.ledger import GROUP_FIELDS, TOTAL_FIELDS, LedgerStore, UsageRecord, day_of
from runtime.state.stores import (
    PostgresPool,
    connect_sqlite,
    migrate_sqlite,
    sqlite_transaction,
)

_T = TypeVar("_T")
COMPONENT = "ledger"
_FIELDS: tuple[str, ...] = UsageRecord.__struct_fields__
_RECORD_COLUMNS = (*_FIELDS, "day")
_BOOLS = _STREAM, _ESTIMATED, _CACHE_HIT = tuple(
    _FIELDS.index(name) for name in ("stream", "estimated", "cache_hit")
)
_MONEY = frozenset({"cost", "cost_saved"})  # the totals that are amounts, not counts
_DAILY_KEY = ("day", "key_id", "project", "org", "model", "upstream", "currency")
_GROUP_EXPRESSIONS = {name: name for name in GROUP_FIELDS} | {
    "key": "key_id",
    "month": "substr(day, 1, 7)",
}

_SQLITE_STEPS = (
    """
    CREATE TABLE usage_records (
        id TEXT PRIMARY KEY, ts REAL NOT NULL, request_id TEXT NOT NULL, api TEXT NOT NULL,
        status INTEGER NOT NULL, key_id TEXT, org TEXT, project TEXT, route TEXT,
        requested_model TEXT, model TEXT, upstream TEXT, upstream_model TEXT,
        stream INTEGER NOT NULL, error TEXT, input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, cost REAL NOT NULL,
        currency TEXT, estimated INTEGER NOT NULL, latency_ms REAL NOT NULL, ttfb_ms REAL,
        attempts INTEGER NOT NULL, cache_hit INTEGER NOT NULL, config_version TEXT NOT NULL,
        prompt TEXT, completion TEXT, day TEXT NOT NULL
    );
    CREATE INDEX usage_records_day ON usage_records (day);
    CREATE TABLE usage_daily (
        day TEXT NOT NULL, key_id TEXT NOT NULL, project TEXT NOT NULL, org TEXT NOT NULL,
        model TEXT NOT NULL, upstream TEXT NOT NULL, currency TEXT NOT NULL,
        requests INTEGER NOT NULL, errors INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, cost REAL NOT NULL,
        cache_hits INTEGER NOT NULL,
        PRIMARY KEY (day, key_id, project, org, model, upstream, currency)
    ) WITHOUT ROWID;
    """,
    # 2: response cache hits carry the cost they saved
    """
    ALTER TABLE usage_records ADD COLUMN cost_saved REAL NOT NULL DEFAULT 0;
    ALTER TABLE usage_daily ADD COLUMN cost_saved REAL NOT NULL DEFAULT 0;
    """,
)

# NOTE: COLLATE "C" on every column reports group or sort by: bytewise order, as SQLite's BINARY,
# so both backends sort a report the same whatever the database's locale.
_POSTGRES_STEPS = (
    """
    CREATE TABLE usage_records (
        id text COLLATE "C" PRIMARY KEY, ts double precision NOT NULL, request_id text NOT NULL,
        api text NOT NULL, status integer NOT NULL, key_id text, org text, project text,
        route text, requested_model text, model text, upstream text, upstream_model text,
        stream boolean NOT NULL, error text, input_tokens bigint NOT NULL,
        output_tokens bigint NOT NULL, cached_tokens bigint NOT NULL,
        cost double precision NOT NULL, currency text, estimated boolean NOT NULL,
        latency_ms double precision NOT NULL, ttfb_ms double precision,
        attempts integer NOT NULL, cache_hit boolean NOT NULL, config_version text NOT NULL,
        prompt text, completion text, day text COLLATE "C" NOT NULL
    );
    CREATE INDEX usage_records_day ON usage_records (day);
    CREATE TABLE usage_daily (
        day text COLLATE "C" NOT NULL, key_id text COLLATE "C" NOT NULL,
        project text COLLATE "C" NOT NULL, org text COLLATE "C" NOT NULL,
        model text COLLATE "C" NOT NULL, upstream text COLLATE "C" NOT NULL,
        currency text COLLATE "C" NOT NULL, requests bigint NOT NULL, errors bigint NOT NULL,
        input_tokens bigint NOT NULL, output_tokens bigint NOT NULL,
        cached_tokens bigint NOT NULL, cost double precision NOT NULL,
        cache_hits bigint NOT NULL,
        PRIMARY KEY (day, key_id, project, org, model, upstream, currency)
    );
    """,
    # 2: response cache hits carry the cost they saved
    """
    ALTER TABLE usage_records ADD COLUMN cost_saved double precision NOT NULL DEFAULT 0;
    ALTER TABLE usage_daily ADD COLUMN cost_saved double precision NOT NULL DEFAULT 0;
    """,
)

_DAILY_COLUMNS = ", ".join((*_DAILY_KEY, *TOTAL_FIELDS))
_DAILY_CONFLICT = f"ON CONFLICT ({', '.join(_DAILY_KEY)}) DO UPDATE SET " + ", ".join(
    f"{name} = usage_daily.{name} + excluded.{name}" for name in TOTAL_FIELDS
)
_RECORDS_SELECT = f"SELECT {', '.join(_FIELDS)} FROM usage_records ORDER BY ts, id"
_PRUNE = "DELETE FROM usage_records WHERE day < {}"

# PERF: rows go in multi-row INSERTs of 64, 8 or 1 rows, so a batch of 200 takes 3 + 1 + 0
# statements. sqlite3 releases the GIL around every step: executemany stepped once per row, and
# under load every step made the event loop's thread hand the GIL over and back (~10 µs per
# record). Six shapes only (with and without the text columns): each is parsed once (a 64-row
# INSERT: ~2M instructions) and then served from sqlite3's statement cache; 64 rows cost the
# same per row as 256 (callgrind).
_SQLITE_CHUNKS = (64, 8, 1)
_TEXT_COLUMNS = ("prompt", "completion")  # the last fields: None unless usage.log_prompts
_BARE_COLUMNS = tuple(name for name in _RECORD_COLUMNS if name not in _TEXT_COLUMNS)


def _sqlite_insert(columns: Sequence[str], size: int) -> str:
    row = f"({', '.join('?' * len(columns))})"
    return (
        f"INSERT INTO usage_records ({', '.join(columns)}) "
        f"VALUES {', '.join([row] * size)} ON CONFLICT (id) DO NOTHING"
    )


# PERF: sqlite3 binds a None through an adapter lookup (~1,200 instructions): rows without
# prompt and completion (all of them, unless usage.log_prompts) go in without those columns.
# With the bools bound as ints (below): ~3,500 instructions a record less.
_SQLITE_INSERTS = {
    (size, bare): _sqlite_insert(_BARE_COLUMNS if bare else _RECORD_COLUMNS, size)
    for size in _SQLITE_CHUNKS
    for bare in (False, True)
}

# PERF: sqlite3 binds a str, int or float as it is, but for any other value it first looks for
# an adapter, and a miss costs two failed attribute lookups (~3,000 instructions); a record
# often holds a few Nones. Registered adapters are a dict hit (~1,200): None stays
# None (`{}.get` of anything is None) and a bool becomes the 0/1 SQLite keeps, exactly what
# sqlite3 binds without them, so every other sqlite3 user in the process is unaffected.
sqlite3.register_adapter(type(None), cast("Callable[[None], None]", {}.get))
sqlite3.register_adapter(bool, int)


_SQLITE_EXISTING = "SELECT id FROM usage_records WHERE id IN (SELECT value FROM json_each(?))"
_SQLITE_DAILY = (
    f"INSERT INTO usage_daily ({_DAILY_COLUMNS}) "
    f"VALUES ({', '.join('?' * (len(_DAILY_KEY) + len(TOTAL_FIELDS)))}) {_DAILY_CONFLICT}"
)

# PERF: a batch goes to a session-local temporary table by binary COPY, then into the table in
# one INSERT ... SELECT ... RETURNING: 1.3-2x the records/s of one unnest() array per column, and
# executemany cannot say which rows it inserted. The temporary table outlives the transaction,
# its rows do not.
_PG_BATCH = "usage_records_batch"
_PG_BATCH_TABLE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_PG_BATCH} (LIKE usage_records) ON COMMIT DELETE ROWS"
)
_PG_INSERT = (
    f"INSERT INTO usage_records ({', '.join(_RECORD_COLUMNS)}) "
    f"SELECT {', '.join(_RECORD_COLUMNS)} FROM {_PG_BATCH} ON CONFLICT (id) DO NOTHING RETURNING id"
)
_DAILY_TYPES = (
    *("text" for _ in _DAILY_KEY),
    *("float8" if name in _MONEY else "int8" for name in TOTAL_FIELDS),
)
_PG_DAILY = (
    f"INSERT INTO usage_daily ({_DAILY_COLUMNS}) SELECT * FROM unnest("
    + ", ".join(f"${n}::{kind}[]" for n, kind in enumerate(_DAILY_TYPES, 1))
    + f") {_DAILY_CONFLICT}"
)


def open_ledger_store(kind: str, *, path: str | None = None, url: str | None = None) -> LedgerStore:
    """The store of `kind` (``sqlite`` with a `path`, ``postgres`` with a `url`), not opened yet.

    ``open_ledger_store("sqlite", path="usage.db")`` -> ``SqliteLedgerStore("usage.db")``"""
    if kind == "sqlite":
        if not path:
            raise ValueError("a sqlite ledger store needs a path")
        return SqliteLedgerStore(path)
    if kind in ("postgres", "postgresql"):
        if not url:
            raise ValueError("a postgres ledger store needs a url")
        return PostgresLedgerStore(url)
    raise ValueError(f"unknown ledger store kind {kind!r} (expected sqlite or postgres)")


class SqliteLedgerStore:
    """The ledger in a SQLite file (WAL, so several processes may write it). The connection
    lives on one thread of its own, so no call ever blocks the event loop."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        if self._conn is not None:
            return
        executor = ThreadPoolExecutor(1, thread_name_prefix="interlock-ledger-sqlite")
        try:
            loop = asyncio.get_running_loop()
            self._conn = await loop.run_in_executor(executor, self._connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    async def write(self, records: Sequence[UsageRecord]) -> None:
        if records:
            await self._run(lambda conn: _sqlite_write(conn, _unique(records)))

    async def report(
        self, *, since: str | None, until: str | None, group_by: Sequence[str]
    ) -> list[dict[str, Any]]:
        sql, args, names = report_query(since, until, group_by, lambda _: "?")
        rows = await self._run(lambda conn: conn.execute(sql, args).fetchall())
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def prune(self, before_day: str) -> int:
        def prune(conn: sqlite3.Connection) -> int:
            return conn.execute(_PRUNE.format("?"), (before_day,)).rowcount

        return await self._run(prune)

    async def records(self) -> list[UsageRecord]:
        rows = await self._run(lambda conn: conn.execute(_RECORDS_SELECT).fetchall())
        return [_record_of(row) for row in rows]

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        conn, executor = self._conn, self._executor
        self._conn = self._executor = None
        if conn is not None and executor is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
            finally:
                executor.shutdown(wait=False)  # NOTE: its one thread is idle by now

    def _connect(self) -> sqlite3.Connection:
        conn = connect_sqlite(self.path)
        try:
            migrate_sqlite(conn, COMPONENT, _SQLITE_STEPS)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        conn, executor = self._conn, self._executor
        if conn is None or executor is None:
            raise RuntimeError("the sqlite ledger store is not open")
        return await asyncio.get_running_loop().run_in_executor(executor, work, conn)


def _sqlite_write(conn: sqlite3.Connection, records: list[UsageRecord]) -> None:
    # NOTE: BEGIN IMMEDIATE holds the write lock from the first statement, so no other process
    # can store one of these ids meanwhile: what is counted below is exact. PERF: a batch is
    # nearly always all new, so it goes in without looking its ids up first; when fewer rows
    # went in than were sent (a batch retried after a commit that did succeed), the insert is
    # undone and redone with only the ids not stored yet.
    with sqlite_transaction(conn):
        days = record_days(records)
        conn.execute("SAVEPOINT batch")
        if _sqlite_insert_rows(conn, records, days) != len(records):
            conn.execute("ROLLBACK TO batch")
            ids = msgspec.json.encode([r.id for r in records]).decode()
            existing = {row[0] for row in conn.execute(_SQLITE_EXISTING, (ids,))}
            kept = [i for i, r in enumerate(records) if r.id not in existing]
            records, days = [records[i] for i in kept], [days[i] for i in kept]
            _sqlite_insert_rows(conn, records, days)
        conn.execute("RELEASE batch")
        if records:
            conn.executemany(_SQLITE_DAILY, daily_rows(zip(records, days, strict=True)))


def _sqlite_insert_rows(
    conn: sqlite3.Connection, records: Sequence[UsageRecord], days: Sequence[str]
) -> int:
    """Insert the rows of `records` (ids already stored are skipped); how many went in."""
    before = conn.total_changes
    astuple = msgspec.structs.astuple
    start = 0
    for size in _SQLITE_CHUNKS:
        while len(records) - start >= size:
            params: list[Any] = []
            end = start + size
            chunk = records[start:end]
            bare = set(map(_TEXTS, chunk)) == _NO_TEXTS
            for r, day in zip(chunk, days[start:end], strict=True):
                at = len(params)
                params += astuple(r)
                if bare:
                    del params[-2:]
                params.append(day)
                # PERF: a bool, too, costs sqlite3 an adapter lookup; `+` makes it an int
                params[at + _STREAM] = +params[at + _STREAM]
                params[at + _ESTIMATED] = +params[at + _ESTIMATED]
                params[at + _CACHE_HIT] = +params[at + _CACHE_HIT]
            conn.execute(_SQLITE_INSERTS[size, bare], params)
            start = end
    return conn.total_changes - before


_TEXTS = attrgetter(*_TEXT_COLUMNS)
_NO_TEXTS = {(None, None)}


class PostgresLedgerStore:
    """The ledger in PostgreSQL through an asyncpg pool (1-4 connections). The url may carry
    server settings as query parameters, e.g. ``?search_path=interlock``. Connecting (or
    waiting for a pooled connection) gives up after `connect_timeout_s` and a statement after
    `command_timeout_s`, so an unreachable server makes calls raise, never hang. Text is kept
    as written except U+0000, which PostgreSQL cannot store: it becomes U+FFFD.
    """

    def __init__(
        self, url: str, *, connect_timeout_s: float = 10.0, command_timeout_s: float = 60.0
    ) -> None:
        self._pg = PostgresPool(
            url,
            COMPONENT,
            _POSTGRES_STEPS,
            connect_timeout_s=connect_timeout_s,
            command_timeout_s=command_timeout_s,
        )
        self._acquire = self._pg.acquire

    async def open(self) -> None:
        await self._pg.open()

    async def write(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        unique = _unique(records)
        rows, days = _record_rows(unique)
        rows = [_without_nul(row) for row in rows]
        async with self._acquire() as conn, conn.transaction():
            await conn.execute(_PG_BATCH_TABLE)
            await conn.copy_records_to_table(_PG_BATCH, records=rows, columns=_RECORD_COLUMNS)
            # NOTE: RETURNING names exactly the rows this transaction stored; an id another
            # writer is storing right now waits for its commit and then conflicts.
            inserted = {row[0] for row in await conn.fetch(_PG_INSERT)}
            new = [(r, day) for r, day in zip(unique, days, strict=True) if r.id in inserted]
            if new:
                await conn.execute(_PG_DAILY, *zip(*daily_rows(new), strict=True))

    async def report(
        self, *, since: str | None, until: str | None, group_by: Sequence[str]
    ) -> list[dict[str, Any]]:
        sql, args, names = report_query(since, until, group_by, lambda n: f"${n}")
        async with self._acquire() as conn:
            rows = await conn.fetch(sql, *args)
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def prune(self, before_day: str) -> int:
        async with self._acquire() as conn:
            status: str = await conn.execute(_PRUNE.format("$1"), before_day)
        return int(status.rsplit(" ", 1)[-1])  # "DELETE 42"

    async def records(self) -> list[UsageRecord]:
        async with self._acquire() as conn:
            rows = await conn.fetch(_RECORDS_SELECT)
        return [_record_of(row) for row in rows]

    async def ping(self) -> None:
        async with self._acquire() as conn:
            await conn.fetchval("SELECT 1")

    async def close(self) -> None:
        await self._pg.close()


def report_query(
    since: str | None, until: str | None, group_by: Sequence[str], mark: Callable[[int], str]
) -> tuple[str, list[str], list[str]]:
    """The report's SQL, its arguments and the names of its columns; `mark(n)` is the dialect's
    placeholder for argument n (from 1). Raises ValueError for a name not in GROUP_FIELDS.

    ``report_query("2026-12-01", None, ["key"], lambda n: f"${n}")`` -> ``("SELECT
    NULLIF(key_id, ''), NULLIF(currency, ''), CAST(SUM(requests) AS BIGINT), ... WHERE day >=
    $1 GROUP BY key_id, currency ORDER BY key_id, currency", ["2026-12-01"], ["key",
    "currency", "requests", ...])``"""
    fields = list(dict.fromkeys(group_by))
    unknown = [name for name in fields if name not in GROUP_FIELDS]
    if unknown:
        raise ValueError(f"cannot group by {unknown} (known: {', '.join(GROUP_FIELDS)})")
    # SECURITY: only whitelisted expressions reach the SQL text; values are arguments.
    groups = [*(_GROUP_EXPRESSIONS[name] for name in fields), "currency"]
    keys = [f"NULLIF({expr}, '')" for expr in groups]
    totals = [
        f"CAST(SUM({name}) AS {'DOUBLE PRECISION' if name in _MONEY else 'BIGINT'})"
        for name in TOTAL_FIELDS
    ]
    where, args = [], []
    for op, day in ((">=", since), ("<=", until)):
        if day is not None:
            args.append(day)
            where.append(f"day {op} {mark(len(args))}")
    sql = (
        f"SELECT {', '.join(keys)}, {', '.join(totals)} FROM usage_daily"
        f"{' WHERE ' + ' AND '.join(where) if where else ''} "
        f"GROUP BY {', '.join(groups)} ORDER BY {', '.join(groups)}"
    )
    return sql, args, [*fields, "currency", *TOTAL_FIELDS]


def daily_rows(records: Iterable[tuple[UsageRecord, str]]) -> list[tuple[Any, ...]]:
    """The totals of (record, day) pairs, one row per `usage_daily` key ('' for a missing key
    column), sorted: concurrent writers then lock the rows they share in the same order."""
    totals: dict[tuple[str, ...], list[Any]] = {}
    for r, day in records:
        key = (  # _DAILY_KEY order
            day,
            r.key_id or "",
            r.project or "",
            r.org or "",
            r.model or "",
            r.upstream or "",
            r.currency or "",
        )
        total = totals.get(key)
        if total is None:
            total = totals[key] = [0, 0, 0, 0, 0, 0.0, 0, 0.0]
        total[0] += 1
        total[1] += r.status >= 400
        total[2] += r.input_tokens
        total[3] += r.output_tokens
        total[4] += r.cached_tokens
        total[5] += r.cost
        total[6] += r.cache_hit
        total[7] += r.cost_saved
    return [(*key, *total) for key, total in sorted(totals.items())]


def _unique(records: Iterable[UsageRecord]) -> list[UsageRecord]:
    """The batch without repeated ids (the first one stays, as the database would keep it),
    ordered by id: concurrent writers of the same ids then lock them in the same order."""
    seen: dict[str, UsageRecord] = {}
    for r in records:
        seen.setdefault(r.id, r)
    return [seen[key] for key in sorted(seen)]


def _record_rows(records: Sequence[UsageRecord]) -> tuple[list[tuple[Any, ...]], list[str]]:
    days = record_days(records)
    astuple = msgspec.structs.astuple
    rows = [(*astuple(r), day) for r, day in zip(records, days, strict=True)]
    return rows, days


def record_days(records: Iterable[UsageRecord]) -> list[str]:
    """`day_of` each record's time. PERF: a batch is mostly one day, formatted once instead of
    once per record (~1 µs each)."""
    days = []
    number, day = None, ""
    for r in records:
        if r.ts // 86400 != number:
            number, day = r.ts // 86400, day_of(r.ts)
        days.append(day)
    return days


def _without_nul(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """`row` with U+0000 in its text replaced by U+FFFD: PostgreSQL text cannot hold it, and a
    client can put one in a model name or a prompt; one such record must not block the ledger."""
    if not any(value.__class__ is str and "\x00" in value for value in row):
        return row
    return tuple(v.replace("\x00", "\ufffd") if v.__class__ is str else v for v in row)


def _record_of(row: Sequence[Any]) -> UsageRecord:
    values = list(row)
    for index in _BOOLS:  # NOTE: SQLite keeps booleans as 0/1
        values[index] = bool(values[index])
    return UsageRecord(*values)
