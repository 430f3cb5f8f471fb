"""`interlock diff` and `compiler.diff`: a semantic diff of two configs by section and name, that
never shows a secret, is empty for a config against itself and symmetric in added/removed; its
`--requests` replay; and the reload log line that now says what changed (keys by id, limits...).

Golden outputs (tests/golden/diff/) diff each example against an edited copy; regenerate with
``INTERLOCK_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_diff.py``.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import compile_texts
from compiler.diff import TableDiff, describe_changes, diff_tables, render_diff
from compiler.table import RouteTable
from runtime.cli import main
from tests.process import Interlock

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = ROOT / "tests" / "golden" / "diff"
UPDATE = os.environ.get("INTERLOCK_UPDATE_GOLDEN") == "1"

# Each example's edit: (old text, new text) replacements, each of which must apply.
EDITS: dict[str, list[tuple[str, str]]] = {
    "cfx-stage-routing": [
        (
            "match: {headers: {x-cfx-stage: plan}}\n    action: {model: cfx-plan}",
            "match: {headers: {x-cfx-stage: plan}}\n    action: {model: cfx-code}",
        ),
        ("      rpm: 60 ", "      rpm: 90 "),
        ("    - id: agent-ci\n", "    - id: agent-nightly\n"),
        ("{env: DATABASE_URL}", "{env: LEDGER_DATABASE_URL}"),
    ],
    "codexflow-tiers": [
        ("  - name: explicit-fast\n", "  - name: explicit-quick\n"),
        ("      ttl_s: 86400 ", "      ttl_s: 3600 "),
        ("    per-ip-rate:\n", "    per-ip-burst:\n"),
        ("  default: [per-key-rate, per-ip-rate]", "  default: [per-key-rate, per-ip-burst]"),
    ],
    "llm-proxy-router": [
        (
            "        force: {x-proxy: llm-proxy-router}\n    anthropic-blacklist:",
            "        force: {x-proxy: llm-proxy-router-2}\n    anthropic-blacklist:",
        ),
        ("    attempts: 2\n", "    attempts: 3\n"),
    ],
    "llm-router-service": [
        (
            "  o3:\n    targets: [{upstream: openai-reasoning, model: o3-2025-04-16}]",
            "  o3:\n    targets: [{upstream: openai-reasoning, model: o3-2025-06-01}]",
        ),
        ("  max_body_bytes: 20971520", "  max_body_bytes: 1048576"),
        ("  log_bodies: true", "  log_bodies: false"),
    ],
    "quickstart": [
        (
            '    aliases: [gpt-4o-mini, claude-haiku, "mock-*"]',
            "    aliases: [gpt-4o-mini, claude-haiku]",
        ),
        ("  retention_days: 90", "  retention_days: 30"),
    ],
    "xrouter-gigachat": [
        ("      rpm: 100 ", "      rpm: 200 "),
        ("      expires: 2026-06-30T00:00:00+03:00\n", ""),
        ("  - name: chat-only\n", "  - name: chat-only-endpoint\n"),
    ],
}


def compile_text(text: str, name: str = "config.yaml") -> RouteTable:
    result = compile_texts([(name, text)], env={})
    assert result.table is not None, [str(d.message) for d in result.errors]
    return result.table


def example_text(name: str) -> str:
    return (EXAMPLES / f"{name}.yaml").read_text(encoding="utf-8")


def edited_text(name: str) -> str:
    text = example_text(name)
    for old, new in EDITS[name]:
        assert old in text, f"{name}: edit {old!r} no longer applies"
        text = text.replace(old, new, 1)
    return text


def example_names() -> list[str]:
    return sorted(p.stem for p in EXAMPLES.glob("*.yaml") if not p.name.endswith(".tests.yaml"))


def test_every_example_has_an_edit() -> None:
    assert sorted(EDITS) == example_names()


@pytest.mark.parametrize("name", sorted(EDITS))
def test_golden_diffs(name: str) -> None:
    old = compile_text(example_text(name), f"examples/{name}.yaml")
    new = compile_text(edited_text(name), f"examples/{name}.yaml")
    diff = diff_tables(old, new)
    assert not diff.empty
    text = render_diff(diff)
    data = json.dumps(diff.as_dict(), indent=2, sort_keys=True) + "\n"
    for suffix, content in ((".txt", text), (".json", data)):
        path = GOLDEN / f"{name}{suffix}"
        if UPDATE:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
        assert content == path.read_text(encoding="utf-8"), f"{path.name} differs from golden"
    assert diff_tables(old, old).empty and diff_tables(new, new).empty


def test_what_a_diff_names() -> None:
    name = "cfx-stage-routing"
    diff = diff_tables(compile_text(example_text(name)), compile_text(edited_text(name)))
    assert diff.summary() == {
        "routes": {"changed": ["stage-plan"]},
        "keys": {"added": ["agent-nightly"], "removed": ["agent-ci"]},
        "limits": {"changed": ["per-key"]},
        "usage": {"changed": ["store"]},
    }
    (route,) = [c for c in diff.changes if c.section == "routes"]
    assert [(f.path, f.before, f.after) for f in route.fields] == [
        ("action.model", "cfx-plan", "cfx-code")
    ]
    assert describe_changes(diff).startswith("routes changed: stage-plan; keys added:")


def test_route_order_is_a_change() -> None:
    routes = "  - {name: %s, match: {headers: {x-a: '%s'}}, action: {model: m}}\n"
    head = "version: 1\nupstreams: {u: {kind: mock}}\nmodels: {m: {targets: [{upstream: u}]}}\n"
    one = compile_text(head + "routes:\n" + routes % ("a", "1") + routes % ("b", "2"))
    two = compile_text(head + "routes:\n" + routes % ("b", "2") + routes % ("a", "1"))
    assert diff_tables(one, two).summary() == {"routes": {"changed": ["(order)"]}}
    assert '["a", "b"] -> ["b", "a"]' in render_diff(diff_tables(one, two))


def test_secret_values_are_never_shown() -> None:
    base = """version: 1
upstreams:
  u: {kind: openai, base_url: "https://x.test/v1", api_key: "%s"}
models: {m: {targets: [{upstream: u}]}}
auth:
  keys:
    - {id: k1, hash: "sha256:0123456789abcdef:%s"}
"""
    one = compile_text(base % ("sk-inline-one-000000000000", "a" * 64))
    two = compile_text(base % ("sk-inline-two-111111111111", "b" * 64))
    diff = diff_tables(one, two)
    assert diff.summary() == {"upstreams": {"changed": ["u"]}, "keys": {"changed": ["k1"]}}
    shown = render_diff(diff) + json.dumps(diff.as_dict())
    for secret in ("sk-inline-one", "sk-inline-two", "a" * 64, "b" * 64):
        assert secret not in shown
    assert shown.count("***") >= 2


# --- properties --------------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "d"])


@st.composite
def configs(draw: st.DrawFn) -> str:
    """A small config: some models, routes, keys and limit policies, drawn from a few names."""
    models = draw(st.sets(NAMES, min_size=1))
    model = sorted(models)[0]
    routes = draw(st.lists(NAMES, unique=True))
    keys = draw(st.dictionaries(NAMES, st.sampled_from(["0", "1"])))
    limits = draw(st.dictionaries(NAMES, st.integers(1, 3)))
    doc: dict[str, Any] = {
        "version": 1,
        "upstreams": {"u": {"kind": "mock", "mock": {"reply": draw(NAMES)}}},
        "models": {m: {"targets": [{"upstream": "u"}]} for m in models},
        "routes": [
            {"name": r, "match": {"headers": {"x-r": r}}, "action": {"model": model}}
            for r in routes
        ],
        "auth": {
            "keys": [{"id": k, "hash": f"sha256:{'0' * 16}:{v * 64}"} for k, v in keys.items()]
        },
        "limits": {"policies": {n: {"scope": "key", "rpm": v} for n, v in limits.items()}},
    }
    return json.dumps(doc)


@settings(max_examples=40, deadline=None)
@given(configs())
def test_a_config_against_itself_has_no_diff(text: str) -> None:
    assert diff_tables(compile_text(text), compile_text(text)).empty


@settings(max_examples=40, deadline=None)
@given(configs(), configs())
def test_diff_is_symmetric(one: str, two: str) -> None:
    a, b = compile_text(one), compile_text(two)
    forward, backward = diff_tables(a, b), diff_tables(b, a)
    assert kinds(forward, "added") == kinds(backward, "removed")
    assert kinds(forward, "removed") == kinds(backward, "added")
    assert kinds(forward, "changed") == kinds(backward, "changed")
    assert forward.empty == backward.empty == (describe(a) == describe(b))


def kinds(diff: TableDiff, kind: str) -> set[tuple[str, str]]:
    return {(c.section, c.name) for c in diff.changes if c.kind == kind}


def describe(table: RouteTable) -> Any:
    from compiler.dump import to_plain

    plain = to_plain(table)
    for derived in ("version", "sources", "index", "model_names", "model_globs"):
        plain.pop(derived)
    return plain


# --- the command -------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_the_command_exits_1_when_configs_differ(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = str(EXAMPLES / "cfx-stage-routing.yaml")
    new = write(tmp_path, "new.yaml", edited_text("cfx-stage-routing"))
    assert main(["diff", old, old]) == 0
    assert capsys.readouterr().out == "no changes\n"
    assert main(["diff", old, new]) == 1
    assert "  - agent-ci\n" in capsys.readouterr().out
    assert main(["diff", old, new, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["summary"]["keys"]["removed"] == ["agent-ci"]
    broken = write(tmp_path, "broken.yaml", "version: 1\nroutes: 3\n")
    assert main(["diff", old, broken]) == 2


def test_requests_replay_lists_the_requests_that_move(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = str(EXAMPLES / "cfx-stage-routing.yaml")
    new = write(tmp_path, "new.yaml", edited_text("cfx-stage-routing"))
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    samples = [
        {"headers": {"x-cfx-stage": "plan"}, "key_id": "agent-prod", "body": chat},
        {"headers": {"x-cfx-stage": "code"}, "key_id": "agent-prod", "body": chat},
        {"key_id": "agent-prod", "body": chat},
    ]
    lines = write(tmp_path, "requests.jsonl", "\n".join(json.dumps(s) for s in samples))
    assert main(["diff", old, new, "--requests", lines]) == 1
    out = capsys.readouterr().out
    assert "requests: 1 change destination" in out
    assert '#1 /v1/chat/completions model=\'gpt-4o\': model "cfx-plan" -> "cfx-code"' in out
    assert main(["diff", old, new, "--requests", lines, "--json"]) == 1
    (moved,) = json.loads(capsys.readouterr().out)["requests"]
    assert moved["before"]["upstream_model"] == "claude-sonnet-4-5"
    assert moved["after"]["upstream_model"] == "gpt-4.1"
    listed = write(tmp_path, "requests.json", json.dumps([samples[1], samples[2]]))
    assert main(["diff", old, old, "--requests", listed]) == 0
    assert "requests: none changes destination" in capsys.readouterr().out
    bad = write(tmp_path, "bad.json", "[1]")
    assert main(["diff", old, new, "--requests", bad]) == 2


# --- the reload line ------------------------------------------------------------------------------

RELOAD_CONFIG = """version: 1
upstreams:
  demo: {kind: mock, mock: {reply: "%s"}}
models:
  chat: {targets: [{upstream: demo}]}
auth:
  keys:
%s
limits:
  policies:
    per-key: {scope: key, rpm: %d}
"""
KEY = '    - {id: %s, hash: "sha256:0123456789abcdef:%s"}'


def test_a_reload_line_names_keys_limits_and_upstreams(
    tmp_path: Path, interlock: Callable[..., Interlock]
) -> None:
    keys = [KEY % ("web", "a" * 64), KEY % ("batch", "b" * 64)]
    config = tmp_path / "config.yaml"
    config.write_text(RELOAD_CONFIG % ("one", "\n".join(keys), 10), encoding="utf-8")
    server = interlock(config, args=("--no-watch",))
    mark = len(server.log)
    config.write_text(RELOAD_CONFIG % ("two", keys[0], 20), encoding="utf-8")
    server.signal(signal.SIGHUP)
    found = server.wait_log(
        r"^interlock: reload \(sighup\) ok: version \w+ changes (.+)$", start=mark
    )
    assert found.group(1) == (
        "upstreams changed: demo (mock.reply); keys removed: batch; limits changed: per-key"
    )
    assert "b" * 64 not in server.log
