"""What Hypercorn's own settings change: the same gateway and config, one setting changed per
variant, measured side by side and interleaved like `interleaved.py` (issue 16, deliverable 4).

    .venv/bin/python bench/server_settings.py --bursts 8 --seconds 2

Variants (each an `interlock serve` on `bench/interlock-bench.yaml`, pinned to CPU 1):

- ``default``: what `interlock serve` ships (uvloop, Hypercorn reads 64 KiB at a time, h11 may
  buffer 256 KiB of an incomplete request head, the GC tuned at startup)
- ``recv-4k`` / ``recv-256k``: Hypercorn's socket read size (``MAX_RECV``, 64 KiB) changed
- ``h11-16k``: h11's incomplete-event limit at Hypercorn's default (16 KiB) instead of 256 KiB
- ``asyncio``: the standard event loop instead of uvloop
- ``gc-default``: Python's GC thresholds (700, 10, 10) instead of `runtime.server.tune_gc`
- ``no-keepalive`` (client side): the default server, with wrk sending ``Connection: close``
  so every request opens a new TCP connection

The launcher patches the setting in the gateway process before `runtime.cli` starts; no product
code reads these knobs. Per burst: the gateway's CPU time (utime + stime) over the requests wrk
completed; the report gives the median per variant and the median of the per-burst ratios
against ``default``'s burst of the same round. `--workers` is measured by `run.sh`'s workers row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import governance as g

PATCHES = {
    "default": "",
    "recv-4k": "import hypercorn.asyncio.tcp_server as t; t.MAX_RECV = 4096",
    "recv-256k": "import hypercorn.asyncio.tcp_server as t; t.MAX_RECV = 256 * 1024",
    "h11-16k": (
        "import runtime.server as s; make = s.hypercorn_config\n"
        "def patched():\n    c = make(); c.h11_max_incomplete_size = 16 * 1024; return c\n"
        "s.hypercorn_config = patched"
    ),
    "asyncio": "import sys; sys.modules['uvloop'] = None",
    "gc-default": "import runtime.server as s; s.tune_gc = lambda: None",
    "no-keepalive": "",
}
CLIENT_CLOSES = {"no-keepalive"}


def start(vid: str, config: Path, port: int, pin: str, log: Path) -> subprocess.Popen[bytes]:
    launcher = f"{PATCHES[vid]}\nimport sys\nfrom runtime.cli import main\nsys.exit(main())"
    env = dict(
        os.environ, MOCK_PORT=str(g.MOCK_PORT), INTERLOCK_BENCH_UPSTREAM_KEY="sk-mock-upstream"
    )
    cmd = ["taskset", "-c", pin, sys.executable, "-c", launcher, "serve", str(config)]
    cmd += ["--bind", f"127.0.0.1:{port}", "--no-watch"]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=g.REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def wrk(port: int, conns: int, seconds: int, stream: bool, cpu: str, close: bool) -> int:
    """Requests wrk completed in one burst (`close`: a new connection per request)."""
    result = g.run_wrk(port, conns, seconds, stream, cpu, close=close)
    return int(result.get("requests", 0) or 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--variants", default=",".join(PATCHES))
    parser.add_argument("--modes", default="json,stream")
    parser.add_argument("--bursts", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=2)
    parser.add_argument("--pin", default="1")
    parser.add_argument("--client-cpu", default="0")
    args = parser.parse_args()
    ids = args.variants.split(",")
    if ids[0] != "default" or any(i not in PATCHES for i in ids):
        parser.error(f"variants: 'default' first, then any of {', '.join(PATCHES)}")
    started_mock = g.ensure_mock()
    hz = os.sysconf("SC_CLK_TCK")
    rows: list[tuple[str, dict[str, list[float]], dict[str, list[float]]]] = []
    with tempfile.TemporaryDirectory(prefix="interlock-settings-") as tmp:
        gateways: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        try:
            for n, vid in enumerate(ids):
                log = Path(tmp) / f"{vid}.log"
                gateways[vid] = (start(vid, g.CONFIG, 18400 + n, args.pin, log), 18400 + n)
                g.wait_ready(18400 + n, gateways[vid][0], log)
            for mode in args.modes.split(","):
                conns, stream = dict(g.MODES)[mode], mode == "stream"
                for vid, (_, port) in gateways.items():  # NOTE: warm-up
                    wrk(port, conns, 2, stream, args.client_cpu, vid in CLIENT_CLOSES)
                cpu: dict[str, list[float]] = {vid: [] for vid in ids}
                rps: dict[str, list[float]] = {vid: [] for vid in ids}
                for burst in range(args.bursts):
                    g.log(f"{mode}: burst {burst + 1}/{args.bursts}")
                    for vid, (proc, port) in gateways.items():
                        before = g.cpu_ticks(proc.pid)
                        done = wrk(
                            port, conns, args.seconds, stream, args.client_cpu, vid in CLIENT_CLOSES
                        )
                        used = g.cpu_ticks(proc.pid) - before
                        cpu[vid].append(used / hz * 1e6 / max(done, 1))
                        rps[vid].append(done / args.seconds)
                rows.append((mode, cpu, rps))
        finally:
            for proc, _ in gateways.values():
                g.stop_gateway(proc)
            if started_mock:
                g.stop_mock()
    print(
        f"# Hypercorn settings ({args.bursts} bursts of {args.seconds} s per variant and mode, "
        f"gateways on CPU {args.pin}, wrk on CPU {args.client_cpu})\n"
    )
    print("| variant | mode | CPU µs/req (median) | paired vs default | req/s (median) |")
    print("|---|---|---|---|---|")
    for mode, cpu, rps in rows:
        for vid in ids:
            paired = statistics.median(x / y for x, y in zip(cpu[vid], cpu["default"], strict=True))
            pair = "" if vid == "default" else f"{100 * (paired - 1):+.1f} %"
            median = statistics.median(cpu[vid])
            print(f"| {vid} | {mode} | {median:.0f} | {pair} | {statistics.median(rps[vid]):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
