"""`interlock test`: route tests in YAML, run without a server through `explain_request` (so
through the serving code), with JUnit XML and a report of the routes no test reaches. Envoy's
``router_check_tool`` is the model::

    version: 1
    tests:
      - name: the plan stage goes to the plan model
        request: {headers: {x-cfx-stage: plan}, key_id: agent-prod,
                  body: {model: any, messages: [{role: user, content: hi}]}}
        expect: {route: stage-plan, model: cfx-plan, upstream: litellm, status: 200}

    tests, problems = load_tests("examples/cfx-stage-routing.tests.yaml")
    results = asyncio.run(run_tests(table, tests))
    route_coverage(table, results) -> Coverage(reached=(...), missed=(...))
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from jsonschema import Draft202012Validator

from compiler.diagnostics import CompileError, Diagnostic, Span, did_you_mean
from compiler.loader import Document, load_texts
from compiler.schema import validate_schema
from compiler.table import RouteTable
from runtime.explain import DEFAULT_PATH, ExplainInput, Explanation, explain_request
from runtime.standins import ExplainError

_EXPECT_KEYS = ("status", "route", "model", "upstream", "upstream_model", "headers")


@dataclass(frozen=True)
class RouteTest:
    name: str
    request: ExplainInput
    expect: Mapping[str, Any]
    span: Span


@dataclass(frozen=True)
class TestResult:
    test: RouteTest
    failures: tuple[str, ...]
    found: Explanation | None = None

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class Coverage:
    reached: tuple[str, ...]
    missed: tuple[str, ...]

    @property
    def percent(self) -> float:
        total = len(self.reached) + len(self.missed)
        return 100.0 if total == 0 else 100.0 * len(self.reached) / total


@cache
def tests_schema_text() -> str:
    files = resources.files("compiler") / "schema" / "interlock-tests.schema.json"
    return files.read_text("utf-8")


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(tests_schema_text()))


def load_tests(path: str | Path) -> tuple[list[RouteTest], list[Diagnostic], dict[str, str]]:
    """The tests of a YAML file, or located diagnostics (schema errors, repeated names), and
    the file's text for rendering them."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = Diagnostic("file.unreadable", f"cannot read tests: {exc}", Span(name, 1, 1))
        return [], [problem], {}
    try:
        doc = load_texts([(name, text)], env={})
    except CompileError as exc:
        return [], list(exc.diagnostics), {name: text}
    problems = validate_schema(doc, _validator())
    if problems:
        return [], problems, {name: text}
    return _tests(doc)


def _tests(doc: Document) -> tuple[list[RouteTest], list[Diagnostic], dict[str, str]]:
    tests: list[RouteTest] = []
    problems: list[Diagnostic] = []
    seen: set[str] = set()
    for index, spec in enumerate(doc.data["tests"]):
        where = ("tests", index)
        if spec["name"] in seen:
            message = f"test name {spec['name']!r} is used twice"
            problems.append(Diagnostic("tests.duplicate_name", message, doc.span((*where, "name"))))
        seen.add(spec["name"])
        request = spec["request"]
        tests.append(
            RouteTest(
                name=spec["name"],
                request=ExplainInput(
                    body=json.dumps(request["body"]).encode(),
                    path=request.get("path", DEFAULT_PATH),
                    headers=dict(request.get("headers", {})),
                    key_id=request.get("key_id"),
                ),
                expect=dict(spec["expect"]),
                span=doc.span(where),
            )
        )
    return tests, problems, dict(doc.sources)


async def run_tests(table: RouteTable, tests: Sequence[RouteTest]) -> list[TestResult]:
    results = []
    for test in tests:
        try:
            found = await explain_request(table, test.request)
        except ExplainError as exc:
            results.append(TestResult(test, (str(exc),)))
            continue
        results.append(TestResult(test, check_expectations(test.expect, found, table), found))
    return results


def check_expectations(
    expect: Mapping[str, Any], found: Explanation, table: RouteTable
) -> tuple[str, ...]:
    """What of `expect` does not hold for `found`, each as one readable sentence."""
    first = found.first
    got = destination(found)
    out = []
    for key in _EXPECT_KEYS:
        if key not in expect or key == "headers":
            continue
        if expect[key] != got[key]:
            out.append(_mismatch(key, expect[key], got[key], found, table))
    headers = dict(first.headers) if first is not None else {}
    for name, wanted in expect.get("headers", {}).items():
        value = headers.get(name.lower())
        if value != wanted:
            shown = "absent" if value is None else repr(value)
            wants = "absent" if wanted is None else repr(wanted)
            out.append(f"upstream header {name.lower()}: expected {wants}, got {shown}")
    return tuple(out)


def _mismatch(key: str, wanted: Any, got: Any, found: Explanation, table: RouteTable) -> str:
    text = f"{key}: expected {json.dumps(wanted)}, got {json.dumps(got)}"
    if found.failure is not None and key != "status":
        text += f" (status {found.failure.status}: {found.failure.message})"
    elif key == "status" and found.failure is not None:
        text += f" ({found.failure.message})"
    if key == "route" and isinstance(wanted, str):
        text += _why_not(wanted, found, table)
    return text


def _why_not(route: str, found: Explanation, table: RouteTable) -> str:
    names = [r.name for r in table.routes]
    if route not in names:
        hint = did_you_mean(route, names)
        return f"; the config has no route {route!r}" + (f" ({hint})" if hint else "")
    for check in found.routes:
        if check.name == route and not check.matched:
            return f"; {route} did not match: " + "; ".join(check.reasons)
    if found.route is not None:
        return f"; {found.route} matched first"
    return ""


def route_coverage(table: RouteTable, results: Sequence[TestResult]) -> Coverage:
    reached = {r.found.route for r in results if r.found is not None and r.found.route}
    names = [route.name for route in table.routes]
    return Coverage(
        tuple(n for n in names if n in reached), tuple(n for n in names if n not in reached)
    )


def render_results(results: Sequence[TestResult], coverage: Coverage) -> str:
    lines = []
    for result in results:
        state = "ok  " if result.passed else "FAIL"
        lines.append(f"{state} {result.test.name}")
        lines += [f"     {problem}" for problem in result.failures]
        if result.failures:
            lines.append(f"     at {result.test.span} ({result.test.span.path})")
    failed = sum(1 for r in results if not r.passed)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    total = len(coverage.reached) + len(coverage.missed)
    lines.append(f"route coverage: {len(coverage.reached)}/{total} ({coverage.percent:.0f}%)")
    if coverage.missed:
        lines.append("routes no test reaches: " + ", ".join(coverage.missed))
    return "\n".join(lines) + "\n"


def junit_xml(suite: str, results: Sequence[TestResult], coverage: Coverage) -> str:
    """JUnit XML (one testsuite) for CI test reports; coverage as suite properties."""
    failed = sum(1 for r in results if not r.passed)
    root = ElementTree.Element("testsuites", tests=str(len(results)), failures=str(failed))
    element = ElementTree.SubElement(
        root, "testsuite", name=suite, tests=str(len(results)), failures=str(failed), errors="0"
    )
    properties = ElementTree.SubElement(element, "properties")
    for name, value in (
        ("route_coverage_percent", f"{coverage.percent:.1f}"),
        ("routes_not_reached", ",".join(coverage.missed)),
    ):
        ElementTree.SubElement(properties, "property", name=name, value=value)
    for result in results:
        case = ElementTree.SubElement(
            element, "testcase", name=result.test.name, classname=suite, time="0"
        )
        if result.failures:
            failure = ElementTree.SubElement(
                case, "failure", message=result.failures[0], type="RouteTestFailure"
            )
            failure.text = "\n".join(result.failures) + f"\nat {result.test.span}"
    ElementTree.indent(root)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        + ElementTree.tostring(root, encoding="unicode")
        + "\n"
    )


@dataclass(frozen=True)
class ReplayChange:
    """One sample request that an edit sends elsewhere (`interlock diff --requests`)."""

    index: int
    label: str
    before: Mapping[str, Any]
    after: Mapping[str, Any]
    fields: tuple[str, ...] = ()


def destination(found: Explanation) -> dict[str, Any]:
    """Where a request ends: status, route, model, first upstream and the model sent there."""
    first = found.first
    return {
        "status": found.status,
        "route": found.route,
        "model": found.model,
        "upstream": first.upstream if first is not None else None,
        "upstream_model": first.upstream_model if first is not None else None,
    }


async def replay_requests(
    old: RouteTable, new: RouteTable, requests: Sequence[ExplainInput]
) -> list[ReplayChange]:
    """The requests whose destination differs between `old` and `new`."""
    out = []
    for index, request in enumerate(requests):
        before = destination(await explain_request(old, request))
        after = destination(await explain_request(new, request))
        if before != after:
            fields = tuple(k for k in before if before[k] != after[k])
            out.append(ReplayChange(index, _label(request), before, after, fields))
    return out


def _label(request: ExplainInput) -> str:
    try:
        model = json.loads(request.body).get("model")
    except (ValueError, AttributeError):
        model = None
    return f"{request.path} model={model!r}"


def load_requests(path: str | Path) -> list[ExplainInput]:
    """Sample requests: a JSON list or JSON lines, each ``{path?, headers?, key_id?, body}``
    or a bare request body. Raises ValueError naming the bad entry."""
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        items = json.loads(text)
    else:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [_request(item, number) for number, item in enumerate(items, 1)]


def _request(item: Any, number: int) -> ExplainInput:
    if not isinstance(item, dict):
        raise ValueError(f"request {number}: not a JSON object")
    if "body" not in item:
        return ExplainInput(body=json.dumps(item).encode())
    unknown = set(item) - {"path", "headers", "key_id", "body"}
    if unknown:
        raise ValueError(f"request {number}: unknown keys {sorted(unknown)}")
    headers = item.get("headers", {})
    if not isinstance(headers, dict):
        raise ValueError(f"request {number}: headers must be an object")
    return ExplainInput(
        body=json.dumps(item["body"]).encode(),
        path=str(item.get("path", DEFAULT_PATH)),
        headers={str(k): str(v) for k, v in headers.items()},
        key_id=item.get("key_id"),
    )
