"""Where a proxied request's time goes, stage by stage.

Two views, printed as markdown:

1. **Pure stages in-process** (`timeit`, no sockets): the gateway's own per-request functions on
   the benchmark's request, with the table compiled from `bench/interlock-bench.yaml`: header dict,
   request id, msgspec head decode, route match, full JSON decode, transforms, header policies,
   payload encode, response check and headers, access-log line, ASGI header encoding, building the
   httpx request; then the whole pipeline and the whole ASGI endpoint with a stub upstream (no I/O).
2. **Profile under load** (`--profile`): starts Interlock, drives it with wrk (JSON c=8, JSON c=32,
   stream c=8), samples it with `py-spy record --native`, and attributes every sample to the
   deepest pipeline stage on its stack (library frames count for the stage that called them).
   Shares are turned into microseconds per request with the CPU time the process used during the
   run divided by the requests wrk completed.

    python bench/stages.py                      # in-process only, ~20 s
    python bench/stages.py --profile            # + py-spy under load (needs the mock on :18080)

Run with the repo's venv (it imports the gateway). py-spy comes from `--py-spy` or PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONFIG = REPO / "bench" / "interlock-bench.yaml"
SHARED_BENCH = Path(os.environ.get("SHARED_BENCH", REPO.parent / "shared" / "bench"))
REQUEST = (
    b'{"model":"gpt-mock","messages":[{"role":"system","content":"You are terse."},'
    b'{"role":"user","content":"Say hello in five words."}],"max_tokens":16,"temperature":0}'
)
CLIENT_HEADERS = [  # what wrk sends (chat.lua with AUTH set), as the ASGI scope carries them
    (b"host", b"127.0.0.1:18090"),
    (b"content-type", b"application/json"),
    (b"authorization", b"Bearer sk-bench-0123456789"),
    (b"content-length", str(len(REQUEST)).encode()),
]
MOCK_REPLY = (
    b'{"id":"chatcmpl-mock123","object":"chat.completion","created":1700000000,"model":"gpt-mock",'
    b'"system_fingerprint":"fp_mock","choices":[{"index":0,"message":{"role":"assistant","content":'
    b'"Hello! This is a fixed reply from the mock upstream."},"logprobs":null,"finish_reason":'
    b'"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":11,"total_tokens":23}}'
)
MOCK_HEADERS = [
    ("Server", "nginx/1.22.1"),
    ("Date", "Mon, 23 Nov 2026 06:00:00 GMT"),
    ("Content-Type", "application/json"),
    ("Content-Length", str(len(MOCK_REPLY))),
    ("Connection", "keep-alive"),
]


# --- 1. pure stages ---------------------------------------------------------------------------


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends, without an event loop (a stage, not I/O)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the coroutine suspended: it does I/O, not a pure stage")


def best_us(fn: Callable[[], object], repeat: int = 5, budget_s: float = 0.2) -> float:
    """Best-of-`repeat` mean CPU time of one call, in microseconds.

    NOTE: CPU time, not wall time: on a shared 2-core box other processes stretch wall time
    (2x seen with a load average of 4) far more than the CPU this process spends."""
    timer = timeit.Timer(fn, timer=time.process_time)
    number, _ = timer.autorange()
    number = max(1, int(number * budget_s / 0.2))
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def pure_stages() -> list[tuple[str, float | None, str]]:
    """(stage, µs per call or None, note) for each stage of one benchmark request."""
    os.environ.setdefault("INTERLOCK_BENCH_UPSTREAM_KEY", "sk-mock-upstream")
    import httpx
    import msgspec

    from compiler import compile_config
    from compiler.headers import apply_header_policies, protect_client_headers
    from compiler.matcher import match_route
    from compiler.transforms import apply_request_steps
    from runtime import app as app_mod
    from runtime import pipeline as pl
    from runtime.accesslog import AccessLog
    from runtime.bridge import bridge_for
    from runtime.request import RequestContext
    from runtime.snapshot import prepare_snapshot
    from runtime.upstream import Reply

    result = compile_config(str(CONFIG))
    if result.table is None:
        raise SystemExit(f"{CONFIG} does not compile: {[d.code for d in result.diagnostics]}")
    snap = prepare_snapshot(result.table)
    table = snap.table
    scope = {
        "type": "http",
        "headers": CLIENT_HEADERS,
        "method": "POST",
        "path": "/v1/chat/completions",
    }
    headers = app_mod._headers(scope)
    rid = app_mod._request_id(headers, snap)
    ctx = RequestContext.parse("openai.chat", REQUEST, headers, rid)
    route = match_route(table, ctx)
    if route is None:
        raise SystemExit("the benchmark request matches no route: the bench config is broken")
    action = route.action
    model = table.resolve_model(route.action.model or ctx.model or "")
    target = model.targets[0] if model is not None else None
    upstream = snap.upstreams[target.upstream.name] if target is not None else None
    request_steps = [s for p in action.transforms for s in p.request]
    state = pl.GatewayState()
    call = pl._Call(state, snap, ctx, route, action, ctx.model or "gpt-mock")
    bridge = bridge_for("openai.chat", upstream.family) if upstream is not None else None
    decoded = msgspec.json.decode(REQUEST)
    client = httpx.AsyncClient(base_url=target.upstream.base_url if target else "http://x")
    log = AccessLog()
    log._task = object()  # type: ignore[assignment]  # NOTE: never schedule a flush here
    outcome = pl.Outcome(
        200,
        [("content-type", "application/json")],
        MOCK_REPLY,
        route=route.name,
        upstream="mock-json",
        model="gpt-4o-mini",
    )
    started = time.perf_counter()

    def fresh_ctx() -> RequestContext:
        return RequestContext.parse("openai.chat", REQUEST, headers, rid)

    def edited_ctx() -> RequestContext:
        c = fresh_ctx()
        pl._edit_request(c, action)
        return c

    edited = edited_ctx()
    edited_call = pl._Call(state, snap, edited, route, action, edited.model or "gpt-mock")
    up_headers = drive(call._headers(upstream, bridge)) if upstream and bridge else []

    def access_log_line() -> None:
        log.record(snap, "openai.chat", rid, 200, outcome, started)
        log._lines.clear()

    def response_start_headers() -> list[tuple[bytes, bytes]]:
        hs = outcome.headers + app_mod._identity(snap, outcome, rid, "openai.chat")
        hs.append(("content-length", str(len(MOCK_REPLY))))
        return [(n.encode("latin-1"), v.encode("latin-1", "replace")) for n, v in hs]

    stages: list[tuple[str, Callable[[], object], str]] = [
        ("ASGI headers -> dict", lambda: app_mod._headers(scope), "app._headers"),
        ("request id", lambda: app_mod._request_id(headers, snap), "os.urandom(12).hex()"),
        ("msgspec head decode", fresh_ctx, "RequestContext.parse (ChatHead)"),
        (
            "route match (3 routes, header regex)",
            lambda: match_route(table, ctx),
            "compiler.matcher.match_route",
        ),
        (
            "full JSON decode",
            lambda: msgspec.json.decode(REQUEST),
            "ctx.body(): needed by transforms",
        ),
        (
            "transforms (set $.user + regex scrub)",
            lambda: apply_request_steps(request_steps, msgspec.json.decode(REQUEST), "openai.chat"),
            "incl. a fresh decode (~ the row above)",
        ),
        (
            "request edit as the pipeline does it",
            edited_ctx,
            "parse + decode + transforms (_edit_request)",
        ),
        (
            "header policies, raw (protect + route + upstream)",
            lambda: apply_header_policies(
                upstream.policies if upstream else (),
                apply_header_policies(
                    snap.route_policies[route.index],
                    protect_client_headers(headers.items()),
                    "request",
                ),
                "request",
            ),
            "compiler.headers",
        ),
        (
            "upstream headers as the pipeline builds them",
            lambda: drive(call._headers(upstream, bridge)),
            "_Call._headers",
        ),
        (
            "upstream payload (model rewrite + encode)",
            lambda: edited_call._payload(bridge, target, target.model or "gpt-mock"),
            "_Call._payload: dict copy + msgspec encode",
        ),
        ("JSON encode of the body", lambda: msgspec.json.encode(decoded), "msgspec"),
        (
            "response JSON validity check",
            lambda: pl._validate_json(MOCK_REPLY),
            "msgspec into an empty Struct",
        ),
        (
            "response header policy",
            lambda: call._response_headers(upstream, MOCK_HEADERS),
            "_Call._response_headers",
        ),
        ("access log line (JSON)", access_log_line, "AccessLog.record"),
        (
            "response start headers (identity + encode)",
            response_start_headers,
            "app._identity + latin-1 encode",
        ),
        (
            "httpx build_request",
            lambda: client.build_request(
                "POST", "/chat/completions", headers=up_headers, content=REQUEST
            ),
            "before any I/O",
        ),
    ]
    rows: list[tuple[str, float | None, str]] = []
    for name, fn, note in stages:
        try:
            rows.append((name, best_us(fn), note))
        except Exception as exc:
            rows.append((name, None, f"failed: {type(exc).__name__}: {exc}"[:120]))

    rows += whole_pipeline_rows(pl, snap, state, ctx, headers, rid, Reply)
    asyncio.run(client.aclose())
    return rows


def whole_pipeline_rows(
    pl: Any, snap: Any, state: Any, ctx: Any, headers: Any, rid: str, reply_type: Any
) -> list[tuple[str, float | None, str]]:
    """run_pipeline and the ASGI endpoint end to end with a stub upstream pool (no network)."""
    from runtime.app import ApiEndpoint, Gateway
    from runtime.request import RequestContext

    async def stub_send(upstream: Any, path: str, hdrs: Any, body: bytes, *, stream: bool) -> Any:
        return reply_type(200, list(MOCK_HEADERS), body=MOCK_REPLY)

    state.pool.send = stub_send
    rows: list[tuple[str, float | None, str]] = []

    def pipeline_once() -> object:
        c = RequestContext.parse("openai.chat", REQUEST, headers, rid)
        return drive(pl.run_pipeline(state, snap, c))

    try:
        rows.append(
            (
                "run_pipeline, stub upstream",
                best_us(pipeline_once),
                "parse .. transforms .. headers .. payload .. response check",
            )
        )
    except Exception as exc:
        rows.append(("run_pipeline, stub upstream", None, f"failed: {exc}"[:120]))

    async def endpoint_us(n: int) -> float:
        gateway = Gateway(snap, state)
        gateway.state.pool.send = stub_send
        gateway.access_log._task = object()  # NOTE: no flush task; lines are dropped below
        endpoint = ApiEndpoint(gateway, "openai.chat")
        scope = {
            "type": "http",
            "headers": CLIENT_HEADERS,
            "method": "POST",
            "path": "/v1/chat/completions",
        }
        never = asyncio.Event()

        async def receive_body() -> dict[str, Any]:
            return {"type": "http.request", "body": REQUEST, "more_body": False}

        async def receive_wait() -> dict[str, Any]:
            await never.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            return None

        async def one() -> None:
            calls = 0

            async def receive() -> dict[str, Any]:
                nonlocal calls
                calls += 1
                return await (receive_body() if calls == 1 else receive_wait())

            await endpoint(scope, receive, send)

        for _ in range(200):
            await one()
        gateway.access_log._lines.clear()
        best = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(n):
                await one()
            best = min(best, (time.process_time() - t0) / n)
            gateway.access_log._lines.clear()
        return best * 1e6

    try:
        import uvloop

        rows.append(
            (
                "ASGI endpoint, stub upstream (uvloop)",
                uvloop.run(endpoint_us(2000)),
                "+ body read, disconnect watcher tasks, access log, response start",
            )
        )
    except Exception as exc:
        rows.append(("ASGI endpoint, stub upstream (uvloop)", None, f"failed: {exc}"[:120]))
    return rows


def render_stages(rows: list[tuple[str, float | None, str]]) -> str:
    out = ["| stage | µs per request | what |", "|---|---|---|"]
    for name, us, note in rows:
        out.append(f"| {name} | {'n/a' if us is None else f'{us:.1f}'} | {note} |")
    return "\n".join(out)


# --- 2. profile under load --------------------------------------------------------------------

# (stage, frame predicate). A sample belongs to the DEEPEST frame that matches any rule; for one
# frame the first matching rule names the stage. Library frames (h11, anyio, httpcore, msgspec)
# have no rule: they count for the stage that called them.
RULES: list[tuple[str, Callable[[str], bool]]] = [
    ("upstream HTTP client (httpx/httpcore/anyio)", lambda f: "runtime/upstream.py" in f),
    ("route match", lambda f: "compiler/matcher.py" in f),
    ("header policies", lambda f: "compiler/headers.py" in f or "_Call._headers " in f),
    ("transforms", lambda f: "compiler/transforms.py" in f or "compiler/jsonpath.py" in f),
    ("request head decode (msgspec)", lambda f: "RequestContext.parse " in f),
    (
        "body decode + payload encode",
        lambda f: "RequestContext.body " in f or "_Call._payload " in f,
    ),
    (
        "response check + headers",
        lambda f: (
            "_Call._finish " in f or "_Call._response_headers " in f or "_Call._outcome " in f
        ),
    ),
    (
        "stream relay (SSE parse/re-frame)",
        lambda f: (
            "runtime/sse.py" in f
            or "runtime/bridge.py" in f
            or "_relay_stream " in f
            or "_Call._stream " in f
        ),
    ),
    ("access log", lambda f: "runtime/accesslog.py" in f),
    (
        "pipeline glue (targets, retries, breaker)",
        lambda f: (
            "runtime/pipeline.py" in f or "runtime/balance.py" in f or "runtime/resilience.py" in f
        ),
    ),
    (
        "endpoint glue (headers, body read, disconnect tasks, response start)",
        lambda f: "runtime/app.py" in f or "runtime/request.py" in f or "runtime/errors.py" in f,
    ),
    ("ASGI framework (starlette)", lambda f: "starlette/" in f),
    ("HTTP server (hypercorn + h11)", lambda f: "hypercorn/" in f),
]
EVENT_LOOP = "event loop (uvloop/asyncio scheduling, epoll, socket syscalls)"


def classify(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, test in RULES:
            if test(frame):
                return stage
    return EVENT_LOOP


def leaf_group(frame: str) -> str:
    """A leaf frame's package, for the self-time table."""
    m = re.search(r"\(([^):]+)", frame)
    where = m.group(1) if m else frame
    if where.startswith("<frozen"):
        return "python stdlib"
    if "/" not in where and not where.endswith(".py"):
        return f"native: {where}"
    top = where.split("/")[0]
    return {
        "asyncio": "asyncio (stdlib)",
        "runtime": "interlock runtime",
        "compiler": "interlock compiler",
    }.get(top, top)


def analyze(
    raw_path: Path,
) -> tuple[int, collections.Counter[str], collections.Counter[str], collections.Counter[str]]:
    stages: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        # NOTE: py-spy prefixes the thread name as the first frame; keep only code frames
        frames = [f for f in frames if "(" in f]
        if not frames:
            continue
        total += n
        stages[classify(frames)] += n
        leaves[frames[-1]] += n
        groups[leaf_group(frames[-1])] += n
    return total, stages, leaves, groups


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def start_gateway(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, INTERLOCK_BENCH_UPSTREAM_KEY="sk-mock-upstream")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "serve",
            str(CONFIG),
            "--bind",
            f"127.0.0.1:{port}",
            "--no-watch",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
    )
    import http.client

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request(
                "POST",
                "/v1/chat/completions",
                body=REQUEST,
                headers={"content-type": "application/json", "authorization": "Bearer sk-bench-0"},
            )
            if conn.getresponse().status == 200:
                conn.close()
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"Interlock did not answer on :{port}; see {log_path}")


def profile(args: argparse.Namespace) -> str:
    py_spy = args.py_spy or shutil.which("py-spy")
    if not py_spy:
        return "_profile skipped: py-spy not found (pass --py-spy)_"
    work = Path(tempfile.mkdtemp(prefix="interlock-stages-"))
    proc = start_gateway(args.port, work / "interlock.log")
    url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
    lua = SHARED_BENCH / "chat.lua"
    out: list[str] = []
    try:
        if args.pin:
            os.sched_setaffinity(proc.pid, {int(c) for c in args.pin.split(",")})
        for mode, conns in (("json", 8), ("json", 32), ("stream", 8)):
            stream = mode == "stream"
            env = dict(
                os.environ,
                MODEL="gpt-mock-stream" if stream else "gpt-mock",
                AUTH="sk-bench-0123456789",
                STREAM="1" if stream else "0",
                LABEL=mode,
            )
            subprocess.run(
                ["wrk", "-t1", "-c8", "-d2s", "-s", str(lua), url],
                env=env,
                capture_output=True,
                check=False,
            )  # warm-up
            raw = work / f"{mode}-c{conns}.txt"
            c0 = cpu_ticks(proc.pid)
            wrk = subprocess.Popen(
                [
                    "wrk",
                    "-t1",
                    f"-c{conns}",
                    f"-d{args.seconds + 2}s",
                    "--timeout",
                    "10s",
                    "-s",
                    str(lua),
                    url,
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            time.sleep(1)
            spy = subprocess.run(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--duration",
                    str(args.seconds),
                    "--rate",
                    str(args.rate),
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                ]
                + (["--native"] if args.native else [])
                + ["--nonblocking"] * args.nonblocking,
                capture_output=True,
                text=True,
                check=False,
            )
            text = wrk.communicate()[0].decode()
            c1 = cpu_ticks(proc.pid)
            result = dict(
                kv.split("=", 1)
                for kv in (text.split("RESULT", 1)[1].split() if "RESULT" in text else [])
                if "=" in kv
            )
            requests = int(result.get("requests", 0))
            if spy.returncode != 0 or not raw.exists() or requests == 0:
                out.append(f"_profile {mode} c={conns} failed: {spy.stderr.strip()[-300:]}_")
                continue
            cpu_us = (c1 - c0) / os.sysconf("SC_CLK_TCK") / requests * 1e6
            out.append(render_profile(mode, conns, raw, cpu_us, result))
            time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    out.append(f"(raw py-spy stacks: {work})")
    return "\n\n".join(out)


def render_profile(mode: str, conns: int, raw: Path, cpu_us: float, wrk: dict[str, str]) -> str:
    total, stages, leaves, groups = analyze(raw)
    head = (
        f"#### {mode}, c={conns}: {float(wrk.get('rps', 0)):.0f} req/s under py-spy, "
        f"p50 {wrk.get('p50')} ms, {cpu_us:.0f} µs CPU per request, {total} samples"
    )
    lines = [head, "", "| stage (deepest on the stack) | share | µs per request |", "|---|---|---|"]
    for stage, n in stages.most_common():
        lines.append(f"| {stage} | {100 * n / total:.1f}% | {cpu_us * n / total:.0f} |")
    lines += ["", "| self time by package (leaf frame) | share | µs per request |", "|---|---|---|"]
    for group, n in groups.most_common(10):
        lines.append(f"| {group} | {100 * n / total:.1f}% | {cpu_us * n / total:.0f} |")
    lines += ["", "| top leaf frames | share | µs per request |", "|---|---|---|"]
    for frame, n in leaves.most_common(12):
        lines.append(f"| `{frame[:110]}` | {100 * n / total:.1f}% | {cpu_us * n / total:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true", help="also profile under wrk load")
    parser.add_argument("--no-pure", action="store_true", help="skip the in-process stages")
    parser.add_argument("--py-spy", help="path of the py-spy binary")
    parser.add_argument("--port", type=int, default=18091)
    parser.add_argument("--seconds", type=int, default=8, help="py-spy window per scenario")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--native", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--nonblocking", type=int, choices=(0, 1), default=0)
    parser.add_argument("--pin", help="CPU list for the gateway during the profile, e.g. 1")
    parser.add_argument("--json-out", help="write the in-process stage rows as JSON")
    args = parser.parse_args()
    if not args.no_pure:
        rows = pure_stages()
        print("### Pure stages, in-process (CPU time, best-of-5 mean, one benchmark request)\n")
        print(render_stages(rows))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(rows, indent=1))
    if args.profile:
        print("\n### Profile under load (py-spy)\n")
        print(profile(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
