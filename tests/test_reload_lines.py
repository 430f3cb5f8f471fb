"""The reload line names what changed, for each kind of change, and never a secret: keys
added / changed / removed by id, cache and limit policies and routes by name, the setting paths
of a changed upstream. `--log-level error` quiets the ok and startup lines, the default prints
them."""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from compiler import compile_config
from runtime.app import Gateway
from runtime.reload import Reloader
from runtime.snapshot import prepare_snapshot
from tests.process import Interlock, interlock  # noqa: F401  (the fixture)

HASH_WEB = "sha256:0123456789abcdef:" + "a" * 64
HASH_BATCH = "sha256:0123456789abcdef:" + "b" * 64
HASH_ROTATED = "sha256:0123456789abcdef:" + "c" * 64
UPSTREAM_KEY = "sk-reload-line-upstream-key-1234"
ROTATED_KEY = "sk-reload-line-upstream-key-5678"
SECRETS: tuple[str, ...] = (HASH_WEB, HASH_BATCH, HASH_ROTATED, "a" * 64, "b" * 64, "c" * 64)
SECRETS += (UPSTREAM_KEY, ROTATED_KEY)


def base() -> dict[str, Any]:
    return {
        "version": 1,
        "upstreams": {
            "demo": {
                "kind": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key": UPSTREAM_KEY,
                "timeouts": {"read_s": 30},
            }
        },
        "models": {
            "chat": {"targets": [{"upstream": "demo", "model": "gpt-a"}]},
            "code": {"targets": [{"upstream": "demo", "model": "gpt-b"}]},
        },
        "routes": [
            {"name": "chat-route", "match": {"model": "chat"}, "action": {}},
            {"name": "code-route", "match": {"model": "code"}, "action": {}},
        ],
        "auth": {"keys": [{"id": "web", "hash": HASH_WEB}, {"id": "batch", "hash": HASH_BATCH}]},
        "limits": {"policies": {"per-key": {"scope": "key", "rpm": 10}}},
        "cache": {"backend": {"kind": "memory"}, "policies": {"short": {"ttl_s": 60}}},
    }


Edit = Callable[[dict[str, Any]], None]


def add_key(c: dict[str, Any]) -> None:
    c["auth"]["keys"].append({"id": "ops", "hash": HASH_ROTATED})


def rotate_key(c: dict[str, Any]) -> None:
    c["auth"]["keys"][0]["hash"] = HASH_ROTATED


def remove_key(c: dict[str, Any]) -> None:
    del c["auth"]["keys"][1]


def add_cache(c: dict[str, Any]) -> None:
    c["cache"]["policies"]["long"] = {"ttl_s": 3600}


def change_cache(c: dict[str, Any]) -> None:
    c["cache"]["policies"]["short"]["ttl_s"] = 30


def add_route(c: dict[str, Any]) -> None:
    c["routes"].append({"name": "rest", "match": {}, "action": {"model": "chat"}})


def remove_route(c: dict[str, Any]) -> None:
    del c["routes"][1]


def reorder_routes(c: dict[str, Any]) -> None:
    c["routes"].reverse()


def change_limit(c: dict[str, Any]) -> None:
    c["limits"]["policies"]["per-key"]["rpm"] = 20


def change_timeout(c: dict[str, Any]) -> None:
    c["upstreams"]["demo"]["timeouts"]["read_s"] = 45


def rotate_upstream_key(c: dict[str, Any]) -> None:
    c["upstreams"]["demo"]["api_key"] = ROTATED_KEY


CASES: list[tuple[str, Edit, str]] = [
    ("keys added", add_key, "keys added: ops"),
    ("keys changed", rotate_key, "keys changed: web"),
    ("keys removed", remove_key, "keys removed: batch"),
    ("cache added", add_cache, "cache added: long"),
    ("cache changed", change_cache, "cache changed: short"),
    ("routes added", add_route, "routes added: rest"),
    ("routes removed", remove_route, "routes removed: code-route"),
    ("routes reordered", reorder_routes, "routes changed: (order now: code-route, chat-route)"),
    ("limits changed", change_limit, "limits changed: per-key"),
    ("upstream timeout", change_timeout, "upstreams changed: demo (timeouts.read_s)"),
    ("upstream key", rotate_upstream_key, "upstreams changed: demo (inline secret)"),
]


def reload_line(tmp_path: Path, edit: Edit, capsys: pytest.CaptureFixture[str]) -> str:
    config = tmp_path / "config.yaml"
    before = base()
    config.write_text(json.dumps(before), encoding="utf-8")
    after = copy.deepcopy(before)
    edit(after)

    async def scenario() -> None:
        result = compile_config(config)
        assert result.table is not None, result.diagnostics
        gateway = Gateway(prepare_snapshot(result.table))
        reloader = Reloader(gateway, config, loaded=result)
        config.write_text(json.dumps(after), encoding="utf-8")
        outcome = await reloader.reload("test")
        assert outcome.ok, outcome.diagnostics
        await gateway.state.pool.aclose()

    capsys.readouterr()
    asyncio.run(scenario())
    [line] = [x for x in capsys.readouterr().err.splitlines() if "reload (test)" in x]
    return line


@pytest.mark.parametrize(("edit", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_reload_line_names_each_kind_of_change(
    edit: Edit, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = reload_line(tmp_path, edit, capsys)
    assert line.startswith("interlock: reload (test) ok: version ")
    assert expected in line, line
    for secret in SECRETS:
        assert secret not in line


def mock_config(model: str) -> str:
    return json.dumps(
        {
            "version": 1,
            "upstreams": {"demo": {"kind": "mock", "mock": {"reply": "hi"}}},
            "models": {model: {"targets": [{"upstream": "demo"}]}},
        }
    )


def reload_to(server: Interlock, config: Path, model: str) -> None:
    """Edit, SIGHUP, and wait until `model` is served: the reload is done."""
    config.write_text(mock_config(model), encoding="utf-8")
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while model not in httpx.get(server.url + "/v1/models").text:
        assert time.monotonic() < deadline, server.log
        time.sleep(0.02)


@pytest.mark.parametrize("quiet", [False, True], ids=["default", "log-level-error"])
def test_log_level_error_quiets_startup_and_reload_lines(
    quiet: bool,
    tmp_path: Path,
    interlock: Callable[..., Interlock],  # noqa: F811
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(mock_config("one"), encoding="utf-8")
    args = ("--no-watch", "--log-level", "error") if quiet else ("--no-watch",)
    server = interlock(config, args=args)
    reload_to(server, config, "two")
    config.write_text("version: 1\nupstreams: {demo: {kind: nope}}\n", encoding="utf-8")
    server.signal(signal.SIGHUP)
    server.wait_log(r"^interlock: reload \(sighup\) REJECTED; still serving version \w+$")
    lines = server.log
    assert ("interlock: serving" in lines) is not quiet, lines
    assert ("interlock: reload (sighup) ok: version" in lines) is not quiet, lines
