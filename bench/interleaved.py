"""Governance variants measured side by side, interleaved: the steadiest A/B this box allows.

    .venv/bin/python bench/interleaved.py --variants off,sqlite,limits-memory,all --bursts 10

`bench/governance.py` restarts each variant per round; on a shared VM the CPU's speed drifts by
±25 % within a minute, more than the differences it looks for. Here every variant of
`governance.VARIANTS` (plus a few finer ones below) is started at once, all pinned to the same
CPU and idle until loaded; then wrk sends short bursts to each in turn (A B C A B C ...), so
drift hits all of them alike. Per burst: the gateway's CPU time (utime + stime) / requests.
The report gives per variant and mode the median CPU µs per request, its change against the
first variant, and the median (and quartiles) of the per-burst ratios against the first
variant's burst just before (paired, the figure to quote). Output: markdown on stdout; progress
on stderr.

`--together` loads every variant at once in each burst (one wrk each): the gateways then share
the CPU at the same moments, so the VM's drift cancels in each pair. On this box it narrowed the
paired quartiles from about ±10 % to ±2-3 % (two identical gateways: median +0.3 %), at the
price of a higher CPU per request for all (each evicts the others' caches): read its ratios,
not its microseconds, and load two or three variants, not six.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import governance as g

_AUTH = g._LIMITS.split("limits:")[0]
_MEMORY = "  backend: {kind: memory}\n"
_POLICY = "limits:\n  default: [bench]\n  policies:\n    bench: {scope: key, %s}\n"
EXTRA = (
    g.Variant("auth", "key only", _AUTH),
    g.Variant(
        "rpm",
        "key + rpm (memory)",
        _AUTH + _POLICY % "rpm: 100000000" + "  backend: {kind: memory}\n",
    ),
    g.Variant(
        "no-headers",
        "key + rpm + tpm (memory), limits.headers: none",
        g._LIMITS + _MEMORY + "  headers: none\n",
    ),
)
VARIANTS = {v.id: v for v in (*g.VARIANTS, *EXTRA)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--variants", default="off,sqlite,limits-memory,all")
    parser.add_argument("--modes", default="json,stream")
    parser.add_argument("--bursts", type=int, default=10, help="bursts per variant and mode")
    parser.add_argument("--seconds", type=int, default=2, help="per burst")
    parser.add_argument("--pin", default="1", help="the gateways' CPU")
    parser.add_argument("--client-cpu", default="0")
    parser.add_argument(
        "--together",
        action="store_true",
        help="load every gateway at once in each burst (they share the CPU at the same moments: "
        "a tighter pairing than one after another, at a higher CPU per request for all)",
    )
    args = parser.parse_args()
    ids = args.variants.split(",")
    unknown = [i for i in ids if i not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    started_mock = g.ensure_mock()
    rows = []
    with tempfile.TemporaryDirectory(prefix="interlock-ab-") as tmp_name:
        gateways = {}
        try:
            for n, vid in enumerate(ids):
                folder = Path(tmp_name) / vid
                folder.mkdir()
                port = 18100 + n
                config = g.write_config(VARIANTS[vid], folder)
                proc = g.start_gateway(config, port, args.pin, folder / "log")
                gateways[vid] = (proc, port, folder / "log")
            for proc, port, log in gateways.values():
                g.wait_ready(port, proc, log)
            for mode in args.modes.split(","):
                conns = dict(g.MODES)[mode]
                for _, port, _ in gateways.values():  # NOTE: warm-up
                    g.run_wrk(port, conns, 2, mode == "stream", args.client_cpu)
                per: dict[str, list[float]] = {vid: [] for vid in ids}
                for burst in range(args.bursts):
                    g.log(f"{mode}: burst {burst + 1}/{args.bursts}")
                    turns = [list(gateways)] if args.together else [[vid] for vid in gateways]
                    for turn in turns:
                        for vid, cpu_us in burst_cpu(gateways, turn, conns, mode, args).items():
                            per[vid].append(cpu_us)
                rows.append((mode, per))
        finally:
            for proc, _, _ in gateways.values():
                g.stop_gateway(proc)
            if started_mock:
                g.stop_mock()
    how = "loaded together" if args.together else "loaded in turn"
    print(
        f"# Interleaved governance A/B ({args.bursts} bursts of {args.seconds} s per variant and "
        f"mode, {how}; all gateways on CPU {args.pin}, wrk on CPU {args.client_cpu})\n"
    )
    print("| variant | mode | CPU µs/req (median) | vs first | paired vs first (q1, q3) |")
    print("|---|---|---|---|---|")
    for mode, per in rows:
        base = per[ids[0]]
        for vid in ids:
            median = statistics.median(per[vid])
            ratios = [100 * (x / y - 1) for x, y in zip(per[vid], base, strict=True)]
            q1, paired, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [0.0] * 3
            change = (
                "" if vid == ids[0] else f"{100 * (median / statistics.median(base) - 1):+.1f} %"
            )
            pair = "" if vid == ids[0] else f"{paired:+.1f} % ({q1:+.1f}, {q3:+.1f})"
            print(f"| {VARIANTS[vid].name} | {mode} | {median:.0f} | {change} | {pair} |")
    return 0


def burst_cpu(
    gateways: dict[str, tuple[subprocess.Popen[bytes], int, Path]],
    turn: list[str],
    conns: int,
    mode: str,
    args: argparse.Namespace,
) -> dict[str, float]:
    """One burst of wrk against each gateway of `turn` at once (one wrk each); per gateway its
    CPU µs per request over the burst."""
    before = {vid: g.cpu_ticks(gateways[vid][0].pid) for vid in turn}
    with ThreadPoolExecutor(len(turn)) as pool:
        runs = {
            vid: pool.submit(
                g.run_wrk, gateways[vid][1], conns, args.seconds, mode == "stream", args.client_cpu
            )
            for vid in turn
        }
        results = {vid: run.result() for vid, run in runs.items()}
    hz = os.sysconf("SC_CLK_TCK")
    return {
        vid: (g.cpu_ticks(gateways[vid][0].pid) - before[vid])
        / hz
        * 1e6
        / max(int(results[vid].get("requests", 0)), 1)
        for vid in turn
    }


if __name__ == "__main__":
    sys.exit(main())
