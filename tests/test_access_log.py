"""The access log: one line per request, at the configured destination, without secrets, and
naming who served the request (route, model, upstream, upstream model, attempts), its failure
class and the config version, on success and on every failure path."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from compiler import compile_texts
from runtime.accesslog import AccessLog, configure_server_logging
from runtime.snapshot import prepare_snapshot
from tests.served import ServedGateway
from tests.upstreams import CloseMidStream, Delay, Hang, MockUpstream, Status, StreamError

Served = Callable[[str], ServedGateway]
CONFIG = """
version: 1
upstreams:
  demo: {kind: mock}
models:
  demo-chat: {targets: [{upstream: demo}]}
observability:
  access_log: {enabled: true, format: json, destination: "%s"}
"""
CLIENT_KEY = "il-access-log-client-key-0123456789"
SALT = "0123456789abcdef"
CHAT = [{"role": "user", "content": "hello there"}]
FAST = {"connect_s": 1, "read_s": 1, "first_byte_s": 0.4, "total_s": 3}


def read_lines(path: Path, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The first `count` lines of the access log at `path`, once they are written (the log is
    flushed every 200 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if len(text.splitlines()) >= count:
            break
        time.sleep(0.05)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) >= count, lines
    return lines[:count]


def test_lines_go_to_the_configured_file_without_secrets(served: Served, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    gw = served(CONFIG % log)
    for rid in ("rid-1", "rid-2"):
        reply = httpx.post(
            gw.url + "/v1/chat/completions",
            headers={"authorization": "Bearer sk-secret-value", "x-request-id": rid},
            json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert reply.status_code == 200
    lines = read_lines(log, 2)
    assert [line["request_id"] for line in lines] == ["rid-1", "rid-2"]
    assert {line["status"] for line in lines} == {200}
    assert lines[0]["model"] == "demo-chat" and lines[0]["upstream"] == "demo"
    assert lines[0]["version"] == gw.version
    assert "sk-secret-value" not in log.read_text()
    assert "request_body" not in lines[0] and "request_headers" not in lines[0]


def test_text_format_names_route_upstream_attempts_and_error(
    served: Served, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    text_config = (CONFIG % log).replace("format: json", "format: text")
    gw = served(text_config + "  log_bodies: true\n")
    httpx.post(
        gw.url + "/v1/chat/completions",
        headers={"x-request-id": "rid-text"},
        json={"model": "demo-chat", "messages": CHAT},
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (log.exists() and log.read_text()):
        time.sleep(0.05)
    line = log.read_text().splitlines()[0]
    assert line.startswith("rid-text openai.chat 200 -->demo/demo-chat ")
    assert "model=demo-chat attempts=1 error=- " in line and f" v{gw.version} " in line
    body = line.partition(" request_body=")[2].partition(" response_body=")
    assert json.loads(json.loads(body[0]))["messages"] == CHAT  # a JSON string of the body
    assert json.loads(json.loads(body[2]))["object"] == "chat.completion"


# --- attribution on success and on every failure path ------------------------------------


def gateway_config(up: MockUpstream, log: Path, **upstream: Any) -> str:
    digest = hashlib.sha256((SALT + CLIENT_KEY).encode()).hexdigest()
    oai = {
        "kind": "openai",
        "base_url": up.base_url("openai"),
        "api_key": "sk-interlock-test",
        "timeouts": FAST,
        "retry": {"attempts": 1},
        **upstream,
    }
    config = {
        "version": 1,
        "upstreams": {"oai": oai, "spare": {**oai, "retry": {"attempts": 1}}},
        "models": {
            "chat": {"aliases": ["gpt-4o"], "targets": [{"upstream": "oai", "model": "gpt-up"}]},
            "limited": {"targets": [{"upstream": "oai", "model": "gpt-up"}]},
            "backed": {
                "targets": [{"upstream": "oai", "model": "gpt-up"}],
                "fallback": {"models": ["spare-model"], "on": ["server_error"]},
            },
            "spare-model": {"targets": [{"upstream": "spare", "model": "gpt-spare"}]},
        },
        "routes": [
            {"name": "limited", "match": {"model": "limited"}, "action": {"limits": ["one"]}},
            {"name": "main", "match": {}, "action": {"limits": []}},
        ],
        "auth": {"required": True, "keys": [{"id": "ci", "hash": f"sha256:{SALT}:{digest}"}]},
        "limits": {"policies": {"one": {"scope": "key", "rpm": 1}}},
        "observability": {"access_log": {"format": "json", "destination": str(log)}},
    }
    return json.dumps(config)


def post(gw: ServedGateway, rid: str, *, key: str = CLIENT_KEY, **body: Any) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}", "x-request-id": rid},
        json={"model": "gpt-4o", "messages": CHAT, **body},
        timeout=10,
    )


def by_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["request_id"]: line for line in lines}


ATTRIBUTION = {"route", "model", "upstream", "upstream_model", "attempts", "error", "version"}


def test_every_line_names_who_served_it_and_how_it_failed(
    served: Served, upstream_reset: MockUpstream, tmp_path: Path
) -> None:
    up, log = upstream_reset, tmp_path / "access.log"
    gw = served(gateway_config(up, log))
    assert post(gw, "ok").status_code == 200
    assert post(gw, "bad-key", key="il-wrong-key-000000").status_code == 401
    invalid = httpx.post(
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {CLIENT_KEY}", "x-request-id": "invalid"},
        content=b'{"model": "gpt-4o", "messages": 7}',
    )
    assert invalid.status_code == 400
    assert post(gw, "unknown", model="no-such-model").status_code == 404
    assert post(gw, "limit-1", model="limited").status_code == 200
    assert post(gw, "limit-2", model="limited").status_code == 429
    up.script("openai", Status(500))
    assert post(gw, "upstream-500").status_code == 502
    up.script("openai", Status(500))
    assert post(gw, "fell-back", model="backed").status_code == 200
    up.script("openai", Delay(2.0))
    assert post(gw, "timeout").status_code == 504
    lines = by_id(read_lines(log, 9))
    for line in lines.values():
        assert set(line) >= ATTRIBUTION and line["version"] == gw.version
        assert CLIENT_KEY not in json.dumps(line)

    ok = lines["ok"]
    assert (ok["status"], ok["route"], ok["model"], ok["error"]) == (200, "main", "gpt-4o", None)
    assert (ok["upstream"], ok["upstream_model"], ok["attempts"], ok["key_id"]) == (
        "oai",
        "gpt-up",
        1,
        "ci",
    )
    # refused before the body was read: nothing is known but the failure
    assert lines["bad-key"]["status"] == 401 and lines["bad-key"]["route"] is None
    assert lines["bad-key"]["error"] and lines["bad-key"]["key_id"] is None
    assert (lines["invalid"]["status"], lines["invalid"]["error"]) == (400, "client_error")
    unknown = lines["unknown"]
    assert (unknown["route"], unknown["model"], unknown["error"]) == (
        "main",
        "no-such-model",
        "model_not_found",
    )
    assert (unknown["upstream"], unknown["attempts"]) == (None, 0)
    limited = lines["limit-2"]
    assert (limited["status"], limited["route"], limited["model"], limited["attempts"]) == (
        429,
        "limited",
        "limited",
        0,
    )
    assert limited["error"] == "rate_limit_exceeded"
    failed = lines["upstream-500"]
    assert (failed["status"], failed["route"], failed["model"]) == (502, "main", "gpt-4o")
    assert (failed["upstream"], failed["upstream_model"], failed["attempts"]) == (
        "oai",
        "gpt-up",
        1,
    )
    assert failed["error"] == "server_error"
    fell_back = lines["fell-back"]
    assert (fell_back["status"], fell_back["model"], fell_back["attempts"]) == (200, "backed", 2)
    assert (fell_back["upstream"], fell_back["upstream_model"]) == ("spare", "gpt-spare")
    timeout = lines["timeout"]
    assert (timeout["status"], timeout["error"], timeout["upstream"]) == (504, "timeout", "oai")


def test_retries_client_disconnects_and_stream_errors_are_attributed(
    served: Served, upstream_reset: MockUpstream, tmp_path: Path
) -> None:
    up, log = upstream_reset, tmp_path / "access.log"
    gw = served(gateway_config(up, log, retry={"attempts": 3, "on_status": [503]}))
    up.script("openai", Status(503), Status(503))
    assert post(gw, "retried").status_code == 200
    up.script("openai", Hang())
    client = openai.OpenAI(
        base_url=gw.url + "/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=0.3,
        default_headers={"x-request-id": "gone"},
    )
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    client.close()
    up.script("openai", CloseMidStream(after_events=2), StreamError(after_events=2))
    for rid in ("mid-stream", "error-event"):
        with httpx.stream(
            "POST",
            gw.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {CLIENT_KEY}", "x-request-id": rid},
            json={"model": "gpt-4o", "messages": CHAT, "stream": True},
        ) as reply:
            assert reply.status_code == 200 and b"error" in reply.read()
    lines = by_id(read_lines(log, 4))
    assert lines["error-event"]["error"] == "upstream_stream_error"
    assert (lines["retried"]["status"], lines["retried"]["attempts"]) == (200, 3)
    gone = lines["gone"]
    assert (gone["status"], gone["error"], gone["route"], gone["upstream"]) == (
        499,
        "client_gone",
        "main",
        "oai",
    )
    mid = lines["mid-stream"]
    assert (mid["status"], mid["error"], mid["upstream_model"]) == (200, "bad_response", "gpt-up")


def test_no_exchange_is_made_when_nothing_is_logged(tmp_path: Path) -> None:
    result = compile_texts([("c.yaml", CONFIG % (tmp_path / "a.log"))])
    assert result.table is not None
    snap = prepare_snapshot(result.table)
    assert AccessLog().open_exchange(snap, "openai.chat", {}) is None


def test_log_level_sets_the_server_logger_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    logger = logging.getLogger("interlock")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    try:
        monkeypatch.setenv("INTERLOCK_LOG_LEVEL", "error")
        configure_server_logging()
        assert logger.level == logging.ERROR
        configure_server_logging("debug")
        assert logger.level == logging.DEBUG
        assert len(logger.handlers) == len(saved[1]) + 1  # installed once
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]


def test_serve_refuses_an_unknown_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.cli import main

    with pytest.raises(SystemExit) as usage:
        main(["serve", "config.yaml", "--log-level", "loud"])
    assert usage.value.code == 2
    assert "--log-level" in capsys.readouterr().err
