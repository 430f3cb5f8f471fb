"""`interlock test`: every example's route tests pass with full route coverage (this is how CI
runs them; the text output is pinned by tests/golden/test/, regenerated with
INTERLOCK_UPDATE_GOLDEN=1), a failing expectation fails readably, JUnit XML is well-formed,
`--min-coverage` fails a suite that leaves routes unreached, and a broken tests file gets located
errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import jsonschema
import pytest

from runtime.cli import main
from tests.test_explain import check_golden

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = ROOT / "tests" / "golden" / "test"
SCHEMA = ROOT / "schemas" / "interlock-tests.schema.json"
EXAMPLE_NAMES = sorted(
    p.stem for p in EXAMPLES.glob("*.yaml") if not p.name.endswith(".tests.yaml")
)
CFX = str(EXAMPLES / "cfx-stage-routing.yaml")


def run(*args: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},  # NOTE: no secret in the environment, as in CI
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_every_example_passes_its_route_tests(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tests = EXAMPLES / f"{name}.tests.yaml"
    assert tests.exists(), f"examples/{name}.yaml ships no route tests"
    junit = tmp_path / "junit.xml"
    config = str(EXAMPLES / f"{name}.yaml")
    code = main(["test", config, str(tests), "--junit", str(junit), "--min-coverage", "100"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 failed" in out and "(100%)" in out
    check_golden(GOLDEN / f"{name}.txt", out)
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"


def test_the_command_runs_without_any_environment() -> None:
    code, out, err = run("test", CFX, str(EXAMPLES / "cfx-stage-routing.tests.yaml"))
    assert code == 0, out + err
    assert "11 passed, 0 failed" in out


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tests.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


FAILING = """version: 1
tests:
  - name: plan goes to the plan stage
    request:
      headers: {x-cfx-stage: plan}
      key_id: agent-prod
      body: {model: m, messages: [{role: user, content: hi}]}
    expect: {route: stage-plan, upstream_model: claude-sonnet-4-5}
  - name: wrongly expects the plan route
    request:
      key_id: agent-prod
      body: {model: m, messages: [{role: user, content: hi}]}
    expect:
      route: stage-plan
      model: cfx-plan
      status: 200
      headers: {x-cfx-stage: plan, authorization: null}
"""


def test_a_failing_expectation_exits_1_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junit = tmp_path / "out.xml"
    assert main(["test", CFX, write(tmp_path, FAILING), "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert "ok   plan goes to the plan stage" in out
    assert "FAIL wrongly expects the plan route" in out
    assert (
        'route: expected "stage-plan", got "infer-code"; stage-plan did not match: header '
        "x-cfx-stage is absent, the route wants 'plan'"
    ) in out
    assert 'model: expected "cfx-plan", got "cfx-code"' in out
    assert "upstream header x-cfx-stage: expected 'plan', got absent" in out
    assert "upstream header authorization: expected absent, got 'Bearer <secret" in out
    assert "tests.yaml:9:5 ($.tests[1])" in out
    assert "1 passed, 1 failed" in out
    root = ElementTree.parse(junit).getroot()
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "plan goes to the plan stage",
        "wrongly expects the plan route",
    ]
    assert cases[0].find("failure") is None
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("message", "").startswith("route: expected")
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["route_coverage_percent"] == "20.0"


def test_min_coverage_fails_a_suite_that_misses_routes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passing = FAILING.split("  - name: wrongly")[0]
    tests = write(tmp_path, passing)
    assert main(["test", CFX, tests]) == 0
    out = capsys.readouterr().out
    assert "route coverage: 1/10 (10%)" in out
    assert "routes no test reaches: chat-only, stage-code, stage-review" in out
    assert main(["test", CFX, tests, "--min-coverage", "10"]) == 0
    capsys.readouterr()
    assert main(["test", CFX, tests, "--min-coverage", "50"]) == 1
    assert "route coverage 10% is below --min-coverage 50%" in capsys.readouterr().out


def test_a_broken_tests_file_gets_located_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = """version: 1
tests:
  - name: one
    request: {body: {model: m}, header: {a: b}}
    expect: {route: x}
  - name: one
    request: {body: {model: m}}
    expect: {stauts: 200}
"""
    assert main(["test", CFX, write(tmp_path, broken)]) == 1
    err = capsys.readouterr().err
    assert "tests.yaml:4:33: error schema.additionalProperties: unknown key 'header'" in err
    assert "did you mean 'headers'?" in err
    assert "tests.yaml:8:14: error schema.additionalProperties: unknown key 'stauts'" in err
    assert "invalid route tests" in err
    valid_but_repeated = broken.replace("header:", "headers:").replace("stauts", "status")
    assert main(["test", CFX, write(tmp_path, valid_but_repeated)]) == 1
    assert "tests.duplicate_name: test name 'one' is used twice" in capsys.readouterr().err


def test_unknown_key_ids_and_route_names_fail_the_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """version: 1
tests:
  - name: a key the config lacks
    request: {key_id: nobody, body: {model: m, messages: []}}
    expect: {status: 200}
  - name: a route the config lacks
    request: {key_id: agent-prod, body: {model: m, messages: [{role: user, content: hi}]}}
    expect: {route: infer-cod}
"""
    assert main(["test", CFX, write(tmp_path, text)]) == 1
    out = capsys.readouterr().out
    assert "--key-id 'nobody': no such key in auth.keys" in out
    assert "the config has no route 'infer-cod' (did you mean 'infer-code'?)" in out


def test_the_examples_tests_files_follow_the_schema() -> None:
    from ruamel.yaml import YAML

    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    for name in EXAMPLE_NAMES:
        data = YAML(typ="safe", pure=True).load(EXAMPLES / f"{name}.tests.yaml")
        jsonschema.validate(data, schema)
    packaged = ROOT / "compiler" / "schema" / "interlock-tests.schema.json"
    assert packaged.is_symlink() and packaged.resolve() == SCHEMA
