"""Upstream HTTP client comparison: which transport should the gateway use to call upstreams?

Calls the shared harness's nginx mock directly (no gateway) from one asyncio process on uvloop,
as the gateway would, with each client at concurrency 1 and 32 over keep-alive connections:

    httpx          httpx.AsyncClient with its default transport (httpcore + anyio)
    httpx+aiohttp  httpx.AsyncClient(transport=httpx_aiohttp.AiohttpTransport(...))
    httpx2         httpx2.AsyncClient (pydantic's fork, httpcore2 pool) with its default transport
    aiohttp        a bare aiohttp.ClientSession: the floor for the aiohttp-backed transport

For each: p50/p99 latency (request sent -> whole body read; for streams also -> first chunk),
req/s, and the client's own CPU time per request (what it would cost the gateway's one core).
Prints a markdown table; `--json-out` keeps the raw numbers.

    python bench/clients.py --seconds 5 --concurrency 1 32 --pin 1
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import aiohttp
import httpx
import httpx2
import uvloop
from httpx_aiohttp import AiohttpTransport

BODY = (
    b'{"model":"gpt-mock","messages":[{"role":"system","content":"You are terse."},'
    b'{"role":"user","content":"Say hello in five words."}],"max_tokens":16,"temperature":0}'
)
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-mock"}
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=64, keepalive_expiry=60)
TIMEOUT = httpx.Timeout(connect=2, read=30, write=30, pool=None)

# One call: returns seconds to the first body chunk (streams) or None, after reading the body.
Call = Callable[[], Awaitable[float | None]]


@dataclass
class Result:
    client: str
    mode: str
    concurrency: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    first_chunk_p50_ms: float | None
    cpu_us_per_req: float
    errors: int


def httpx_calls(client: httpx.AsyncClient, url: str, stream: bool) -> Call:
    if not stream:

        async def call() -> float | None:
            response = await client.post(url, content=BODY, headers=HEADERS)
            if response.status_code != 200:
                raise RuntimeError(response.status_code)
            return None

        return call

    async def call_stream() -> float | None:
        started = time.perf_counter()
        first: float | None = None
        async with client.stream("POST", url, content=BODY, headers=HEADERS) as response:
            async for _chunk in response.aiter_raw():
                if first is None:
                    first = time.perf_counter() - started
        return first

    return call_stream


def aiohttp_calls(session: aiohttp.ClientSession, url: str, stream: bool) -> Call:
    if not stream:

        async def call() -> float | None:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(response.status)
            return None

        return call

    async def call_stream() -> float | None:
        started = time.perf_counter()
        first: float | None = None
        async with session.post(url, data=BODY, headers=HEADERS) as response:
            async for _chunk in response.content.iter_any():
                if first is None:
                    first = time.perf_counter() - started
        return first

    return call_stream


async def measure(call: Call, concurrency: int, seconds: float, warmup: float) -> dict[str, object]:
    latencies: list[float] = []
    firsts: list[float] = []
    errors = 0
    stop_at = 0.0
    recording = False

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                first = await call()
            except Exception:
                errors += 1
                continue
            if recording:
                latencies.append(time.perf_counter() - started)
                if first is not None:
                    firsts.append(first)

    stop_at = time.perf_counter() + warmup
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    gc.collect()
    recording = True
    errors = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    stop_at = wall0 + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu1, wall1 = time.process_time(), time.perf_counter()
    n = len(latencies)
    return {
        "requests": n,
        "rps": n / (wall1 - wall0),
        "p50_ms": _pct(latencies, 50) * 1e3,
        "p99_ms": _pct(latencies, 99) * 1e3,
        "first_chunk_p50_ms": _pct(firsts, 50) * 1e3 if firsts else None,
        "cpu_us_per_req": (cpu1 - cpu0) / max(n, 1) * 1e6,
        "errors": errors,
    }


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


async def run_client(name: str, base: str, args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    for mode in args.modes:
        stream = mode == "stream"
        url = f"{base}/stream/v1/chat/completions" if stream else f"{base}/v1/chat/completions"
        for concurrency in args.concurrency:
            async with _client(name) as client:
                call = (
                    aiohttp_calls(client, url, stream)
                    if isinstance(client, aiohttp.ClientSession)
                    else httpx_calls(client, url, stream)
                )
                numbers = await measure(call, concurrency, args.seconds, args.warmup)
            results.append(Result(name, mode, concurrency, **numbers))  # type: ignore[arg-type]
            print(
                f"  {name:14} {mode:6} c={concurrency:<3} {numbers['rps']:8.0f} req/s  "
                f"p50 {numbers['p50_ms']:.3f} ms  p99 {numbers['p99_ms']:.3f} ms  "
                f"cpu {numbers['cpu_us_per_req']:.0f} us/req",
                file=sys.stderr,
            )
            await asyncio.sleep(0.5)
    return results


def _client(name: str) -> httpx.AsyncClient | aiohttp.ClientSession:
    if name == "httpx":
        return httpx.AsyncClient(limits=LIMITS, timeout=TIMEOUT, trust_env=False)
    if name == "httpx2":
        return httpx2.AsyncClient(  # type: ignore[return-value]
            limits=httpx2.Limits(
                max_connections=100, max_keepalive_connections=64, keepalive_expiry=60
            ),
            timeout=httpx2.Timeout(connect=2, read=30, write=30, pool=None),
            trust_env=False,
        )
    if name == "httpx+aiohttp":
        transport = AiohttpTransport(limits=LIMITS, trust_env=False)
        return httpx.AsyncClient(
            transport=transport, limits=LIMITS, timeout=TIMEOUT, trust_env=False
        )
    if name == "aiohttp":
        connector = aiohttp.TCPConnector(limit=100, keepalive_timeout=60)
        return aiohttp.ClientSession(connector=connector, auto_decompress=False)
    raise SystemExit(f"unknown client {name!r}")


def render(results: list[Result]) -> str:
    lines = [
        "| client | mode | conc | req/s | p50 ms | p99 ms | first chunk p50 ms |"
        " client CPU µs/req | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        first = f"{r.first_chunk_p50_ms:.3f}" if r.first_chunk_p50_ms is not None else "-"
        lines.append(
            f"| {r.client} | {r.mode} | {r.concurrency} | {r.rps:.0f} | {r.p50_ms:.3f} | "
            f"{r.p99_ms:.3f} | {first} | {r.cpu_us_per_req:.0f} | {r.errors} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mock = f"http://127.0.0.1:{os.environ.get('MOCK_PORT', '18080')}"
    parser.add_argument("--mock", default=mock)
    parser.add_argument(
        "--clients", nargs="+", default=["httpx", "httpx2", "httpx+aiohttp", "aiohttp"]
    )
    parser.add_argument("--modes", nargs="+", default=["json", "stream"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--pin", help="CPU list for this process (e.g. 1), like a pinned proxy")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {int(c) for c in args.pin.split(",")})
    results: list[Result] = []
    for name in args.clients:
        results += uvloop.run(run_client(name, args.mock, args))
    table = render(results)
    print(table)
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump([asdict(r) for r in results], fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
