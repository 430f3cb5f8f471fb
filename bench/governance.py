"""Governance on/off: what the usage ledger (and later limits, keys from a store) costs per request.

    .venv/bin/python bench/governance.py --seconds 10 --rounds 3

Each variant is `interlock serve` on `bench/interlock-bench.yaml` with some YAML appended (nothing
for "ledger off"), pinned to one CPU with taskset while wrk runs on the other. Per round and
variant: a warm-up, then JSON at 32 connections and streaming at 8, each for `--seconds`; the
gateway's CPU time (utime + stime of its process, all threads) divided by the requests wrk
completed gives CPU µs per request. Variants alternate round-robin (ABAB...) so drift on a shared
box hits all of them; the report gives the median per variant and the change against "ledger off".
After each ledger variant stops, the rows it added to `usage_records` are counted next to the
requests it answered.

It starts the shared harness's nginx mock if it is not up (and stops it at the end only then),
running the harness's `install.sh` first if wrk or nginx is missing. Output: a markdown report on
stdout, also written to `bench/results/governance-<time>.md`; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "bench" / "interlock-bench.yaml"
RESULTS = REPO / "bench" / "results"
SHARED_BENCH = Path(os.environ.get("SHARED_BENCH", REPO.parent / "shared" / "bench"))
PEERS_HOME = os.environ.get("PEERS_HOME", "/tmp/interlock-peers")
MOCK_PORT = int(os.environ.get("MOCK_PORT", "18080"))
KEY = "sk-bench-0123456789abcdef"  # the bench route matches "Bearer sk-bench-"
PG_DSN = "postgresql://127.0.0.1:5432/test"
PG_SCHEMA = "bench_ledger"
REDIS_URL = "redis://127.0.0.1:6379/0"
MODES = (("json", 32), ("stream", 8))  # (mode, concurrent connections)
WARMUP_CONNS = 8


@dataclass(frozen=True)
class Variant:
    """A gateway variant: YAML appended to the bench config, with `$tmp` (this run's temp folder)
    and `$pg_url` substituted. `ledger` says where its usage rows land ("sqlite", "postgres")."""

    id: str
    name: str
    yaml: str = ""
    ledger: str | None = None
    needs_postgres: bool = False


# NOTE: new governance variants (limits on memory/redis, keys from a store) are one entry each.
# NOTE: the bench key, and an rpm + tpm policy far above what the bench sends (a fresh policy
# name per run would not matter: the counters are per policy state id and the windows are 60 s)
_LIMITS = (
    "auth:\n  keys:\n"
    '    - {id: bench, hash: "sha256:0000000000bec400:'
    'e69abd7704198fdbe53763bb03187d60e39ddfbefe3fb784292614c60ad689ee"}\n'
    "limits:\n  default: [bench]\n  policies:\n"
    "    bench: {scope: key, rpm: 100000000, tpm: 1000000000000}\n"
)
VARIANTS = (
    Variant("off", "ledger off"),
    Variant(
        "sqlite",
        "ledger on, SQLite",
        "usage:\n  store: {kind: sqlite, path: $tmp/usage.db}\n",
        ledger="sqlite",
    ),
    Variant(
        "postgres",
        "ledger on, PostgreSQL",
        'usage:\n  store: {kind: postgres, url: "$pg_url"}\n',
        ledger="postgres",
        needs_postgres=True,
    ),
    Variant("limits-memory", "limits on, memory", _LIMITS + "  backend: {kind: memory}\n"),
    Variant(
        "limits-redis",
        "limits on, Redis",
        _LIMITS + f'  backend: {{kind: redis, url: "{REDIS_URL}"}}\n',
    ),
    Variant(
        "all",
        "key + limits (memory) + ledger (SQLite)",
        _LIMITS
        + "  backend: {kind: memory}\n"
        + "usage:\n  store: {kind: sqlite, path: $tmp/usage.db}\n",
        ledger="sqlite",
    ),
)
BASELINE = VARIANTS[0]


@dataclass(frozen=True)
class Cell:
    """One measured wrk run against one variant."""

    variant: str
    round: int
    mode: str
    conns: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    errors: int
    rss_mb: float
    others_pct: float  # CPU used by everything but the gateway and wrk (incl. steal), % of box


@dataclass(frozen=True)
class LedgerCheck:
    """Requests a ledger variant answered in one round against the rows its store gained."""

    variant: str
    round: int
    answered: int  # readiness probes + warm-up + measured wrk requests
    in_flight_max: int  # requests wrk may have left unfinished at the end of its runs
    rows: int | None
    exit_code: int | None


class GatewayFailed(Exception):
    """The variant did not start or did not answer; `text` is the tail of its output."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


# --- the mock and PostgreSQL --------------------------------------------------------------------


def mock_up() -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", MOCK_PORT, timeout=2)
        conn.request("GET", "/v1/models")
        return conn.getresponse().status == 200
    except OSError:
        return False


def ensure_mock() -> bool:
    """Make sure the mock answers; True if this call started it."""
    if mock_up():
        return False
    env = dict(os.environ, PEERS_HOME=PEERS_HOME, MOCK_PORT=str(MOCK_PORT))
    nginx = shutil.which("nginx") or (Path("/usr/sbin/nginx").exists() and "/usr/sbin/nginx")
    if not (shutil.which("wrk") and nginx):
        log("wrk or nginx missing: running the shared harness's install.sh")
        subprocess.run([str(SHARED_BENCH / "install.sh")], env=env, stdout=sys.stderr, check=True)
    subprocess.run([str(SHARED_BENCH / "start.sh"), "mock"], env=env, stdout=sys.stderr, check=True)
    if not mock_up():
        raise SystemExit(f"the mock does not answer on 127.0.0.1:{MOCK_PORT}")
    return True


def stop_mock() -> None:
    env = dict(os.environ, PEERS_HOME=PEERS_HOME, MOCK_PORT=str(MOCK_PORT))
    subprocess.run([str(SHARED_BENCH / "stop.sh"), "mock"], env=env, stdout=sys.stderr, check=False)


async def _pg_fetch(sql: str) -> object:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN, timeout=3)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def pg_fetch(sql: str) -> object:
    return asyncio.run(_pg_fetch(sql))


def prepare_postgres() -> str | None:
    """Create the bench schema if PostgreSQL answers; None if it does, else why not."""
    try:
        pg_fetch(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}")
    except Exception as exc:  # any failure means: no PostgreSQL variant
        return f"{type(exc).__name__}: {exc}"
    return None


def count_rows(variant: Variant, tmp: Path) -> int | None:
    """Rows in the variant's usage_records table (0 before the store made it)."""
    if variant.ledger == "sqlite":
        path = tmp / "usage.db"
        if not path.exists():
            return 0
        with sqlite3.connect(path) as db:
            found = db.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'usage_records'"
            ).fetchone()[0]
            return (
                int(db.execute("SELECT count(*) FROM usage_records").fetchone()[0]) if found else 0
            )
    if variant.ledger == "postgres":
        exists = pg_fetch(f"SELECT to_regclass('{PG_SCHEMA}.usage_records') IS NOT NULL")
        return (
            int(str(pg_fetch(f"SELECT count(*) FROM {PG_SCHEMA}.usage_records"))) if exists else 0
        )
    return None


# --- the gateway --------------------------------------------------------------------------------


def port_free(port: int) -> bool:
    # NOTE: the gateway binds with SO_REUSEPORT, so a leftover server would share the port.
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def write_config(variant: Variant, tmp: Path) -> Path:
    extra = string.Template(variant.yaml).safe_substitute(
        tmp=str(tmp), pg_url=f"{PG_DSN}?search_path={PG_SCHEMA}"
    )
    path = tmp / f"interlock-{variant.id}.yaml"
    path.write_text(CONFIG.read_text() + ("\n" + extra if extra else ""))
    return path


def start_gateway(config: Path, port: int, pin: str, logfile: Path) -> subprocess.Popen[bytes]:
    if not port_free(port):
        raise SystemExit(f"port {port} is taken; pass --port")
    env = dict(
        os.environ, MOCK_PORT=str(MOCK_PORT), INTERLOCK_BENCH_UPSTREAM_KEY="sk-mock-upstream"
    )
    cmd = ["taskset", "-c", pin, sys.executable, "-m", "runtime.cli", "serve", str(config)]
    cmd += ["--bind", f"127.0.0.1:{port}", "--no-watch"]
    with logfile.open("wb") as out:  # stdout and stderr (the JSON access log)
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(
    port: int, proc: subprocess.Popen[bytes], logfile: Path, timeout_s: float = 30
) -> int:
    """Wait for a 200 on a chat completion; returns how many probes got an answer."""
    body = b'{"model":"gpt-mock","messages":[{"role":"user","content":"hi"}]}'
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    answered = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise GatewayFailed(tail(logfile))
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            status = conn.getresponse().status
            answered += 1
            if status == 200:
                return answered
        except OSError:
            pass
        time.sleep(0.05)
    raise GatewayFailed(f"no 200 within {timeout_s:g} s\n" + tail(logfile))


def stop_gateway(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, then wait for the exit (the ledger drains on shutdown); its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def tail(logfile: Path, lines: int = 40) -> str:
    text = logfile.read_text(errors="replace") if logfile.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def gateway_messages(logfile: Path) -> list[str]:
    """Lines other than access-log records (warnings, ledger errors, tracebacks)."""
    text = logfile.read_text(errors="replace") if logfile.exists() else ""
    return [line for line in text.splitlines() if line and not line.startswith("{")]


def cpu_ticks(pid: int) -> int:
    """utime + stime of the process (all its threads, no children), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def box_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot; steal counts as busy."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def children_ticks(hz: int) -> int:
    """CPU ticks of this process's reaped children (wrk, once `run_wrk` returns)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((usage.ru_utime + usage.ru_stime) * hz)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_wrk(
    port: int, conns: int, seconds: int, stream: bool, cpu: str, *, close: bool = False
) -> dict[str, str]:
    """One wrk run with the shared chat.lua; its RESULT line as a dict (empty if none).
    `close`: ``Connection: close``, a new connection per request."""
    env = dict(
        os.environ,
        MODEL="gpt-mock-stream" if stream else "gpt-mock",
        AUTH=KEY,
        STREAM="1" if stream else "0",
        LABEL="governance",
    )
    cmd = ["taskset", "-c", cpu, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s"]
    cmd += ["-H", "Connection: close"] if close else []
    cmd += ["-s", str(SHARED_BENCH / "chat.lua"), f"http://127.0.0.1:{port}/v1/chat/completions"]
    text = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False).stdout
    line = next((x for x in text.splitlines() if x.startswith("RESULT")), "")
    return dict(kv.split("=", 1) for kv in line.split()[1:])


# --- one round of one variant -------------------------------------------------------------------


def measure(
    variant: Variant, rnd: int, tmp: Path, args: argparse.Namespace
) -> tuple[list[Cell], LedgerCheck | None]:
    before = count_rows(variant, tmp)
    logfile = tmp / f"{variant.id}-r{rnd}.log"
    proc = start_gateway(write_config(variant, tmp), args.port, args.pin, logfile)
    cells: list[Cell] = []
    answered = 0
    hz = os.sysconf("SC_CLK_TCK")
    try:
        answered = wait_ready(args.port, proc, logfile)
        warm = run_wrk(args.port, WARMUP_CONNS, args.warmup, False, args.client_cpu)
        answered += int(warm.get("requests", 0))
        for mode, conns in MODES:
            t0, b0, w0 = cpu_ticks(proc.pid), box_ticks(), children_ticks(hz)
            r = run_wrk(args.port, conns, args.seconds, mode == "stream", args.client_cpu)
            used = cpu_ticks(proc.pid) - t0
            b1, w1 = box_ticks(), children_ticks(hz)
            others = b1[0] - b0[0] - used - (w1 - w0)
            n = int(r.get("requests", 0))
            answered += n
            errors = sum(int(r.get(k, 0)) for k in ("non2xx", "connect_err", "read_err"))
            errors += sum(int(r.get(k, 0)) for k in ("write_err", "timeouts"))
            cell = Cell(
                variant.name,
                rnd,
                mode,
                conns,
                n,
                float(r.get("rps", 0)),
                float(r.get("p50", "nan")),
                float(r.get("p99", "nan")),
                used / hz / n * 1e6 if n else float("nan"),
                errors,
                rss_mb(proc.pid),
                max(others, 0) / max(b1[1] - b0[1], 1) * 100,
            )
            cells.append(cell)
            log(
                f"  round {rnd} {variant.name}: {mode} c={conns}: {cell.rps:.0f} req/s, "
                f"{cell.cpu_us:.0f} µs CPU/req, p99 {cell.p99_ms:.2f} ms, {errors} errors, "
                f"others {cell.others_pct:.0f} % CPU"
            )
    finally:
        code = stop_gateway(proc)
    for line in gateway_messages(logfile):
        if not line.startswith("interlock: serving") and line != "interlock: stopped":
            log(f"  gateway: {line}")
    if variant.ledger is None:
        return cells, None
    after = count_rows(variant, tmp)
    rows = after - before if after is not None and before is not None else None
    in_flight = WARMUP_CONNS + sum(c for _, c in MODES)
    return cells, LedgerCheck(variant.name, rnd, answered, in_flight, rows, code)


# --- report -------------------------------------------------------------------------------------


def change(value: float, base: float) -> str:
    return f"{(value / base - 1) * 100:+.1f} %" if base else "-"


def render(
    variants: Sequence[Variant],
    cells: Sequence[Cell],
    checks: Sequence[LedgerCheck],
    failures: dict[str, str],
    args: argparse.Namespace,
    loads: tuple[str, str],
) -> str:
    out = [
        f"# Governance on/off ({time.strftime('%Y-%m-%d %H:%M:%S')}, commit {git_head()})",
        "",
        f"Gateway pinned to CPU {args.pin}, wrk on CPU {args.client_cpu}; {args.rounds} round(s) "
        f"round-robin, {args.warmup} s warm-up + {args.seconds} s per cell; median over rounds "
        f"(per-round values in brackets). Load average before / after: {loads[0]} / {loads[1]}; "
        "others' CPU %: the box's CPU time used by everything but the gateway and wrk during "
        "each cell (the mock, other work, hypervisor steal), as a share of both CPUs.",
        "",
        "| variant | mode | conns | req/s | vs off | CPU µs/req | vs off | p50 ms | p99 ms "
        "| errors | RSS MB | others' CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, conns in MODES:
        base = [c for c in cells if c.variant == BASELINE.name and c.mode == mode]
        base_rps = statistics.median(c.rps for c in base) if base else 0.0
        base_cpu = statistics.median(c.cpu_us for c in base) if base else 0.0
        for variant in variants:
            mine = [c for c in cells if c.variant == variant.name and c.mode == mode]
            if not mine:
                continue
            rps = statistics.median(c.rps for c in mine)
            cpu = statistics.median(c.cpu_us for c in mine)
            rps_all = " / ".join(f"{c.rps:.0f}" for c in mine)
            cpu_all = " / ".join(f"{c.cpu_us:.0f}" for c in mine)
            same = variant is BASELINE
            out.append(
                f"| {variant.name} | {mode} | {conns} | {rps:.0f} ({rps_all}) "
                f"| {'' if same else change(rps, base_rps)} | {cpu:.0f} ({cpu_all}) "
                f"| {'' if same else change(cpu, base_cpu)} "
                f"| {statistics.median(c.p50_ms for c in mine):.2f} "
                f"| {statistics.median(c.p99_ms for c in mine):.2f} "
                f"| {sum(c.errors for c in mine)} | {max(c.rss_mb for c in mine):.1f} "
                f"| {' / '.join(f'{c.others_pct:.0f}' for c in mine)} |"
            )
    if checks:
        out += [
            "",
            "Ledger check: rows the store gained while the variant ran, against the requests it "
            "answered (readiness probes + warm-up + measured; wrk may leave up to the listed "
            "number in flight at the end of its runs, which the gateway still settles).",
            "",
            "| variant | round | requests answered | ledger rows | difference | in flight (max) "
            "| exit code |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in checks:
            diff = "-" if c.rows is None else f"{c.rows - c.answered:+d}"
            out.append(
                f"| {c.variant} | {c.round} | {c.answered} | {c.rows} | {diff} "
                f"| {c.in_flight_max} | {c.exit_code} |"
            )
    for name, text in failures.items():
        out += ["", f"**{name}** did not run:", "", "```", text.rstrip(), "```"]
    return "\n".join(out) + "\n"


def git_head() -> str:
    result = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    if not result.stdout.strip():
        return "unknown (not a git checkout)"
    return result.stdout.strip() + (" + local changes" if dirty.stdout.strip() else "")


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- main ---------------------------------------------------------------------------------------


def select_variants(wanted: str) -> tuple[list[Variant], dict[str, str]]:
    """The variants to run (baseline first) and why others were skipped."""
    ids = {v.id for v in VARIANTS}
    chosen = [v.strip() for v in wanted.split(",") if v.strip()] if wanted else sorted(ids)
    unknown = set(chosen) - ids
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; known: {[v.id for v in VARIANTS]}")
    variants = [v for v in VARIANTS if v.id in chosen or v is BASELINE]
    skipped: dict[str, str] = {}
    if any(v.needs_postgres for v in variants):
        why = prepare_postgres()
        if why is not None:
            skipped = {
                v.name: f"PostgreSQL not reachable: {why}" for v in variants if v.needs_postgres
            }
            variants = [v for v in variants if not v.needs_postgres]
    return variants, skipped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="per measured wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up seconds per start")
    parser.add_argument("--port", type=int, default=18096)
    parser.add_argument("--pin", default=os.environ.get("PROXY_CPUS", "1"), help="gateway CPU")
    parser.add_argument("--client-cpu", default=os.environ.get("CLIENT_CPUS", "0"))
    parser.add_argument(
        "--variants",
        default="",
        help=f"comma-separated ids (default all): {', '.join(v.id for v in VARIANTS)}",
    )
    args = parser.parse_args(argv)

    variants, failures = select_variants(args.variants)
    for name, why in failures.items():
        log(f"skipping {name}: {why}")
    started_mock = ensure_mock()
    cells: list[Cell] = []
    checks: list[LedgerCheck] = []
    loads = (load_average(), "")
    try:
        with tempfile.TemporaryDirectory(prefix="interlock-governance-") as tmp_name:
            tmp = Path(tmp_name)
            for rnd in range(1, args.rounds + 1):
                for variant in variants:
                    if variant.name in failures:
                        continue
                    try:
                        got, check = measure(variant, rnd, tmp, args)
                    except GatewayFailed as exc:
                        log(f"  {variant.name} failed:\n{exc.text}")
                        failures[variant.name] = exc.text
                        continue
                    cells += got
                    checks += [check] if check else []
                    time.sleep(1)
        loads = (loads[0], load_average())
    finally:
        if started_mock:
            stop_mock()
    report = render(variants, cells, checks, failures, args, loads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"governance-{time.strftime('%Y%m%d-%H%M%S')}.md"
    path.write_text(report)
    print(report)
    log(f"written to {path}")
    return 0 if cells else 1


if __name__ == "__main__":
    raise SystemExit(main())
