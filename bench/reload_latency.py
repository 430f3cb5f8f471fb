"""Hot-reload latency under load: how long from a config change until the new version answers?

Starts `interlock serve` twice on the built-in mock upstream (no network), keeps concurrent
request loops (non-streaming and streaming) running, and changes the config `--reloads` times:

    write    the server watches the file; t0 = the moment a rename-save (temp file + os.replace)
             is complete; the watcher debounces (50 ms quiet, 500 ms max), compiles, swaps
    sighup   the server runs with --no-watch; the file is saved first, t0 = SIGHUP sent

For each reload, a prober sends requests back to back and records when the first response
carrying the new `x-interlock-config-version` arrives. Prints a markdown table of p50/p99/max
latency and the requests (and failures) the load loops saw during the reloads:

    python bench/reload_latency.py --reloads 100 --loops 4 --streams 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent

CONFIG = """version: 1
server:
  drain_timeout_s: 5
upstreams:
  demo:
    kind: mock
    mock: {{reply: "reply {serial}", stream_chunks: 8, chunk_delay_ms: 25}}
models:
  chat: {{targets: [{{upstream: demo}}]}}
observability:
  access_log: {{enabled: false}}
"""


@dataclass
class Load:
    requests: int = 0
    streams: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class Result:
    trigger: str
    latencies: list[float]
    load: Load
    seconds: float
    by: dict[str, int] = field(default_factory=dict)  # reloads by the trigger the log names


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def save(path: Path, text: str) -> None:
    """An editor's atomic save: a temporary file in the same directory renamed over the file."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(temp, path)


async def wait_ready(client: httpx.AsyncClient, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"interlock exited with {proc.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if (await client.get("/healthz")).status_code == 200:
                return
        await asyncio.sleep(0.02)
    raise SystemExit("interlock did not start")


async def load_loop(
    client: httpx.AsyncClient, stream: bool, stop: asyncio.Event, load: Load
) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    while not stop.is_set():
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                data = await response.aread()
            ok = response.status_code == 200 and (not stream or data.rstrip().endswith(b"[DONE]"))
        except httpx.HTTPError as exc:
            ok = False
            load.errors.append(f"{type(exc).__name__}: {exc}")
        load.requests += not stream
        load.streams += stream
        if not ok:
            load.failed += 1
        await asyncio.sleep(0.002)


async def version(client: httpx.AsyncClient) -> str:
    body = {"model": "chat", "messages": [{"role": "user", "content": "probe"}]}
    response = await client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    return response.headers["x-interlock-config-version"]


def run(trigger: str, reloads: int, loops: int, streams: int, workdir: Path) -> Result:
    """Serve a config for `trigger`, measure `reloads` reloads under load, stop the server."""
    config = workdir / f"{trigger}.yaml"
    config.write_text(CONFIG.format(serial=0), encoding="utf-8")
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "runtime.cli",
        "serve",
        str(config),
        "--bind",
        f"127.0.0.1:{port}",
    ]
    if trigger == "sighup":
        args.append("--no-watch")
    with (workdir / f"{trigger}.log").open("w") as log:
        proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            result = asyncio.run(measure(trigger, proc, port, config, reloads, loops, streams))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    found = re.findall(r"reload \((\w+)\) ok", (workdir / f"{trigger}.log").read_text())
    result.by = {name: found.count(name) for name in sorted(set(found))}
    return result


async def measure(
    trigger: str,
    proc: subprocess.Popen[bytes],
    port: int,
    config: Path,
    reloads: int,
    loops: int,
    streams: int,
) -> Result:
    load = Load()
    latencies: list[float] = []
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=loops + streams + 4)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits
    ) as client:
        await wait_ready(client, proc)
        tasks = [
            asyncio.ensure_future(load_loop(client, i < streams, stop, load))
            for i in range(loops + streams)
        ]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        current = await version(client)
        for serial in range(1, reloads + 1):
            save(config, CONFIG.format(serial=serial))
            t0 = time.monotonic()  # write: the save is complete; sighup: the signal is sent
            if trigger == "sighup":
                proc.send_signal(signal.SIGHUP)
            while (seen := await version(client)) == current:
                if time.monotonic() - t0 > 10:
                    raise SystemExit(f"reload {serial} not live after 10 s")
            latencies.append(time.monotonic() - t0)
            current = seen
            await asyncio.sleep(0.05)
        seconds = time.monotonic() - started
        stop.set()
        await asyncio.gather(*tasks)
    return Result(trigger, latencies, load, seconds)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def table(results: list[Result]) -> str:
    lines = [
        "| trigger | reloads | p50 ms | p99 ms | max ms | mean ms | requests | streams | failed"
        " | reloaded by |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        ms = [x * 1000 for x in r.latencies]
        lines.append(
            f"| {r.trigger} | {len(ms)} | {percentile(ms, 0.5):.1f} | {percentile(ms, 0.99):.1f}"
            f" | {max(ms):.1f} | {statistics.fmean(ms):.1f} | {r.load.requests} |"
            f" {r.load.streams} | {r.load.failed} |"
            f" {', '.join(f'{k} {v}' for k, v in r.by.items())} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=100)
    parser.add_argument("--loops", type=int, default=4, help="non-streaming request loops")
    parser.add_argument("--streams", type=int, default=2, help="streaming request loops")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="interlock-reload-") as tmp:
        results = [
            run(trigger, args.reloads, args.loops, args.streams, Path(tmp))
            for trigger in ("write", "sighup")
        ]
    print(
        f"Reload latency: settled change -> first response on the new version "
        f"({args.loops} request loops + {args.streams} stream loops of load, "
        f"{os.cpu_count()} CPUs)\n"
    )
    print(table(results))
    failed = sum(r.load.failed for r in results)
    for r in results:
        for error in r.load.errors[:3]:
            print(f"{r.trigger}: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
