"""Write throughput of the usage ledger's stores (a script, not a test).

    .venv/bin/python bench/ledger_write.py [--records 100000] [--batch 1000] [--pg-url URL]

Writes `--records` fresh records (random ids, as the gateway makes them; 3 days, 4 keys,
3 models, 2 currencies) in batches of `--batch` through `LedgerStore.write`, one batch after
another as the ledger's writer does, to SQLite in a temporary directory and to PostgreSQL in a
schema of its own (dropped afterwards); then writes the same batches again (a retry after a lost
commit: everything skipped). Prints records/s for each, and checks the totals add up.
Target: >= 20,000 records/s for fresh batches of 1,000 on both backends.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.state.ledger import LedgerStore, UsageRecord  # noqa: E402
from runtime.state.ledger_stores import open_ledger_store  # noqa: E402

DEFAULT_PG_URL = os.environ.get("INTERLOCK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def make_records(count: int) -> list[UsageRecord]:
    start = time.time() - 3 * 86400
    return [
        UsageRecord(
            id=os.urandom(12).hex(),
            ts=start + n * (3 * 86400 / count),
            request_id=f"req-{n}",
            api="openai.chat",
            status=500 if n % 50 == 0 else 200,
            key_id=f"key-{n % 4}",
            org="acme",
            project=f"project-{n % 2}",
            route="default",
            requested_model=f"model-{n % 3}",
            model=f"model-{n % 3}",
            upstream="openai",
            upstream_model="gpt-4o-mini",
            stream=n % 2 == 0,
            input_tokens=120 + n % 100,
            output_tokens=40 + n % 30,
            cached_tokens=n % 64,
            cost=0.000123,
            currency="EUR" if n % 5 == 0 else "USD",
            latency_ms=12.5,
            ttfb_ms=3.25,
            attempts=1,
            config_version="sha256:bench",
        )
        for n in range(count)
    ]


async def time_writes(store: LedgerStore, batches: Sequence[Sequence[UsageRecord]]) -> float:
    started = time.perf_counter()
    for batch in batches:
        await store.write(batch)
    return time.perf_counter() - started


async def run_store(name: str, store: LedgerStore, records: list[UsageRecord], batch: int) -> None:
    batches = [records[i : i + batch] for i in range(0, len(records), batch)]
    await store.open()
    try:
        fresh = await time_writes(store, batches)
        again = await time_writes(store, batches)
        rows = await store.report(since=None, until=None, group_by=[])
    finally:
        await store.close()
    stored = sum(row["requests"] for row in rows)
    verdict = "ok" if stored == len(records) else f"WRONG: {stored} counted"
    print(
        f"| {name} | {len(records):,} | {batch:,} | {len(records) / fresh:,.0f} "
        f"| {len(records) / again:,.0f} | {verdict} |"
    )


async def run_postgres(url: str, records: list[UsageRecord], batch: int) -> None:
    import asyncpg

    schema = f"bench_{secrets.token_hex(4)}"
    try:
        admin = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"| postgres | skipped: {type(exc).__name__}: {exc} | | | | |")
        return
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in url else "?"
        store = open_ledger_store("postgres", url=f"{url}{sep}search_path={schema}")
        await run_store("postgres", store, records, batch)
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def main_async(args: argparse.Namespace) -> None:
    records = make_records(args.records)
    print("| store | records | batch | fresh records/s | rewritten records/s | totals |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="interlock-ledger-bench-") as tmp:
        store = open_ledger_store("sqlite", path=str(Path(tmp) / "usage.db"))
        await run_store("sqlite", store, records, args.batch)
    if args.pg_url:
        await run_postgres(args.pg_url, records, args.batch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="'' skips PostgreSQL")
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
