"""The `LedgerStore` contract (runtime/state/ledger.py), one suite run against every backend:
SQLite in tmp_path and PostgreSQL in a schema of its own (tests/pg.py). A backend that passes is
interchangeable. Also the migration runner both use (runtime/state/stores.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.state import ledger_stores
from runtime.state.ledger import GROUP_FIELDS, TOTAL_FIELDS, LedgerStore, UsageRecord, day_of
from runtime.state.ledger_stores import PostgresLedgerStore, open_ledger_store
from runtime.state.stores import (
    connect_sqlite,
    migrate_postgres,
    migrate_sqlite,
    split_sqlite_script,
)
from tests.pg import PG_URL

REPO = Path(__file__).resolve().parent.parent
T0 = 1_795_910_400.0  # 2026-11-29 00:00 UTC; mixed() spans four days across a month end


@dataclasses.dataclass(frozen=True)
class Backend:
    """One database of one kind: `store()` makes a new, unopened store on it at each call."""

    kind: str
    where: str  # the path or the url

    def store(self) -> LedgerStore:
        if self.kind == "sqlite":
            return open_ledger_store("sqlite", path=self.where)
        return open_ledger_store(self.kind, url=self.where)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "usage.db"))
    return Backend("postgres", request.getfixturevalue("pg_url"))


@contextlib.asynccontextmanager
async def opened(store: LedgerStore) -> AsyncIterator[LedgerStore]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def record(n: int, **fields: Any) -> UsageRecord:
    base: dict[str, Any] = {"id": f"r{n:05d}", "ts": T0 + n, "request_id": f"q{n}", "api": "x"}
    return UsageRecord(**(base | {"status": 200} | fields))


def mixed(count: int, start: int = 0, seed: int = 7) -> list[UsageRecord]:
    """Records over four days (2026-11-29 .. 2026-12-02) and every key dimension, with Nones."""
    rng = random.Random(seed + start)
    return [
        record(
            n,
            ts=T0 + rng.uniform(0, 4 * 86400),
            status=rng.choice((200, 200, 200, 400, 429, 500)),
            key_id=rng.choice((None, "team-a", "team-b")),
            project=rng.choice((None, "web", "batch")),
            org=rng.choice((None, "acme")),
            model=rng.choice(("gpt", "claude")),
            upstream=rng.choice((None, "openai", "anthropic")),
            currency=rng.choice((None, "USD", "EUR")),
            input_tokens=rng.randrange(1000),
            output_tokens=rng.randrange(500),
            cached_tokens=rng.randrange(100),
            cost=rng.randrange(1, 64) / 64,  # NOTE: exact in binary, so sums compare exactly
            cache_hit=rng.random() < 0.2,
            cost_saved=rng.randrange(0, 64) / 64,
        )
        for n in range(start, start + count)
    ]


def expected_report(
    records: Sequence[UsageRecord],
    *,
    group_by: Sequence[str],
    since: str | None = None,
    until: str | None = None,
) -> list[dict[str, Any]]:
    """The report computed naively from the raw records."""
    fields = list(dict.fromkeys(group_by))
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        day = day_of(r.ts)
        if (since and day < since) or (until and day > until):
            continue
        dims = {"key": r.key_id, "project": r.project, "org": r.org, "model": r.model}
        dims |= {"upstream": r.upstream, "day": day, "month": day[:7], "currency": r.currency}
        key = tuple(dims[name] for name in [*fields, "currency"])
        row = groups.setdefault(key, {name: dims[name] for name in [*fields, "currency"]})
        counts = (1, r.status >= 400, r.input_tokens, r.output_tokens, r.cached_tokens)
        totals = (*counts, r.cost, r.cache_hit, r.cost_saved)
        for name, value in zip(TOTAL_FIELDS, totals, strict=True):
            row[name] = row.get(name, 0) + value
    return [groups[key] for key in sorted(groups, key=lambda k: [v or "" for v in k])]


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {name: sum(row[name] for row in rows) for name in TOTAL_FIELDS}


# --- write and read back ----------------------------------------------------------------------

FULL = UsageRecord(
    id="full-1",
    ts=T0 + 0.123456789,
    request_id="req-é-1",
    api="anthropic.messages",
    status=429,
    key_id="team-a",
    org="acme",
    project="web",
    route="chat",
    requested_model="claude-latest",
    model="claude",
    upstream="anthropic",
    upstream_model="claude-3-5-sonnet",
    stream=True,
    error="rate_limited",
    input_tokens=2**40,
    output_tokens=17,
    cached_tokens=5,
    cost=0.1 + 0.2,
    currency="EUR",
    estimated=True,
    latency_ms=12.345,
    ttfb_ms=1.5,
    attempts=3,
    cache_hit=True,
    cost_saved=0.5 + 0.25,
    config_version="sha256:abc",
    prompt='it\'s "quoted"; DROP TABLE usage_records; -- ✓ 🙂',
    completion="line 1\nline 2\t",
)


def test_round_trip_keeps_every_field(backend: Backend) -> None:
    bare = UsageRecord(id="bare", ts=T0 - 1, request_id="b", api="openai.embeddings", status=200)
    same_ts = [record(9, ts=T0 + 5, request_id="z"), record(8, ts=T0 + 5, request_id="y")]

    async def main() -> list[UsageRecord]:
        async with opened(backend.store()) as store:
            await store.write([FULL, *same_ts, bare])
            return await store.records()

    back = asyncio.run(main())
    assert back == [bare, FULL, same_ts[1], same_ts[0]]  # by ts, then id
    assert [type(getattr(back[1], f)) for f in ("stream", "estimated", "cache_hit")] == [bool] * 3
    assert msgspec.structs.asdict(back[1]) == msgspec.structs.asdict(FULL)


def test_rows_with_and_without_texts_in_one_batch(backend: Backend) -> None:
    # NOTE: SQLite rows go 64, 8 and 1 at a time, without the prompt and completion columns
    # when none of them has either: here the 64 and the 1 have texts, the 8 have none
    batch = [
        record(
            n,
            prompt="p" if n % 9 == 0 else None,
            completion=None if n % 18 else "c",
            stream=n % 2 == 0,
            estimated=n % 3 == 0,
            cache_hit=n % 5 == 0,
        )
        for n in range(73)
    ]

    async def main() -> list[UsageRecord]:
        async with opened(backend.store()) as store:
            await store.write(batch)
            return await store.records()

    back = asyncio.run(main())
    assert back == batch
    assert {type(r.stream) for r in back} == {bool}


def test_nul_in_text_never_blocks_a_write(backend: Backend) -> None:
    odd = record(1, requested_model="gpt\x00", prompt="a\x00b")

    async def main() -> list[UsageRecord]:
        async with opened(backend.store()) as store:
            await store.write([odd])
            return await store.records()

    (back,) = asyncio.run(main())
    nul = "\x00" if backend.kind == "sqlite" else "\ufffd"  # PostgreSQL text cannot hold U+0000
    assert (back.prompt, back.requested_model) == (f"a{nul}b", f"gpt{nul}")


def test_a_batch_written_twice_is_stored_and_counted_once(backend: Backend) -> None:
    batch = mixed(200)

    async def main() -> tuple[list[UsageRecord], list[dict[str, Any]]]:
        async with opened(backend.store()) as store:
            await store.write(batch)
            await store.write(batch)
            await store.write([*batch[:10], batch[0]])  # repeated ids inside one batch, too
            await store.write([])
            report = await store.report(since=None, until=None, group_by=["day"])
            return await store.records(), report

    stored, report = asyncio.run(main())
    assert stored == sorted(batch, key=lambda r: (r.ts, r.id))
    assert report == expected_report(batch, group_by=["day"])


def test_a_batch_with_some_stored_ids_adds_only_the_new_ones(backend: Backend) -> None:
    first, second = mixed(100), mixed(100, start=100)
    changed = [msgspec.structs.replace(r, input_tokens=10**6) for r in first[:50]]

    async def main() -> tuple[int, list[dict[str, Any]]]:
        async with opened(backend.store()) as store:
            await store.write(first)
            await store.write([*changed, *second])  # a stored id is skipped, even if it differs
            report = await store.report(since=None, until=None, group_by=["key", "model"])
            return len(await store.records()), report

    count, report = asyncio.run(main())
    assert count == 200
    assert report == expected_report([*first, *second], group_by=["key", "model"])


@pytest.mark.parametrize("sizes", [(1, 255, 256), (257, 511), (1000, 3)])
def test_batches_of_any_size_store_every_record_once(
    backend: Backend, sizes: tuple[int, ...]
) -> None:
    # SQLite inserts in multi-row statements of 2**k rows (at most 256): sizes around them
    batches, start = [], 0
    for size in sizes:
        batches.append(mixed(size, start=start))
        start += size

    async def main() -> tuple[list[UsageRecord], list[dict[str, Any]]]:
        async with opened(backend.store()) as store:
            for batch in batches:
                await store.write(batch)
            report = await store.report(since=None, until=None, group_by=["key"])
            return await store.records(), report

    stored, report = asyncio.run(main())
    every = [r for batch in batches for r in batch]
    assert stored == sorted(every, key=lambda r: (r.ts, r.id))
    assert report == expected_report(every, group_by=["key"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=-1e10, max_value=1e11, allow_nan=False), max_size=40))
def test_record_days_are_each_records_own_day(times: list[float]) -> None:
    # NOTE: sorted too, as a batch mostly is: runs of one day take the cached day
    for order in (times, sorted(times)):
        records = [
            UsageRecord(id=str(n), ts=ts, request_id="r", api="a", status=200)
            for n, ts in enumerate(order)
        ]
        assert ledger_stores.record_days(records) == [day_of(ts) for ts in order]
    for ts in times:  # the day Python's datetime gives, to the microsecond it rounds to
        whole = round(ts, 3)
        assert day_of(whole) == dt.datetime.fromtimestamp(whole, dt.UTC).date().isoformat()


# --- report -----------------------------------------------------------------------------------

GROUPINGS = [
    *([name] for name in GROUP_FIELDS),
    [],
    ["day", "model"],
    ["month", "key", "project"],
    ["org", "upstream", "model", "key"],
    ["model", "day", "model"],
    list(GROUP_FIELDS),
]


def test_report_groups_by_every_field_and_combination(backend: Backend) -> None:
    records = mixed(600)
    windows = [
        (None, None),
        ("2026-11-30", None),
        (None, "2026-11-30"),
        ("2026-11-30", "2026-12-01"),
    ]

    async def main() -> list[tuple[Any, ...]]:
        async with opened(backend.store()) as store:
            for n in range(0, len(records), 150):
                await store.write(records[n : n + 150])
            return [
                (
                    group_by,
                    since,
                    until,
                    await store.report(since=since, until=until, group_by=group_by),
                )
                for group_by in GROUPINGS
                for since, until in windows
            ]

    for group_by, since, until, rows in asyncio.run(main()):
        expected = expected_report(records, group_by=group_by, since=since, until=until)
        assert rows == expected, (group_by, since, until)
        assert all(isinstance(row["cost"], float) for row in rows)
        assert all(type(row["requests"]) is int for row in rows)


def test_report_rows_have_the_documented_shape_and_keep_currencies_apart(
    backend: Backend,
) -> None:
    batch = [
        record(1, key_id="a", currency="USD", cost=1.5, status=500, input_tokens=3),
        record(2, key_id="a", currency="EUR", cost=2.0, cached_tokens=1, cache_hit=True),
        record(3, key_id="a", currency="USD", cost=0.25, output_tokens=7),
        record(4, currency=None),
        record(5, ts=T0 + 86400 * 10, key_id="a", currency="USD", cost=1.0),
        record(6, ts=T0 + 86400 * 40, key_id="a", currency="USD", cost=1.0),  # after `until`
    ]

    async def main() -> list[dict[str, Any]]:
        async with opened(backend.store()) as store:
            await store.write(batch)
            return await store.report(since=None, until="2026-12-31", group_by=["month", "key"])

    zero = dict.fromkeys(TOTAL_FIELDS, 0) | {"cost": 0.0, "cost_saved": 0.0}
    row = {"month": "2026-11"}
    assert asyncio.run(main()) == [
        {**row, "key": None, "currency": None, **zero, "requests": 1},
        {**row, "key": "a", "currency": "EUR", **zero, "requests": 1, "cost": 2.0}
        | {"cached_tokens": 1, "cache_hits": 1},
        {**row, "key": "a", "currency": "USD", **zero, "requests": 2, "errors": 1, "cost": 1.75}
        | {"input_tokens": 3, "output_tokens": 7},
        {"month": "2026-12", "key": "a", "currency": "USD", **zero, "requests": 1, "cost": 1.0},
    ]


@pytest.mark.parametrize("bad", [["tenant"], ["day", "key_id"], ["day; DROP TABLE usage_daily"]])
def test_report_rejects_unknown_group_names(backend: Backend, bad: list[str]) -> None:
    async def main() -> None:
        async with opened(backend.store()) as store:
            await store.report(since=None, until=None, group_by=bad)

    with pytest.raises(ValueError, match="cannot group by"):
        asyncio.run(main())


# --- prune ------------------------------------------------------------------------------------


def test_prune_deletes_old_raw_rows_and_reports_still_answer(backend: Backend) -> None:
    records = mixed(300)
    old = [r for r in records if day_of(r.ts) < "2026-12-01"]

    async def main() -> tuple[int, int, list[UsageRecord], list[dict[str, Any]]]:
        async with opened(backend.store()) as store:
            await store.write(records)
            pruned = await store.prune("2026-12-01")
            again = await store.prune("2026-12-01")
            report = await store.report(since=None, until=None, group_by=["day", "key"])
            return pruned, again, await store.records(), report

    pruned, again, left, report = asyncio.run(main())
    assert (pruned, again) == (len(old), 0) and 0 < len(old) < len(records)
    assert left == sorted(set(records) - set(old), key=lambda r: (r.ts, r.id))
    assert report == expected_report(records, group_by=["day", "key"])


# --- several writers, several openers ---------------------------------------------------------


def test_two_stores_writing_at_once_add_up_exactly(backend: Backend) -> None:
    shared, own_a, own_b = mixed(300), mixed(400, start=1000), mixed(400, start=2000)

    async def writer(store: LedgerStore, records: list[UsageRecord]) -> None:
        for n in range(0, len(records), 50):
            await store.write(records[n : n + 50])

    async def main() -> list[dict[str, Any]]:
        async with opened(backend.store()) as a, opened(backend.store()) as b:
            await asyncio.gather(writer(a, [*shared, *own_a]), writer(b, [*own_b, *shared]))
            return await a.report(since=None, until=None, group_by=["day", "model"])

    expected = expected_report([*shared, *own_a, *own_b], group_by=["day", "model"])
    assert asyncio.run(main()) == expected


_WRITER = """
import asyncio, sys, msgspec
from runtime.state.ledger import UsageRecord
from runtime.state.ledger_stores import open_ledger_store
kind, where = sys.argv[1:3]
records = msgspec.json.decode(sys.stdin.buffer.read(), type=list[UsageRecord])
async def main():
    store = open_ledger_store(kind, **{"path" if kind == "sqlite" else "url": where})
    await store.open()
    try:
        for n in range(0, len(records), 25):
            await store.write(records[n : n + 25])
    finally:
        await store.close()
asyncio.run(main())
"""


def test_two_processes_migrate_and_write_one_fresh_store_at_once(backend: Backend) -> None:
    shared, own = mixed(200), [mixed(300, start=1000), mixed(300, start=2000)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, backend.kind, backend.where],
            stdin=subprocess.PIPE,
            cwd=REPO,
        )
        for _ in own
    ]
    for proc, mine in zip(procs, own, strict=True):
        assert proc.stdin is not None
        proc.stdin.write(msgspec.json.encode([*shared, *mine]))
        proc.stdin.close()
    assert [proc.wait(timeout=60) for proc in procs] == [0, 0]

    async def main() -> tuple[int, list[dict[str, Any]]]:
        async with opened(backend.store()) as store:
            report = await store.report(since=None, until=None, group_by=["key"])
            return len(await store.records()), report

    count, report = asyncio.run(main())
    assert count == 800
    assert report == expected_report([*shared, *own[0], *own[1]], group_by=["key"])


def test_opening_again_applies_no_migration_and_keeps_the_data(backend: Backend) -> None:
    async def main() -> list[UsageRecord]:
        await asyncio.gather(*(opened_and_closed(backend.store()) for _ in range(3)))
        async with opened(backend.store()) as store:
            await store.open()  # a second open of one store is a no-op too
            await store.write([FULL])
        async with opened(backend.store()) as store:
            await store.ping()
            return await store.records()

    assert asyncio.run(main()) == [FULL]
    assert applied_versions(backend) == [("ledger", 1), ("ledger", 2)]


def test_a_version_1_store_gains_cost_saved_and_keeps_its_rows(backend: Backend) -> None:
    """Step 2 (the response cache's `cost_saved`) on a store made by step 1 alone: old rows and
    totals read back with cost_saved 0, new ones add up."""
    migrate_ledger(backend, ledger_stores._SQLITE_STEPS[:1], ledger_stores._POSTGRES_STEPS[:1])
    key = "'2026-11-29', 'a', '', '', 'm', '', 'USD'"
    execute(backend, f"INSERT INTO usage_daily VALUES ({key}, 1, 0, 1, 1, 0, 0.5, 0)")
    hit = record(1, key_id="a", model="m", currency="USD", cache_hit=True, cost_saved=0.25)

    async def main() -> list[dict[str, Any]]:
        async with opened(backend.store()) as store:
            await store.write([hit])
            return await store.report(since=None, until=None, group_by=["key"])

    [row] = asyncio.run(main())
    totals = (row["requests"], row["cost"], row["cache_hits"], row["cost_saved"])
    assert totals == (2, 0.5, 1, 0.25)
    assert applied_versions(backend) == [("ledger", 1), ("ledger", 2)]


def migrate_ledger(backend: Backend, sqlite_steps: Sequence[str], pg_steps: Sequence[str]) -> None:
    if backend.kind == "sqlite":
        conn = connect_sqlite(backend.where)
        try:
            migrate_sqlite(conn, "ledger", sqlite_steps)
        finally:
            conn.close()
        return

    async def main() -> None:
        import asyncpg

        conn = await asyncpg.connect(backend.where)
        try:
            await migrate_postgres(conn, "ledger", pg_steps)
        finally:
            await conn.close()

    asyncio.run(main())


def execute(backend: Backend, sql: str) -> None:
    if backend.kind == "sqlite":
        conn = connect_sqlite(backend.where)
        try:
            conn.execute(sql)
        finally:
            conn.close()
        return

    async def main() -> None:
        import asyncpg

        conn = await asyncpg.connect(backend.where)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(main())


async def opened_and_closed(store: LedgerStore) -> None:
    async with opened(store):
        pass


def test_a_store_not_open_raises_and_closes_quietly(backend: Backend) -> None:
    async def main() -> None:
        store = backend.store()
        await store.close()
        with pytest.raises(RuntimeError, match="not open"):
            await store.write([FULL])
        async with opened(store):
            pass
        await store.close()

    asyncio.run(main())


# --- the migration runner ---------------------------------------------------------------------

STEPS = (
    "CREATE TABLE a (x TEXT); INSERT INTO a VALUES ('one; two')",
    "CREATE TABLE b (y INTEGER)",
    "INSERT INTO a VALUES ('three')",
)


def applied_versions(backend: Backend) -> list[tuple[str, int]]:
    sql = "SELECT component, version FROM schema_migrations ORDER BY component, version"
    if backend.kind == "sqlite":
        conn = connect_sqlite(backend.where)
        try:
            return [tuple(row) for row in conn.execute(sql)]
        finally:
            conn.close()

    async def read() -> list[tuple[str, int]]:
        import asyncpg

        conn = await asyncpg.connect(backend.where)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(read())


def migrate(backend: Backend, steps: Sequence[str]) -> tuple[list[int], list[str]]:
    """Apply `steps` as component "demo"; the versions applied and the rows of table a."""
    if backend.kind == "sqlite":
        conn = connect_sqlite(backend.where)
        try:
            versions = migrate_sqlite(conn, "demo", steps)
            return versions, [row[0] for row in conn.execute("SELECT x FROM a ORDER BY x")]
        finally:
            conn.close()

    async def run() -> tuple[list[int], list[str]]:
        import asyncpg

        conn = await asyncpg.connect(backend.where)
        try:
            versions = await migrate_postgres(conn, "demo", steps)
            return versions, [row[0] for row in await conn.fetch("SELECT x FROM a ORDER BY x")]
        finally:
            await conn.close()

    return asyncio.run(run())


def test_migrations_apply_each_step_once_in_order(backend: Backend) -> None:
    assert migrate(backend, STEPS[:1]) == ([1], ["one; two"])
    assert migrate(backend, STEPS) == ([2, 3], ["one; two", "three"])
    assert migrate(backend, STEPS) == ([], ["one; two", "three"])
    assert applied_versions(backend) == [("demo", 1), ("demo", 2), ("demo", 3)]


def test_a_failing_step_is_rolled_back_and_not_recorded(backend: Backend) -> None:
    with pytest.raises(Exception, match="nope"):
        migrate(backend, (*STEPS[:1], "INSERT INTO a VALUES ('half'); INSERT INTO nope VALUES (1)"))
    assert migrate(backend, STEPS[:1]) == ([], ["one; two"])
    assert applied_versions(backend) == [("demo", 1)]


def test_sqlite_scripts_split_on_statement_ends_only() -> None:
    script = "CREATE TABLE t (a TEXT);\n INSERT INTO t VALUES ('x;y'); ; SELECT 1"
    assert list(split_sqlite_script(script)) == [
        "CREATE TABLE t (a TEXT);",
        "INSERT INTO t VALUES ('x;y');",
        "SELECT 1;",
    ]


def test_sqlite_connections_use_wal_and_wait_for_locks(tmp_path: Path) -> None:
    conn = connect_sqlite(str(tmp_path / "x.db"))
    try:
        pragmas = [conn.execute(f"PRAGMA {name}").fetchone()[0] for name in _PRAGMAS]
    finally:
        conn.close()
    assert pragmas == ["wal", 10_000, 1]  # synchronous 1: NORMAL


_PRAGMAS = ("journal_mode", "busy_timeout", "synchronous")


# --- PostgreSQL out of reach ------------------------------------------------------------------


def test_postgres_out_of_reach_raises_instead_of_hanging() -> None:
    with socket.socket() as silent, socket.socket() as closed:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # NOTE: accepts the TCP handshake, never answers
        closed.bind(("127.0.0.1", 0))
        urls = [f"postgresql://u@127.0.0.1:{s.getsockname()[1]}/db" for s in (silent, closed)]

        async def open_store(url: str) -> None:
            store = PostgresLedgerStore(url, connect_timeout_s=0.5)
            try:
                await store.open()
            finally:
                await store.close()

        for url in urls:
            started = time.monotonic()
            with pytest.raises((OSError, asyncio.TimeoutError)):
                asyncio.run(open_store(url))
            assert time.monotonic() - started < 5


def test_postgres_write_after_losing_its_connections_raises_or_recovers(pg_url: str) -> None:
    """The server drops the pool's connections: a write raises (the ledger retries) or
    reconnects; either way a retried batch ends up stored exactly once."""
    url = f"{pg_url}&application_name=ledger_drop_test"
    batch = mixed(100)

    async def main() -> list[dict[str, Any]]:
        import asyncpg

        async with opened(PostgresLedgerStore(url, connect_timeout_s=2)) as store:
            await store.write(batch[:50])
            admin = await asyncpg.connect(PG_URL)
            try:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'ledger_drop_test'"
                )
            finally:
                await admin.close()
            for _ in range(3):
                try:
                    await store.write(batch)
                    break
                except Exception:  # NOTE: what the ledger's writer does: keep the batch, retry
                    await asyncio.sleep(0.1)
            return await store.report(since=None, until=None, group_by=[])

    assert totals(asyncio.run(main())) == totals(expected_report(batch, group_by=[]))
