"""Negative compiler tests: broken configs, one per file, each naming its first error.

Every file in `tests/broken/` starts with ``# expect: <code> <line>:<col>``: the first error
diagnostic (sorted by file, line, column) must have that code at that position. Every directory
in `tests/broken_dirs/` is a multi-file config; its `expect.txt` says ``# expect: <code>
[<file>:]<line>:<col>`` with the file relative to the directory. The rest of this module checks
that all errors of a file are reported, that warnings do not fail a compile, and the CLI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from compiler import CompileResult, Severity, compile_config, compile_texts
from compiler.diagnostics import render_text
from compiler.dump import dump_table
from runtime.cli import main

ROOT = Path(__file__).resolve().parent.parent
BROKEN = ROOT / "tests" / "broken"
BROKEN_DIRS = ROOT / "tests" / "broken_dirs"
DOCS = ROOT / "README.md"
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
EXPECT = re.compile(
    r"^# expect: (?P<code>[a-z_]+\.[A-Za-z_]+) (?:(?P<file>\S+):)?(?P<line>\d+):(?P<col>\d+)\s*$"
)


@dataclass(frozen=True)
class Expectation:
    code: str
    file: str | None
    line: int
    col: int


def read_expectation(path: Path) -> Expectation:
    # NOTE: latin-1 reads any bytes, so a fixture that is deliberately not UTF-8 still has one.
    first = path.read_bytes().decode("latin-1").splitlines()[0]
    found = EXPECT.match(first)
    if found is None:
        raise ValueError(f"{path}: first line must be '# expect: <code> <line>:<col>'")
    return Expectation(found["code"], found["file"], int(found["line"]), int(found["col"]))


def first_error(result: CompileResult) -> tuple[str, str, int, int]:
    errors = [d for d in result.diagnostics if d.is_error]
    assert errors, "the config compiled without errors"
    d = errors[0]
    return d.code, d.span.file, d.span.line, d.span.col


FILES = sorted(BROKEN.glob("*.yaml"))
DIRS = sorted(p for p in BROKEN_DIRS.iterdir() if p.is_dir())


@pytest.fixture(autouse=True)
def _unset_test_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The env.unset fixtures name variables that must not be set."""
    for name in (
        "INTERLOCK_TEST_UNSET_HOST",
        "INTERLOCK_TEST_UNSET_PORT",
        "INTERLOCK_TEST_UNSET_USER",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("path", FILES + DIRS, ids=lambda p: p.name)
def test_broken_config_reports_expected_first_error(path: Path) -> None:
    expect = read_expectation(path / "expect.txt" if path.is_dir() else path)
    result = compile_config(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    assert not result.ok
    code, file, line, col = first_error(result)
    assert (code, line, col) == (expect.code, expect.line, expect.col), render_text(
        result.errors[0], dict(result.sources)
    )
    if expect.file is not None:
        assert Path(file).name == expect.file


def test_fixtures_cover_every_error_code_in_the_docs() -> None:
    table = DOCS.read_text(encoding="utf-8").split("## Diagnostics", 1)[1]
    documented: set[str] = set()
    for row in re.finditer(r"^\| (?P<codes>[^|]+) \| error \|", table, re.MULTILINE):
        documented.update(re.findall(r"`([a-z_]+\.[a-z_*]+)`", row["codes"]))
    documented.discard("schema.*")
    covered = {read_expectation(p).code for p in FILES}
    covered |= {read_expectation(p / "expect.txt").code for p in DIRS}
    assert documented - covered == set()
    assert {c for c in covered if c.startswith("schema.")} >= {
        "schema.additionalProperties",
        "schema.type",
        "schema.required",
        "schema.enum",
        "schema.minimum",
        "schema.maximum",
        "schema.pattern",
    }
    assert "merge.conflict" in covered


def test_there_are_enough_fixtures() -> None:
    assert len(FILES) >= 45
    assert len(DIRS) >= 2


@pytest.mark.parametrize(
    ("fixture", "hint"),
    [
        ("ref_unknown_upstream.yaml", "did you mean 'openai'?"),
        ("ref_unknown_model_route.yaml", "did you mean 'gpt-4o'?"),
        ("ref_unknown_header_policy.yaml", "did you mean 'corp-upstream'?"),
        ("ref_unknown_transform.yaml", "did you mean 'scrub-secrets'?"),
        ("ref_unknown_limit.yaml", "did you mean 'per-key'?"),
        ("ref_unknown_cache.yaml", "did you mean 'deterministic'?"),
        ("schema_unknown_top_key.yaml", "did you mean 'upstreams'?"),
        ("schema_enum_kind.yaml", "did you mean 'openai'?"),
    ],
)
def test_unknown_names_suggest_the_closest_one(fixture: str, hint: str) -> None:
    result = compile_config(BROKEN / fixture)
    assert result.errors[0].hint == hint


def test_every_error_of_a_file_is_reported() -> None:
    text = """\
version: 1
upstreams:
  demo: {kind: mock}
policies:
  headers:
    corp: {request: {force: {connection: close}}}
models:
  demo-chat:
    targets: [{upstream: dmeo}]
routes:
  - name: plan
    match: {text: {regex: "plan(", in: all}}
    action: {model: demo-chat}
  - name: plan
    match:
      body: [{path: "$.x[", exists: true}]
    action: {model: demo-chat}
"""
    result = compile_texts([("five.yaml", text)])
    assert [(d.code, d.span.line) for d in result.errors] == [
        ("header.hop_by_hop", 6),
        ("ref.unknown_upstream", 9),
        ("regex.invalid", 12),
        ("name.duplicate", 14),
        ("jsonpath.invalid", 16),
    ]


def test_every_schema_error_of_a_file_is_reported() -> None:
    text = """\
version: 1
upstream: {}
server: {listen: "127.0.0.1:8080", max_body_bytes: -1}
upstreams:
  demo: {kind: mok}
routes:
  - match: {}
    action: {}
"""
    result = compile_texts([("schema.yaml", text)])
    assert [(d.code, d.span.line, d.span.col) for d in result.errors] == [
        ("schema.additionalProperties", 2, 1),
        ("schema.type", 3, 19),
        ("schema.minimum", 3, 52),
        ("schema.enum", 5, 16),
        ("schema.required", 7, 5),
    ]


def test_a_policy_with_errors_is_not_reported_again_where_it_is_used() -> None:
    text = """\
version: 1
policies:
  headers:
    corp: {request: {force: {connection: close}}}
  transforms:
    scrub: {request: [{op: regex_replace, pattern: "a(", replacement: x}]}
upstreams:
  demo: {kind: mock, headers: [corp]}
routes:
  - name: r
    match: {}
    action: {headers: [corp], transforms: [scrub]}
"""
    result = compile_texts([("cascade.yaml", text)])
    assert [d.code for d in result.errors] == ["header.hop_by_hop", "regex.invalid"]


def test_an_alias_bomb_is_refused() -> None:
    lines = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    result = compile_texts([("bomb.yaml", "\n".join(lines) + "\n")])
    assert [d.code for d in result.errors] == ["yaml.syntax"]
    assert "too many values" in result.errors[0].message


def test_a_set_but_empty_variable_is_not_unset() -> None:
    text = 'version: 1\nobservability: {request_id_header: "x-id${INTERLOCK_TEST_EMPTY}"}\n'
    set_empty = compile_texts([("a.yaml", text)], env={"INTERLOCK_TEST_EMPTY": ""})
    assert set_empty.table is not None
    assert set_empty.table.observability.request_id_header == "x-id"
    unset = compile_texts([("a.yaml", text)], env={})
    assert [d.code for d in unset.errors] == ["env.unset"]


# --- warnings ---------------------------------------------------------------------------------

WARNINGS = """\
version: 1
upstreams:
  openai:
    kind: openai
    base_url: https://api.openai.com/v1
    api_key: sk-literal-key
    tls: {verify: false}
models:
  gpt-4o:
    targets: [{upstream: openai}]
policies:
  transforms:
    hosts:
      response:
        - {op: regex_replace, pattern: "internal-\\\\d+", replacement: "[host]"}
limits:
  policies:
    spend: {scope: key, budget: {cost_per_day: 5}}
routes:
  - name: all
    match: {}
    action: {transforms: [hosts]}
observability:
  log_bodies: true
"""


@pytest.mark.parametrize(
    ("code", "line", "col"),
    [
        ("secret.literal", 6, 14),
        ("tls.verify_off", 7, 11),
        ("transform.not_stream_safe", 22, 14),
        ("budget.no_price", 18, 34),
    ],
)
def test_warnings_do_not_fail_the_compile(code: str, line: int, col: int) -> None:
    result = compile_texts([("warn.yaml", WARNINGS)])
    assert result.ok and result.table is not None
    assert result.errors == ()
    found = [d for d in result.warnings if d.code == code]
    assert [(d.severity, d.span.line, d.span.col) for d in found] == [(Severity.WARNING, line, col)]


def test_secrets_from_references_or_substitution_are_not_literal() -> None:
    text = WARNINGS.replace("api_key: sk-literal-key", 'api_key: "${INTERLOCK_TEST_KEY}"')
    result = compile_texts([("warn.yaml", text)], env={"INTERLOCK_TEST_KEY": "sk-from-env"})
    assert "secret.literal" not in {d.code for d in result.warnings}
    text = WARNINGS.replace("api_key: sk-literal-key", "api_key: {env: OPENAI_API_KEY}")
    result = compile_texts([("warn.yaml", text)])
    assert "secret.literal" not in {d.code for d in result.warnings}


# --- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def warned(tmp_path: Path) -> Path:
    path = tmp_path / "warned.yaml"
    path.write_text(WARNINGS, encoding="utf-8")
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_cli_exit_codes_as_a_process(warned: Path) -> None:
    assert run_cli("validate", "examples/quickstart.yaml").returncode == 0
    assert run_cli("validate", "tests/broken/ref_unknown_upstream.yaml").returncode == 1
    assert run_cli("validate").returncode == 2
    assert run_cli("validate", "--format", "xml", "examples/quickstart.yaml").returncode == 2
    assert run_cli("validate", "--strict", str(warned)).returncode == 1


def test_cli_validate_exit_codes(warned: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(QUICKSTART)]) == 0
    assert main(["validate", str(BROKEN / "route_unreachable_identical.yaml")]) == 1
    assert main(["validate", str(QUICKSTART), str(BROKEN / "regex_invalid_model.yaml")]) == 1
    assert main(["validate", str(warned)]) == 0
    assert main(["validate", "--strict", str(warned)]) == 1
    assert main(["validate", str(BROKEN_DIRS / "duplicate_model")]) == 1
    assert main(["validate", str(BROKEN / "does-not-exist.yaml")]) == 1
    with pytest.raises(SystemExit) as usage:
        main(["validate", "--no-such-flag", str(QUICKSTART)])
    assert usage.value.code == 2
    capsys.readouterr()


def test_cli_github_format(capsys: pytest.CaptureFixture[str]) -> None:
    path = "tests/broken/ref_unknown_upstream.yaml"
    assert main(["validate", "--format", "github", path]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"::error file={path},line=15,col=19,title=ref.unknown_upstream::"
        "unknown upstream 'opnai' (did you mean 'openai'?)"
    ]


def test_cli_github_format_warnings(warned: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--format", "github", str(warned)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    pattern = re.compile(r"^::warning file=[^,]+,line=\d+,col=\d+,title=[a-z_.]+::.+$")
    assert all(pattern.match(line) for line in lines), lines


def test_cli_json_format(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(BROKEN / "regex_invalid_route_text_escaped.yaml")
    assert main(["validate", "--format", "json", path]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [(d["code"], d["line"], d["col"], d["path"]) for d in data] == [
        ("regex.invalid", 11, 35, "$.routes[0].match.text.regex")
    ]
    assert data[0]["severity"] == "error" and data[0]["file"] == path


def test_cli_json_format_of_a_valid_config_is_an_empty_list(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["validate", "--format", "json", str(QUICKSTART)]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_cli_text_format_shows_the_line_and_a_caret(capsys: pytest.CaptureFixture[str]) -> None:
    path = BROKEN / "regex_invalid_header_single_quoted.yaml"
    assert main(["validate", str(path)]) == 1
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert (
        out[0] == f"{path}:13:41: error regex.invalid: invalid regex: missing >, unterminated name"
    )
    source = path.read_text(encoding="utf-8").splitlines()[12]
    assert out[1] == f"  13 | {source}"
    caret = out[2]
    assert caret.startswith("     | ")
    assert caret[len("     | ") :].index("^") == 40  # column 41, 1-based
    assert source[40] == "x"  # the name that is not terminated
    assert out[3] == "     = at $.routes[0].match.headers['x-cfx-stage'].regex"
    assert "invalid (1 error(s), 0 warning(s))" in captured.err


def test_cli_text_format_shows_the_line_of_a_yaml_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = BROKEN / "yaml_syntax_unclosed_flow.yaml"
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}:5:7: error yaml.syntax: ")
    assert out[1:3] == [
        "  5 | models:",
        "    |       ^ while parsing a flow mapping at line 4, column 9",
    ]


def test_cli_text_caret_keeps_tabs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "tabs.yaml"
    path.write_text('version: 1\nobservability:\n  redact: ["\tab("]\n', encoding="utf-8")
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    out = out[next(i for i, line in enumerate(out) if "error regex.invalid" in line) :]
    assert out[1].endswith('redact: ["\tab("]')
    assert out[2].endswith("           \t  ^")  # under the '(' that is not closed


def test_cli_schema_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    shipped = (ROOT / "schemas" / "interlock.schema.json").read_text(encoding="utf-8")
    assert schema == json.loads(shipped)


def test_cli_dump_is_deterministic_across_processes() -> None:
    dumps = {
        run_cli("dump", "examples/quickstart.yaml", env=_env(seed)).stdout for seed in ("1", "2")
    }
    assert len(dumps) == 1
    (text,) = dumps
    result = compile_config("examples/quickstart.yaml")
    assert result.table is not None
    assert text == dump_table(result.table)
    assert json.loads(text)["version"] == result.table.version


def test_cli_dump_of_a_broken_config_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dump", str(BROKEN / "ref_unknown_upstream.yaml")]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "ref.unknown_upstream" in captured.err


def _env(seed: str) -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": seed}
