"""Files a config names (TLS CA bundle, client certificate and key, ``{file: ...}`` secrets).

`interlock validate` warns (``file.missing``, located) about a file this machine does not have;
`serve` and a reload refuse the config with a diagnostic located where the file is named, with
no traceback, and a reload keeps the old table serving.

Every file in `tests/warned/` starts with ``# expect: <code> <line>:<col>``: the config compiles
and its first warning has that code at that position.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compiler import Severity, compile_config, compile_texts
from compiler.analysis import missing_files, referenced_files
from runtime.app import Gateway
from runtime.reload import Reloader
from runtime.snapshot import SnapshotError, prepare_snapshot
from tests.test_compiler_fixtures import read_expectation

ROOT = Path(__file__).resolve().parent.parent
WARNED = sorted((ROOT / "tests" / "warned").glob("*.yaml"))
TLS = ROOT / "tests" / "tls"
MISSING = "/nonexistent/interlock-test/ca.pem"


@pytest.mark.parametrize("path", WARNED, ids=lambda p: p.name)
def test_a_missing_file_is_a_located_warning(path: Path) -> None:
    expect = read_expectation(path)
    result = compile_config(path.relative_to(ROOT))
    assert result.ok, [str(d.span) + " " + d.message for d in result.errors]
    first = result.warnings[0]
    assert (first.code, first.span.line, first.span.col) == (expect.code, expect.line, expect.col)
    named = re.search(r"'(/nonexistent/[^']+)'", first.message)
    assert named is not None and named.group(1) in path.read_text(encoding="utf-8")


def _config(tls: str = "", api_key: str = "{env: IL_TEST_MISSING_KEY}") -> str:
    return f"""\
version: 1
upstreams:
  corp:
    kind: openai
    base_url: https://llm.corp.example/v1
    api_key: {api_key}
    tls: {{{tls}}}
models:
  m: {{targets: [{{upstream: corp}}]}}
"""


def test_files_that_exist_give_no_warning(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-from-file\n", encoding="utf-8")
    tls = f"ca_bundle: {TLS / 'client.pem'}, client_cert: {TLS / 'client.pem'}, "
    tls += f"client_key: {TLS / 'client.key'}"
    result = compile_texts([("ok.yaml", _config(tls, f"{{file: {key}}}"))])
    assert result.ok and "file.missing" not in {d.code for d in result.warnings}
    assert result.table is not None
    assert prepare_snapshot(result.table).upstreams["corp"].auth_headers == (
        ("authorization", "Bearer sk-from-file"),
    )


def test_referenced_files_walks_every_secret_reference() -> None:
    spec = {
        "upstreams": {"u": {"tls": {"ca_bundle": "a"}, "api_key": {"file": "b"}}},
        "policies": {"headers": {"p": {"request": {"force": {"x-k": {"file": "c"}}}}}},
        "usage": {"store": {"kind": "postgres", "url": {"env": "PG"}}},
        "routes": [{"name": "r", "match": {"body": [{"path": "$.file", "exists": True}]}}],
    }
    assert [(path[-1], file) for path, file, _ in referenced_files(spec)] == [
        ("ca_bundle", "a"),
        ("file", "b"),
        ("file", "c"),
    ]
    assert [file for _, file, _ in missing_files(spec, exists=lambda f: f == "b")] == ["a", "c"]


def test_cli_validate_warns_and_strict_fails(capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.cli import main

    path = str(ROOT / "tests" / "warned" / "tls_ca_bundle_missing.yaml")
    assert main(["validate", path]) == 0
    out = capsys.readouterr().out
    assert f"{path}:9:18: warning file.missing: TLS CA bundle" in out
    assert "/nonexistent/interlock-test/corp-ca.pem" in out
    assert main(["validate", "--strict", path]) == 1
    capsys.readouterr()


# --- the server refuses what it cannot load ----------------------------------------------


@pytest.mark.parametrize(
    ("tls", "file", "says"),
    [
        (f"ca_bundle: {MISSING}", MISSING, "No such file"),
        (
            f"client_cert: {TLS / 'client.pem'}, client_key: {MISSING}",
            MISSING,
            "No such file",
        ),
        (f"ca_bundle: {TLS / 'README.md'}", str(TLS / "README.md"), "no usable PEM"),
        (
            f"client_cert: {TLS / 'client.pem'}, client_key: {TLS / 'client-encrypted.key'}",
            str(TLS / "client.pem"),
            "encrypted",
        ),
    ],
    ids=["ca-missing", "key-missing", "ca-not-pem", "key-encrypted"],
)
def test_a_snapshot_refuses_unusable_tls_files(tls: str, file: str, says: str) -> None:
    result = compile_texts([("tls.yaml", _config(tls))])
    assert result.table is not None
    with pytest.raises(SnapshotError) as refused:
        prepare_snapshot(result.table)
    assert refused.value.file == file
    assert f"'{file}'" in str(refused.value) and says in str(refused.value)
    assert "upstream 'corp'" in str(refused.value)


def test_a_missing_secret_file_names_the_file() -> None:
    result = compile_texts([("s.yaml", _config(api_key=f"{{file: {MISSING}}}"))])
    assert result.table is not None
    with pytest.raises(SnapshotError, match=re.escape(f"'{MISSING}'")) as refused:
        prepare_snapshot(result.table)
    assert refused.value.file == MISSING


def test_serve_refuses_with_the_file_located_and_no_traceback(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(_config(f"ca_bundle: {MISSING}"), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "serve", str(config), "--no-watch"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "IL_TEST_MISSING_KEY": "sk-test"},
    )
    assert done.returncode == 1, done.stderr
    assert f"{config}:7:22: error file.missing: TLS CA bundle '{MISSING}'" in done.stderr
    assert f"cannot serve {config}: upstream 'corp': cannot read TLS CA bundle '{MISSING}'" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


def test_a_reload_refuses_and_the_old_table_keeps_serving(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("IL_TEST_MISSING_KEY", "sk-test")
    config = tmp_path / "config.yaml"
    config.write_text(_config(), encoding="utf-8")
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        result = compile_config(config)
        assert result.table is not None
        gateway = Gateway(prepare_snapshot(result.table))
        reloader = Reloader(gateway, config, loaded=result)
        serving = gateway.snapshot.version
        config.write_text(_config(f"ca_bundle: {MISSING}"), encoding="utf-8")
        refused = await reloader.reload("sighup")
        assert not refused.ok and gateway.snapshot.version == serving
        assert refused.error is not None and f"'{MISSING}'" in refused.error
        located = [d for d in refused.diagnostics if d.code == "file.missing"]
        assert [(d.severity, d.span.line, d.span.col) for d in located] == [(Severity.ERROR, 7, 22)]
        assert located[0].span.path == "$.upstreams.corp.tls.ca_bundle"
        await gateway.state.pool.aclose()

    asyncio.run(scenario())
    err = capsys.readouterr().err
    assert "REJECTED" in err and f"{config}:7:22: error file.missing" in err
    assert "Traceback" not in err + caplog.text
