"""Cold start: process start -> first 200 on a proxied chat completion, median of N starts.

Each run spawns `python -m runtime.cli serve bench/interlock-bench.yaml` (the same command
`bench/run.sh` serves with; `--config` serves another file or directory), then sends the
benchmark's chat completion every 5 ms until one answers 200 (it goes through the whole pipeline
to the mock upstream, so the upstream connection and everything imported lazily on the first
request are included), then stops the process.
Also reported: when the port first accepted a connection, how long the first request took,
the cost of importing the server alone, the process's CPU time and RSS right after that first
200. On a shared box, wall times stretch with other load far more than the CPU time does.

    python bench/coldstart.py --runs 5            # needs the mock on :18080 (MOCK_PORT)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "bench" / "interlock-bench.yaml"
BODY = (
    b'{"model":"gpt-mock","messages":[{"role":"user","content":"Say hello in five words."}],'
    b'"max_tokens":16}'
)
# NOTE: the bench key, so a config with managed keys (interlock-bench-governance.yaml) accepts it
HEADERS = {
    "content-type": "application/json",
    "authorization": "Bearer sk-bench-0123456789abcdef",
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_start(python: str, config: Path, port: int, timeout_s: float) -> dict[str, float]:
    env = dict(os.environ, INTERLOCK_BENCH_UPSTREAM_KEY="sk-mock-upstream")
    cmd = [
        python,
        "-m",
        "runtime.cli",
        "serve",
        str(config),
        "--bind",
        f"127.0.0.1:{port}",
        "--no-watch",
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    listening: float | None = None
    try:
        while time.perf_counter() - t0 < timeout_s:
            if proc.poll() is not None:
                raise SystemExit(f"interlock exited with {proc.returncode} during startup: {cmd}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
                conn.connect()
            except (TimeoutError, ConnectionRefusedError):
                time.sleep(0.005)
                continue
            if listening is None:
                listening = time.perf_counter() - t0
            sent = time.perf_counter()
            try:
                conn.request("POST", "/v1/chat/completions", body=BODY, headers=HEADERS)
                response = conn.getresponse()
                response.read()
            except (ConnectionError, http.client.HTTPException):
                time.sleep(0.005)
                continue
            finally:
                conn.close()
            if response.status == 200:
                done = time.perf_counter()
                return {
                    "first_200_s": done - t0,
                    "listening_s": listening,
                    "first_request_ms": (done - sent) * 1e3,
                    "rss_mb": rss_mb(proc.pid),
                    "cpu_s": cpu_s(proc.pid),
                }
            time.sleep(0.005)
        raise SystemExit(f"no 200 from interlock within {timeout_s}s")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def import_seconds(python: str, config: Path) -> tuple[float, float]:
    """Wall time of a bare interpreter that imports the server and compiles the config."""
    code = (
        "import time; t=time.perf_counter(); import runtime.server; from compiler import "
        f"compile_config; compile_config({str(config)!r}); print(time.perf_counter()-t)"
    )
    env = dict(os.environ, INTERLOCK_BENCH_UPSTREAM_KEY="x")
    t0 = time.perf_counter()
    out = subprocess.run(
        [python, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    total = time.perf_counter() - t0
    return total, float(out.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--port", type=int, default=18092)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--json-out")
    parser.add_argument("--config", type=Path, default=CONFIG, help="file or directory to serve")
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        runs.append(one_start(args.python, args.config, args.port, args.timeout))
        time.sleep(0.3)
    imports = [import_seconds(args.python, args.config) for _ in range(3)]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"Cold start, {args.runs} starts (median; min-max):\n")
    print("| measure | median | min - max |")
    print("|---|---|---|")
    for key, label, unit, scale in (
        ("first_200_s", "process start -> first 200 (proxied chat completion)", "s", 1),
        ("listening_s", "process start -> port accepts connections", "s", 1),
        ("first_request_ms", "first request itself (lazy work + upstream connect)", "ms", 1),
        ("cpu_s", "CPU time the process used until then", "s", 1),
        ("rss_mb", "RSS right after the first 200", "MB", 1),
    ):
        values = [r[key] * scale for r in runs]
        print(
            f"| {label} | {med(key) * scale:.3f} {unit} | "
            f"{min(values):.3f} - {max(values):.3f} {unit} |"
        )
    print(
        f"| interpreter + `import runtime.server` + compile config (subprocess wall) | "
        f"{statistics.median(t for t, _ in imports):.3f} s | of which import + compile "
        f"{statistics.median(i for _, i in imports):.3f} s |"
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"runs": runs, "imports": imports}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
