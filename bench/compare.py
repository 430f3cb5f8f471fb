"""One `bench/run.sh` results folder as a side-by-side table: every target's key numbers.

`run.sh` runs the shared harness once with Interlock (governance off) as its candidate next to
direct, LiteLLM and Portkey (DIR/harness/), then the harness's load and probe again for each
further Interlock variant (DIR/harness-governed/, DIR/harness-workers/), each time with `direct`
in the probe so added latency is measured against the mock of the same minutes. This module
reads them all into one mapping `{pin: {target: {measure: value}}}`, the rows `chart.py` draws
and `summary.py` turns into ratio tables:

    load_comparison(Path("bench/results/20261206-050000"))["unpinned"]["portkey"]["cpu_json"]
    -> 0.94

Measures: rps_json / cpu_json (req/s and CPU ms per request, JSON at the largest of CONNS),
rps_stream / cpu_stream (streaming at the largest of STREAM_CONNS), added_p50 / added_p99 (JSON,
c=1, ms over direct), first_p50 / first_p99 (first streamed event, c=1, ms over direct), rss_mb
(largest RSS after a load run), cold_s (process start to the first proxied 200), and
conns_json / conns_stream (the concurrency of the rps_* and cpu_* numbers). A measure the
run did not produce is missing from the mapping.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Table = dict[str, dict[str, dict[str, float]]]


@dataclass(frozen=True)
class Target:
    """A column of the comparison: where its numbers are in a results folder."""

    key: str
    label: str
    harness: str  # subfolder holding the harness report.json with this target in it
    harness_name: str  # the target's name inside that report ("candidate" for Interlock rows)
    coldstart: str | None = None  # coldstart.py --json-out file, for Interlock rows


TARGETS = (
    Target("direct", "direct (mock)", "harness", "direct"),
    Target("interlock", "Interlock", "harness", "candidate", "coldstart.json"),
    Target(
        "interlock-governed",
        "Interlock + governance",
        "harness-governed",
        "candidate",
        "coldstart-governed.json",
    ),
    Target("interlock-workers", "Interlock, 2 workers", "harness-workers", "candidate"),
    Target("portkey", "Portkey", "harness", "portkey"),
    Target("litellm", "LiteLLM", "harness", "litellm"),
)
INTERLOCKS = tuple(t for t in TARGETS if t.key.startswith("interlock"))
PEERS = tuple(t for t in TARGETS if t.key in ("portkey", "litellm"))
LABELS = {t.key: t.label for t in TARGETS}


def read_report(d: Path, sub: str) -> dict[str, Any] | None:
    path = d / sub / "report.json"
    return json.loads(path.read_text()) if path.exists() else None


def main_conns(meta: dict[str, str], key: str, default: int) -> int:
    """The largest connection count of a harness knob such as CONNS="32 8"."""
    values = [int(x) for x in meta.get(key, "").split() if x.isdigit()]
    return max(values, default=default)


def load_measures(report: dict[str, Any], name: str, pin: str) -> dict[str, float]:
    meta = report.get("meta", {})
    conns = {"json": main_conns(meta, "CONNS", 32), "stream": main_conns(meta, "STREAM_CONNS", 8)}
    out: dict[str, float] = {}
    rss: list[float] = []
    for row in report.get("load", []):
        if row["pin"] != pin or row["target"] != name:
            continue
        if row.get("rss_mb") is not None:
            rss.append(row["rss_mb"])
        if row["conns"] == conns[row["mode"]]:
            out[f"rps_{row['mode']}"] = row["rps"]
            out[f"conns_{row['mode']}"] = row["conns"]
            if row.get("cpu_ms_per_req") is not None:
                out[f"cpu_{row['mode']}"] = row["cpu_ms_per_req"]
    if rss:
        out["rss_mb"] = max(rss)
    for row in report.get("added_latency_ms", []):
        if row["pin"] == pin and row["target"] == name:
            for key, source in (
                ("added_p50", "json_p50"),
                ("added_p99", "json_p99"),
                ("first_p50", "stream_first_event_p50"),
                ("first_p99", "stream_first_event_p99"),
            ):
                if row.get(source) is not None:
                    out[key] = row[source]
    for row in report.get("cold_start_s", []):
        if row["target"] == name and row.get("first_200_s") is not None:
            out["cold_s"] = row["first_200_s"]
    return out


def cold_start(d: Path, name: str | None) -> float | None:
    """Median seconds to the first 200 from a coldstart.py --json-out file."""
    path = d / name if name else None
    if path is None or not path.exists():
        return None
    runs = json.loads(path.read_text())["runs"]
    return statistics.median(r["first_200_s"] for r in runs) if runs else None


def load_comparison(d: Path) -> Table:
    """Every target's measures per pin mode (see the module docstring)."""
    table: Table = {}
    for target in TARGETS:
        report = read_report(d, target.harness)
        if report is None:
            continue
        cold = cold_start(d, target.coldstart)
        for pin in ("unpinned", "pinned"):
            measures = load_measures(report, target.harness_name, pin)
            if not measures:
                continue
            if cold is not None:
                measures["cold_s"] = cold
            table.setdefault(pin, {})[target.key] = measures
    return table


def main() -> int:
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python bench/compare.py RESULTS_DIR")
    print(json.dumps(load_comparison(Path(sys.argv[1])), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
