"""CPU per request of a response cache hit against a miss, through the same route (a script).

    .venv/bin/python bench/cache_hit.py [--requests 1500] [--rounds 3] [--backend memory|redis]

One `interlock serve` (no ledger, no limits, access log off) in front of the loopback mock
upstream of the tests (tests/upstreams.py, in this process), with one route whose cache policy
applies to every deterministic request. Per round, `--requests` sequential requests over one
keep-alive connection for each mode, the modes alternating round by round:

- ``hit``: the same deterministic chat request (stored once before the round): served from cache;
- ``miss``: a different deterministic request each time: proxied upstream, then stored;
- ``proxied``: a different request each time on a route with no cache policy: plain proxying;
- ``stream hit``: the cached answer replayed as a stream to a streaming client.

The gateway's CPU time (utime + stime from /proc, all threads) over a mode's requests, divided
by their number, is its CPU per request. ``floor`` is a request the route answers itself (a
`reject`): what the HTTP server and the endpoint cost whatever the pipeline does. The report
gives the median over the rounds, against a miss and against a proxied request.

A second table is Interlock's own code without the HTTP server or the network: the ASGI
endpoint called in-process (uvloop) with a stub upstream pool that answers at once.
The issue's target: a hit costs less than a quarter of a proxied request.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.process import free_port  # noqa: E402
from tests.upstreams import MockUpstream  # noqa: E402

MODES = ("hit", "miss", "proxied", "stream hit", "floor")
_TICK = os.sysconf("SC_CLK_TCK")


def config(up: MockUpstream, backend: str) -> str:
    return config_for(up.base_url("openai"), backend)


def config_for(base_url: str, backend: str) -> str:
    return f"""
version: 1
upstreams:
  openai: {{kind: openai, base_url: "{base_url}", api_key: sk-bench}}
models:
  gpt: {{targets: [{{upstream: openai, model: up-gpt}}]}}
routes:
  - {{name: plain, match: {{headers: {{x-bench: plain}}}}, action: {{}}}}
  - name: floor
    match: {{headers: {{x-bench: floor}}}}
    action: {{reject: {{status: 429, message: "the floor: answered by the route itself"}}}}
  - {{name: cached, match: {{}}, action: {{cache: answers}}}}
cache:
  backend: {backend}
  policies:
    answers: {{ttl_s: 3600, max_entries: 100000}}
observability: {{access_log: {{enabled: false}}}}
"""


_RUN = os.urandom(4).hex()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def body(content: str, *, stream: bool = False) -> dict[str, object]:
    return {
        "model": "gpt",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": content},
        ],
        "temperature": 0,
        "max_tokens": 64,
        "stream": stream,
    }


def run_mode(client: httpx.Client, pid: int, mode: str, count: int, round_no: int) -> float:
    """CPU µs per request of `count` requests of `mode`."""
    started = cpu_seconds(pid)
    for n in range(count):
        if mode == "hit":
            reply = client.post("/v1/chat/completions", json=body("the same question"))
        elif mode == "stream hit":
            reply = client.post("/v1/chat/completions", json=body("the same question", stream=True))
        elif mode == "miss":
            question = f"question {_RUN} {round_no}-{n}"  # NOTE: never stored by an earlier run
            reply = client.post("/v1/chat/completions", json=body(question))
        else:
            reply = client.post(
                "/v1/chat/completions",
                json=body(f"{mode} {round_no}-{n}"),
                headers={"x-bench": "plain" if mode == "proxied" else "floor"},
            )
        if reply.status_code != (429 if mode == "floor" else 200):
            raise SystemExit(f"{mode}: HTTP {reply.status_code}: {reply.text[:200]}")
        expected = {"hit": "hit", "stream hit": "hit", "miss": "miss"}.get(mode)  # else none
        if round_no >= 0 and reply.headers.get("x-interlock-cache") != expected:
            raise SystemExit(f"{mode}: x-interlock-cache {reply.headers.get('x-interlock-cache')}")
    return (cpu_seconds(pid) - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", choices=("memory", "redis"), default="memory")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    backend = (
        "{kind: memory}"
        if args.backend == "memory"
        else f'{{kind: redis, url: "{args.redis_url}"}}'
    )
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    with MockUpstream() as up, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(config(up, backend), encoding="utf-8")
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime.cli",
                "serve",
                str(path),
                "--no-watch",
                "--bind",
                f"127.0.0.1:{port}",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                wait_ready(client)
                for mode in MODES:  # NOTE: warm-up; also stores the entry the hits read
                    run_mode(client, proc.pid, mode, 200, -1)
                for round_no in range(args.rounds):
                    order = MODES if round_no % 2 == 0 else tuple(reversed(MODES))
                    for mode in order:
                        results[mode].append(
                            run_mode(client, proc.pid, mode, args.requests, round_no)
                        )
                        print(
                            f"round {round_no + 1} {mode}: {results[mode][-1]:.0f} µs",
                            file=sys.stderr,
                        )
        finally:
            proc.terminate()
            proc.wait(15)
    median = {mode: statistics.median(values) for mode, values in results.items()}
    print(
        f"backend: {args.backend}; {args.requests} requests x {args.rounds} rounds;"
        " median CPU µs per request"
    )
    print("| mode | CPU µs/request | vs miss | vs proxied |")
    print("|---|---:|---:|---:|")
    for mode in MODES:
        print(
            f"| {mode} | {median[mode]:.0f} | {median[mode] / median['miss']:.2f} |"
            f" {median[mode] / median['proxied']:.2f} |"
        )
    in_process(args.requests)


def wait_ready(client: httpx.Client) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit("interlock did not start")


# --- in process: the ASGI endpoint, no server, stub upstream ---------------------------------

_STUB_REPLY = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"up-gpt","choices":'
    b'[{"index":0,"message":{"role":"assistant","content":"a short answer of some words"},'
    b'"logprobs":null,"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":20,"completion_tokens":7,"total_tokens":27}}'
)


async def endpoint_us(mode: str, count: int) -> float:
    """Best-of-5 CPU µs per request of the ASGI endpoint for `mode`."""
    import asyncio

    import msgspec

    from runtime.app import ApiEndpoint, Gateway
    from runtime.snapshot import prepare_snapshot
    from runtime.upstream import Reply
    from tests.served import compile_yaml

    text = config_for("http://127.0.0.1:9/v1", "{kind: memory}")
    gateway = Gateway(prepare_snapshot(compile_yaml(text)))

    async def stub_send(
        upstream: object, path: str, headers: object, body: bytes, *, stream: bool
    ) -> Reply:
        return Reply(200, [("content-type", "application/json")], body=_STUB_REPLY)

    gateway.state.pool.send = stub_send  # type: ignore[method-assign]
    endpoint = ApiEndpoint(gateway, "openai.chat")
    never = asyncio.Event()
    header = {"floor": b"floor", "proxied": b"plain"}.get(mode)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", b"application/json")]
        + ([(b"x-bench", header)] if header else []),
    }
    seq = 0

    async def one() -> None:
        nonlocal seq
        seq += 1
        content = f"{mode} {seq}" if mode in ("miss", "proxied", "floor") else "the same question"
        raw = msgspec.json.encode(body(content, stream=mode == "stream hit"))
        calls = 0

        async def receive() -> dict[str, object]:
            nonlocal calls
            calls += 1
            if calls == 1:
                return {"type": "http.request", "body": raw, "more_body": False}
            await never.wait()
            return {"type": "http.disconnect"}

        async def send(message: object) -> None:
            return None

        await endpoint(scope, receive, send)  # type: ignore[arg-type]

    for _ in range(50):
        await one()
        await asyncio.sleep(0)  # NOTE: let the store of a miss land
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(count):
            await one()
        best = min(best, (time.process_time() - started) / count)
        await asyncio.sleep(0.01)
    await gateway.close()
    return best * 1e6


def in_process(count: int) -> None:
    import uvloop

    rows = {mode: uvloop.run(endpoint_us(mode, count)) for mode in MODES}
    print()
    print("In process (ASGI endpoint, uvloop, memory backend, stub upstream; no HTTP server,")
    print("no network):")
    print("| mode | CPU µs/request |")
    print("|---|---:|")
    for mode, value in rows.items():
        print(f"| {mode} | {value:.1f} |")


if __name__ == "__main__":
    main()
