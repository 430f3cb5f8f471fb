"""What-if: the same gateway (same config, same pipeline code) with a different HTTP server or
upstream transport, measured side by side. Evidence for hot-path decisions, not a product path.

    serve    run the gateway with --server hypercorn|uvicorn (uvicorn uses httptools + uvloop);
             --transport floor serves no gateway at all: a bare aiohttp pass-through on that
             server, the least a Python proxy on that server stack costs here
    compare  start each variant in turn, drive it with wrk (JSON c=1 and c=32, stream c=8) on the
             gateway's own CPU (pinned), and print CPU µs/request, req/s and p50/p99 as markdown

    python bench/variants.py compare --seconds 5 --extra-path /tmp/interlock-peers/bench-extra

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

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "bench" / "interlock-bench.yaml"
SHARED_BENCH = Path(os.environ.get("SHARED_BENCH", REPO.parent / "shared" / "bench"))
KEY = "sk-bench-0123456789abcdef"
VARIANTS = (
    ("hypercorn", "gateway"),
    ("hypercorn", "floor"),
    ("uvicorn", "gateway"),
    ("uvicorn", "floor"),
)
# "floor": no gateway at all, an ASGI app that forwards the body with a bare aiohttp session:
# the least a Python proxy on this server stack costs here.


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
    if args.server == "hypercorn" and args.transport == "floor":
        import uvloop
        from hypercorn.asyncio import serve as hypercorn_serve
        from hypercorn.config import Config

        from runtime.server import hypercorn_config

        config: Config = hypercorn_config()
        config.bind = [f"127.0.0.1:{args.port}"]
        config.accesslog = config.errorlog = None
        mock = f"http://127.0.0.1:{os.environ.get('MOCK_PORT', '18080')}"
        uvloop.run(hypercorn_serve(floor_app(mock), config))
        return 0
    if args.server == "hypercorn":
        from runtime.server import serve as interlock_serve

        return interlock_serve(
            str(CONFIG), binds=[f"127.0.0.1:{args.port}"], workers=1, watch=False
        )
    import uvloop

    return uvloop.run(serve_uvicorn(str(CONFIG), args.port, args.transport))


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


def compare(args: argparse.Namespace) -> int:
    env = dict(
        os.environ, INTERLOCK_BENCH_UPSTREAM_KEY="sk-mock-upstream", SHARED_BENCH=str(SHARED_BENCH)
    )
    rows = []
    hz = os.sysconf("SC_CLK_TCK")
    for server, transport in VARIANTS:
        if server == "uvicorn" and not args.extra_path:
            continue
        cmd = [
            sys.executable,
            __file__,
            "serve",
            "--server",
            server,
            "--transport",
            transport,
            "--port",
            str(args.port),
        ] + (["--extra-path", args.extra_path] if args.extra_path else [])
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_200(args.port, proc)
            os.sched_setaffinity(proc.pid, {int(c) for c in args.pin.split(",")})
            wrk(args.port, 8, 2, False)  # warm-up
            for mode, conns in (("json", 1), ("json", 32), ("stream", 8)):
                t0 = ticks(proc.pid)
                r = wrk(args.port, conns, args.seconds, mode == "stream")
                used = (ticks(proc.pid) - t0) / hz
                n = int(r.get("requests", 0))
                rows.append(
                    (
                        server,
                        transport,
                        mode,
                        conns,
                        float(r.get("rps", 0)),
                        r.get("p50", "-"),
                        r.get("p99", "-"),
                        used / n * 1e6 if n else float("nan"),
                        int(r.get("non2xx", 0)) + int(r.get("timeouts", 0)),
                    )
                )
                print(
                    f"  {server}+{transport} {mode} c={conns}: {rows[-1][4]:.0f} req/s, "
                    f"{rows[-1][7]:.0f} µs CPU/req",
                    file=sys.stderr,
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        time.sleep(0.5)
    print(
        f"Gateway pinned to CPU {args.pin}, wrk on CPU {os.environ.get('CLIENT_CPUS', '0')}, "
        f"{args.seconds} s per cell, same config and pipeline:\n"
    )
    print("| server | app | mode | conns | req/s | p50 ms | p99 ms | gateway CPU µs/req | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s, t, mode, c, rps, p50, p99, cpu, errors in rows:
        print(f"| {s} | {t} | {mode} | {c} | {rps:.0f} | {p50} | {p99} | {cpu:.0f} | {errors} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--server", choices=("hypercorn", "uvicorn"), default="hypercorn")
    s.add_argument("--transport", choices=("gateway", "floor"), default="gateway")
    s.add_argument("--port", type=int, default=18094)
    s.add_argument("--extra-path")
    c = sub.add_parser("compare")
    c.add_argument("--port", type=int, default=18094)
    c.add_argument("--seconds", type=int, default=5)
    c.add_argument("--pin", default=os.environ.get("PROXY_CPUS", "1"))
    c.add_argument("--extra-path")
    args = parser.parse_args()
    return serve(args) if args.command == "serve" else compare(args)


if __name__ == "__main__":
    raise SystemExit(main())
