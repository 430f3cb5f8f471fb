"""Instructions per request for governance variants, counted by Valgrind's callgrind: the same
figure on every run, where CPU time on a shared VM drifts by ±10 % within a minute.

    .venv/bin/python bench/instructions.py --variants off,auth,sqlite,limits-memory,all

Each variant (`interleaved.VARIANTS`) is served under ``valgrind --tool=callgrind`` (about 40x
slower; ~40 s to start), answers 200 warm-up requests, has its counters zeroed, answers
`--requests` more (JSON or stream, one at a time over 4 keep-alive connections, or
`--concurrency` at once, one connection each) and dumps them (`--keep DIR` keeps the dumps,
for ``callgrind_annotate``). Two variants run at once.
Reported: instructions per request on the event loop's thread, on other threads (the SQLite
ledger's writer) and in all, against the first variant.

The ledger's batches: a loaded gateway (1,000+ requests/s, flushing every 0.2 s) writes
200-record batches, but under callgrind one request at a time it would write ~6, overstating
the per-batch costs (a transaction, a hop to the writer's thread) ~30-fold. So ledger variants
run with ``usage.flush_interval_s`` = `--flush-s` (10 s: ~200 records at callgrind's pace), and
both the warm-up's and the counted requests' records are flushed before zeroing and dumping.

Redis: one request at a time, the limiter has nothing to batch (each admission and each
settlement is an EVALSHA of its own); `--concurrency 32` lets it batch as under load. For Redis
variants it also reports the EVAL/EVALSHA calls Redis answered per counted request.

What it does not show: cycles (cache misses and system calls are not counted). Output:
markdown on stdout; progress on stderr. Needs valgrind.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import governance as g
import interleaved as il

_LINE = re.compile(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)")
_MAIN = "uv_run"  # the event loop's thread: everything under libuv's loop
_THREADS = "pthread_create.c:start_thread"  # every other thread
# Not gateways: `variants.py serve --transport floor|static` (Hypercorn + a bare aiohttp
# pass-through; Hypercorn alone answering the mock's reply), the floor under the pipeline.
FLOORS = {"floor": "Hypercorn + bare aiohttp (floor)", "static": "Hypercorn alone (static)"}


def send(port: int, count: int, stream: bool, concurrency: int = 1) -> None:
    """`count` chat completions over 4 keep-alive connections one at a time, or over
    `concurrency` connections at once; raises unless every one answers 200."""
    model, extra = ("gpt-mock-stream", ',"stream":true') if stream else ("gpt-mock", "")
    body = f'{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]{extra}}}'.encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {g.KEY}"}

    def run(connections: int, requests: int) -> None:
        conns = [
            http.client.HTTPConnection("127.0.0.1", port, timeout=300) for _ in range(connections)
        ]
        for n in range(requests):
            conn = conns[n % connections]
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"port {port}: status {response.status}")

    if concurrency <= 1:
        run(4, count)
        return
    with ThreadPoolExecutor(concurrency) as pool:
        shares = [count // concurrency + (i < count % concurrency) for i in range(concurrency)]
        for job in [pool.submit(run, 1, share) for share in shares]:
            job.result()


def redis_round_trips() -> int:
    """EVAL/EVALSHA calls the bench's Redis has answered so far (a limiter batch is one)."""
    import redis

    client = redis.Redis.from_url(g.REDIS_URL)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(int(v.get("calls", 0)) for k, v in stats.items() if k.startswith("cmdstat_eval"))


def count(
    variant: str,
    port: int,
    requests: int,
    stream: bool,
    tmp: Path,
    flush_s: float,
    concurrency: int = 1,
) -> dict[str, float]:
    """Instructions per request of one variant: main thread, other threads, total."""
    folder = tmp / variant
    folder.mkdir(exist_ok=True)
    out = folder / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
    ledger = variant in il.VARIANTS and il.VARIANTS[variant].ledger is not None
    if variant in FLOORS:  # NOTE: no gateway: Hypercorn with a bare aiohttp pass-through or alone
        cmd += [str(g.REPO / "bench" / "variants.py"), "serve", "--server", "hypercorn"]
        cmd += ["--transport", variant, "--port", str(port)]
    else:
        config = g.write_config(il.VARIANTS[variant], folder)
        if ledger:  # NOTE: batches of the size a loaded gateway writes (see the module docstring)
            text = config.read_text()
            config.write_text(text.replace("usage:\n", f"usage:\n  flush_interval_s: {flush_s}\n"))
        cmd += ["-m", "runtime.cli", "serve", str(config), "--bind", f"127.0.0.1:{port}"]
        cmd += ["--no-watch"]
    settle = flush_s + 2 if ledger else 1  # NOTE: the warm-up's records written before zeroing
    env = dict(os.environ, MOCK_PORT=str(g.MOCK_PORT), INTERLOCK_BENCH_UPSTREAM_KEY="sk-mock")
    env["PYTHONHASHSEED"] = "0"  # NOTE: the same dict and set layouts on every run
    log = folder / "log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, cwd=g.REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    g.log(f"{variant}: starting under callgrind (~40 s)")
    try:
        g.wait_ready(port, proc, log, timeout_s=300)
        send(port, 200, stream, concurrency)
        time.sleep(settle)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
        g.log(f"{variant}: counting {requests} requests")
        calls = redis_round_trips() if "redis" in variant else None
        send(port, requests, stream, concurrency)
        time.sleep(settle)  # NOTE: the counted requests' records written before dumping
        if calls is not None:
            calls = redis_round_trips() - calls
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
        time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(120)
    dump = next(folder.glob("callgrind.out.*"))  # the -d dump: counts since the zeroing
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", str(dump)], capture_output=True, text=True
    ).stdout
    found = {"total": 0.0, "main": 0.0, "threads": 0.0}
    if calls is not None:
        found["redis_round_trips"] = calls / requests
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        value = int(match.group(1).replace(",", "")) / requests
        name = match.group(2)
        if name.startswith("PROGRAM TOTALS"):
            found["total"] = value
        elif f":{_MAIN} " in name or name.endswith(f":{_MAIN}"):
            found["main"] = max(found["main"], value)
        elif _THREADS in name:
            found["threads"] = max(found["threads"], value)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--variants", default="off,auth,sqlite,limits-memory,all")
    parser.add_argument("--mode", choices=("json", "stream"), default="json")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--keep", type=Path, help="keep each variant's callgrind dump here")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="requests at once (1: one at a time)"
    )
    parser.add_argument(
        "--flush-s",
        type=float,
        default=10.0,
        help="usage.flush_interval_s of ledger variants (10: ~200-record batches under callgrind)",
    )
    args = parser.parse_args()
    ids = args.variants.split(",")
    unknown = [i for i in ids if i not in il.VARIANTS and i not in FLOORS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join([*il.VARIANTS, *FLOORS])}")
    g.ensure_mock()
    stream = args.mode == "stream"
    with (
        tempfile.TemporaryDirectory(prefix="interlock-ir-") as tmp_name,
        ThreadPoolExecutor(2) as pool,
    ):
        folder = args.keep or Path(tmp_name)
        folder.mkdir(parents=True, exist_ok=True)
        jobs = {
            vid: pool.submit(
                count,
                vid,
                18300 + n,
                args.requests,
                stream,
                folder,
                args.flush_s,
                args.concurrency,
            )
            for n, vid in enumerate(ids)
        }
        results = {vid: job.result() for vid, job in jobs.items()}
    base = results[ids[0]]
    pace = "one at a time" if args.concurrency <= 1 else f"{args.concurrency} at a time"
    print(f"# Instructions per request ({args.mode}, {args.requests} requests {pace})\n")
    print("| variant | event loop thread | other threads | total | total vs first |")
    print("|---|---|---|---|---|")
    for vid in ids:
        r = results[vid]
        change = "" if vid == ids[0] else f"{(r['total'] / base['total'] - 1) * 100:+.1f} %"
        name = FLOORS.get(vid) or il.VARIANTS[vid].name
        print(
            f"| {name} | {r['main'] / 1e3:,.0f}k | {r['threads'] / 1e3:,.0f}k "
            f"| {r['total'] / 1e3:,.0f}k | {change} |"
        )
    for vid in ids:
        if "redis_round_trips" in results[vid]:
            trips = results[vid]["redis_round_trips"]
            print(f"\n{il.VARIANTS[vid].name}: {trips:.3f} Redis round trips (EVALSHA) per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
