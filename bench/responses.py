"""What the Responses API translation costs: the bench request through `/v1/responses` (translated
to chat completions for the nginx mock's chat upstream) next to `/v1/chat/completions` (passed
through), same gateway process, same config, JSON at 32 connections.

    .venv/bin/python bench/responses.py --seconds 8 --rounds 3

Interlock (`bench/interlock-bench.yaml`) is pinned to CPU 1 and wrk to CPU 0; the two endpoints
alternate round by round; CPU µs per request is the gateway process's CPU time over the requests
wrk completed. Needs the shared harness's mock on :18080 (`../shared/bench/start.sh mock`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_BENCH = Path(os.environ.get("SHARED_BENCH", REPO.parent / "shared" / "bench"))
KEY = "sk-bench-0123456789abcdef"
PORT = 18095
ENDPOINTS = (
    ("chat", "/v1/chat/completions", SHARED_BENCH / "chat.lua"),
    ("responses", "/v1/responses", REPO / "bench" / "responses.lua"),
)


def ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wrk(path: str, script: Path, seconds: int) -> dict[str, str]:
    cmd = ["taskset", "-c", "0", "wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(script)]
    env = dict(os.environ, AUTH=KEY, MODEL="gpt-mock")
    out = subprocess.run(
        [*cmd, f"http://127.0.0.1:{PORT}{path}"], env=env, capture_output=True, text=True
    ).stdout
    line = next((x for x in out.splitlines() if x.startswith("RESULT")), "")
    return dict(kv.split("=", 1) for kv in line.split()[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    env = dict(os.environ, INTERLOCK_BENCH_UPSTREAM_KEY="sk-mock-upstream")
    cmd = [sys.executable, "-m", "runtime.cli", "serve", "bench/interlock-bench.yaml"]
    cmd += ["--bind", f"127.0.0.1:{PORT}", "--no-watch"]
    proc = subprocess.Popen(
        ["taskset", "-c", "1", *cmd],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    hz = os.sysconf("SC_CLK_TCK")
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in ENDPOINTS}
    try:
        time.sleep(1.5)
        for name, path, script in ENDPOINTS:
            result = wrk(path, script, 2)  # warm-up, and a check that it answers
            if int(result.get("non2xx", "1")) or not int(result.get("requests", "0")):
                raise SystemExit(f"{name}: the gateway did not answer 2xx: {result}")
        for _ in range(args.rounds):
            for name, path, script in ENDPOINTS:
                before = ticks(proc.pid)
                result = wrk(path, script, args.seconds)
                used = (ticks(proc.pid) - before) / hz
                cpu[name].append(used / int(result["requests"]) * 1e6)
                print(f"  {name}: {cpu[name][-1]:.0f} µs/req", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(10)
    chat, responses = statistics.median(cpu["chat"]), statistics.median(cpu["responses"])
    print("| endpoint | gateway CPU µs/request (median of rounds) | rounds |")
    print("|---|---|---|")
    for name, _, _ in ENDPOINTS:
        values = ", ".join(f"{v:.0f}" for v in cpu[name])
        print(f"| {name} | {statistics.median(cpu[name]):.0f} | {values} |")
    print(f"\nThe Responses translation adds {responses - chat:+.0f} µs per request.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
