"""Governance variants measured side by side, interleaved: the steadiest A/B this box allows.

    .venv/bin/python bench/interleaved.py --variants off,sqlite,limits-memory,all --bursts 10

`bench/governance.py` restarts each variant per round; on a shared VM the CPU's speed drifts by
±25 % within a minute, more than the differences it looks for. Here every variant of
`governance.VARIANTS` (plus a few finer ones below) is started at once, all pinned to the same
CPU and idle until loaded; then wrk sends short bursts to each in turn (A B C A B C ...), so
drift hits all of them alike. Per burst: the gateway's CPU time (utime + stime) / requests.
The report gives per variant and mode the median CPU µs per request, its change against the
first variant, and the median of the per-burst ratios against the first variant's burst just
before (paired, the figure to quote). Output: markdown on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
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
    args = parser.parse_args()
    ids = args.variants.split(",")
    unknown = [i for i in ids if i not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    started_mock = g.ensure_mock()
    hz = os.sysconf("SC_CLK_TCK")
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
                    for vid, (proc, port, _) in gateways.items():
                        before = g.cpu_ticks(proc.pid)
                        result = g.run_wrk(
                            port, conns, args.seconds, mode == "stream", args.client_cpu
                        )
                        used = g.cpu_ticks(proc.pid) - before
                        per[vid].append(used / hz * 1e6 / max(int(result.get("requests", 0)), 1))
                rows.append((mode, per))
        finally:
            for proc, _, _ in gateways.values():
                g.stop_gateway(proc)
            if started_mock:
                g.stop_mock()
    print(
        f"# Interleaved governance A/B ({args.bursts} bursts of {args.seconds} s per variant and "
        f"mode, all gateways on CPU {args.pin}, wrk on CPU {args.client_cpu})\n"
    )
    print("| variant | mode | CPU µs/req (median) | vs first | paired vs first |")
    print("|---|---|---|---|---|")
    for mode, per in rows:
        base = per[ids[0]]
        for vid in ids:
            median = statistics.median(per[vid])
            paired = statistics.median(x / y for x, y in zip(per[vid], base, strict=True))
            change = (
                "" if vid == ids[0] else f"{100 * (median / statistics.median(base) - 1):+.1f} %"
            )
            pair = "" if vid == ids[0] else f"{100 * (paired - 1):+.1f} %"
            print(f"| {VARIANTS[vid].name} | {mode} | {median:.0f} | {change} | {pair} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
