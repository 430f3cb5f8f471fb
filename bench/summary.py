"""Summarise one `bench/run.sh` results folder against Interlock's goals and the run before.

Reads DIR/harness/report.json (the shared harness), DIR/coldstart.json, DIR/rss.txt and
DIR/loadavg.txt, and the further Interlock variants' harness runs through `compare.py`; writes
DIR/summary.json and prints markdown (what `run.sh` saves as summary.md): the side-by-side ratio
tables (Interlock with governance off and on against Portkey and LiteLLM), the goals table,
CPU per request next to the peers, and the key numbers' change since the previous
folder in bench/results/ with a summary.json of a run of the same length (QUICK or full).

    python bench/summary.py bench/results/20261123-061149
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from compare import INTERLOCKS, LABELS, PEERS, Table, load_comparison
from variants import cells, ladder

GOALS = {  # key: (label, limit, "max" = at most / "min" = at least)
    "json_added_p50_ms": ("added latency, JSON, c=1, p50", 0.35, "max"),
    "json_added_p99_ms": ("added latency, JSON, c=1, p99", 1.0, "max"),
    "stream_first_added_p50_ms": ("first streamed event added, c=1, p50", 1.0, "max"),
    "rps_c32_vs_portkey": ("req/s JSON c=32 / Portkey's", 2.0, "min"),
    "rps_c32_vs_litellm": ("req/s JSON c=32 / LiteLLM's", 20.0, "min"),
    "rss_after_load_mb": ("RSS after the load run, MB", 60.0, "max"),
    "cold_start_s": ("cold start to first 200, s (median of 5)", 1.0, "max"),
}


# (measure, label, True if higher is better, format)
MEASURES = (
    ("cpu_json", "CPU ms/request, JSON c={json}", False, ".3f"),
    ("cpu_stream", "CPU ms/request, stream c={stream}", False, ".3f"),
    ("rps_json", "req/s, JSON c={json}", True, ",.0f"),
    ("rps_stream", "req/s, stream c={stream}", True, ",.0f"),
    ("added_p50", "added latency, JSON c=1 p50, ms", False, "+.2f"),
    ("added_p99", "added latency, JSON c=1 p99, ms", False, "+.2f"),
    ("first_p50", "first streamed event added, c=1 p50, ms", False, "+.2f"),
    ("first_p99", "first streamed event added, c=1 p99, ms", False, "+.2f"),
    ("rss_mb", "RSS after load, MB", False, ".0f"),
    ("cold_s", "cold start to first 200, s", False, ".2f"),
)


def advantage(ours: float | None, theirs: float | None, higher_better: bool) -> str:
    """How many times better Interlock does, e.g. CPU 0.5 ms vs 1.0 ms -> "2.00x"; "-" when a
    value is missing or not positive (an added latency below the mock's is noise)."""
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return "-"
    return f"{(ours / theirs if higher_better else theirs / ours):.2f}x"


def render_side_by_side(table: Table) -> list[str]:
    lines = [
        "## Side by side: Interlock, governance off and on, against Portkey and LiteLLM",
        "",
        "One run of `bench/run.sh`. *x peer* = how many times better Interlock does than that "
        "peer (> 1 = Interlock better): the peer's value divided by Interlock's for CPU, latency, "
        "RSS and cold start (for CPU: requests per CPU-second), Interlock's divided by the "
        "peer's for req/s. Governance on = a managed key, an rpm + tpm limit (memory) and the "
        "SQLite usage ledger (`interlock-bench-governance.yaml`).",
    ]
    for pin, rows in table.items():
        mine = [t for t in INTERLOCKS if t.key in rows]
        peers = [t for t in PEERS if t.key in rows]
        if not mine:
            continue
        conns = {
            mode: next((int(m[f"conns_{mode}"]) for m in rows.values() if f"conns_{mode}" in m), 0)
            for mode in ("json", "stream")
        }
        head = ["measure", *(p.label for p in peers)]
        for t in mine:
            head += [t.label, *(f"x {p.label}" for p in peers)]
        lines += ["", f"### {pin}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for key, label, higher, spec in MEASURES:
            cells = [label.format(**conns)]
            cells += [fmt(rows[p.key].get(key), spec) for p in peers]
            for t in mine:
                ours = rows[t.key].get(key)
                cells.append(fmt(ours, spec))
                cells += [advantage(ours, rows[p.key].get(key), higher) for p in peers]
            lines.append("| " + " | ".join(cells) + " |")
        lines += governance_cost(rows)
    return lines


def governance_cost(rows: dict[str, dict[str, float]]) -> list[str]:
    """What governance adds to CPU per request (budget: +15 %); the per-CPU-second goals."""
    off, on = rows.get("interlock", {}), rows.get("interlock-governed", {})
    out = []
    for mode in ("json", "stream"):
        a, b = off.get(f"cpu_{mode}"), on.get(f"cpu_{mode}")
        if a and b:
            change = (b / a - 1) * 100
            within = "met" if change <= 15 else "**not met**"
            out.append(
                f"governance on vs off, CPU per {mode} request: {change:+.1f} % "
                f"(budget +15 %: {within})"
            )
    for peer, goal in (("portkey", 2.0), ("litellm", 20.0)):
        theirs, ours = rows.get(peer, {}).get("cpu_json"), on.get("cpu_json")
        if theirs and ours:
            ratio = theirs / ours
            verdict_text = "met" if ratio >= goal else "**not met**"
            out.append(
                f"requests per CPU-second with governance on, JSON: {ratio:.2f}x "
                f"{LABELS[peer]} (goal >= {goal:g}x: {verdict_text})"
            )
    return ["", *(f"- {line}" for line in out)] if out else []


def load(d: Path) -> dict[str, Any]:
    report = json.loads((d / "harness" / "report.json").read_text())
    meta = report.get("meta", {})
    out: dict[str, Any] = {
        "folder": d.name,
        "pins": {},
        "duration": meta.get("DURATION"),
        "repeat": meta.get("REPEAT"),
    }
    for pin in ("unpinned", "pinned"):
        m: dict[str, Any] = {}
        for r in report.get("added_latency_ms", []):
            if r["pin"] == pin and r["target"] == "candidate":
                m["json_added_p50_ms"] = r["json_p50"]
                m["json_added_p99_ms"] = r["json_p99"]
                m["stream_first_added_p50_ms"] = r["stream_first_event_p50"]
                m["stream_first_added_p99_ms"] = r["stream_first_event_p99"]
        for r in report.get("rps_ratio", []):
            if r["pin"] == pin and r["mode"] == "json" and r["conns"] == 32:
                m["rps_c32"] = r["candidate_rps"]
                m["rps_c32_vs_portkey"] = r.get("vs_portkey")
                m["rps_c32_vs_litellm"] = r.get("vs_litellm")
        for r in report.get("load", []):
            if r["pin"] == pin:
                key = f"{r['target']}_{r['mode']}_c{r['conns']}"
                m[f"cpu_ms_{key}"] = r["cpu_ms_per_req"]
                m[f"rps_{key}"] = r["rps"]
                m[f"errors_{key}"] = r["errors"]
        if m:
            out["pins"][pin] = m
    cold = d / "coldstart.json"
    if cold.exists():
        runs = json.loads(cold.read_text())["runs"]
        out["cold_start_s"] = statistics.median(r["first_200_s"] for r in runs)
        out["rss_after_first_request_mb"] = statistics.median(r["rss_mb"] for r in runs)
        if all("cpu_s" in r for r in runs):
            out["cold_start_cpu_s"] = statistics.median(r["cpu_s"] for r in runs)
    rss = d / "rss.txt"
    if rss.exists():
        found = re.search(r"after the load run: ([\d.]+) MB \(peak ([\d.]+) MB\)", rss.read_text())
        if found:
            out["rss_after_load_mb"] = float(found.group(1))
            out["rss_peak_mb"] = float(found.group(2))
    loads = d / "loadavg.txt"
    if loads.exists():
        ones = [float(line.split()[1]) for line in loads.read_text().splitlines() if line.strip()]
        if ones:
            out["loadavg_1m_mean"] = statistics.mean(ones)
            out["loadavg_1m_max"] = max(ones)
    return out


def value(s: dict[str, Any], key: str, pin: str) -> float | None:
    found = s[key] if key in s else s["pins"].get(pin, {}).get(key)
    return None if found is None else float(found)


def verdict(v: float | None, limit: float, kind: str) -> str:
    if v is None:
        return "n/a"
    ok = v <= limit if kind == "max" else v >= limit
    return "met" if ok else "**not met**"


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def render(s: dict[str, Any], prev: dict[str, Any] | None) -> str:
    pins = [p for p in ("unpinned", "pinned") if p in s["pins"]]
    lines = [f"## Interlock against its goals ({s['folder']})", ""]
    if "loadavg_1m_mean" in s:
        lines += [
            f"Load average (1 min) during the harness run: mean {s['loadavg_1m_mean']:.2f}, "
            f"max {s['loadavg_1m_max']:.2f} on 2 CPUs (the client, mock and proxies alone "
            "account for up to ~2; more means other work shared the box).",
            "",
        ]
    lines += ["| goal | target | " + " | ".join(pins) + " |", "|---|---|" + "---|" * len(pins)]
    for key, (label, limit, kind) in GOALS.items():
        sign = "≤" if kind == "max" else "≥"
        cells = []
        for pin in pins:
            v = value(s, key, pin)
            spec = ".1f" if key.startswith(("rps", "rss")) else ".2f"
            cells.append(f"{fmt(v, spec)} ({verdict(v, limit, kind)})")
        lines.append(f"| {label} | {sign} {limit:g} | " + " | ".join(cells) + " |")
    if "cold_start_cpu_s" in s:
        lines += [
            "",
            f"Cold start CPU time (process start to first 200, median): "
            f"{s['cold_start_cpu_s']:.2f} s.",
        ]
    lines += [
        "",
        "The same ratios from CPU time per request (peer's CPU ms/req divided by "
        "Interlock's, JSON c=32): requests per CPU-second. A busy box inflates everyone's "
        "CPU per request too (2x seen), but these ratios held within a run:",
        "",
    ]
    for pin in pins:
        m = s["pins"][pin]
        mine = m.get("cpu_ms_candidate_json_c32")
        parts = []
        for peer in ("portkey", "litellm"):
            theirs = m.get(f"cpu_ms_{peer}_json_c32")
            if mine and theirs:
                parts.append(f"vs {peer} {theirs / mine:.2f}x")
        if parts:
            lines.append(f"- {pin}: " + ", ".join(parts))
    lines += [
        "",
        "CPU ms per request (lower is better) and req/s, from the same run:",
        "",
        "| pin | target | JSON c=32 CPU ms/req | JSON c=32 req/s | stream c=8 CPU ms/req |"
        " stream c=8 req/s |",
        "|---|---|---|---|---|---|",
    ]
    for pin in pins:
        m = s["pins"][pin]
        for target in ("direct", "candidate", "portkey", "litellm"):
            if f"rps_{target}_json_c32" not in m:
                continue
            name = "interlock" if target == "candidate" else target
            lines.append(
                f"| {pin} | {name} | {fmt(m.get(f'cpu_ms_{target}_json_c32'), '.3f')} | "
                f"{fmt(m.get(f'rps_{target}_json_c32'), '.0f')} | "
                f"{fmt(m.get(f'cpu_ms_{target}_stream_c8'), '.3f')} | "
                f"{fmt(m.get(f'rps_{target}_stream_c8'), '.0f')} |"
            )
    lines += ["", "### What changed since the previous run", ""]
    if prev is None:
        lines.append("First run: nothing to compare with.")
    else:
        lines += [
            f"Previous: {prev['folder']}.",
            "",
            "| measure | pin | previous | now | change |",
            "|---|---|---|---|---|",
        ]
        for key in (*GOALS, "cpu_ms_candidate_json_c32", "cpu_ms_candidate_stream_c8"):
            for pin in pins if key not in s else ["-"]:
                a = value(prev, key, pin) if pin != "-" else prev.get(key)
                b = value(s, key, pin) if pin != "-" else s.get(key)
                if a is None or b is None:
                    continue
                change = f"{(b - a) / a * 100:+.0f}%" if a else "-"
                lines.append(f"| {key} | {pin} | {a:.3f} | {b:.3f} | {change} |")
    return "\n".join(lines)


def render_floor(d: Path, table: Table) -> list[str]:
    """The floor ladder of `variants.py compare` (DIR/variants.json, every rung pinned) against
    what 2x Portkey per CPU-second allows, Portkey's pinned CPU from the same run."""
    path = d / "variants.json"
    if not path.exists():
        return []
    rows = json.loads(path.read_text())
    cell = cells(rows)
    portkey = table.get("pinned", {}).get("portkey", {})
    lines = [
        "## The floor: what 2x Portkey leaves for the pipeline and governance",
        "",
        "`variants.py compare`: every rung served at once, pinned to one CPU, wrk in interleaved "
        "rounds (medians). Budget = Portkey's pinned CPU per request in this run / 2.",
        "",
        *ladder(rows),
    ]
    for mode, conns in (("json", 32), ("stream", 8)):
        theirs = portkey.get(f"cpu_{mode}")
        floor = cell.get(("hypercorn", "floor", mode, conns), {}).get("cpu_us")
        ours = cell.get(("hypercorn", "governed", mode, conns), {}).get("cpu_us")
        if not (theirs and floor and ours):
            continue
        budget = theirs * 1000 / 2
        lines += [
            "",
            f"{mode} c={conns}: 2x Portkey ({theirs * 1000:.0f} µs) allows {budget:.0f} µs a "
            f"request; the floor takes {floor:.0f}, leaving {budget - floor:.0f} for the "
            f"pipeline and governance, which take {ours - floor:.0f} "
            f"({'met' if ours <= budget else 'not met'}: governed {ours:.0f} µs, "
            f"{theirs * 1000 / ours:.2f}x Portkey).",
        ]
    return lines


def previous(d: Path, now: dict[str, Any]) -> dict[str, Any] | None:
    """The newest older run with the same wrk duration (a QUICK run is compared with QUICK ones)."""
    older = (p for p in d.parent.iterdir() if p.is_dir() and p.name < d.name)
    for p in sorted(older, reverse=True):
        if (p / "summary.json").exists():
            old: dict[str, Any] = json.loads((p / "summary.json").read_text())
            if old.get("duration") == now.get("duration"):
                return old
    return None


def main() -> int:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    d = Path(sys.argv[1]).resolve()
    s = load(d)
    table = load_comparison(d)
    s["comparison"] = table
    (d / "summary.json").write_text(json.dumps(s, indent=1))
    print("\n".join([*render_side_by_side(table), "", *render_floor(d, table), ""]))
    print(render(s, previous(d, s)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
