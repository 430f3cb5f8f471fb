"""What-if: the same gateway (same config, same pipeline code) with a different HTTP server or
upstream transport, measured side by side. Evidence for hot-path decisions, not a product path.

    serve    run the gateway with --server hypercorn|uvicorn (uvicorn uses httptools + uvloop);
             --transport floor serves no gateway at all: a bare aiohttp pass-through on that
             server, the least a Python proxy on that server stack costs here; --transport
             static answers the mock's reply itself (the server alone, no upstream call)
    compare  start every variant at once (all pinned to one CPU), drive each with wrk (JSON c=1
             and c=32, stream c=8) in interleaved rounds, and print the medians of CPU
             µs/request, req/s and p50/p99 as markdown, then the floor ladder on Hypercorn:
             server alone -> + aiohttp upstream call -> + pipeline -> + governance
             (`--transport governed`: the bench config with interlock-bench-governance.yaml)

    python bench/variants.py compare --rounds 3 --extra-path /tmp/interlock-peers/bench-extra

uvicorn and httptools are not gateway dependencies: `--extra-path` points at a folder made with
`pip install --no-deps --target DIR uvicorn httptools click` (bench/run.sh does that).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "bench" / "interlock-bench.yaml"
SHARED_BENCH = Path(os.environ.get("SHARED_BENCH", REPO.parent / "shared" / "bench"))
KEY = "sk-bench-0123456789abcdef"
VARIANTS = (
    ("hypercorn", "static"),
    ("hypercorn", "floor"),
    ("hypercorn", "gateway"),
    ("hypercorn", "governed"),
    ("uvicorn", "floor"),
    ("uvicorn", "gateway"),
)
# "static": the server alone, answering the mock's reply itself. "floor": no gateway at all, an
# ASGI app that forwards the body with a bare aiohttp session: the least a Python proxy on this
# server stack costs here. "governed": the gateway with bench/interlock-bench-governance.yaml too.
RUNGS = (
    ("static", "Hypercorn alone (answers itself)"),
    ("floor", "+ bare aiohttp upstream call (the floor)"),
    ("gateway", "+ Interlock's pipeline (governance off)"),
    ("governed", "+ key, rpm + tpm limit, SQLite ledger"),
)
SCALE = (  # not rungs: the same floor and gateway on uvicorn + httptools, for scale
    ("floor", "uvicorn + httptools + bare aiohttp (for scale)"),
    ("gateway", "Interlock's pipeline on uvicorn, governance off (for scale)"),
)


def static_app():  # type: ignore[no-untyped-def]
    """Hypercorn alone: reads the request and answers the mock's JSON reply (or its stream in
    one piece) without any upstream call."""
    import json
    import urllib.request

    mock = f"http://127.0.0.1:{os.environ.get('MOCK_PORT', '18080')}"
    canned = {}
    for path, stream in (("/v1/chat/completions", False), ("/stream/v1/chat/completions", True)):
        data = json.dumps({"model": "gpt-mock", "stream": stream}).encode()
        with urllib.request.urlopen(urllib.request.Request(mock + path, data=data)) as reply:
            canned[stream] = (reply.headers.get("content-type", "").encode(), reply.read())

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        kind, data = canned[b'"stream":true' in body]
        headers = [(b"content-type", kind), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    return app


def floor_app(mock: str):  # type: ignore[no-untyped-def]
    import aiohttp

    session: aiohttp.ClientSession | None = None
    json_headers = {"content-type": "application/json"}

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        nonlocal session
        if scope["type"] != "http":
            return
        if session is None:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100), auto_decompress=False
            )
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        stream = b'"stream":true' in body
        url = f"{mock}/stream/v1/chat/completions" if stream else f"{mock}/v1/chat/completions"
        async with session.post(url, data=body, headers=json_headers) as reply:
            kind = reply.headers.get("content-type", "application/json").encode()
            if not stream:
                data = await reply.read()
                await send(
                    {
                        "type": "http.response.start",
                        "status": reply.status,
                        "headers": [
                            (b"content-type", kind),
                            (b"content-length", str(len(data)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": data})
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": reply.status,
                    "headers": [(b"content-type", kind)],
                }
            )
            async for chunk in reply.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    return app


async def serve_uvicorn(config_path: str, port: int, transport: str) -> int:
    import uvicorn

    if transport == "floor":
        mock = f"http://127.0.0.1:{os.environ.get('MOCK_PORT', '18080')}"
        config = uvicorn.Config(
            floor_app(mock),
            host="127.0.0.1",
            port=port,
            loop="none",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level="warning",
        )
        await uvicorn.Server(config).serve()
        return 0

    from compiler import compile_config
    from runtime.app import Gateway, create_app
    from runtime.snapshot import prepare_snapshot

    result = compile_config(config_path)
    if result.table is None:
        return 1
    gateway = Gateway(prepare_snapshot(result.table))
    config = uvicorn.Config(
        create_app(gateway),
        host="127.0.0.1",
        port=port,
        loop="none",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    try:
        await server.serve()
    finally:
        await gateway.state.pool.aclose()
        gateway.access_log.flush()
    return 0


def serve(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    if args.extra_path:
        sys.path.append(args.extra_path)
    if args.server == "hypercorn" and args.transport in ("floor", "static"):
        import uvloop
        from hypercorn.asyncio import serve as hypercorn_serve
        from hypercorn.config import Config

        from runtime.server import hypercorn_config

        config: Config = hypercorn_config()
        config.bind = [f"127.0.0.1:{args.port}"]
        config.accesslog = config.errorlog = None
        mock = f"http://127.0.0.1:{os.environ.get('MOCK_PORT', '18080')}"
        app = floor_app(mock) if args.transport == "floor" else static_app()
        uvloop.run(hypercorn_serve(app, config))
        return 0
    if args.server == "hypercorn":
        from runtime.server import serve as interlock_serve

        return interlock_serve(
            args.config, binds=[f"127.0.0.1:{args.port}"], workers=1, watch=False
        )
    import uvloop

    return uvloop.run(serve_uvicorn(args.config, args.port, args.transport))


def ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_200(port: int, proc: subprocess.Popen[bytes]) -> None:
    import http.client

    body = b'{"model":"gpt-mock","messages":[{"role":"user","content":"hi"}]}'
    for _ in range(400):
        if proc.poll() is not None:
            raise SystemExit(f"variant exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(
                "POST",
                "/v1/chat/completions",
                body=body,
                headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"},
            )
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("variant did not answer 200")


def wrk(port: int, conns: int, seconds: int, stream: bool) -> dict[str, str]:
    env = dict(
        os.environ,
        MODEL="gpt-mock-stream" if stream else "gpt-mock",
        AUTH=KEY,
        STREAM="1" if stream else "0",
        LABEL="variant",
    )
    cmd = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(SHARED_BENCH / "chat.lua"),
        f"http://127.0.0.1:{port}/v1/chat/completions",
    ]
    cmd = ["taskset", "-c", os.environ.get("CLIENT_CPUS", "0"), *cmd]
    text = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False).stdout
    line = next((x for x in text.splitlines() if x.startswith("RESULT")), "")
    return dict(kv.split("=", 1) for kv in line.split()[1:])


CELLS = (("json", 1), ("json", 32), ("stream", 8))


def compare(args: argparse.Namespace) -> int:
    """Every variant up at once (one port each, all pinned to the same CPU), then `--rounds`
    rounds: each cell of each variant in turn, so the VM's drift falls on all of them alike;
    medians per cell. `direct` (wrk straight to the mock) gives the latency the others add."""
    import json
    import statistics
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="interlock-variants-"))
    governed = work / "config-governed"  # the bench file + the governance file, as run.sh serves
    governed.mkdir()
    for name in ("interlock-bench.yaml", "interlock-bench-governance.yaml"):
        (governed / name).write_text((REPO / "bench" / name).read_text())
    env = dict(
        os.environ,
        INTERLOCK_BENCH_UPSTREAM_KEY="sk-mock-upstream",
        INTERLOCK_BENCH_USAGE_DB=str(work / "usage.db"),
        SHARED_BENCH=str(SHARED_BENCH),
    )
    chosen = [v for v in VARIANTS if v[0] != "uvicorn" or args.extra_path]
    procs: dict[tuple[str, str], tuple[int, subprocess.Popen[bytes]]] = {}
    hz = os.sysconf("SC_CLK_TCK")
    found: dict[tuple[str, str, str, int], list[tuple[float, float, float, float, int]]] = {}
    mock_port = int(os.environ.get("MOCK_PORT", "18080"))
    try:
        for n, (server, app) in enumerate(chosen):
            port = args.port + n
            cmd = [sys.executable, __file__, "serve", "--server", server, "--transport", app]
            cmd += ["--port", str(port)]
            cmd += ["--config", str(governed)] if app == "governed" else []
            cmd += ["--extra-path", args.extra_path] if args.extra_path else []
            procs[server, app] = (
                port,
                subprocess.Popen(
                    cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                ),
            )
        for port, proc in procs.values():
            wait_200(port, proc)
            os.sched_setaffinity(proc.pid, {int(c) for c in args.pin.split(",")})
            wrk(port, 8, 2, False)  # warm-up
        for r in range(args.rounds):
            for mode, conns in CELLS:
                for (server, app), (port, proc) in [
                    *procs.items(),
                    (("direct", "mock"), (0, None)),
                ]:
                    if proc is None and conns != 1:
                        continue  # the mock's latency at c=1 is all `direct` is for
                    t0 = ticks(proc.pid) if proc else 0
                    res = wrk(port or mock_port, conns, args.seconds, mode == "stream")
                    used = (ticks(proc.pid) - t0) / hz if proc else 0.0
                    done = int(res.get("requests", 0))
                    cpu = used / done * 1e6 if proc and done else float("nan")
                    errors = int(res.get("non2xx", 0)) + int(res.get("timeouts", 0))
                    cell = (float(res.get("rps", 0)), float(res.get("p50", "nan")))
                    found.setdefault((server, app, mode, conns), []).append(
                        (*cell, float(res.get("p99", "nan")), cpu, errors)
                    )
                    print(
                        f"  round {r + 1}: {server}+{app} {mode} c={conns}: {cell[0]:.0f} req/s, "
                        f"{cpu:.0f} µs CPU/req",
                        file=sys.stderr,
                    )
    finally:
        for _, proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for _, proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    rows = [
        {
            "server": server,
            "app": app,
            "mode": mode,
            "conns": conns,
            **{
                k: statistics.median(v[i] for v in cells)
                for i, k in enumerate(("rps", "p50_ms", "p99_ms", "cpu_us"))
            },
            "errors": sum(v[4] for v in cells),
        }
        for (server, app, mode, conns), cells in found.items()
    ]
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    print(
        f"Every variant pinned to CPU {args.pin}, wrk on CPU {os.environ.get('CLIENT_CPUS', '0')}, "
        f"{args.rounds} interleaved rounds of {args.seconds} s per cell, medians; the gateway rows "
        "serve the same config and pipeline:\n"
    )
    print("| server | app | mode | conns | req/s | p50 ms | p99 ms | CPU µs/req | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['server']} | {row['app']} | {row['mode']} | {row['conns']} | "
            f"{row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['cpu_us']:.0f} "
            f"| {row['errors']} |"
        )
    print("\n" + "\n".join(ladder(rows)))
    return 0


def cells(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """`compare`'s rows by (server, app, mode, conns)."""
    return {(r["server"], r["app"], r["mode"], r["conns"]): r for r in rows}


def ladder(rows: list[dict[str, Any]]) -> list[str]:
    """The floor, rung by rung on Hypercorn: the server alone, + a bare aiohttp upstream call,
    + the gateway's pipeline, + governance; CPU per request and added latency at c=1; then
    the floor and the gateway on uvicorn, for scale."""
    cell = cells(rows)
    direct = cell.get(("direct", "mock", "json", 1), {}).get("p50_ms", float("nan"))
    lines = [
        "### The floor on Hypercorn (medians)",
        "",
        "| rung | CPU µs/req JSON c=32 | step | CPU µs/req stream c=8 | step "
        "| added p50 ms, JSON c=1 |",
        "|---|---|---|---|---|---|",
    ]
    before: dict[str, float] = {}
    rungs = [("hypercorn", app, label) for app, label in RUNGS]
    for server, app, label in [*rungs, *(("uvicorn", app, label) for app, label in SCALE)]:
        if (server, app, "json", 32) not in cell:
            continue  # NOTE: uvicorn is measured only with --extra-path
        json_cpu = cell[server, app, "json", 32]["cpu_us"]
        stream_cpu = cell.get((server, app, "stream", 8), {}).get("cpu_us", float("nan"))
        p50 = cell.get((server, app, "json", 1), {}).get("p50_ms", float("nan"))
        rung = server == "hypercorn"  # NOTE: a step only between rungs, not to the scale rows
        steps = [
            f"+{value - before[mode]:.0f}" if rung and mode in before else "-"
            for mode, value in (("json", json_cpu), ("stream", stream_cpu))
        ]
        lines.append(
            f"| {label} | {json_cpu:.0f} | {steps[0]} | {stream_cpu:.0f} | {steps[1]} "
            f"| {p50 - direct:+.2f} |"
        )
        before = {"json": json_cpu, "stream": stream_cpu}
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--server", choices=("hypercorn", "uvicorn"), default="hypercorn")
    s.add_argument("--transport", choices=[app for _, app in VARIANTS], default="gateway")
    s.add_argument("--port", type=int, default=18094)
    s.add_argument("--config", default=str(CONFIG), help="what a gateway variant serves")
    s.add_argument("--extra-path")
    c = sub.add_parser("compare")
    c.add_argument("--port", type=int, default=18094)
    c.add_argument("--seconds", type=int, default=5)
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--json-out")
    c.add_argument("--pin", default=os.environ.get("PROXY_CPUS", "1"))
    c.add_argument("--extra-path")
    args = parser.parse_args()
    return serve(args) if args.command == "serve" else compare(args)


if __name__ == "__main__":
    raise SystemExit(main())
