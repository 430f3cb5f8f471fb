"""`interlock explain`, `interlock diff` and `interlock test`: questions about a config that need
no server and no secret (runtime/cli.py adds these subcommands).

    interlock explain CONFIG REQUEST.json [--path P] [--header K:V ...] [--key-id ID] [--json]
    interlock diff OLD NEW [--json] [--requests FILE]     exit 1 when they differ
    interlock test CONFIG TESTS.yaml [--junit FILE] [--min-coverage PCT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from compiler import compile_config
from compiler.diagnostics import render_text
from compiler.diff import diff_tables, render_diff
from compiler.table import RouteTable


def add_parsers(sub: Any) -> None:
    explain = sub.add_parser("explain", help="where a request would go, without a server")
    explain.add_argument("config", metavar="CONFIG", help="config file or directory")
    explain.add_argument("request", metavar="REQUEST.json", help="request body ('-': stdin)")
    explain.add_argument("--path", default="/v1/chat/completions", help="the API path called")
    explain.add_argument(
        "--header", action="append", default=[], metavar="K:V", help="a client header"
    )
    explain.add_argument("--key-id", help="act as the caller holding this key of auth.keys")
    explain.add_argument("--json", action="store_true", help="JSON output")
    explain.set_defaults(run=_explain)

    diff = sub.add_parser("diff", help="what changes between two configs; exit 1 if any")
    diff.add_argument("old", metavar="OLD", help="config file or directory")
    diff.add_argument("new", metavar="NEW", help="config file or directory")
    diff.add_argument("--json", action="store_true", help="JSON output")
    diff.add_argument(
        "--requests", metavar="FILE", help="sample requests (JSON list or JSON lines) to replay"
    )
    diff.set_defaults(run=_diff)

    test = sub.add_parser("test", help="run route tests (YAML) against a config")
    test.add_argument("config", metavar="CONFIG", help="config file or directory")
    test.add_argument("tests", metavar="TESTS.yaml", help="the route tests")
    test.add_argument("--junit", metavar="FILE", help="write JUnit XML here")
    test.add_argument(
        "--min-coverage",
        type=float,
        default=0.0,
        metavar="PCT",
        help="fail when fewer than PCT%% of the routes are reached by a test",
    )
    test.set_defaults(run=_test)


def _table(path: str) -> RouteTable | None:
    result = compile_config(path)
    if result.table is None:
        sources = dict(result.sources)
        for diagnostic in result.errors:
            sys.stderr.write(render_text(diagnostic, sources) + "\n")
        sys.stderr.write(f"{path}: invalid config\n")
    return result.table


def _explain(args: argparse.Namespace) -> int:
    from runtime.explain import ExplainInput, explain_request
    from runtime.explain_render import render_json
    from runtime.explain_render import render_text as render_explanation
    from runtime.standins import ExplainError

    table = _table(args.config)
    if table is None:
        return 1
    try:
        body = sys.stdin.buffer.read() if args.request == "-" else Path(args.request).read_bytes()
        headers = dict(_header(h) for h in args.header)
        request = ExplainInput(body, args.path, headers, args.key_id)
        found = asyncio.run(explain_request(table, request))
    except (OSError, ValueError, ExplainError) as exc:
        sys.stderr.write(f"interlock explain: {exc}\n")
        return 2
    sys.stdout.write(render_json(found) if args.json else render_explanation(found))
    return 0


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"--header {text!r}: expected NAME:VALUE")
    return name.strip(), value.strip()


def _diff(args: argparse.Namespace) -> int:
    old, new = _table(args.old), _table(args.new)
    if old is None or new is None:
        return 2
    diff = diff_tables(old, new)
    replayed: list[Any] = []
    if args.requests:
        from runtime.routetest import load_requests, replay_requests
        from runtime.standins import ExplainError

        try:
            requests = load_requests(args.requests)
            replayed = asyncio.run(replay_requests(old, new, requests))
        except (OSError, ValueError, ExplainError) as exc:
            sys.stderr.write(f"interlock diff: {args.requests}: {exc}\n")
            return 2
    if args.json:
        out = diff.as_dict()
        if args.requests:
            out["requests"] = [
                {"index": c.index, "request": c.label, "before": c.before, "after": c.after}
                for c in replayed
            ]
        sys.stdout.write(json.dumps(out, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render_diff(diff) or "no changes\n")
        if args.requests:
            sys.stdout.write(_replay_text(replayed))
    return 1 if not diff.empty or replayed else 0


def _replay_text(changes: list[Any]) -> str:
    if not changes:
        return "requests: none changes destination\n"
    lines = [f"requests: {len(changes)} change destination"]
    for change in changes:
        moves = ", ".join(
            f"{k} {json.dumps(change.before[k])} -> {json.dumps(change.after[k])}"
            for k in change.fields
        )
        lines.append(f"  #{change.index + 1} {change.label}: {moves}")
    return "\n".join(lines) + "\n"


def _test(args: argparse.Namespace) -> int:
    from runtime.routetest import junit_xml, load_tests, render_results, route_coverage, run_tests

    table = _table(args.config)
    if table is None:
        return 1
    tests, problems, sources = load_tests(args.tests)
    if problems:
        for diagnostic in problems:
            sys.stderr.write(render_text(diagnostic, sources) + "\n")
        sys.stderr.write(f"{args.tests}: invalid route tests\n")
        return 1
    results = asyncio.run(run_tests(table, tests))
    coverage = route_coverage(table, results)
    sys.stdout.write(render_results(results, coverage))
    if args.junit:
        Path(args.junit).write_text(junit_xml(Path(args.tests).name, results, coverage), "utf-8")
    if coverage.percent < args.min_coverage:
        sys.stdout.write(
            f"route coverage {coverage.percent:.0f}% is below"
            f" --min-coverage {args.min_coverage:g}%\n"
        )
        return 1
    return 0 if all(r.passed for r in results) else 1
