"""Compile and match benchmark for the config compiler (a script, not a test).

    .venv/bin/python bench/compile_bench.py [--routes 1000] [--runs 5]

Generates a config with N routes (default 1,000) of which 200 use regexes, compiles it (median
of several runs), compiles the largest file in examples/, and times `match_route` against tables
of 10 and N routes for a model, an API and a header match (µs per match). Prints a markdown table.
Targets: compile under 1 s for 1,000 routes; match cost flat from 10 to 1,000 routes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compiler import compile_config, compile_texts  # noqa: E402
from compiler.matcher import RequestFacts, match_route, match_route_naive  # noqa: E402
from compiler.table import RouteTable  # noqa: E402

HEADER = """\
version: 1
upstreams:
  demo: {kind: mock}
models:
  demo-chat:
    targets: [{upstream: demo}]
    pricing: {input_per_mtok: 1.0, output_per_mtok: 2.0}
  demo-big:
    targets: [{upstream: demo}]
    pricing: {input_per_mtok: 5.0, output_per_mtok: 15.0}
routes:
"""


def route_yaml(i: int, n: int) -> str:
    """Route `i` of `n`: a mix of exact models, headers, APIs and (1 in 5) regexes."""
    kind = kind_of(i)
    if kind in (0, 1, 2, 3):
        match = f"{{model: m-{i}}}" if kind != 3 else f"{{model: [m-{i}, m-{i}-alt]}}"
    elif kind in (4, 5, 6):
        match = f"{{headers: {{x-tenant: t-{i}}}, api: [openai.chat, anthropic.messages]}}"
    elif kind == 7:
        match = f'{{model: {{regex: "^fam-{i}-[a-z]+(-\\\\d+)?$"}}}}'
    elif kind == 8:
        match = (
            f'{{headers: {{x-feature: f-{i}}}, text: {{regex: "(?i)\\\\bkeyword{i}\\\\b",'
            " in: last_user}}"
        )
    else:
        match = (
            f"{{headers: {{x-team: team-{i}}}, stream: false,"
            f' body: [{{path: "$.max_tokens", gt: {i}}}]}}'
        )
    model = "demo-big" if i % 2 else "demo-chat"
    return f"  - name: r-{i}\n    match: {match}\n    action: {{model: {model}}}\n"


def kind_of(i: int) -> int:
    return (i + 2) % 10


def generate_config(n: int) -> str:
    """A valid config with `n` routes: n - 2 generated ones, an API-only one, a catch-all."""
    body = "".join(route_yaml(i, n) for i in range(n - 2))
    tail = (
        "  - name: count-tokens\n    match: {api: [anthropic.count_tokens]}\n"
        "    action: {model: demo-chat}\n"
        "  - name: everything-else\n    match: {}\n    action: {default_model: demo-chat}\n"
    )
    return HEADER + body + tail


def compile_table(text: str) -> RouteTable:
    result = compile_texts([("bench.yaml", text)])
    if result.table is None:
        problems = "; ".join(f"{d.span}: {d.code}: {d.message}" for d in result.errors[:5])
        raise SystemExit(f"generated config does not compile: {problems}")
    return result.table


def median_seconds(action: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `runs` calls (CPU time is steadier on a busy machine)."""
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        action()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def last_index(n: int, kinds: tuple[int, ...]) -> int:
    return max(i for i in range(n - 2) if kind_of(i) in kinds)


def match_cases(n: int) -> dict[str, RequestFacts]:
    """Requests whose first matching route is the last of its kind in a table of `n` routes."""
    return {
        "model": RequestFacts(api="openai.chat", model=f"m-{last_index(n, (0, 1, 2))}"),
        "API": RequestFacts(api="anthropic.count_tokens", model=None),
        "header": RequestFacts(
            api="openai.chat",
            model="demo-chat",
            headers={"x-tenant": f"t-{last_index(n, (4, 5, 6))}"},
        ),
    }


def per_match_us(table: RouteTable, facts: RequestFacts, naive: bool = False) -> float:
    if naive:

        def call() -> object:
            return match_route_naive(table.routes, facts)
    else:

        def call() -> object:
            return match_route(table, facts)

    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    best = min(timer.repeat(repeat=5, number=number))
    return best / number * 1e6


def largest_example() -> Path | None:
    files = sorted((ROOT / "examples").glob("*.y*ml"), key=lambda p: p.stat().st_size)
    return files[-1] if files else None


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    n = args.routes
    text = generate_config(n)
    table = compile_table(text)
    wall, cpu = median_seconds(lambda: compile_texts([("bench.yaml", text)]), args.runs)

    print(f"## Compile (median of {args.runs} runs)\n")
    print("| config | routes | regexes | bytes | wall | CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| generated | {len(table.routes)} | {text.count('regex:')} | {len(text):,} "
        f"| {wall * 1000:.0f} ms | {cpu * 1000:.0f} ms |"
    )
    example = largest_example()
    if example is not None:
        result = compile_config(example)
        routes = len(result.table.routes) if result.table else 0
        example_wall, example_cpu = median_seconds(lambda: compile_config(example), args.runs)
        source = example.read_text()
        print(
            f"| {example.relative_to(ROOT)} | {routes} | {source.count('regex:')} "
            f"| {len(source):,} | {example_wall * 1000:.1f} ms | {example_cpu * 1000:.1f} ms |"
        )

    small = compile_table(generate_config(10))
    print("\n## match_route (µs per match, best of 5 timeit repeats)\n")
    print(f"| request | 10 routes | {n} routes | {n} routes, naive scan |")
    print("|---|---:|---:|---:|")
    small_cases, big_cases = match_cases(10), match_cases(n)
    for label, facts in big_cases.items():
        route = match_route(table, facts)
        if route is None or route != match_route_naive(table.routes, facts):
            raise SystemExit(f"{label}: index and naive scan disagree")
        small_us = per_match_us(small, small_cases[label])
        big_us = per_match_us(table, facts)
        naive_us = per_match_us(table, facts, naive=True)
        print(f"| {label} (-> {route.name}) | {small_us:.2f} | {big_us:.2f} | {naive_us:.1f} |")
    verdict = "met" if cpu < 1.0 else "MISSED"
    print(f"\ncompile target (< 1 s CPU for {n} routes): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
