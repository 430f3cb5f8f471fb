"""Limit backends: admit + settle latency, and round trips to Redis per request (a script, not a
test).

    .venv/bin/python bench/limits_rtt.py [--requests 2000] [--redis-url redis://127.0.0.1:6379/0]

For memory, SQLite (a file in a temporary directory) and Redis (under a fresh key prefix, deleted
afterwards), each with 1 check (rpm) and 3 (rpm, tpm, tokens_per_day), runs `--requests`
requests one after another, as one gateway worker at concurrency 1 would: admit, then settle on
the real usage, `now` advancing 10 ms a request, limits high enough to admit them all. Prints
p50/p99 of each call and requests/s. For Redis it then counts the commands the server received
from the limiter over 200 more requests, with MONITOR (redis-py's `monitor()`, on a connection of
its own; the commands a script runs inside Redis are not round trips and are left out).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.state.limits import Check, Limiter, Settlement  # noqa: E402
from runtime.state.limits_backends import open_limiter  # noqa: E402

T0 = 1_795_910_400.0
STEP_S = 0.01
MONITORED = 200
SENTINEL = "interlock-bench-limits-end"


def checks_of(count: int, tokens: float) -> list[Check]:
    every = [
        Check("rate", "bench:rpm:team-a", 1e9, 1, 60),
        Check("rate", "bench:tpm:team-a", 1e12, tokens, 60),
        Check("budget", "bench:tokens_per_day:team-a:2026-11-29", 1e15, tokens, 172800),
    ]
    return every[:count]


async def one_request(limiter: Limiter, n: int, checks: Sequence[Check]) -> tuple[float, float]:
    """Seconds the admit and the settle took."""
    now = T0 + n * STEP_S
    started = time.perf_counter()
    verdict = await limiter.admit(f"req-{n}", checks, now)
    admitted = time.perf_counter()
    if not verdict.admitted:
        raise RuntimeError(f"request {n} refused: {verdict}")
    await limiter.settle(f"req-{n}", [Settlement(c, c.amount * 0.75) for c in checks], now)
    return admitted - started, time.perf_counter() - admitted


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def time_requests(limiter: Limiter, count: int, checks: Sequence[Check]) -> dict[str, float]:
    await one_request(limiter, -1, checks)  # NOTE: connect, migrate, load the script
    admits, settles = [], []
    started = time.perf_counter()
    for n in range(count):
        admit_s, settle_s = await one_request(limiter, n, checks)
        admits.append(admit_s)
        settles.append(settle_s)
    elapsed = time.perf_counter() - started
    return {
        "admit_p50": percentile(admits, 50) * 1e6,
        "admit_p99": percentile(admits, 99) * 1e6,
        "settle_p50": percentile(settles, 50) * 1e6,
        "settle_p99": percentile(settles, 99) * 1e6,
        "rps": count / elapsed,
    }


async def count_round_trips(
    url: str, limiter: Limiter, checks: Sequence[Check]
) -> collections.Counter[str]:
    """The commands Redis received from clients while `limiter` served MONITORED requests."""
    import redis.asyncio

    seen: collections.Counter[str] = collections.Counter()
    client = redis.asyncio.Redis.from_url(url)
    marker = redis.asyncio.Redis.from_url(url, single_connection_client=True)
    try:
        await marker.ping()  # NOTE: connected before MONITOR starts: its handshake is not counted
        async with client.monitor() as monitor:

            async def collect() -> None:
                while True:
                    info = await monitor.next_command()
                    if info["client_type"] == "lua":
                        continue  # run inside a script: no round trip
                    if SENTINEL in info["command"]:
                        return
                    seen[info["command"].split(" ", 1)[0].upper()] += 1

            collecting = asyncio.create_task(collect())
            await asyncio.sleep(0.05)
            for n in range(MONITORED):
                await one_request(limiter, 1_000_000 + n, checks)
            await marker.echo(SENTINEL)
            await asyncio.wait_for(collecting, 10)
    finally:
        await marker.aclose()
        await client.aclose()
    return seen


async def bench_backend(
    kind: str, count: int, where: str, url: str
) -> list[tuple[str, int, dict[str, float], str]]:
    rows = []
    for n_checks in (1, 3):
        prefix = f"interlock-bench:{secrets.token_hex(4)}:"
        limiter = open_limiter(kind, path=f"{where}/limits-{n_checks}.db", url=url, prefix=prefix)
        try:
            checks = checks_of(n_checks, 800.0)
            stats = await time_requests(limiter, count, checks)
            trips = "-"
            if kind == "redis":
                seen = await count_round_trips(url, limiter, checks)
                per = sum(seen.values()) / MONITORED
                trips = f"{per:g} ({', '.join(f'{k} {v}' for k, v in sorted(seen.items()))})"
        finally:
            await limiter.close()
            if kind == "redis":
                await delete_prefixed(url, prefix)
        rows.append((kind, n_checks, stats, trips))
    return rows


async def delete_prefixed(url: str, prefix: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--backends", nargs="+", default=["memory", "sqlite", "redis"])
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as where:
        for kind in args.backends:
            rows += await bench_backend(kind, args.requests, where, args.redis_url)
    print(f"{args.requests} requests, one at a time (admit, then settle); latency in µs\n")
    print(
        "| backend | checks | admit p50 | admit p99 | settle p50 | settle p99 | req/s "
        f"| round trips per request ({MONITORED} requests: commands) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for kind, n_checks, s, trips in rows:
        print(
            f"| {kind} | {n_checks} | {s['admit_p50']:.0f} | {s['admit_p99']:.0f} "
            f"| {s['settle_p50']:.0f} | {s['settle_p99']:.0f} | {s['rps']:.0f} | {trips} |"
        )


if __name__ == "__main__":
    try:
        import uvloop  # as the gateway runs
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
