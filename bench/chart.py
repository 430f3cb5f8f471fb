"""Draw one `bench/run.sh` results folder as a PNG: Interlock (governance off and on) next to
Portkey and LiteLLM, from the same run.

    .venv/bin/python bench/chart.py bench/results/20261206-050000            # -> .../comparison.png
    .venv/bin/python bench/chart.py DIR --pin pinned --out DIR/comparison-pinned.png

Six panels, one bar per target: req/s and CPU ms per request for JSON (at the harness's largest
CONNS, 32 by default) and for streams (largest STREAM_CONNS, 8), and the latency each proxy adds
over the mock at c=1 (p50 and p99; JSON total, and the first streamed event). The mock itself
("direct") is only in the CPU panels, and named in the req/s titles: its ~90k req/s would flatten
every other bar. A bar far above the rest (LiteLLM's) is cut at the top of the axis, with its
value written on it. Needs matplotlib (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from compare import INTERLOCKS, LABELS, Table, load_comparison

COLORS = {
    "direct": "#9e9e9e",
    "interlock": "#1f77b4",
    "interlock-governed": "#2ca02c",
    "interlock-workers": "#17becf",
    "portkey": "#ff7f0e",
    "litellm": "#d62728",
}
ORDER = ("direct", *(t.key for t in INTERLOCKS), "portkey", "litellm")
CUT = 4.0  # a bar more than CUT x the next tallest one is cut (and labelled)


def axis_top(values: list[float]) -> float | None:
    """Where to cut the axis, or None: e.g. [1.0, 0.9, 10.5] -> 1.6 (LiteLLM's 10.5 is cut)."""
    tall = sorted((v for v in values if v > 0), reverse=True)
    if len(tall) >= 2 and tall[0] > CUT * tall[1]:
        return tall[1] * 1.6
    return None


def bar_panel(
    ax: Any, title: str, unit: str, rows: dict[str, float], spec: str, names: dict[str, str]
) -> None:
    """One bar per target; `rows` maps target key -> value."""
    keys = [k for k in ORDER if k in rows]
    values = [rows[k] for k in keys]
    top = axis_top(values)
    shown = [min(v, top) if top else v for v in values]
    bars = ax.bar(range(len(keys)), shown, color=[COLORS[k] for k in keys])
    for bar, value, cut in zip(bars, values, shown, strict=True):
        text = format(value, spec) + (" ↑" if cut < value else "")
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    if top:
        ax.set_ylim(0, top * 1.15)
    else:
        ax.set_ylim(0, max(values, default=1) * 1.18 or 1)
    ax.set_xticks(range(len(keys)), [names[k] for k in keys], rotation=25, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit, fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def latency_panel(
    ax: Any, title: str, rows: dict[str, tuple[float, float]], names: dict[str, str]
) -> None:
    """Two bars per proxy (p50 solid, p99 hatched, as the title says; a legend would sit on a
    bar); `rows` maps target -> (p50, p99) in ms."""
    keys = [k for k in ORDER if k in rows and k != "direct"]
    width = 0.38
    top = axis_top([max(rows[k]) for k in keys])  # per proxy, so LiteLLM's p50 cannot hide its p99
    for i in (0, 1):
        values = [rows[k][i] for k in keys]
        shown = [min(v, top) if top else v for v in values]
        xs = [x + (i - 0.5) * width for x in range(len(keys))]
        bars = ax.bar(
            xs,
            shown,
            width,
            color=[COLORS[k] for k in keys],
            alpha=1.0 if i == 0 else 0.55,
            hatch=None if i == 0 else "//",
        )
        for bar, value, cut in zip(bars, values, shown, strict=True):
            ax.annotate(
                f"{value:+.2f}" + (" ↑" if cut < value else ""),
                (bar.get_x() + bar.get_width() / 2, max(bar.get_height(), 0)),
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90 if len(keys) > 3 else 0,
                xytext=(0, 2),
                textcoords="offset points",
            )
    highest = max((v for k in keys for v in rows[k]), default=1.0)
    ax.set_ylim(min(0.0, *(v for k in keys for v in rows[k])), (top or highest) * 1.35)
    ax.set_xticks(range(len(keys)), [names[k] for k in keys], rotation=25, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("ms over direct", fontsize=9)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)


def pick(table: dict[str, dict[str, float]], measure: str, direct: bool) -> dict[str, float]:
    return {k: m[measure] for k, m in table.items() if measure in m and (direct or k != "direct")}


def pair(table: dict[str, dict[str, float]], p50: str, p99: str) -> dict[str, tuple[float, float]]:
    return {k: (m[p50], m[p99]) for k, m in table.items() if p50 in m and p99 in m}


def draw(table: Table, pin: str, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[pin]
    names = dict(LABELS)
    if pin == "pinned":  # NOTE: the harness pins every process of a candidate to one CPU
        names["interlock-workers"] += "\n(both on one CPU)"
    direct = rows.get("direct", {})
    fig, axes = plt.subplots(2, 3, figsize=(15, 9))
    for row, mode, name in ((0, "json", "JSON"), (1, "stream", "stream")):
        floor = f"; direct {direct[f'rps_{mode}']:,.0f}" if f"rps_{mode}" in direct else ""
        bar_panel(
            axes[row][0],
            f"{name} req/s, c={conns(rows, mode)} (higher is better{floor})",
            "req/s",
            pick(rows, f"rps_{mode}", direct=False),
            ",.0f",
            names,
        )
        bar_panel(
            axes[row][1],
            f"{name}: CPU ms per request (lower is better)",
            "CPU ms / request",
            pick(rows, f"cpu_{mode}", direct=True),
            ".2f",
            names,
        )
    latency_panel(
        axes[0][2],
        "JSON: added latency at c=1 (lower is better)\np50 solid, p99 hatched",
        pair(rows, "added_p50", "added_p99"),
        names,
    )
    latency_panel(
        axes[1][2],
        "stream: first event, added at c=1 (lower is better)\np50 solid, p99 hatched",
        pair(rows, "first_p50", "first_p99"),
        names,
    )
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def conns(rows: dict[str, dict[str, float]], mode: str) -> str:
    found = {int(m[f"conns_{mode}"]) for m in rows.values() if f"conns_{mode}" in m}
    return "/".join(str(c) for c in sorted(found)) or "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a bench/run.sh results folder")
    parser.add_argument("--pin", choices=("unpinned", "pinned"), default="unpinned")
    parser.add_argument("--out", type=Path, help="default: RESULTS/comparison.png")
    args = parser.parse_args()
    table = load_comparison(args.results)
    if args.pin not in table:
        raise SystemExit(f"no {args.pin} rows in {args.results} (have: {', '.join(table)})")
    out = args.out or args.results / "comparison.png"
    title = (
        f"Interlock vs Portkey and LiteLLM, one bench/run.sh ({args.results.name}, {args.pin})\n"
        "governance = a managed key + an rpm/tpm limit (memory) + the SQLite usage ledger"
    )
    draw(table, args.pin, title, out)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
